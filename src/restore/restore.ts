import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { DecompressStream } from 'zstd-napi';
import { fetchSegment, type ExtractedEntry } from '../archive/segment-reader.js';
import { ContentDigest, decodeEntryInfo } from '../../contract/wal/entry-info.js';
import { mkdir, rename, rm, rmdir, writeFile } from '../../contract/fs/durable-fs.js';
import { ErrorCodes, WalArchiverError, followAbort, isWalArchiverError } from '../../contract/errors.js';
import { fsyncDir, isNotFound, syncTree } from '../../contract/fs/fs-atomic.js';
import { HashingStream } from '../archive/hashing-stream.js';
import type { Semaphore } from '../semaphore.js';
import { KV_STATE_FILE, applyEntry } from '../../contract/state/apply.js';
import { extractState } from '../../contract/state/snapshot.js';
import { MetadataKeys, type ObjectStore } from '../store/object-store.js';
import { decodeLogEntry, type LogEntry } from '../../contract/wal/log-entry.js';
import { parseStagedFileName } from '../../contract/wal/lsn.js';
import { decodeRaftEntry } from '../../contract/wal/raftpb.js';
import { chooseTimeline } from '../timeline/select.js';
import { markRestored } from '../timeline/restored.js';
import {
  planObjects,
  planRestore,
  resolveTarget,
  type ArchiveSegment,
  type EntryTime,
  type PartitionArchive,
  type RestorePlan,
  type RestoreTarget,
} from './plan.js';
import {
  APPLIED_LSN_FILE,
  ARCHIVER_DIR,
  RAFT_DIR,
  STAGING_DIR,
  STATE_DIR,
  writeAppliedLsn,
  writeArchiverPosition,
  writeVoters,
  writeHardState,
  writeSnapshotMeta,
} from '../../contract/wal/entry.js';

/**
 * Restoring one partition: base backup plus WAL replay, up to the target LSN
 * exactly, into a partition directory storage-node boots from.
 *
 * The directory is built in `<target>.partial` (with a RESTORE-INCOMPLETE
 * marker) and renamed into place only once it is complete, so an interrupted
 * restore never leaves a target that looks valid. Segments are downloaded
 * ahead (at most `concurrency` at once, each extracted under the work folder
 * and deleted once applied), so memory and disk stay bounded whatever the
 * partition's size. Every object's SHA-256 and every entry's content digest
 * are checked before anything from it is applied.
 *
 * What storage-node reads when it boots the result (Contract 1, no WAL):
 *   state/            the applied partition
 *   applied_lsn       the target LSN
 *   archiver/position the target LSN: everything up to it is in the archive
 *   raft/snapshot     {index: target, term: term of the target entry, voters, stamp}
 *   raft/hard_state   {term, vote: 0, commit: target}
 *   raft/conf_state   the voters
 */

export const INCOMPLETE_MARKER = 'RESTORE-INCOMPLETE';
export const PARTIAL_SUFFIX = '.partial';
export const WORK_DIR = '.restore';
export const DEFAULT_RESTORE_CONCURRENCY = 4;

export interface RestoreProgress {
  partition: string;
  phase: 'planning' | 'backup' | 'replay' | 'finishing' | 'done';
  targetLsn: number;
  fromLsn: number;
  /** The last LSN applied so far (the backup's LSN once extracted). */
  appliedLsn: number;
  segmentsDone: number;
  segmentsTotal: number;
  /** Compressed bytes downloaded and verified. */
  bytes: number;
}

export interface RestorePartitionOptions {
  store: ObjectStore;
  partition: string;
  target: RestoreTarget;
  /** The partition directory to create (e.g. `<data-dir>/partitions/<id>`). */
  targetDir: string;
  /** The Raft group's voters (node IDs) the restored partition starts with. */
  voters: readonly number[];
  /** Replace a non-empty target. */
  force?: boolean;
  /** Segments downloaded ahead of the one being applied (default 4). */
  concurrency?: number;
  /** Shared bound on downloads across partitions (restore --all). */
  downloads?: Semaphore;
  /** The archive view, when the caller has loaded it already (it is restored as it is, on its timeline). */
  archive?: PartitionArchive;
  /** `--timeline N`: restore that timeline's history (default: the latest holding the target). */
  timeline?: number;
  /**
   * Marks the result as the start of a new timeline (archiver/restored.json
   * and the restored state beside it), with this restore id; `restore --all`
   * gives every partition and replica the same one. Off for a drill.
   */
  branch?: { restoreId: string; reason: string; at?: Date };
  /**
   * false: `targetDir` is inside a folder the caller builds and renames
   * itself; it is written in place (it must be empty or absent).
   */
  atomic?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: RestoreProgress) => void;
}

export interface RestoreResult {
  partition: string;
  /** The timeline whose history was restored, and the one whose objects were read. */
  timeline: number;
  fromTimeline: number;
  targetLsn: number;
  /** Term of the entry at the target LSN. */
  term: number;
  backup: { key: string; lsn: number } | undefined;
  segments: string[];
  /** Entries applied from the WAL (empty entries included). */
  entries: number;
  bytes: number;
  source: PartitionArchive['source'];
  note?: string;
  targetDir: string;
}

// ---------------------------------------------------------------------------
// Entries

export interface VerifiedEntry {
  lsn: number;
  term: number;
  /** Unix ms; 0 for an entry without data. */
  committedAt: number;
  /** The entry carries no data (a new leader's empty entry): nothing to apply. */
  empty: boolean;
  manifest: LogEntry;
  dir: string;
  /** Staged files held in memory (the rest are in `dir`). */
  inline: ReadonlyMap<string, { data: Buffer; mode: number }>;
}

/** Segment members up to this size are verified and applied from memory, never written to scratch. */
const INLINE_MAX = 1024 * 1024;

function corruptEntry(partition: string, key: string, lsn: number, message: string, cause?: unknown) {
  return new WalArchiverError(
    ErrorCodes.CORRUPT,
    `partition ${partition}, LSN ${lsn}: ${message} (segment ${key})`,
    { retryable: false, cause, details: { partition, lsn, key } },
  );
}

/**
 * Checks an extracted entry against its RAFT record: the index is its LSN,
 * and MANIFEST plus the staged files hash to the content digest the leader
 * stamped, so a segment that passed its SHA-256 but holds altered entries
 * (or was archived from a damaged disk) is refused.
 */
export async function verifyEntry(partition: string, key: string, e: ExtractedEntry): Promise<VerifiedEntry> {
  if (!e.files.includes('RAFT') || !e.files.includes('MANIFEST'))
    throw corruptEntry(partition, key, e.lsn, 'entry lacks MANIFEST or RAFT');
  const whole = async (name: string) => e.inline.get(name)?.data ?? (await readFile(join(e.dir, name)));
  let raft;
  try {
    raft = decodeRaftEntry(await whole('RAFT'));
  } catch (err) {
    throw corruptEntry(partition, key, e.lsn, `RAFT: ${(err as Error).message}`, err);
  }
  if (raft.index !== e.lsn) throw corruptEntry(partition, key, e.lsn, `RAFT says index ${raft.index}`);
  const manifestBytes = await whole('MANIFEST');
  let manifest: LogEntry;
  try {
    manifest = decodeLogEntry(manifestBytes);
  } catch (err) {
    throw corruptEntry(partition, key, e.lsn, `MANIFEST: ${(err as Error).message}`, err);
  }
  const staged = e.files
    .filter((f) => f !== 'MANIFEST' && f !== 'RAFT')
    .sort((a, b) => (parseStagedFileName(a) ?? 0) - (parseStagedFileName(b) ?? 0));
  if (!raft.data || raft.data.length === 0) {
    if (staged.length > 0 || manifest.operations.length > 0 || manifest.referenceTransactions.length > 0)
      throw corruptEntry(partition, key, e.lsn, 'entry without a content digest carries content');
    return {
      lsn: e.lsn,
      term: raft.term,
      committedAt: 0,
      empty: true,
      manifest,
      dir: e.dir,
      inline: e.inline,
    };
  }
  let info;
  try {
    info = decodeEntryInfo(raft.data);
  } catch (err) {
    throw corruptEntry(partition, key, e.lsn, `RAFT data: ${(err as Error).message}`, err);
  }
  const digest = new ContentDigest();
  digest.beginFile('MANIFEST', manifestBytes.length);
  digest.update(manifestBytes);
  for (const name of staged) {
    const held = e.inline.get(name);
    if (held) {
      digest.beginFile(name, held.data.length);
      digest.update(held.data);
      continue;
    }
    const path = join(e.dir, name);
    digest.beginFile(name, (await stat(path)).size);
    for await (const chunk of createReadStream(path)) digest.update(chunk as Buffer);
  }
  if (!digest.digest().equals(info.contentSha256))
    throw corruptEntry(partition, key, e.lsn, 'entry content does not match the digest in its RAFT record');
  return {
    lsn: e.lsn,
    term: raft.term,
    committedAt: info.committedAt,
    empty: false,
    manifest,
    dir: e.dir,
    inline: e.inline,
  };
}

function withPartition(partition: string, err: unknown): unknown {
  if (!isWalArchiverError(err) || err.message.startsWith(`partition ${partition}`)) return err;
  return new WalArchiverError(err.code, `partition ${partition}: ${err.message}`, {
    cause: err.cause ?? err,
    retryable: err.retryable,
    details: { partition, ...err.details },
  });
}

export async function checksumOf(
  store: ObjectStore,
  partition: string,
  key: string,
  what: string,
  recorded: string | undefined,
  signal?: AbortSignal,
): Promise<string> {
  const info = await store.head(key, { signal });
  if (!info) {
    throw new WalArchiverError(
      ErrorCodes.NOT_FOUND,
      `partition ${partition}: ${what}: object ${key} is missing from the object store`,
      { retryable: false, details: { partition, key } },
    );
  }
  const sha = recorded ?? info.metadata[MetadataKeys.SHA256];
  if (!sha) {
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `partition ${partition}: ${what}: object ${key} carries no SHA-256 to check it against`,
      { retryable: false, details: { partition, key } },
    );
  }
  return sha;
}

/** Downloads, verifies and extracts one segment, and checks its entries. */
async function fetchVerified(
  store: ObjectStore,
  partition: string,
  seg: ArchiveSegment,
  sha256: string,
  dir: string,
  signal?: AbortSignal,
): Promise<VerifiedEntry[]> {
  await mkdir(dir, { recursive: true });
  let extracted: ExtractedEntry[];
  try {
    extracted = await fetchSegment(store, seg.key, dir, {
      expectedSha256: sha256,
      inlineMax: INLINE_MAX,
      ...(signal ? { signal } : {}),
    });
  } catch (err) {
    throw withPartition(partition, err);
  }
  const out: VerifiedEntry[] = [];
  for (const e of extracted) {
    if (e.lsn < seg.firstLsn || e.lsn > seg.lastLsn)
      throw corruptEntry(
        partition,
        seg.key,
        e.lsn,
        `entry outside the segment's LSNs ${seg.firstLsn}-${seg.lastLsn}`,
      );
    out.push(await verifyEntry(partition, seg.key, e));
  }
  return out;
}

/** Reads the commit times of a segment's entries (for time targets), in a scratch folder. */
export async function readSegmentTimes(
  store: ObjectStore,
  partition: string,
  seg: ArchiveSegment,
  scratch: string,
  signal?: AbortSignal,
): Promise<EntryTime[]> {
  const dir = join(scratch, `times-${randomBytes(4).toString('hex')}`);
  try {
    const sha = await checksumOf(
      store,
      partition,
      seg.key,
      `segment of LSNs ${seg.firstLsn}-${seg.lastLsn}`,
      seg.sha256,
      signal,
    );
    const entries = await fetchVerified(store, partition, seg, sha, dir, signal);
    return entries.map((e) => ({ lsn: e.lsn, committedAt: e.committedAt }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// The target folder

async function isEmptyDir(dir: string): Promise<boolean | undefined> {
  try {
    const info = await lstat(dir);
    if (!info.isDirectory()) return false;
    return (await readdir(dir)).length === 0;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/**
 * Checks that `targetDir` may be restored into: absent, empty, or non-empty
 * with `force`. Returns whether it exists.
 */
export async function checkTarget(targetDir: string, force: boolean): Promise<boolean> {
  const empty = await isEmptyDir(targetDir);
  if (empty === undefined) return false;
  if (!empty && !force) {
    const info = await lstat(targetDir);
    throw new WalArchiverError(
      ErrorCodes.ALREADY_EXISTS,
      info.isDirectory()
        ? `target ${targetDir} is not empty (use --force to replace it)`
        : `target ${targetDir} exists and is not a directory (use --force to replace it)`,
      { retryable: false, details: { path: targetDir } },
    );
  }
  return true;
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

/**
 * A build folder that was completed (marker removed) but not yet renamed
 * into place when the process stopped: it holds what a restore writes
 * (`applied_lsn` of one partition, or `node-1/` of --all) and nothing else.
 */
async function isFinishedBuild(dir: string): Promise<boolean> {
  const names = await readdir(dir);
  const written = [STATE_DIR, RAFT_DIR, APPLIED_LSN_FILE, ARCHIVER_DIR, WORK_DIR, STAGING_DIR];
  const ours = names.every((n) => /^node-\d+$/.test(n) || written.includes(n));
  return ours && (names.includes(APPLIED_LSN_FILE) || names.includes('node-1'));
}

function incompleteText(what: Record<string, unknown>): string {
  return `This restore is incomplete: do not start a node on this folder.\n${JSON.stringify({ ...what, started_at: new Date().toISOString() })}\n`;
}

/**
 * Removes a restore's leftover build folder so that a crash at any point of
 * the removal leaves one a rerun still recognises: everything but the marker
 * goes first, the marker and the folder last.
 */
async function removeMarkedBuild(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    if (name !== INCOMPLETE_MARKER) await rm(join(dir, name), { recursive: true, force: true });
  }
  await rm(dir, { recursive: true, force: true });
}

/**
 * Makes a fresh build folder. A leftover one is removed only when it is
 * clearly a restore's own: empty, holding the incomplete marker, or a
 * finished build a crash kept from being renamed into place (marked again
 * first, so that its removal is as safe to interrupt).
 */
export async function prepareBuildDir(dir: string, what: Record<string, unknown>): Promise<void> {
  const empty = await isEmptyDir(dir);
  if (empty === false) {
    let marked = await exists(join(dir, INCOMPLETE_MARKER));
    if (!marked && (await isFinishedBuild(dir))) {
      await writeFile(join(dir, INCOMPLETE_MARKER), incompleteText(what));
      await fsyncDir(dir);
      marked = true;
    }
    if (!marked) {
      throw new WalArchiverError(
        ErrorCodes.ALREADY_EXISTS,
        `${dir} exists and is not an interrupted restore; remove it or choose another target`,
        { retryable: false, details: { path: dir } },
      );
    }
    await removeMarkedBuild(dir);
  }
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, INCOMPLETE_MARKER), incompleteText(what));
  await fsyncDir(dir);
  await fsyncDir(dirname(dir));
}

/** The name a replaced target is moved to until the new one is in place. */
function oldTargetPrefix(targetDir: string): string {
  return `.${basename(targetDir)}.old-`;
}

/**
 * Puts a complete build folder in place of `targetDir` (replacing what --force
 * allowed). A crash at any point leaves no `targetDir` or a complete one: the
 * build is durable before its marker goes, the old target is moved aside (not
 * deleted) before the rename, and the old copies are removed only once the
 * new target is durably in place, also those an earlier interrupted run left.
 */
export async function publishBuildDir(buildDir: string, targetDir: string): Promise<void> {
  // Entries were applied without a sync each; make all of it durable before it is marked complete.
  await syncTree(buildDir);
  await rm(join(buildDir, INCOMPLETE_MARKER), { force: true });
  await fsyncDir(buildDir);
  const parent = dirname(targetDir);
  const existing = await isEmptyDir(targetDir);
  if (existing === true) await rmdir(targetDir);
  else if (existing === false || (await exists(targetDir))) {
    await rename(targetDir, join(parent, `${oldTargetPrefix(targetDir)}${randomBytes(4).toString('hex')}`));
  }
  await rename(buildDir, targetDir);
  await fsyncDir(parent);
  for (const name of await readdir(parent)) {
    if (name.startsWith(oldTargetPrefix(targetDir)))
      await rm(join(parent, name), { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// Restore

/** Downloads a base backup, checks its SHA-256 and extracts its state into `stateDir`; returns the bytes read. */
export async function extractBackup(
  store: ObjectStore,
  partition: string,
  backup: { key: string; lsn: number },
  sha256: string,
  stateDir: string,
  signal?: AbortSignal,
): Promise<number> {
  const body = await store.get(backup.key, signal ? { signal } : {});
  const hash = new HashingStream();
  const decompress = new DecompressStream();
  body.on('error', (err) => decompress.destroy(err));
  hash.on('error', (err) => decompress.destroy(err));
  const stream = body.pipe(hash).pipe(decompress);
  const mismatch = () =>
    new WalArchiverError(
      ErrorCodes.CORRUPT,
      `partition ${partition}: base backup ${backup.key} (LSN ${backup.lsn}): checksum mismatch (expected ${sha256}, read ${hash.hash.copy().digest('hex')})`,
      { retryable: false, details: { partition, key: backup.key, lsn: backup.lsn } },
    );
  try {
    await extractState(stream, stateDir);
  } catch (err) {
    // A local write error (a full disk, EIO) stops extraction part way, when the hash has seen only
    // part of the object: it is the error, not the archive.
    if (isLocalWriteError(err)) throw err;
    if (hash.hash.copy().digest('hex') !== sha256) throw mismatch();
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `partition ${partition}: base backup ${backup.key} (LSN ${backup.lsn}): ${(err as Error).message}`,
      { retryable: false, cause: err, details: { partition, key: backup.key, lsn: backup.lsn } },
    );
  }
  if (hash.hash.copy().digest('hex') !== sha256) throw mismatch();
  // A packed state always holds kv-state; a node that never set a key has none.
  const kv = join(stateDir, KV_STATE_FILE);
  if ((await stat(kv).catch(() => undefined))?.size === 0) await rm(kv);
  return hash.bytes;
}

/** Whether an error (or one in its cause chain) is a failed local file-system operation. */
function isLocalWriteError(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if (e instanceof WalArchiverError && e.code === ErrorCodes.CORRUPT) return false;
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return true;
  }
  return false;
}

/** Writes the Raft files that make storage-node start the partition from the restored state. */
export async function writeBootFiles(
  dir: string,
  lsn: number,
  term: number,
  voters: readonly number[],
  stamps: { stamp: number; whole: boolean } = { stamp: 0, whole: false },
): Promise<void> {
  await writeSnapshotMeta(dir, { index: lsn, term, voters }, stamps.stamp, stamps.whole);
  await writeVoters(dir, voters);
  await writeHardState(dir, { term, vote: 0, commit: lsn });
  await writeAppliedLsn(dir, lsn);
  // Everything up to the restored LSN is in the archive: a node booted from
  // this folder must not read a missing position as "nothing is archived
  // yet" (keeping entries forever) or as leave to prune anything.
  await writeArchiverPosition(dir, lsn);
}

/** Plans a restore: loads the archive view and resolves the target (reading a segment for a time). */
export async function planPartitionRestore(
  store: ObjectStore,
  partition: string,
  target: RestoreTarget,
  scratch: string,
  options: { archive?: PartitionArchive; timeline?: number; signal?: AbortSignal } = {},
): Promise<{ archive: PartitionArchive; plan: RestorePlan; timeline: number; fromTimeline: number }> {
  await mkdir(scratch, { recursive: true });
  const readEntryTimes = (seg: ArchiveSegment) =>
    readSegmentTimes(store, partition, seg, scratch, options.signal);
  if (options.archive) {
    const lsn = await resolveTarget(options.archive, target, readEntryTimes);
    const tl = options.archive.timeline ?? 1;
    return {
      archive: options.archive,
      plan: planRestore(options.archive, lsn),
      timeline: tl,
      fromTimeline: tl,
    };
  }
  const choice = await chooseTimeline(store, partition, target, {
    readEntryTimes,
    ...(options.timeline !== undefined ? { timeline: options.timeline } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  return {
    archive: choice.archive,
    plan: planRestore(choice.archive, choice.targetLsn),
    timeline: choice.followed,
    fromTimeline: choice.from,
  };
}

/** Restores one partition (see the top of this file). */
export async function restorePartition(o: RestorePartitionOptions): Promise<RestoreResult> {
  const targetDir = resolve(o.targetDir);
  const atomic = o.atomic ?? true;
  const exists = await checkTarget(targetDir, o.force ?? false);
  if (!atomic && exists && !(await isEmptyDir(targetDir))) {
    throw new WalArchiverError(ErrorCodes.ALREADY_EXISTS, `target ${targetDir} is not empty`, {
      retryable: false,
    });
  }
  if (o.voters.length === 0)
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'a restored partition needs at least one voter');
  const build = atomic ? `${targetDir}${PARTIAL_SUFFIX}` : targetDir;
  await mkdir(dirname(build), { recursive: true });
  await prepareBuildDir(build, { partition: o.partition, target: o.target });
  const work = join(build, WORK_DIR);
  // Every request of a long restore listens on this signal.
  const { controller, release } = followAbort(o.signal);
  try {
    const result = await restoreInto(o, build, work, controller);
    await rm(work, { recursive: true, force: true });
    await rm(join(build, 'staging'), { recursive: true, force: true });
    if (atomic) await publishBuildDir(build, targetDir);
    else {
      await rm(join(build, INCOMPLETE_MARKER), { force: true });
      await fsyncDir(build);
    }
    o.onProgress?.({
      partition: o.partition,
      phase: 'done',
      targetLsn: result.targetLsn,
      fromLsn: result.backup ? result.backup.lsn + 1 : 1,
      appliedLsn: result.targetLsn,
      segmentsDone: result.segments.length,
      segmentsTotal: result.segments.length,
      bytes: result.bytes,
    });
    return { ...result, targetDir };
  } catch (err) {
    controller.abort();
    await rm(build, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  } finally {
    release();
  }
}

async function restoreInto(
  o: RestorePartitionOptions,
  build: string,
  work: string,
  controller: AbortController,
): Promise<Omit<RestoreResult, 'targetDir'>> {
  const { store, partition } = o;
  const signal = controller.signal;
  const progress: RestoreProgress = {
    partition,
    phase: 'planning',
    targetLsn: 0,
    fromLsn: 1,
    appliedLsn: 0,
    segmentsDone: 0,
    segmentsTotal: 0,
    bytes: 0,
  };
  const report = () => o.onProgress?.({ ...progress });
  report();
  const { archive, plan, timeline, fromTimeline } = await planPartitionRestore(
    store,
    partition,
    o.target,
    work,
    {
      ...(o.archive ? { archive: o.archive } : {}),
      ...(o.timeline !== undefined ? { timeline: o.timeline } : {}),
      signal,
    },
  );
  progress.targetLsn = plan.targetLsn;
  progress.fromLsn = plan.fromLsn;
  progress.segmentsTotal = plan.segments.length;

  // Every object is there and has a checksum before anything is written.
  const checksums = new Map<string, string>();
  const objects = planObjects(plan);
  const limit = Math.max(1, o.concurrency ?? DEFAULT_RESTORE_CONCURRENCY);
  for (let i = 0; i < objects.length; i += limit * 4) {
    await Promise.all(
      objects.slice(i, i + limit * 4).map(async (obj) => {
        checksums.set(obj.key, await checksumOf(store, partition, obj.key, obj.what, obj.sha256, signal));
      }),
    );
  }

  const stateDir = join(build, 'state');
  await mkdir(stateDir, { recursive: true });
  let term = 0;
  if (plan.backup) {
    progress.phase = 'backup';
    report();
    progress.bytes += await extractBackup(
      store,
      partition,
      plan.backup,
      checksums.get(plan.backup.key)!,
      stateDir,
      signal,
    );
    progress.appliedLsn = plan.backup.lsn;
    term = plan.backup.term ?? 0;
  }

  progress.phase = 'replay';
  report();
  const segs = plan.segments;
  const fetches: Array<Promise<VerifiedEntry[]> | undefined> = [];
  const start = (i: number) => {
    if (i >= segs.length || fetches[i]) return;
    const seg = segs[i]!;
    const p = (async () => {
      const release = await o.downloads?.acquire(signal);
      try {
        return await fetchVerified(
          store,
          partition,
          seg,
          checksums.get(seg.key)!,
          join(work, `segment-${i}`),
          signal,
        );
      } finally {
        release?.();
      }
    })();
    p.catch(() => undefined);
    fetches[i] = p;
  };
  let next = plan.fromLsn;
  let entries = 0;
  // The greatest commit stamp of what is restored, for the node's raft/snapshot
  // (a leader stamps no lower); whole only when the base backup bounded its own.
  let stamp = plan.backup?.maxCommittedAt ?? 0;
  const stampWhole = plan.backup === undefined || plan.backup.maxCommittedAt !== undefined;
  const knownDirs = new Set<string>();
  try {
    for (let i = 0; i < segs.length; i++) {
      for (let j = i; j < i + limit; j++) start(j);
      const seg = segs[i]!;
      const got = await fetches[i]!;
      for (const e of got.sort((a, b) => a.lsn - b.lsn)) {
        if (e.lsn < next) continue;
        if (e.lsn > plan.targetLsn) break;
        if (e.lsn !== next)
          throw corruptEntry(partition, seg.key, next, `the segment does not hold LSN ${next}`);
        if (!e.empty) {
          await applyEntry(e.manifest, {
            stateDir,
            entryDir: e.dir,
            lsn: e.lsn,
            durable: false,
            staged: e.inline,
            knownDirs,
          });
        }
        term = e.term;
        if (e.committedAt > stamp) stamp = e.committedAt;
        next = e.lsn + 1;
        // Applying is mostly synchronous file calls: let downloads in flight move now and then.
        if (++entries % 64 === 0) await yieldToEventLoop();
      }
      if (next <= Math.min(seg.lastLsn, plan.targetLsn))
        throw corruptEntry(partition, seg.key, next, `the segment does not hold LSN ${next}`);
      progress.appliedLsn = next - 1;
      progress.segmentsDone = i + 1;
      progress.bytes += seg.bytes;
      report();
      await rm(join(work, `segment-${i}`), { recursive: true, force: true });
    }
  } catch (err) {
    controller.abort();
    await Promise.allSettled(fetches.filter(Boolean));
    throw err;
  }
  if (next !== plan.targetLsn + 1) {
    throw new WalArchiverError(
      ErrorCodes.INTERNAL,
      `partition ${partition}: replay ended at LSN ${next - 1}, not at the target ${plan.targetLsn}`,
    );
  }

  if (segs.length === 0 && plan.backup)
    term = (await termAt(store, archive, plan.backup.lsn, work, signal)) ?? term;

  progress.phase = 'finishing';
  report();
  await writeBootFiles(build, plan.targetLsn, term, o.voters, { stamp, whole: stampWhole });
  if (o.branch) {
    await markRestored(build, {
      schema: 1,
      partition,
      restore_id: o.branch.restoreId,
      parent_timeline: timeline,
      branch_lsn: plan.targetLsn,
      term,
      ...(stampWhole && stamp > 0 ? { max_committed_at: new Date(stamp).toISOString() } : {}),
      restored_at: (o.branch.at ?? new Date()).toISOString(),
      reason: o.branch.reason,
    });
  }
  return {
    partition,
    timeline,
    fromTimeline,
    targetLsn: plan.targetLsn,
    term,
    backup: plan.backup ? { key: plan.backup.key, lsn: plan.backup.lsn } : undefined,
    segments: segs.map((s) => s.key),
    entries,
    bytes: progress.bytes,
    source: archive.source,
    ...(archive.note ? { note: archive.note } : {}),
  };
}

/** The term of the entry at `lsn`, from a segment holding it; undefined when none does. */
async function termAt(
  store: ObjectStore,
  archive: PartitionArchive,
  lsn: number,
  scratch: string,
  signal: AbortSignal,
): Promise<number | undefined> {
  const seg = archive.segments.find((s) => s.firstLsn <= lsn && s.lastLsn >= lsn);
  if (!seg) return undefined;
  const dir = join(scratch, `term-${lsn}`);
  try {
    const sha = await checksumOf(
      store,
      archive.partition,
      seg.key,
      `segment of LSNs ${seg.firstLsn}-${seg.lastLsn}`,
      seg.sha256,
      signal,
    );
    const entries = await fetchVerified(store, archive.partition, seg, sha, dir, signal);
    return entries.find((e) => e.lsn === lsn)?.term;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
