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

import { modelCodec } from '../proto/codec.js';
import {
  ConfChangeSchema,
  ConfChangeTransition as PbConfChangeTransition,
  ConfChangeType as PbConfChangeType,
  ConfChangeV2Schema,
  ConfStateSchema,
  EntrySchema,
  EntryType as PbEntryType,
  HardStateSchema,
} from '../proto/gen/raftpb/raft_pb.js';
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

const entryCodec = modelCodec<RaftEntry>(EntrySchema, 'raftpb.Entry', false);
const hardStateCodec = modelCodec<HardState>(HardStateSchema, 'raftpb.HardState', false);
const confStateCodec = modelCodec<ConfState>(ConfStateSchema, 'raftpb.ConfState', false);
const confChangeCodec = modelCodec<ConfChange>(ConfChangeSchema, 'raftpb.ConfChange', false);
const confChangeV2Codec = modelCodec<ConfChangeV2>(ConfChangeV2Schema, 'raftpb.ConfChangeV2', false);

export const encodeRaftEntry = entryCodec.encode;
export const decodeRaftEntry = entryCodec.decode;
export const encodeHardState = hardStateCodec.encode;
export const decodeHardState = hardStateCodec.decode;
export const encodeConfState = confStateCodec.encode;
export const decodeConfState = confStateCodec.decode;
export const encodeConfChange = confChangeCodec.encode;
export const decodeConfChange = confChangeCodec.decode;
export const encodeConfChangeV2 = confChangeV2Codec.encode;
export const decodeConfChangeV2 = confChangeV2Codec.decode;

export function emptyConfState(): ConfState {
  return { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };
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
