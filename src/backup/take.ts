import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import tar from 'tar-stream';
import { CompressStream, DecompressStream } from 'zstd-napi';
import * as dfs from '../durable-fs.js';
import { ErrorCodes, WalArchiverError, describeError, isWalArchiverError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { baseBackupKey } from '../manifest/keys.js';
import {
  updatePartitionManifest,
  type BackupRecord,
  type PartitionManifest,
  type PartitionManifestOptions,
} from '../manifest/partition-manifest.js';
import type { BackupTrigger, WalBackupEvent } from '../schemas.js';
import { MetadataKeys, type ObjectStore, type Retention } from '../store/object-store.js';
import { HashingStream } from '../archive/hashing-stream.js';
import { DEFAULT_ZSTD_LEVEL } from '../archive/segment-writer.js';

/**
 * Taking one base backup of a partition:
 *
 *   GET <node>/v1/partitions/<id>/snapshot   (tar of the applied state at X-Snapshot-LSN)
 *     → tar framing checked as it streams (a cut or truncated archive fails here)
 *     → zstd → SHA-256 → spool file
 *     → conditional create of partitions/<id>/base/<LSN>.tar.zst, metadata
 *       {sha256, first-lsn = last-lsn = LSN, partition}, retention when configured
 *     → partition manifest (CAS, term-fenced): the backup record
 *     → the `wal.backups` event value, for the caller to publish
 *
 * Why a spool file and not a streaming upload with a companion checksum
 * object: the object's SHA-256 must be in its own metadata (Contract 2, and
 * what restore and verify check), and S3 takes metadata only when an upload
 * starts; S3's additional checksums give a full-object SHA-256 only for
 * single-part uploads (multipart gets a checksum of part checksums). A
 * companion `<LSN>.tar.zst.sha256` object would be a second object for
 * retention, WORM and verify to keep in step with the first, and a crash
 * between the two leaves a backup without its checksum. Spooling costs local
 * disk equal to the compressed backup (in `spoolDir`), and buys:
 * - memory bounded whatever the partition size (streams with backpressure; the
 *   upload from the file is a multipart upload of bounded parts);
 * - the snapshot is received and checked whole before the store sees a byte,
 *   so a cut-off stream never starts an upload at all;
 * - the node's snapshot is held only while compressing, not while uploading.
 *
 * Never a partial object that looks complete: the store's create is atomic
 * (folder: hard link of a finished file; S3: If-None-Match on the single PUT
 * or on CompleteMultipartUpload, parts aborted on error or abort), the spool
 * file is removed on every path, and an object is only ever listed in the
 * manifest after its create succeeded.
 */

export interface BackupRetentionConfig {
  mode: Retention['mode'];
  /** Days each object stays locked after it is created. */
  days: number;
}

/** The object lock retention an object created at `now` gets under `config`. */
export function retentionFor(config: BackupRetentionConfig | undefined, now: Date): Retention | undefined {
  if (config === undefined) return undefined;
  if (!(config.days > 0) || !Number.isFinite(config.days)) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `retention days must be a positive number, not ${config.days}`,
      { retryable: false },
    );
  }
  return { mode: config.mode, retainUntil: new Date(now.getTime() + config.days * 86_400_000) };
}

export interface TakeBaseBackupOptions {
  store: ObjectStore;
  /** The storage node the sidecar runs beside (the partition's leader). */
  nodeUrl: string;
  partition: string;
  node: number;
  /** The Raft term this node leads the partition in: the manifest write is fenced by it. */
  term: number;
  trigger: BackupTrigger;
  /** Object lock for the backup object (WORM). */
  retention?: BackupRetentionConfig;
  signal?: AbortSignal;
  logger?: Logger;
  now?: () => Date;
  /** Where the compressed backup is spooled (default: the OS temp folder). */
  spoolDir?: string;
  zstdLevel?: number;
  /** Ask the node first that it leads the partition in `term` (default true). */
  checkLeader?: boolean;
  manifestOptions?: Omit<PartitionManifestOptions, 'signal'>;
}

export interface BaseBackupResult {
  record: BackupRecord;
  /** The `wal.backups` value (schema 1) to publish, keyed by the partition. */
  event: WalBackupEvent;
  manifest: PartitionManifest;
  /** Bytes of the uncompressed tar. */
  rawBytes: number;
  durationMs: number;
  /** The object existed already (an earlier attempt at the same LSN) and was recorded as it is. */
  reused: boolean;
}

interface Spooled {
  path: string;
  lsn: number;
  bytes: number;
  rawBytes: number;
  sha256: string;
  /** From X-Snapshot-Max-Committed-At: at least the greatest commit time of the entries up to `lsn`. */
  maxCommittedAt?: string;
}

const TAR_BLOCK = 512;

function fail(code: (typeof ErrorCodes)[keyof typeof ErrorCodes], message: string, extra = {}) {
  return new WalArchiverError(code, message, extra);
}

/**
 * Passes a tar stream through unchanged while checking its framing with a
 * parser: every header's checksum, every member's full length, and the
 * end-of-archive marker (two zero blocks) at the end. A stream that ends
 * early, mid-member or between members, fails in `_flush`.
 */
export class TarCheck extends Transform {
  readonly members: string[] = [];
  private readonly extract = tar.extract();
  private parsed: Promise<void>;
  private tail = Buffer.alloc(0);
  private bytes = 0;

  constructor(private readonly what: string) {
    super();
    this.extract.on('entry', (header, stream, next) => {
      this.members.push(header.name);
      stream.on('end', next);
      stream.resume();
    });
    this.parsed = new Promise<void>((resolve, reject) => {
      this.extract.on('finish', resolve);
      this.extract.on('error', reject);
    });
    this.parsed.catch(() => undefined);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    this.tail = Buffer.concat([this.tail, chunk]).subarray(-2 * TAR_BLOCK);
    if (this.extract.write(chunk)) done(null, chunk);
    else this.extract.once('drain', () => done(null, chunk));
  }

  override _flush(done: TransformCallback): void {
    (this.extract as NodeJS.WritableStream).end();
    this.parsed.then(
      () => {
        const ended =
          this.bytes >= 2 * TAR_BLOCK && this.bytes % TAR_BLOCK === 0 && this.tail.every((b) => b === 0);
        done(ended ? null : this.broken(`ends without the end-of-archive marker after ${this.bytes} bytes`));
      },
      (err: unknown) => done(this.broken(describeError(err))),
    );
  }

  private broken(why: string): WalArchiverError {
    // A stream cut short is a transfer failure, not corruption of anything stored.
    return fail(ErrorCodes.UNAVAILABLE, `${this.what}: incomplete tar: ${why}`, { retryable: true });
  }
}

function parseLsnHeader(value: string | null): number | undefined {
  if (value === null || !/^\d{1,16}$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n >= 1 ? n : undefined;
}

async function errorBody(res: Response): Promise<{ error?: string; code?: string; leaderUrl?: string }> {
  try {
    return (await res.json()) as { error?: string; code?: string; leaderUrl?: string };
  } catch {
    return {};
  }
}

function unreachable(url: string, err: unknown, signal?: AbortSignal): WalArchiverError {
  if (signal?.aborted) return fail(ErrorCodes.ABORTED, `${url}: aborted`, { cause: err, retryable: false });
  return fail(ErrorCodes.UNAVAILABLE, `storage node ${url}: ${describeError(err)}`, {
    cause: err,
    retryable: true,
  });
}

export interface LeaderStatus {
  node: number;
  role: string;
  term: number;
  leader: number;
  leaderUrl?: string;
  applied: number;
}

/** GET /v1/partitions/{id}: the node's view of the partition. */
export async function partitionStatus(
  nodeUrl: string,
  partition: string,
  signal?: AbortSignal,
): Promise<LeaderStatus> {
  const url = `${nodeUrl.replace(/\/+$/, '')}/v1/partitions/${encodeURIComponent(partition)}`;
  let res: Response;
  try {
    res = await fetch(url, {
      signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(10_000)]) : AbortSignal.timeout(10_000),
    });
  } catch (err) {
    throw unreachable(url, err, signal);
  }
  if (!res.ok) {
    const body = await errorBody(res);
    const code = res.status === 404 ? ErrorCodes.NOT_FOUND : ErrorCodes.UNAVAILABLE;
    throw fail(
      code,
      `storage node ${nodeUrl}: partition ${partition}: ${body.error ?? `HTTP ${res.status}`}`,
      {
        retryable: code === ErrorCodes.UNAVAILABLE,
      },
    );
  }
  try {
    return (await res.json()) as LeaderStatus;
  } catch (err) {
    throw unreachable(url, err, signal);
  }
}

/**
 * Throws NOT_LEADER (naming the leader's URL when the node knows it) unless
 * `nodeUrl` leads `partition`, in `term` when one is given.
 */
export async function assertLeader(
  nodeUrl: string,
  partition: string,
  term: number | undefined,
  signal?: AbortSignal,
): Promise<LeaderStatus> {
  const s = await partitionStatus(nodeUrl, partition, signal);
  if (s.role !== 'leader' || (term !== undefined && s.term !== term)) {
    const leader =
      s.role === 'leader'
        ? `it leads in term ${s.term}, not ${term}`
        : s.leaderUrl
          ? `the leader is node ${s.leader} at ${s.leaderUrl}`
          : s.leader
            ? `the leader is node ${s.leader}`
            : 'no leader is known right now';
    throw fail(
      ErrorCodes.NOT_LEADER,
      `storage node ${nodeUrl} is not the leader of partition ${partition} (${leader})`,
      { retryable: false, details: { partition, leader: s.leader, leaderUrl: s.leaderUrl, term: s.term } },
    );
  }
  return s;
}

/** Streams the node's snapshot through the tar check and zstd into a spool file. */
async function spoolSnapshot(o: TakeBaseBackupOptions, spoolDir: string): Promise<Spooled> {
  const url = `${o.nodeUrl.replace(/\/+$/, '')}/v1/partitions/${encodeURIComponent(o.partition)}/snapshot`;
  let res: Response;
  try {
    res = await fetch(url, { signal: o.signal });
  } catch (err) {
    throw unreachable(url, err, o.signal);
  }
  if (!res.ok || res.body === null) {
    const body = await errorBody(res);
    throw fail(
      res.status === 404 ? ErrorCodes.NOT_FOUND : ErrorCodes.UNAVAILABLE,
      `storage node ${o.nodeUrl}: snapshot of partition ${o.partition}: ${body.error ?? `HTTP ${res.status}`}`,
      { retryable: res.status !== 404 },
    );
  }
  const lsn = parseLsnHeader(res.headers.get('x-snapshot-lsn'));
  const partition = res.headers.get('x-partition');
  if (lsn === undefined || (partition !== null && partition !== o.partition)) {
    await res.body.cancel().catch(() => undefined);
    throw fail(
      lsn === undefined && res.headers.get('x-snapshot-lsn') === '0'
        ? ErrorCodes.NOT_FOUND
        : ErrorCodes.CORRUPT,
      `storage node ${o.nodeUrl}: snapshot of partition ${o.partition}: ` +
        (lsn === undefined
          ? `no applied LSN to back up (X-Snapshot-LSN ${JSON.stringify(res.headers.get('x-snapshot-lsn'))})`
          : `answered for partition ${partition}`),
      { retryable: false },
    );
  }
  const path = join(spoolDir, `base-${o.partition}-${lsn}-${randomBytes(6).toString('hex')}.tar.zst`);
  const raw = new HashingStream();
  const compressed = new HashingStream();
  // A local write error is the spool's (a full or read-only disk), not the node's: say so.
  const spoolFailed = (err: unknown) => {
    void res.body?.cancel().catch(() => undefined);
    return fail(
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
      Readable.fromWeb(res.body as WebReadableStream<Uint8Array>),
      new TarCheck(`snapshot of partition ${o.partition} at LSN ${lsn} from ${o.nodeUrl}`),
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
    throw unreachable(url, err, o.signal);
  }
  const max = Date.parse(res.headers.get('x-snapshot-max-committed-at') ?? '');
  return {
    path,
    lsn,
    bytes: compressed.bytes,
    rawBytes: raw.bytes,
    sha256: compressed.hash.digest('hex'),
    ...(Number.isFinite(max) ? { maxCommittedAt: new Date(max).toISOString() } : {}),
  };
}

/**
 * Takes one base backup (see the top of this file). Throws NOT_LEADER when
 * the node does not lead the partition in `term`, FENCED when a newer leader
 * owns the manifest, ABORTED on the signal; anything else retryable is for
 * the policy to try again later. Nothing that looks complete is left behind
 * by a failure.
 */
export async function takeBaseBackup(o: TakeBaseBackupOptions): Promise<BaseBackupResult> {
  const now = o.now ?? (() => new Date());
  const log = (o.logger ?? silentLogger).child({ partition: o.partition, term: o.term, trigger: o.trigger });
  const startedAt = now();
  if (o.checkLeader ?? true) await assertLeader(o.nodeUrl, o.partition, o.term, o.signal);
  const spooled = await spoolSnapshot(o, o.spoolDir ?? join(tmpdir(), 'wal-archiver-spool'));
  const key = baseBackupKey(o.partition, spooled.lsn);
  let bytes = spooled.bytes;
  let sha256 = spooled.sha256;
  let reused = false;
  try {
    try {
      await o.store.create(key, createReadStream(spooled.path), {
        metadata: {
          [MetadataKeys.SHA256]: spooled.sha256,
          [MetadataKeys.FIRST_LSN]: String(spooled.lsn),
          [MetadataKeys.LAST_LSN]: String(spooled.lsn),
          [MetadataKeys.PARTITION]: o.partition,
          ...(spooled.maxCommittedAt ? { [MetadataKeys.MAX_COMMITTED_AT]: spooled.maxCommittedAt } : {}),
        },
        contentType: 'application/zstd',
        size: spooled.bytes,
        ...(o.retention !== undefined ? { retention: retentionFor(o.retention, now()) } : {}),
        signal: o.signal,
      });
    } catch (err) {
      if (!isWalArchiverError(err, ErrorCodes.ALREADY_EXISTS)) throw err;
      // An earlier attempt (or another sidecar) backed up this LSN: the state at
      // one LSN is the same, so record that object, once it checks out.
      const existing = await verifyBaseBackup(o.store, key, { signal: o.signal });
      if (!existing.ok) {
        throw fail(
          ErrorCodes.CORRUPT,
          `base backup ${key} exists but does not check out: ${existing.problems.join('; ')}`,
          { retryable: false, details: { partition: o.partition, lsn: spooled.lsn, key } },
        );
      }
      bytes = existing.bytes;
      sha256 = existing.sha256;
      reused = true;
      log.info('base backup at this LSN exists already; recording it', { lsn: spooled.lsn, key });
    }
  } finally {
    await dfs.rm(spooled.path, { force: true });
  }
  const finishedAt = now();
  const record: BackupRecord = {
    key,
    lsn: spooled.lsn,
    taken_at: finishedAt.toISOString(),
    ...(spooled.maxCommittedAt ? { max_committed_at: spooled.maxCommittedAt } : {}),
    bytes,
    sha256,
    trigger: o.trigger,
    term: o.term,
    node: o.node,
  };
  let write;
  try {
    write = await updatePartitionManifest(
      o.store,
      o.partition,
      { node: o.node, term: o.term },
      { backups: [record] },
      { ...o.manifestOptions, now, signal: o.signal },
    );
  } catch (err) {
    // The object is complete and checked, just not listed: restore ignores it,
    // and retention removes it once a listed backup is newer.
    log.warn('base backup uploaded but not recorded in the manifest', { lsn: spooled.lsn, key, error: err });
    throw err;
  }
  const recorded = write.manifest.backups.find((b) => b.key === key) ?? record;
  const event: WalBackupEvent = {
    schema: 1,
    partition: o.partition,
    lsn: recorded.lsn,
    key,
    bytes: recorded.bytes,
    sha256: recorded.sha256,
    trigger: recorded.trigger,
    term: recorded.term,
    node: recorded.node,
    started_at: startedAt.toISOString(),
    finished_at: recorded.taken_at < startedAt.toISOString() ? startedAt.toISOString() : recorded.taken_at,
  };
  const durationMs = Math.max(0, finishedAt.getTime() - startedAt.getTime());
  log.info('base backup taken', {
    lsn: recorded.lsn,
    key,
    bytes: recorded.bytes,
    rawBytes: spooled.rawBytes,
    durationMs,
    reused,
  });
  return {
    record: recorded,
    event,
    manifest: write.manifest,
    rawBytes: spooled.rawBytes,
    durationMs,
    reused,
  };
}

export interface BaseBackupCheck {
  ok: boolean;
  key: string;
  lsn: number | undefined;
  bytes: number;
  /** SHA-256 of the bytes read. */
  sha256: string;
  problems: string[];
}

/**
 * Reads a base backup object whole and checks it: its bytes against the
 * SHA-256 in its metadata (and in `expected`, the manifest record, when
 * given), its LSN metadata against its key; with `deep`, also that it
 * decompresses to a complete tar. Streams, so memory stays bounded.
 */
export async function verifyBaseBackup(
  store: ObjectStore,
  key: string,
  options: {
    expected?: Pick<BackupRecord, 'sha256' | 'bytes' | 'lsn'>;
    deep?: boolean;
    signal?: AbortSignal;
  } = {},
): Promise<BaseBackupCheck> {
  const problems: string[] = [];
  const info = await store.head(key, { signal: options.signal });
  if (info === undefined) {
    return { ok: false, key, lsn: undefined, bytes: 0, sha256: '', problems: ['object does not exist'] };
  }
  const meta = info.metadata;
  const metaSha = meta[MetadataKeys.SHA256];
  const lsn = parseLsnHeader(meta[MetadataKeys.LAST_LSN] ?? null);
  const keyLsn = key.match(/\/base\/([0-9a-z]+)\.tar\.zst$/)?.[1];
  if (metaSha === undefined) problems.push('no sha256 in its metadata');
  if (lsn === undefined || meta[MetadataKeys.FIRST_LSN] !== meta[MetadataKeys.LAST_LSN]) {
    problems.push('no single LSN in its metadata');
  } else if (keyLsn !== undefined && parseInt(keyLsn, 36) !== lsn) {
    problems.push(`metadata LSN ${lsn} is not the LSN of its key`);
  }
  const hash = new HashingStream();
  const discard = () =>
    new Writable({
      write(_chunk, _enc, done) {
        done();
      },
    });
  try {
    const body = await store.get(key, { signal: options.signal });
    if (options.deep) {
      await pipeline(body, hash, new DecompressStream(), new TarCheck(`base backup ${key}`), discard(), {
        signal: options.signal,
      });
    } else {
      await pipeline(body, hash, discard(), { signal: options.signal });
    }
  } catch (err) {
    if (options.signal?.aborted) throw err;
    problems.push(`cannot be read${options.deep ? ' as a zstd-compressed tar' : ''}: ${describeError(err)}`);
  }
  const sha256 = hash.hash.digest('hex');
  if (metaSha !== undefined && metaSha !== sha256)
    problems.push(`content SHA-256 ${sha256} is not ${metaSha} (metadata)`);
  if (hash.bytes !== info.size) problems.push(`read ${hash.bytes} bytes of ${info.size}`);
  const exp = options.expected;
  if (exp) {
    if (exp.sha256 !== sha256) problems.push(`content SHA-256 ${sha256} is not ${exp.sha256} (manifest)`);
    if (exp.bytes !== hash.bytes) problems.push(`size ${hash.bytes} is not ${exp.bytes} (manifest)`);
    if (lsn !== undefined && exp.lsn !== lsn)
      problems.push(`metadata LSN ${lsn} is not ${exp.lsn} (manifest)`);
  }
  return { ok: problems.length === 0, key, lsn, bytes: hash.bytes, sha256, problems };
}
