/**
 * Gitaly's `LogEntry` (package gitaly, proto3): the MANIFEST of a WAL entry.
 * The schema is contract/proto/gitaly/log.proto; the code that reads and
 * writes it is generated (contract/proto/gen/gitaly/). This file is the
 * project's model of the message, its builders and the codec's entry points.
 *
 * Encoding follows the Go protobuf runtime: fields in field-number order,
 * proto3 zero values left out, a set message field written even when empty,
 * unknown fields last. Decoding keeps the unknown fields of every modelled
 * message (a newer writer's additions, or fields of older schema versions
 * this code does not model) and writes them back on encode, so decode then
 * encode gives back the bytes Gitaly wrote. A message field that occurs
 * twice is merged, as the protobuf spec says.
 */

import { modelCodec } from '../proto/codec.js';
import { LogEntrySchema } from '../proto/gen/gitaly/log_pb.js';

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

// ---------------------------------------------------------------- codec

const codec = modelCodec<LogEntry>(LogEntrySchema, 'LogEntry', true);

/** Encodes a MANIFEST. */
export const encodeLogEntry = codec.encode;

/** Decodes a MANIFEST. Bad framing is WalArchiverError CORRUPT naming `what` and the byte offset. */
export const decodeLogEntry = codec.decode;
