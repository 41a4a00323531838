import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as dfs from '../../contract/fs/durable-fs.js';
import { ErrorCodes, WalArchiverError, isWalArchiverError } from '../../contract/errors.js';
import { silentLogger, type Logger } from '../../contract/log.js';
import { baseBackupKey } from '../manifest/keys.js';
import {
  updatePartitionManifest,
  type BackupRecord,
  type PartitionManifest,
  type PartitionManifestOptions,
} from '../manifest/partition-manifest.js';
import { walBackupEvent, type BackupTrigger, type WalBackupEvent } from '../../contract/events/schemas.js';
import { MetadataKeys, type ObjectStore, type Retention } from '../store/object-store.js';
import { assertLeader, type StorageNode } from '../node/storage-node.js';
import { spoolLocalState, spoolSnapshot, type Spooled } from './snapshot.js';
import { verifyBaseBackup } from './verify.js';

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
  storageNode: StorageNode;
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
  /** The timeline the backup belongs to (default 1). */
  timeline?: number;
  manifestOptions?: Omit<PartitionManifestOptions, 'signal' | 'timeline'>;
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

/**
 * Takes one base backup (see the top of this file). Throws NOT_LEADER when
 * the node does not lead the partition in `term`, FENCED when a newer leader
 * owns the manifest, ABORTED on the signal; anything else retryable is for
 * the policy to try again later. Nothing that looks complete is left behind
 * by a failure.
 */
export async function takeBaseBackup(o: TakeBaseBackupOptions): Promise<BaseBackupResult> {
  const startedAt = (o.now ?? (() => new Date()))();
  if (o.checkLeader ?? true) await assertLeader(o.storageNode, o.partition, o.term, o.signal);
  const spooled = await spoolSnapshot(o, o.spoolDir ?? join(tmpdir(), 'wal-archiver-spool'));
  return storeBaseBackup(o, spooled, startedAt, o.term);
}

export interface RestoredBaseOptions extends Omit<
  TakeBaseBackupOptions,
  'storageNode' | 'trigger' | 'checkLeader'
> {
  /** The restored state (`archiver/restored-state`), at `lsn`. */
  stateDir: string;
  lsn: number;
  /** The term of the entry at `lsn`. */
  lsnTerm: number;
  maxCommittedAt?: string;
}

/**
 * The first base backup of a new timeline: the state a restore left at the
 * branch point, packed here (the node may have applied more by now), with
 * trigger `restore`. Like any base backup it is created once, checked when it
 * exists already, and listed in the timeline's manifest.
 */
export async function uploadRestoredBase(o: RestoredBaseOptions): Promise<BaseBackupResult> {
  const startedAt = (o.now ?? (() => new Date()))();
  const spooled = await spoolLocalState(
    {
      stateDir: o.stateDir,
      partition: o.partition,
      lsn: o.lsn,
      ...(o.maxCommittedAt !== undefined ? { maxCommittedAt: o.maxCommittedAt } : {}),
      ...(o.zstdLevel !== undefined ? { zstdLevel: o.zstdLevel } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
    },
    o.spoolDir ?? join(tmpdir(), 'wal-archiver-spool'),
  );
  return storeBaseBackup({ ...o, trigger: 'restore' }, spooled, startedAt, o.lsnTerm);
}

/** Uploads a spooled base backup, records it in the manifest and makes its event (the spool is removed). */
async function storeBaseBackup(
  o: Omit<TakeBaseBackupOptions, 'storageNode'>,
  spooled: Spooled,
  startedAt: Date,
  recordTerm: number,
): Promise<BaseBackupResult> {
  const now = o.now ?? (() => new Date());
  const log = (o.logger ?? silentLogger).child({ partition: o.partition, term: o.term, trigger: o.trigger });
  const timeline = o.timeline ?? 1;
  const key = baseBackupKey(o.partition, spooled.lsn, timeline);
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
        throw new WalArchiverError(
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
    term: recordTerm,
    node: o.node,
  };
  let write;
  try {
    write = await updatePartitionManifest(
      o.store,
      o.partition,
      { node: o.node, term: o.term },
      { backups: [record] },
      { ...o.manifestOptions, now, timeline, ...(o.signal ? { signal: o.signal } : {}) },
    );
  } catch (err) {
    // The object is complete and checked, just not listed: restore ignores it,
    // and retention removes it once a listed backup is newer.
    log.warn('base backup uploaded but not recorded in the manifest', { lsn: spooled.lsn, key, error: err });
    throw err;
  }
  const recorded = write.manifest.backups.find((b) => b.key === key) ?? record;
  const event = walBackupEvent({
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
    timeline,
  });
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
