import { ErrorCodes, WalArchiverError } from '../contract/errors.js';
import type { RaftRole, WalLeadershipEvent } from '../contract/events/schemas.js';
import { safeRelativePath } from '../contract/state/apply.js';
import {
  newLogEntry,
  operation,
  referenceChange,
  type LogEntry,
  type Operation,
} from '../contract/wal/log-entry.js';
import { stagedFileName } from '../contract/wal/lsn.js';

/**
 * The storage node's HTTP API (JSON unless said otherwise):
 *
 *   POST /v1/partitions/{id}/transactions   a write; body TransactionRequest → TransactionResponse
 *        on a follower: 421 {error, leader, leaderUrl} — retry against leaderUrl
 *   GET  /v1/partitions                      [PartitionStatus]
 *   GET  /v1/partitions/{id}                 PartitionStatus
 *   GET  /v1/partitions/{id}/snapshot        application/x-tar of the applied state (`kv-state`, `fs/…`)
 *                                            at one LSN, given in the X-Snapshot-LSN and X-Snapshot-Term headers;
 *                                            X-Snapshot-Max-Committed-At (ISO 8601), when the node can bound
 *                                            them, is at least the greatest commit time of the entries up to it
 *   GET  /v1/leadership/stream               application/x-ndjson: one PartitionStatus per partition,
 *                                            then one LeadershipChange per change, until closed
 *   GET  /metrics                            Prometheus text
 *   GET  /healthz                            200 once the node serves
 *   POST /v1/raft/messages                   node-to-node Raft messages (binary, see transport.ts)
 *   POST /v1/raft/snapshot                   node-to-node snapshot transfer (tar body)
 *
 * Errors are `{error: "<one line>", code: "<ErrorCode>"}` with a 4xx/5xx status.
 */

export interface TransactionRequest {
  /** The repository the transaction changes (Gitaly's relative path), e.g. `@hashed/ab/cd/abcd.git`. */
  relativePath?: string;
  /** Files to stage in the entry, base64; they become `1`, `2`, … in order. */
  files?: string[];
  operations?: OperationRequest[];
  /** Reference changes; an all-zero newOid deletes the reference. */
  references?: Array<{ name: string; newOid?: string; newTarget?: string }>;
}

export type OperationRequest =
  | { createDirectory: { path: string; mode?: number } }
  | { createHardLink: { source: string; destination: string; sourceInStorage?: boolean } }
  | { removeDirectoryEntry: { path: string } }
  | { setKey: { key: string; value: string } }
  | { deleteKey: { key: string } };

export interface TransactionResponse {
  partition: string;
  lsn: number;
  term: number;
  committedAt: string;
}

export interface PartitionStatus {
  partition: string;
  node: number;
  role: RaftRole;
  term: number;
  /** Leader node id, 0 when unknown. */
  leader: number;
  leaderUrl?: string;
  committed: number;
  applied: number;
  appended: number;
  /** Lowest LSN still in the WAL (0 when empty). */
  firstLsn: number;
  /** What the sidecar reported archived (archiver/position), when the file exists. */
  archived?: number;
  /** Set when the partition stopped on an error (corrupt WAL …). */
  error?: string;
}

/**
 * A leadership change as the node streams it and publishes it on
 * `wal.leadership` (with `schema: 1`): the event the sidecar parses
 * (`WalLeadershipEvent`, one definition), with 0 for "no leader".
 */
export type LeadershipChange = Omit<WalLeadershipEvent, 'schema' | 'leader'> & {
  /** The leader's node ID, 0 when there is none. */
  leader: number;
};

export const MAX_TRANSACTION_BYTES = 256 * 1024 * 1024;
const OID = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

function bad(message: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, message, { retryable: false });
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw bad(`${what} must be a non-empty string`);
  return v;
}

function path(v: unknown, what: string): string {
  const p = str(v, what);
  try {
    return safeRelativePath(p, 0, what);
  } catch {
    throw bad(`${what} "${p}" must be a relative path without "." or ".." segments`);
  }
}

function b64(v: unknown, what: string): Buffer {
  const s = typeof v === 'string' ? v : undefined;
  if (s === undefined || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw bad(`${what} must be base64`);
  return Buffer.from(s, 'base64');
}

/**
 * Validates a transaction request and turns it into the entry's MANIFEST and
 * staged files. Everything a client can send is checked here, before it is
 * proposed, so a committed entry never fails to apply for bad input.
 */
export function buildTransaction(body: unknown): {
  manifest: LogEntry;
  files: Array<{ name: string; data: Buffer }>;
} {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw bad('request body must be a JSON object');
  const req = body as Record<string, unknown>;
  for (const key of Object.keys(req)) {
    if (!['relativePath', 'files', 'operations', 'references'].includes(key))
      throw bad(`unknown field "${key}"`);
  }
  const relativePath = req.relativePath === undefined ? '' : path(req.relativePath, 'relativePath');
  const rawFiles = req.files ?? [];
  if (!Array.isArray(rawFiles)) throw bad('files must be an array of base64 strings');
  const files = rawFiles.map((f, i) => ({ name: stagedFileName(i + 1), data: b64(f, `files[${i}]`) }));
  const staged = new Set(files.map((f) => f.name));

  const rawOps = req.operations ?? [];
  if (!Array.isArray(rawOps)) throw bad('operations must be an array');
  const operations: Operation[] = rawOps.map((raw, i) => {
    const what = `operations[${i}]`;
    if (typeof raw !== 'object' || raw === null || Object.keys(raw).length !== 1) {
      throw bad(`${what} must be an object with exactly one operation`);
    }
    const [kind, args] = Object.entries(raw as Record<string, unknown>)[0]!;
    const a = (typeof args === 'object' && args !== null ? args : {}) as Record<string, unknown>;
    switch (kind) {
      case 'createDirectory': {
        const mode = a.mode === undefined ? 0o755 : a.mode;
        if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
          throw bad(`${what}.mode must be a file mode`);
        }
        return operation.createDirectory(path(a.path, `${what}.path`), mode);
      }
      case 'createHardLink': {
        const inStorage = a.sourceInStorage === true;
        const source = path(a.source, `${what}.source`);
        if (!inStorage && !staged.has(source)) throw bad(`${what}.source "${source}" is not a staged file`);
        return operation.createHardLink(source, path(a.destination, `${what}.destination`), inStorage);
      }
      case 'removeDirectoryEntry':
        return operation.removeDirectoryEntry(path(a.path, `${what}.path`));
      case 'setKey':
        return operation.setKey(b64(a.key, `${what}.key`), b64(a.value, `${what}.value`));
      case 'deleteKey':
        return operation.deleteKey(b64(a.key, `${what}.key`));
      default:
        throw bad(`${what}: unknown operation "${kind}"`);
    }
  });

  const rawRefs = req.references ?? [];
  if (!Array.isArray(rawRefs)) throw bad('references must be an array');
  if (rawRefs.length > 0 && !relativePath) throw bad('references need a relativePath');
  const changes = rawRefs.map((raw, i) => {
    const what = `references[${i}]`;
    const r = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>;
    const name = path(r.name, `${what}.name`);
    if (name !== 'HEAD' && !name.startsWith('refs/'))
      throw bad(`${what}.name must be HEAD or start with refs/`);
    if (r.newTarget !== undefined) return referenceChange(name, '', path(r.newTarget, `${what}.newTarget`));
    const oid = str(r.newOid, `${what}.newOid`);
    if (!OID.test(oid)) throw bad(`${what}.newOid must be a hex object ID`);
    return referenceChange(name, oid);
  });
  const manifest = newLogEntry({
    relativePath,
    operations,
    referenceTransactions: changes.length > 0 ? [{ changes }] : [],
  });
  return { manifest, files };
}
