/**
 * Gitaly's `LogEntry` (proto/log.proto, package gitaly, proto3): the MANIFEST
 * of a WAL entry.
 *
 * Field numbers:
 *   LogEntry
 *     relative_path           1  string
 *     reference_transactions  2  repeated ReferenceTransaction
 *       ReferenceTransaction.changes 1 repeated Change
 *         Change: reference_name 1 bytes, new_oid 2 bytes, new_target 3 bytes
 *     repository_deletion     6  RepositoryDeletion {}
 *     housekeeping            9  Housekeeping { pack_refs 1: PackRefs { pruned_refs 1 repeated bytes } }
 *     operations             10  repeated Operation, oneof operation:
 *       create_hard_link        1  { source_path 1 bytes, source_in_storage 2 bool, destination_path 3 bytes }
 *       remove_directory_entry  2  { path 1 bytes }
 *       create_directory        3  { path 1 bytes, mode 2 uint32 }
 *       set_key                 4  { key 1 bytes, value 2 bytes }
 *       delete_key              5  { key 1 bytes }
 *     metadata               11  Metadata { raft_term 1 uint64, raft_type 2 uint64 }
 *
 * Encoding follows the Go protobuf runtime: fields in field-number order,
 * proto3 zero values left out, a set message field written even when empty,
 * unknown fields last. Decoding keeps the unknown fields of every modelled
 * message (a newer writer's additions, or fields of older schema versions
 * this code does not model) and writes them back on encode, so decode then
 * encode gives back the bytes Gitaly wrote. A message field that occurs
 * twice is merged, as the protobuf spec says.
 */

import { ProtoReader, ProtoWriter, WireType } from './protobuf.js';

export interface ReferenceChange {
  /** Fully qualified reference name, e.g. `refs/heads/main`. */
  referenceName: Buffer;
  /** New object ID (hex text); the zero OID denotes a deletion. */
  newOid: Buffer;
  /** New target of a symbolic reference (e.g. for HEAD); empty otherwise. */
  newTarget: Buffer;
  unknownFields?: Buffer;
}

export interface ReferenceTransaction {
  changes: ReferenceChange[];
  unknownFields?: Buffer;
}

export interface RepositoryDeletion {
  unknownFields?: Buffer;
}

export interface PackRefs {
  prunedRefs: Buffer[];
  unknownFields?: Buffer;
}

export interface Housekeeping {
  packRefs?: PackRefs;
  unknownFields?: Buffer;
}

export interface LogEntryMetadata {
  raftTerm: number;
  raftType: number;
  unknownFields?: Buffer;
}

interface OperationBase {
  /** Unknown fields of the Operation message itself, e.g. a oneof case added by a newer writer. */
  operationUnknownFields?: Buffer;
}

export interface CreateHardLinkOperation extends OperationBase {
  kind: 'createHardLink';
  sourcePath: Buffer;
  sourceInStorage: boolean;
  destinationPath: Buffer;
  unknownFields?: Buffer;
}

export interface RemoveDirectoryEntryOperation extends OperationBase {
  kind: 'removeDirectoryEntry';
  path: Buffer;
  unknownFields?: Buffer;
}

export interface CreateDirectoryOperation extends OperationBase {
  kind: 'createDirectory';
  path: Buffer;
  mode: number;
  unknownFields?: Buffer;
}

export interface SetKeyOperation extends OperationBase {
  kind: 'setKey';
  key: Buffer;
  value: Buffer;
  unknownFields?: Buffer;
}

export interface DeleteKeyOperation extends OperationBase {
  kind: 'deleteKey';
  key: Buffer;
  unknownFields?: Buffer;
}

/** An Operation with no oneof case this code knows (its content, if any, is in operationUnknownFields). */
export interface UnknownOperation extends OperationBase {
  kind: 'unknown';
}

export type Operation =
  | CreateHardLinkOperation
  | RemoveDirectoryEntryOperation
  | CreateDirectoryOperation
  | SetKeyOperation
  | DeleteKeyOperation
  | UnknownOperation;

export interface LogEntry {
  relativePath: string;
  referenceTransactions: ReferenceTransaction[];
  repositoryDeletion?: RepositoryDeletion;
  housekeeping?: Housekeeping;
  operations: Operation[];
  metadata?: LogEntryMetadata;
  unknownFields?: Buffer;
}

// ---------------------------------------------------------------- builders

type BytesLike = Uint8Array | string;

function toBuffer(value: BytesLike): Buffer {
  return typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value);
}

/** An empty LogEntry, optionally with fields set. */
export function newLogEntry(fields: Partial<LogEntry> = {}): LogEntry {
  return { relativePath: '', referenceTransactions: [], operations: [], ...fields };
}

export function referenceChange(
  name: BytesLike,
  newOid: BytesLike,
  newTarget: BytesLike = '',
): ReferenceChange {
  return { referenceName: toBuffer(name), newOid: toBuffer(newOid), newTarget: toBuffer(newTarget) };
}

export const operation = {
  createHardLink(
    sourcePath: BytesLike,
    destinationPath: BytesLike,
    sourceInStorage = false,
  ): CreateHardLinkOperation {
    return {
      kind: 'createHardLink',
      sourcePath: toBuffer(sourcePath),
      sourceInStorage,
      destinationPath: toBuffer(destinationPath),
    };
  },
  removeDirectoryEntry(path: BytesLike): RemoveDirectoryEntryOperation {
    return { kind: 'removeDirectoryEntry', path: toBuffer(path) };
  },
  createDirectory(path: BytesLike, mode: number): CreateDirectoryOperation {
    return { kind: 'createDirectory', path: toBuffer(path), mode };
  },
  setKey(key: BytesLike, value: BytesLike): SetKeyOperation {
    return { kind: 'setKey', key: toBuffer(key), value: toBuffer(value) };
  },
  deleteKey(key: BytesLike): DeleteKeyOperation {
    return { kind: 'deleteKey', key: toBuffer(key) };
  },
};

/** The reference changes of an entry as text, in order (what `wal.entries` events report). */
export function listReferenceChanges(
  entry: LogEntry,
): Array<{ name: string; newOid: string; newTarget?: string }> {
  const out: Array<{ name: string; newOid: string; newTarget?: string }> = [];
  for (const tx of entry.referenceTransactions) {
    for (const c of tx.changes) {
      const item: { name: string; newOid: string; newTarget?: string } = {
        name: c.referenceName.toString('utf8'),
        newOid: c.newOid.toString('utf8'),
      };
      if (c.newTarget.length > 0) item.newTarget = c.newTarget.toString('utf8');
      out.push(item);
    }
  }
  return out;
}

// ---------------------------------------------------------------- encoding

function optBytes(w: ProtoWriter, field: number, value: Uint8Array): void {
  if (value.length > 0) w.bytes(field, value);
}

function optUint(w: ProtoWriter, field: number, value: number): void {
  if (value !== 0) w.uint(field, value);
}

function unknown(w: ProtoWriter, raw: Uint8Array | undefined): void {
  if (raw !== undefined) w.raw(raw);
}

function writeChange(w: ProtoWriter, c: ReferenceChange): void {
  optBytes(w, 1, c.referenceName);
  optBytes(w, 2, c.newOid);
  optBytes(w, 3, c.newTarget);
  unknown(w, c.unknownFields);
}

function writeOperation(w: ProtoWriter, op: Operation): void {
  switch (op.kind) {
    case 'createHardLink':
      w.message(1, (m) => {
        optBytes(m, 1, op.sourcePath);
        if (op.sourceInStorage) m.bool(2, true);
        optBytes(m, 3, op.destinationPath);
        unknown(m, op.unknownFields);
      });
      break;
    case 'removeDirectoryEntry':
      w.message(2, (m) => {
        optBytes(m, 1, op.path);
        unknown(m, op.unknownFields);
      });
      break;
    case 'createDirectory':
      w.message(3, (m) => {
        optBytes(m, 1, op.path);
        if (op.mode !== 0) m.uint32(2, op.mode);
        unknown(m, op.unknownFields);
      });
      break;
    case 'setKey':
      w.message(4, (m) => {
        optBytes(m, 1, op.key);
        optBytes(m, 2, op.value);
        unknown(m, op.unknownFields);
      });
      break;
    case 'deleteKey':
      w.message(5, (m) => {
        optBytes(m, 1, op.key);
        unknown(m, op.unknownFields);
      });
      break;
    case 'unknown':
      break;
  }
  unknown(w, op.operationUnknownFields);
}

export function encodeLogEntry(entry: LogEntry): Buffer {
  const w = new ProtoWriter();
  if (entry.relativePath.length > 0) w.string(1, entry.relativePath);
  for (const tx of entry.referenceTransactions) {
    w.message(2, (m) => {
      for (const c of tx.changes) m.message(1, (cm) => writeChange(cm, c));
      unknown(m, tx.unknownFields);
    });
  }
  const deletion = entry.repositoryDeletion;
  if (deletion !== undefined) w.message(6, (m) => unknown(m, deletion.unknownFields));
  const hk = entry.housekeeping;
  if (hk !== undefined) {
    w.message(9, (m) => {
      const packRefs = hk.packRefs;
      if (packRefs !== undefined) {
        m.message(1, (pm) => {
          for (const ref of packRefs.prunedRefs) pm.bytes(1, ref);
          unknown(pm, packRefs.unknownFields);
        });
      }
      unknown(m, hk.unknownFields);
    });
  }
  for (const op of entry.operations) w.message(10, (m) => writeOperation(m, op));
  const md = entry.metadata;
  if (md !== undefined) {
    w.message(11, (m) => {
      optUint(m, 1, md.raftTerm);
      optUint(m, 2, md.raftType);
      unknown(m, md.unknownFields);
    });
  }
  unknown(w, entry.unknownFields);
  return w.finish();
}

// ---------------------------------------------------------------- decoding

/** Collects the raw bytes of unknown fields of one message. */
class UnknownFields {
  private parts: Uint8Array[] = [];
  add(raw: Uint8Array): void {
    this.parts.push(raw);
  }
  /** Appends to what `existing` already holds (for merged messages). */
  result(existing: Buffer | undefined): Buffer | undefined {
    if (this.parts.length === 0) return existing;
    return Buffer.concat(existing === undefined ? this.parts : [existing, ...this.parts]);
  }
}

function readChange(r: ProtoReader): ReferenceChange {
  const out: ReferenceChange = {
    referenceName: Buffer.alloc(0),
    newOid: Buffer.alloc(0),
    newTarget: Buffer.alloc(0),
  };
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    if (tag.field === 1) {
      r.expect(tag, WireType.LEN, 'reference_name');
      out.referenceName = r.readBytes();
    } else if (tag.field === 2) {
      r.expect(tag, WireType.LEN, 'new_oid');
      out.newOid = r.readBytes();
    } else if (tag.field === 3) {
      r.expect(tag, WireType.LEN, 'new_target');
      out.newTarget = r.readBytes();
    } else unk.add(r.skipRaw(tag));
  }
  const u = unk.result(undefined);
  if (u !== undefined) out.unknownFields = u;
  return out;
}

function readReferenceTransaction(r: ProtoReader): ReferenceTransaction {
  const out: ReferenceTransaction = { changes: [] };
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    if (tag.field === 1) {
      r.expect(tag, WireType.LEN, 'changes');
      out.changes.push(readChange(r.readMessage('LogEntry.ReferenceTransaction.Change')));
    } else unk.add(r.skipRaw(tag));
  }
  const u = unk.result(undefined);
  if (u !== undefined) out.unknownFields = u;
  return out;
}

/** Reads a message that only keeps unknown fields (RepositoryDeletion) into `into`. */
function readOpaque(r: ProtoReader, into: { unknownFields?: Buffer }): void {
  const unk = new UnknownFields();
  while (!r.done()) unk.add(r.skipRaw(r.readTag()));
  const u = unk.result(into.unknownFields);
  if (u !== undefined) into.unknownFields = u;
}

function readPackRefs(r: ProtoReader, into: PackRefs): void {
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    if (tag.field === 1) {
      r.expect(tag, WireType.LEN, 'pruned_refs');
      into.prunedRefs.push(r.readBytes());
    } else unk.add(r.skipRaw(tag));
  }
  const u = unk.result(into.unknownFields);
  if (u !== undefined) into.unknownFields = u;
}

function readHousekeeping(r: ProtoReader, into: Housekeeping): void {
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    if (tag.field === 1) {
      r.expect(tag, WireType.LEN, 'pack_refs');
      into.packRefs ??= { prunedRefs: [] };
      readPackRefs(r.readMessage('LogEntry.Housekeeping.PackRefs'), into.packRefs);
    } else unk.add(r.skipRaw(tag));
  }
  const u = unk.result(into.unknownFields);
  if (u !== undefined) into.unknownFields = u;
}

function readMetadata(r: ProtoReader, into: LogEntryMetadata): void {
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    if (tag.field === 1) {
      r.expect(tag, WireType.VARINT, 'raft_term');
      into.raftTerm = r.readVarint();
    } else if (tag.field === 2) {
      r.expect(tag, WireType.VARINT, 'raft_type');
      into.raftType = r.readVarint();
    } else unk.add(r.skipRaw(tag));
  }
  const u = unk.result(into.unknownFields);
  if (u !== undefined) into.unknownFields = u;
}

const OPERATION_KINDS = [
  'createHardLink',
  'removeDirectoryEntry',
  'createDirectory',
  'setKey',
  'deleteKey',
] as const;
type KnownKind = (typeof OPERATION_KINDS)[number];
const OPERATION_NAMES: Record<KnownKind, string> = {
  createHardLink: 'CreateHardLink',
  removeDirectoryEntry: 'RemoveDirectoryEntry',
  createDirectory: 'CreateDirectory',
  setKey: 'SetKey',
  deleteKey: 'DeleteKey',
};

function emptyOperation(kind: KnownKind): Operation {
  const empty = Buffer.alloc(0);
  switch (kind) {
    case 'createHardLink':
      return { kind, sourcePath: empty, sourceInStorage: false, destinationPath: empty };
    case 'removeDirectoryEntry':
      return { kind, path: empty };
    case 'createDirectory':
      return { kind, path: empty, mode: 0 };
    case 'setKey':
      return { kind, key: empty, value: empty };
    case 'deleteKey':
      return { kind, key: empty };
  }
}

/** Reads one oneof case's message into `op` (which already has that kind). */
function readOperationCase(r: ProtoReader, op: Exclude<Operation, UnknownOperation>): void {
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    const f = tag.field;
    if (op.kind === 'createHardLink' && f === 1) {
      r.expect(tag, WireType.LEN, 'source_path');
      op.sourcePath = r.readBytes();
    } else if (op.kind === 'createHardLink' && f === 2) {
      r.expect(tag, WireType.VARINT, 'source_in_storage');
      op.sourceInStorage = r.readBool();
    } else if (op.kind === 'createHardLink' && f === 3) {
      r.expect(tag, WireType.LEN, 'destination_path');
      op.destinationPath = r.readBytes();
    } else if ((op.kind === 'removeDirectoryEntry' || op.kind === 'createDirectory') && f === 1) {
      r.expect(tag, WireType.LEN, 'path');
      op.path = r.readBytes();
    } else if (op.kind === 'createDirectory' && f === 2) {
      r.expect(tag, WireType.VARINT, 'mode');
      op.mode = r.readUint32();
    } else if ((op.kind === 'setKey' || op.kind === 'deleteKey') && f === 1) {
      r.expect(tag, WireType.LEN, 'key');
      op.key = r.readBytes();
    } else if (op.kind === 'setKey' && f === 2) {
      r.expect(tag, WireType.LEN, 'value');
      op.value = r.readBytes();
    } else unk.add(r.skipRaw(tag));
  }
  const u = unk.result(op.unknownFields);
  if (u !== undefined) op.unknownFields = u;
}

function readOperation(r: ProtoReader): Operation {
  let op: Operation = { kind: 'unknown' };
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    const kind =
      tag.field >= 1 && tag.field <= OPERATION_KINDS.length ? OPERATION_KINDS[tag.field - 1] : undefined;
    if (kind === undefined) {
      unk.add(r.skipRaw(tag));
      continue;
    }
    r.expect(tag, WireType.LEN, kind);
    // A oneof case replaces a different one and merges into the same one.
    if (op.kind !== kind) op = emptyOperation(kind);
    readOperationCase(
      r.readMessage(`LogEntry.Operation.${OPERATION_NAMES[kind]}`),
      op as Exclude<Operation, UnknownOperation>,
    );
  }
  const u = unk.result(undefined);
  if (u !== undefined) op.operationUnknownFields = u;
  return op;
}

/** Decodes a MANIFEST. Bad framing is WalArchiverError CORRUPT naming `what` and the byte offset. */
export function decodeLogEntry(buf: Uint8Array, what = 'LogEntry'): LogEntry {
  const r = new ProtoReader(buf, what);
  const out = newLogEntry();
  const unk = new UnknownFields();
  while (!r.done()) {
    const tag = r.readTag();
    switch (tag.field) {
      case 1:
        r.expect(tag, WireType.LEN, 'relative_path');
        out.relativePath = r.readString();
        break;
      case 2:
        r.expect(tag, WireType.LEN, 'reference_transactions');
        out.referenceTransactions.push(
          readReferenceTransaction(r.readMessage(`${what}.ReferenceTransaction`)),
        );
        break;
      case 6:
        r.expect(tag, WireType.LEN, 'repository_deletion');
        out.repositoryDeletion ??= {};
        readOpaque(r.readMessage(`${what}.RepositoryDeletion`), out.repositoryDeletion);
        break;
      case 9:
        r.expect(tag, WireType.LEN, 'housekeeping');
        out.housekeeping ??= {};
        readHousekeeping(r.readMessage(`${what}.Housekeeping`), out.housekeeping);
        break;
      case 10:
        r.expect(tag, WireType.LEN, 'operations');
        out.operations.push(readOperation(r.readMessage(`${what}.Operation`)));
        break;
      case 11:
        r.expect(tag, WireType.LEN, 'metadata');
        out.metadata ??= { raftTerm: 0, raftType: 0 };
        readMetadata(r.readMessage(`${what}.Metadata`), out.metadata);
        break;
      default:
        unk.add(r.skipRaw(tag));
    }
  }
  const u = unk.result(undefined);
  if (u !== undefined) out.unknownFields = u;
  return out;
}
