/**
 * etcd raft's `raftpb` messages that a WAL entry and the raft state files
 * hold, encoded byte for byte as etcd's generated (gogoproto) code writes them.
 *
 * Field numbers (raftpb/raft.proto in etcd-io/raft, proto2):
 *   Entry      Type=1 (enum EntryType), Term=2, Index=3, Data=4 (bytes)
 *   HardState  term=1, vote=2, commit=3
 *   ConfState  voters=1, learners=2, voters_outgoing=3, learners_next=4 (repeated uint64), auto_leave=5 (bool)
 *   ConfChange id=1, type=2, node_id=3, context=4
 *   ConfChangeSingle type=1, node_id=2; ConfChangeV2 transition=1, changes=2, context=3
 *
 * The non-nullable fields are always written, zero or not, in field-number
 * order; Data/context only when present (an empty Data is written as an
 * empty field, an absent one not at all). Repeated uint64 fields are not
 * packed (proto2), but packed input is accepted. Unknown fields are skipped
 * and not kept, as etcd's generated code does.
 */

import { ErrorCodes, WalArchiverError } from '../errors.js';
import { ProtoReader, ProtoWriter, WireType } from './protobuf.js';

export const EntryType = {
  Normal: 0,
  ConfChange: 1,
  ConfChangeV2: 2,
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
  AddNode: 0,
  RemoveNode: 1,
  UpdateNode: 2,
  AddLearnerNode: 3,
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
  Auto: 0,
  JointImplicit: 1,
  JointExplicit: 2,
} as const;

export interface ConfChangeV2 {
  transition: number;
  changes: ConfChangeSingle[];
  context?: Buffer;
}

function reader(buf: Uint8Array, what: string): ProtoReader {
  return new ProtoReader(buf, what);
}

// ---------------------------------------------------------------- Entry

export function encodeRaftEntry(entry: RaftEntry): Buffer {
  const w = new ProtoWriter().uint(1, entry.type).uint(2, entry.term).uint(3, entry.index);
  if (entry.data !== undefined) w.bytes(4, entry.data);
  return w.finish();
}

export function decodeRaftEntry(buf: Uint8Array, what = 'raftpb.Entry'): RaftEntry {
  return readRaftEntry(reader(buf, what));
}

function readRaftEntry(r: ProtoReader): RaftEntry {
  const out: RaftEntry = { term: 0, index: 0, type: EntryType.Normal };
  while (!r.done()) {
    const tag = r.readTag();
    switch (tag.field) {
      case 1:
        r.expect(tag, WireType.VARINT, 'Type');
        out.type = r.readVarint();
        break;
      case 2:
        r.expect(tag, WireType.VARINT, 'Term');
        out.term = r.readVarint();
        break;
      case 3:
        r.expect(tag, WireType.VARINT, 'Index');
        out.index = r.readVarint();
        break;
      case 4:
        r.expect(tag, WireType.LEN, 'Data');
        out.data = r.readBytes();
        break;
      default:
        r.skip(tag);
    }
  }
  return out;
}

// ---------------------------------------------------------------- HardState

export function encodeHardState(hs: HardState): Buffer {
  return new ProtoWriter().uint(1, hs.term).uint(2, hs.vote).uint(3, hs.commit).finish();
}

export function decodeHardState(buf: Uint8Array, what = 'raftpb.HardState'): HardState {
  const r = reader(buf, what);
  const out: HardState = { term: 0, vote: 0, commit: 0 };
  while (!r.done()) {
    const tag = r.readTag();
    switch (tag.field) {
      case 1:
        r.expect(tag, WireType.VARINT, 'term');
        out.term = r.readVarint();
        break;
      case 2:
        r.expect(tag, WireType.VARINT, 'vote');
        out.vote = r.readVarint();
        break;
      case 3:
        r.expect(tag, WireType.VARINT, 'commit');
        out.commit = r.readVarint();
        break;
      default:
        r.skip(tag);
    }
  }
  return out;
}

// ---------------------------------------------------------------- ConfState

export function emptyConfState(): ConfState {
  return { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };
}

export function encodeConfState(cs: ConfState): Buffer {
  const w = new ProtoWriter();
  for (const v of cs.voters) w.uint(1, v);
  for (const v of cs.learners) w.uint(2, v);
  for (const v of cs.votersOutgoing) w.uint(3, v);
  for (const v of cs.learnersNext) w.uint(4, v);
  w.bool(5, cs.autoLeave);
  return w.finish();
}

export function decodeConfState(buf: Uint8Array, what = 'raftpb.ConfState'): ConfState {
  const r = reader(buf, what);
  const out = emptyConfState();
  while (!r.done()) {
    const tag = r.readTag();
    switch (tag.field) {
      case 1:
        r.readRepeatedVarint(tag.wireType, out.voters, tag.offset);
        break;
      case 2:
        r.readRepeatedVarint(tag.wireType, out.learners, tag.offset);
        break;
      case 3:
        r.readRepeatedVarint(tag.wireType, out.votersOutgoing, tag.offset);
        break;
      case 4:
        r.readRepeatedVarint(tag.wireType, out.learnersNext, tag.offset);
        break;
      case 5:
        r.expect(tag, WireType.VARINT, 'auto_leave');
        out.autoLeave = r.readBool();
        break;
      default:
        r.skip(tag);
    }
  }
  return out;
}

// ---------------------------------------------------------------- ConfChange

export function encodeConfChange(cc: ConfChange): Buffer {
  const w = new ProtoWriter().uint(1, cc.id).uint(2, cc.type).uint(3, cc.nodeId);
  if (cc.context !== undefined) w.bytes(4, cc.context);
  return w.finish();
}

export function decodeConfChange(buf: Uint8Array, what = 'raftpb.ConfChange'): ConfChange {
  const r = reader(buf, what);
  const out: ConfChange = { id: 0, type: ConfChangeType.AddNode, nodeId: 0 };
  while (!r.done()) {
    const tag = r.readTag();
    switch (tag.field) {
      case 1:
        r.expect(tag, WireType.VARINT, 'id');
        out.id = r.readVarint();
        break;
      case 2:
        r.expect(tag, WireType.VARINT, 'type');
        out.type = r.readVarint();
        break;
      case 3:
        r.expect(tag, WireType.VARINT, 'node_id');
        out.nodeId = r.readVarint();
        break;
      case 4:
        r.expect(tag, WireType.LEN, 'context');
        out.context = r.readBytes();
        break;
      default:
        r.skip(tag);
    }
  }
  return out;
}

function writeConfChangeSingle(w: ProtoWriter, c: ConfChangeSingle): void {
  w.uint(1, c.type).uint(2, c.nodeId);
}

export function encodeConfChangeV2(cc: ConfChangeV2): Buffer {
  const w = new ProtoWriter().uint(1, cc.transition);
  for (const c of cc.changes) w.message(2, (m) => writeConfChangeSingle(m, c));
  if (cc.context !== undefined) w.bytes(3, cc.context);
  return w.finish();
}

function readConfChangeSingle(r: ProtoReader): ConfChangeSingle {
  const out: ConfChangeSingle = { type: ConfChangeType.AddNode, nodeId: 0 };
  while (!r.done()) {
    const tag = r.readTag();
    switch (tag.field) {
      case 1:
        r.expect(tag, WireType.VARINT, 'type');
        out.type = r.readVarint();
        break;
      case 2:
        r.expect(tag, WireType.VARINT, 'node_id');
        out.nodeId = r.readVarint();
        break;
      default:
        r.skip(tag);
    }
  }
  return out;
}

export function decodeConfChangeV2(buf: Uint8Array, what = 'raftpb.ConfChangeV2'): ConfChangeV2 {
  const r = reader(buf, what);
  const out: ConfChangeV2 = { transition: ConfChangeTransition.Auto, changes: [] };
  while (!r.done()) {
    const tag = r.readTag();
    switch (tag.field) {
      case 1:
        r.expect(tag, WireType.VARINT, 'transition');
        out.transition = r.readVarint();
        break;
      case 2:
        r.expect(tag, WireType.LEN, 'changes');
        out.changes.push(readConfChangeSingle(r.readMessage(`${r.what}.changes`)));
        break;
      case 3:
        r.expect(tag, WireType.LEN, 'context');
        out.context = r.readBytes();
        break;
      default:
        r.skip(tag);
    }
  }
  return out;
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
