import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { CompressStream } from 'zstd-napi';
import { HashingStream } from '../archive/hashing-stream.js';
import { DEFAULT_ZSTD_LEVEL } from '../archive/segment-writer.js';
import * as dfs from '../../contract/fs/durable-fs.js';
import { describeError, ErrorCodes, isWalArchiverError, WalArchiverError } from '../../contract/errors.js';
import { unreachable } from '../node/http-node.js';
import type { StorageNode } from '../node/storage-node.js';
import { TarCheck } from './tar-check.js';
import { packState } from '../../contract/state/snapshot.js';

/** A node's snapshot of a partition, checked, compressed and spooled to a local file. */
export interface Spooled {
  path: string;
  lsn: number;
  bytes: number;
  rawBytes: number;
  sha256: string;
  /** From X-Snapshot-Max-Committed-At: at least the greatest commit time of the entries up to `lsn`. */
  maxCommittedAt?: string;
}

/** What spooling needs of a base backup's options. */
export interface SnapshotSource {
  storageNode: StorageNode;
  partition: string;
  signal?: AbortSignal;
  zstdLevel?: number;
}

/** Streams the node's snapshot through the tar check and zstd into a spool file. */
export async function spoolSnapshot(o: SnapshotSource, spoolDir: string): Promise<Spooled> {
  const snap = await o.storageNode.snapshot(o.partition, o.signal);
  const { lsn } = snap;
  const path = join(spoolDir, `base-${o.partition}-${lsn}-${randomBytes(6).toString('hex')}.tar.zst`);
  const raw = new HashingStream();
  const compressed = new HashingStream();
  // A local write error is the spool's (a full or read-only disk), not the node's: say so.
  const spoolFailed = (err: unknown) => {
    void snap.cancel();
    return new WalArchiverError(
      ErrorCodes.UNAVAILABLE,
      `base backup of partition ${o.partition}: cannot write the spool ${path}: ${describeError(err)}`,
      { cause: err, retryable: true, details: { partition: o.partition, lsn, spool: spoolDir } },
    );
  };
  let file: ReturnType<typeof dfs.createWriteStream>;
  let spoolError: unknown;
  try {
    await dfs.mkdir(spoolDir, { recursive: true });
    file = dfs.createWriteStream(path, { flags: 'wx' });
  } catch (err) {
    throw spoolFailed(err);
  }
  file.once('error', (err) => (spoolError ??= err));
  try {
    await pipeline(
      snap.body,
      new TarCheck(`snapshot of partition ${o.partition} at LSN ${lsn} from ${o.storageNode.url}`),
      raw,
      new CompressStream({ compressionLevel: o.zstdLevel ?? DEFAULT_ZSTD_LEVEL, checksumFlag: true }),
      compressed,
      file,
      { signal: o.signal },
    );
  } catch (err) {
    // The file may still be opening when the pipeline fails: remove it once it is closed.
    if (!file.closed) await new Promise<void>((resolve) => file.once('close', () => resolve()));
    await dfs.rm(path, { force: true });
    if (isWalArchiverError(err)) throw err;
    if (spoolError !== undefined && err === spoolError && !o.signal?.aborted) throw spoolFailed(err);
    throw unreachable(`${o.storageNode.url} (snapshot of partition ${o.partition})`, err, o.signal);
  }
  return {
    path,
    lsn,
    bytes: compressed.bytes,
    rawBytes: raw.bytes,
    sha256: compressed.hash.digest('hex'),
    ...(snap.maxCommittedAt !== undefined ? { maxCommittedAt: snap.maxCommittedAt } : {}),
  };
}

/**
 * Packs a local state folder (a restored partition's state at `lsn`, which
 * nothing changes meanwhile) as the node packs its snapshots, and spools it
 * like one: the same tar, so the same base backup the node would serve.
 */
export async function spoolLocalState(
  o: {
    stateDir: string;
    partition: string;
    lsn: number;
    maxCommittedAt?: string;
    zstdLevel?: number;
    signal?: AbortSignal;
  },
  spoolDir: string,
): Promise<Spooled> {
  const path = join(spoolDir, `base-${o.partition}-${o.lsn}-${randomBytes(6).toString('hex')}.tar.zst`);
  const raw = new HashingStream();
  const compressed = new HashingStream();
  try {
    await dfs.mkdir(spoolDir, { recursive: true });
    await pipeline(
      packState(o.stateDir),
      raw,
      new CompressStream({ compressionLevel: o.zstdLevel ?? DEFAULT_ZSTD_LEVEL, checksumFlag: true }),
      compressed,
      dfs.createWriteStream(path, { flags: 'wx' }),
      ...(o.signal ? [{ signal: o.signal }] : []),
    );
  } catch (err) {
    await dfs.rm(path, { force: true });
    if (isWalArchiverError(err)) throw err;
    throw new WalArchiverError(
      ErrorCodes.UNAVAILABLE,
      `base backup of partition ${o.partition} from ${o.stateDir}: ${describeError(err)}`,
      { cause: err, retryable: true, details: { partition: o.partition, lsn: o.lsn } },
    );
  }
  return {
    path,
    lsn: o.lsn,
    bytes: compressed.bytes,
    rawBytes: raw.bytes,
    sha256: compressed.hash.digest('hex'),
    ...(o.maxCommittedAt !== undefined ? { maxCommittedAt: o.maxCommittedAt } : {}),
  };
}
