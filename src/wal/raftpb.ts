/**
 * etcd raft's `raftpb` messages that a WAL entry and the raft state files
 * hold, encoded byte for byte as etcd's generated (gogoproto) code writes them.
 * The schema is contract/proto/raftpb/raft.proto; the code that reads and
 * writes it is generated (contract/proto/gen/raftpb/). This file is the
 * project's model of those messages: plain objects with `number`s.
 *
 * The non-nullable fields are always written, zero or not, in field-number
 * order; Data/context only when present (an empty Data is written as an
 * empty field, an absent one not at all). Repeated uint64 fields are not
 * packed (proto2), but packed input is accepted. Unknown fields are skipped
 * and not kept, as etcd's generated code does. Malformed bytes are CORRUPT
 * (see contract/proto/codec.ts).
 */

import { decodeModel, encodeModel } from '../../contract/proto/codec.js';
import {
  ConfChangeSchema,
  ConfChangeTransition as PbConfChangeTransition,
  ConfChangeType as PbConfChangeType,
  ConfChangeV2Schema,
  ConfStateSchema,
  EntrySchema,
  EntryType as PbEntryType,
  HardStateSchema,
} from '../../contract/proto/gen/raftpb/raft_pb.js';
import { ErrorCodes, WalArchiverError } from '../errors.js';

export const EntryType = {
  Normal: PbEntryType.EntryNormal,
  ConfChange: PbEntryType.EntryConfChange,
  ConfChangeV2: PbEntryType.EntryConfChangeV2,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

export interface RaftEntry {
  term: number;
  index: number;
  /** EntryType value; other values are kept as they are. */
  type: number;
  /** Absent when the entry carries no data field at all. */
  data?: Buffer;
}

export interface HardState {
  term: number;
  vote: number;
  commit: number;
}

export interface ConfState {
  voters: number[];
  learners: number[];
  votersOutgoing: number[];
  learnersNext: number[];
  autoLeave: boolean;
}

export const ConfChangeType = {
  AddNode: PbConfChangeType.ConfChangeAddNode,
  RemoveNode: PbConfChangeType.ConfChangeRemoveNode,
  UpdateNode: PbConfChangeType.ConfChangeUpdateNode,
  AddLearnerNode: PbConfChangeType.ConfChangeAddLearnerNode,
} as const;
export type ConfChangeType = (typeof ConfChangeType)[keyof typeof ConfChangeType];

export interface ConfChange {
  id: number;
  type: number;
  nodeId: number;
  context?: Buffer;
}

export interface ConfChangeSingle {
  type: number;
  nodeId: number;
}

export const ConfChangeTransition = {
  Auto: PbConfChangeTransition.ConfChangeTransitionAuto,
  JointImplicit: PbConfChangeTransition.ConfChangeTransitionJointImplicit,
  JointExplicit: PbConfChangeTransition.ConfChangeTransitionJointExplicit,
} as const;

export interface ConfChangeV2 {
  transition: number;
  changes: ConfChangeSingle[];
  context?: Buffer;
}

// ---------------------------------------------------------------- codecs

export function encodeRaftEntry(entry: RaftEntry): Buffer {
  return encodeModel(EntrySchema, entry, 'raftpb.Entry');
}

export function decodeRaftEntry(buf: Uint8Array, what = 'raftpb.Entry'): RaftEntry {
  return decodeModel(EntrySchema, buf, what, false);
}

export function encodeHardState(hs: HardState): Buffer {
  return encodeModel(HardStateSchema, hs, 'raftpb.HardState');
}

export function decodeHardState(buf: Uint8Array, what = 'raftpb.HardState'): HardState {
  return decodeModel(HardStateSchema, buf, what, false);
}

export function emptyConfState(): ConfState {
  return { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };
}

export function encodeConfState(cs: ConfState): Buffer {
  return encodeModel(ConfStateSchema, cs, 'raftpb.ConfState');
}

export function decodeConfState(buf: Uint8Array, what = 'raftpb.ConfState'): ConfState {
  return decodeModel(ConfStateSchema, buf, what, false);
}

export function encodeConfChange(cc: ConfChange): Buffer {
  return encodeModel(ConfChangeSchema, cc, 'raftpb.ConfChange');
}

export function decodeConfChange(buf: Uint8Array, what = 'raftpb.ConfChange'): ConfChange {
  return decodeModel(ConfChangeSchema, buf, what, false);
}

export function encodeConfChangeV2(cc: ConfChangeV2): Buffer {
  return encodeModel(ConfChangeV2Schema, cc, 'raftpb.ConfChangeV2');
}

export function decodeConfChangeV2(buf: Uint8Array, what = 'raftpb.ConfChangeV2'): ConfChangeV2 {
  return decodeModel(ConfChangeV2Schema, buf, what, false);
}

/** Throws INVALID_ARGUMENT unless the entry's numbers are valid varints; used before writing. */
export function assertRaftEntry(entry: RaftEntry): void {
  for (const [name, v] of [
    ['term', entry.term],
    ['index', entry.index],
    ['type', entry.type],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `raft entry ${name} must be a non-negative integer, got ${v}`,
      );
    }
  }
}
