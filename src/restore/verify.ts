import { createHash, randomBytes } from 'node:crypto';
import { mkdir, rm } from '../../contract/fs/durable-fs.js';
import { join } from 'node:path';
import { ErrorCodes, describeError, followAbort, isWalArchiverError } from '../../contract/errors.js';
import { listArchivedPartitions } from '../manifest/archived-partitions.js';
import { readGlobalManifest } from '../manifest/global-manifest.js';
import {
  historyKey,
  partitionManifestKey,
  splitTimelineKey,
  timelinePrefix,
  tryParseBaseKey,
  tryParseSegmentKey,
  verifiedKey,
} from '../manifest/keys.js';
import { readPartitionManifest } from '../manifest/partition-manifest.js';
import { FIRST_TIMELINE, listTimelines, type TimelineInfo } from '../timeline/history.js';
import { HashingStream } from '../archive/hashing-stream.js';
import { MetadataKeys, type ObjectInfo, type ObjectStore } from '../store/object-store.js';
import {
  archiveFromManifest,
  archiveFromObjects,
  coverRange,
  type ArchiveBackup,
  type ArchiveSegment,
  type PartitionArchive,
} from './plan.js';
import { readSegmentTimes } from './restore.js';
import {
  readVerifiedPoint,
  verifiedRecord,
  writeVerifiedPoint,
  type VerifiedRecord,
} from './verified-record.js';

/**
 * `verify`: checks the archive without restoring it.
 *
 * Per partition: the manifest reads and is valid; every segment and base
 * backup it lists is present with the recorded size and checksum metadata;
 * every object's bytes hash to the recorded SHA-256 (downloaded and hashed;
 * segments are also unpacked and every entry checked against the content
 * digest in its RAFT record); LSNs are covered with no gap from each kept
 * base backup (or LSN 1) to the archived LSN. Objects the manifest does not
 * list are warnings. Across partitions: the global manifest reads and names
 * the partitions the objects hold.
 *
 * Findings are reported object by object as they are found; any fault makes
 * the whole check fail.
 *
 * A clean partition advances its verified point (verified-record.ts). With
 * `incremental`, only objects new since that point and a seeded sample of
 * the older ones are downloaded; the others are checked against the listing
 * (present, recorded size), and the coverage and listing checks, which need
 * no download, run in full. Its cost follows new data, not archive size.
 */

export interface VerifyFinding {
  severity: 'fault' | 'warning';
  partition?: string;
  /** Set for timelines after the first. */
  timeline?: number;
  key?: string;
  message: string;
}

export interface PartitionVerifyReport {
  partition: string;
  /** The timeline of the partition this report is of. */
  timeline: number;
  segments: number;
  backups: number;
  archived: { firstLsn: number; lastLsn: number } | null;
  bytes: number;
  /** Objects downloaded and hashed. */
  checked: number;
  /** With `incremental`: objects new since the verified point, older ones sampled, and all of them. */
  incremental?: { fresh: number; sampled: number; total: number };
  /** The verified LSN this run recorded (absent: the record was not advanced). */
  verifiedLsn?: number;
  faults: number;
  warnings: number;
}

export interface VerifyReport {
  partitions: PartitionVerifyReport[];
  faults: number;
  warnings: number;
  /** Objects downloaded and hashed, over all partitions. */
  checked: number;
}

export interface VerifyOptions {
  /** Only this partition (no cross-partition checks). */
  partition?: string;
  /** Objects downloaded at once (default 4). */
  concurrency?: number;
  /** A scratch folder for unpacking segments (removed afterwards). */
  scratch: string;
  signal?: AbortSignal;
  /** Check only what is new since each partition's verified point, plus a sample of older objects. */
  incremental?: IncrementalOptions;
  /** Advance the verified point of a clean partition (default true). */
  record?: boolean;
  /** The timeline checked (default 1; verifyArchive checks every timeline of each partition). */
  timeline?: number;
  /** The timeline's branch LSN (where its own objects start when it has no base backup). */
  branchLsn?: number;
  /** Recorded as the verifying host (default the machine's host name). */
  host?: string;
  now?: () => Date;
  onFinding?: (f: VerifyFinding) => void;
  onPartition?: (r: PartitionVerifyReport) => void;
}

async function hashObject(store: ObjectStore, key: string, signal?: AbortSignal): Promise<string> {
  const body = await store.get(key, signal ? { signal } : {});
  const hash = new HashingStream();
  body.on('error', (err) => hash.destroy(err));
  body.pipe(hash);
  for await (const chunk of hash) void chunk;
  return hash.hash.digest('hex');
}

async function inBatches<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      for (let i = next++; i < items.length; i = next++) await fn(items[i]!);
    }),
  );
}

/** How an incremental verify picks what to download. */
export interface IncrementalOptions {
  /** Older objects checked per partition and timeline (default DEFAULT_SAMPLE), unless `fraction` is given. */
  sample?: number;
  /** The share of older objects checked (0..1, rounded up), instead of `sample`. */
  fraction?: number;
  /** Seeds the choice of older objects: the same seed picks the same ones. */
  seed: number;
}

/** Older objects an incremental verify checks per partition by default. */
export const DEFAULT_SAMPLE = 4;

/** One object of the partition's view, as verify checks it. */
interface Item {
  key: string;
  what: string;
  sha256: string | undefined;
  bytes: number;
  segment?: ArchiveSegment;
}

function itemsOf(archive: PartitionArchive): Item[] {
  return [
    ...archive.backups.map((b: ArchiveBackup) => ({
      key: b.key,
      what: `base backup at LSN ${b.lsn}`,
      sha256: b.sha256,
      bytes: b.bytes,
    })),
    ...archive.segments.map((s) => ({
      key: s.key,
      what: `segment of LSNs ${s.firstLsn}-${s.lastLsn}`,
      sha256: s.sha256,
      bytes: s.bytes,
      segment: s,
    })),
  ];
}

/**
 * The order in which a seed samples older objects: by SHA-256 of seed,
 * partition, timeline and key, so a seed picks the same objects whatever the
 * listing order and whichever other objects exist.
 */
export function sampleOrder(
  keys: readonly string[],
  seed: number,
  partition: string,
  timeline = 1,
): string[] {
  const rank = (key: string) =>
    createHash('sha256').update(`${seed}\0${partition}\0${timeline}\0${key}`).digest('hex');
  return keys
    .map((key) => ({ key, r: rank(key) }))
    .sort((a, b) => (a.r < b.r ? -1 : a.r > b.r ? 1 : 0))
    .map((x) => x.key);
}

/**
 * Splits the objects into those new since the verified point (not in the
 * record, recorded with another SHA-256 or size, or a segment that goes
 * beyond the verified LSN) and the older ones, and samples the older ones.
 */
export function selectIncremental(
  items: ReadonlyArray<{ key: string; sha256: string | undefined; bytes: number; lastLsn?: number }>,
  previous: VerifiedRecord | undefined,
  o: IncrementalOptions,
  partition: string,
  timeline = 1,
): { fresh: Set<string>; sampled: Set<string> } {
  const known = new Map((previous?.objects ?? []).map((x) => [x.key, x]));
  const fresh = new Set<string>();
  const older: string[] = [];
  for (const item of items) {
    const v = known.get(item.key);
    const beyond = item.lastLsn !== undefined && item.lastLsn > (previous?.verified_lsn ?? 0);
    if (!v || beyond || v.sha256 !== item.sha256 || v.bytes !== item.bytes) fresh.add(item.key);
    else older.push(item.key);
  }
  const count =
    o.fraction !== undefined ? Math.ceil(o.fraction * older.length) : Math.max(0, o.sample ?? DEFAULT_SAMPLE);
  return { fresh, sampled: new Set(sampleOrder(older, o.seed, partition, timeline).slice(0, count)) };
}

export async function verifyPartition(
  store: ObjectStore,
  partition: string,
  options: VerifyOptions,
): Promise<PartitionVerifyReport> {
  const timeline = options.timeline ?? 1;
  const report: PartitionVerifyReport = {
    partition,
    timeline,
    segments: 0,
    backups: 0,
    archived: null,
    bytes: 0,
    checked: 0,
    faults: 0,
    warnings: 0,
  };
  const finding = (severity: VerifyFinding['severity'], message: string, key?: string) => {
    if (severity === 'fault') report.faults++;
    else report.warnings++;
    options.onFinding?.({
      severity,
      partition,
      ...(timeline !== 1 ? { timeline } : {}),
      ...(key ? { key } : {}),
      message,
    });
  };
  const signal = options.signal;

  // This timeline's objects only (timeline 1's folder holds the others' folders too).
  const listed = new Map<string, ObjectInfo>();
  for await (const o of store.list(timelinePrefix(partition, timeline), signal ? { signal } : {}))
    if (splitTimelineKey(o.key)?.timeline === timeline) listed.set(o.key, o);

  let archive: PartitionArchive | undefined;
  const manifestKey = partitionManifestKey(partition, timeline);
  try {
    const stored = await readPartitionManifest(store, partition, { timeline, ...(signal ? { signal } : {}) });
    if (stored) archive = archiveFromManifest(stored.value);
    else finding('fault', 'the partition manifest is missing', manifestKey);
  } catch (err) {
    if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
    finding('fault', `the partition manifest is damaged: ${err.message}`, manifestKey);
  }
  if (!archive) {
    const objects = [];
    for (const [key, o] of listed) {
      if (!tryParseSegmentKey(key, timeline) && !tryParseBaseKey(key, timeline)) continue;
      const info = await store.head(key, signal ? { signal } : {});
      objects.push({ key, size: o.size, metadata: info?.metadata ?? {} });
    }
    archive = archiveFromObjects(partition, objects, undefined, timeline);
  }
  report.segments = archive.segments.length;
  report.backups = archive.backups.length;
  report.archived = archive.archived;
  const fromManifest = archive.source === 'manifest';

  // The verified point: what an incremental verify may skip, and what a clean run advances.
  const recordKey = verifiedKey(partition, timeline);
  const point = await readVerifiedPoint(store, partition, { timeline, ...(signal ? { signal } : {}) });
  if (point.state === 'damaged')
    finding(
      'warning',
      `the verified record is damaged (${point.message}): every object is checked as if none had been, and the record rewritten when the partition is clean`,
      recordKey,
    );
  const items = itemsOf(archive);
  // An incremental verify over a view from the objects (no usable manifest) checks everything.
  const selection =
    options.incremental && fromManifest
      ? selectIncremental(
          items.map((i) => ({ ...i, ...(i.segment ? { lastLsn: i.segment.lastLsn } : {}) })),
          point.state === 'ok' ? point.stored.value : undefined,
          options.incremental,
          partition,
          timeline,
        )
      : undefined;
  if (selection)
    report.incremental = {
      fresh: selection.fresh.size,
      sampled: selection.sampled.size,
      total: items.length,
    };
  const selected = (key: string) => !selection || selection.fresh.has(key) || selection.sampled.has(key);

  // Presence, size and checksums, object by object: downloaded and hashed
  // when selected, else checked against the listing alone.
  const scratch = join(options.scratch, `verify-${partition}-${randomBytes(4).toString('hex')}`);
  await mkdir(scratch, { recursive: true });
  try {
    await inBatches(items, Math.max(1, options.concurrency ?? 4), async (item) => {
      const { key, what, bytes } = item;
      if (!selected(key)) {
        const seen = listed.get(key);
        if (!seen) finding('fault', `${what}: the object is missing`, key);
        else if (seen.size !== bytes)
          finding('fault', `${what}: ${seen.size} bytes, the manifest records ${bytes}`, key);
        return;
      }
      const recorded = item.sha256;
      const info = await store.head(key, signal ? { signal } : {});
      if (!info) {
        finding('fault', `${what}: the object is missing`, key);
        return;
      }
      if (fromManifest && info.size !== bytes)
        finding('fault', `${what}: ${info.size} bytes, the manifest records ${bytes}`, key);
      const meta = info.metadata[MetadataKeys.SHA256];
      if (!recorded && !meta) {
        finding('fault', `${what}: no SHA-256 recorded anywhere to check it against`, key);
        return;
      }
      if (recorded && meta && meta !== recorded)
        finding(
          'fault',
          `${what}: object metadata says SHA-256 ${meta}, the manifest records ${recorded}`,
          key,
        );
      const expected = recorded ?? meta!;
      report.checked++;
      try {
        if (item.segment) {
          await readSegmentTimes(store, partition, { ...item.segment, sha256: expected }, scratch, signal);
        } else {
          const actual = await hashObject(store, key, signal);
          if (actual !== expected)
            throw new Error(`checksum mismatch (expected ${expected}, read ${actual})`);
        }
        report.bytes += info.size;
      } catch (err) {
        if (isWalArchiverError(err, ErrorCodes.ABORTED)) throw err;
        finding('fault', `${what}: ${describeError(err).replace(`partition ${partition}: `, '')}`, key);
      }
    });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }

  // Coverage: from each kept base backup (or LSN 1) to the archived LSN, with no gap.
  const a = archive.archived;
  if (!a && archive.backups.length === 0) {
    finding('fault', 'nothing is archived: no segment and no base backup');
  } else if (a) {
    const starts = new Set<number>(archive.backups.map((b) => b.lsn + 1).filter((l) => l <= a.lastLsn));
    const branch = timeline === 1 ? 0 : (options.branchLsn ?? 0);
    if (archive.backups.length === 0 || a.firstLsn === branch + 1) starts.add(branch + 1);
    if (timeline !== 1 && !archive.backups.some((b) => b.lsn === branch))
      finding(
        'warning',
        `timeline ${timeline} has no base backup at its branch point, LSN ${branch}: restoring it needs its parent's archive up to there`,
      );
    for (const start of [...starts].sort((x, y) => x - y)) {
      const from =
        start === 1
          ? 'LSN 1'
          : start === branch + 1 && timeline !== 1
            ? `the branch point, LSN ${branch}`
            : `base backup at LSN ${start - 1}`;
      try {
        coverRange(archive, start, a.lastLsn, `restoring from ${from}`);
      } catch (err) {
        if (!isWalArchiverError(err, ErrorCodes.NOT_FOUND)) throw err;
        finding(
          'fault',
          err.message.replace(`partition ${partition}: `, ''),
          err.details.key as string | undefined,
        );
      }
    }
    const beyond = archive.segments.filter((s) => s.firstLsn > a.lastLsn + 1);
    if (beyond.length > 0) {
      finding(
        'fault',
        `gap in the archive: no segment holds LSN ${a.lastLsn + 1}, but ${beyond.length} segment(s) start after it (first ${beyond[0]!.key})`,
        beyond[0]!.key,
      );
    }
  }

  // Objects the manifest does not list.
  const known = new Set([...items.map((i) => i.key), manifestKey, recordKey]);
  if (timeline !== 1) known.add(historyKey(partition, timeline));
  for (const key of listed.keys()) {
    if (known.has(key)) continue;
    if (tryParseSegmentKey(key, timeline) || tryParseBaseKey(key, timeline))
      finding('warning', 'object is not listed in the partition manifest', key);
    else finding('warning', 'unexpected object (not a segment, base backup or manifest)', key);
  }

  // A clean partition advances its verified point: every object is now
  // verified, hashed in this run or carried unchanged from the record.
  if (report.faults === 0 && fromManifest && options.record !== false) {
    const next = verifiedRecord({
      partition,
      timeline,
      verified_lsn: Math.max(archive.archived?.lastLsn ?? 0, ...archive.backups.map((b) => b.lsn)),
      mode: options.incremental ? 'incremental' : 'full',
      objects: items.map((i) => ({ key: i.key, sha256: i.sha256!, bytes: i.bytes })),
      ...(options.host !== undefined ? { host: options.host } : {}),
      ...(options.now ? { now: options.now() } : {}),
    });
    try {
      if (await writeVerifiedPoint(store, next, point, signal ? { signal } : {}))
        report.verifiedLsn = next.verified_lsn;
    } catch (err) {
      if (isWalArchiverError(err, ErrorCodes.ABORTED)) throw err;
      finding('warning', `the verified point was not recorded: ${describeError(err)}`, recordKey);
    }
  }
  options.onPartition?.(report);
  return report;
}

/** Verifies one partition, or every partition the objects and the global manifest name. */
export async function verifyArchive(store: ObjectStore, given: VerifyOptions): Promise<VerifyReport> {
  // Every request listens on the signal: give them one of their own.
  const { controller, release } = followAbort(given.signal);
  try {
    return await verifyWith(store, { ...given, signal: controller.signal });
  } finally {
    release();
  }
}

async function verifyWith(store: ObjectStore, options: VerifyOptions): Promise<VerifyReport> {
  const signal = options.signal;
  let globalFaults = 0;
  let globalWarnings = 0;
  const finding = (
    severity: VerifyFinding['severity'],
    message: string,
    key?: string,
    partition?: string,
  ) => {
    if (severity === 'fault') globalFaults++;
    else globalWarnings++;
    options.onFinding?.({ severity, ...(partition ? { partition } : {}), ...(key ? { key } : {}), message });
  };
  let ids: string[];
  if (options.partition !== undefined) {
    ids = [options.partition];
  } else {
    const fromObjects = new Set((await listArchivedPartitions(store, signal ? { signal } : {})).keys());
    let fromGlobal: Set<string> | undefined;
    try {
      const stored = await readGlobalManifest(store, signal ? { signal } : {});
      if (stored) fromGlobal = new Set(Object.keys(stored.value.partitions));
      else
        finding(
          'warning',
          'the global manifest is missing (wal-archiver manifest --rebuild recreates it)',
          'manifest.json',
        );
    } catch (err) {
      if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
      finding('fault', `the global manifest is damaged: ${err.message}`, 'manifest.json');
    }
    for (const id of fromGlobal ?? []) {
      if (!fromObjects.has(id))
        finding('fault', 'the global manifest lists this partition, but it has no object', undefined, id);
    }
    for (const id of fromObjects) {
      if (fromGlobal && !fromGlobal.has(id))
        finding('warning', 'partition has objects but is not in the global manifest (yet)', undefined, id);
    }
    ids = [...fromObjects];
  }
  const partitions: PartitionVerifyReport[] = [];
  for (const id of ids) {
    let timelines: TimelineInfo[];
    try {
      timelines = await listTimelines(store, id, signal);
    } catch (err) {
      if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
      finding('fault', `the timeline history is damaged: ${err.message}`, undefined, id);
      timelines = [{ ...FIRST_TIMELINE }];
    }
    const only = options.timeline;
    for (const t of timelines) {
      if (only !== undefined && t.timeline !== only) continue;
      partitions.push(
        await verifyPartition(store, id, { ...options, timeline: t.timeline, branchLsn: t.branchLsn }),
      );
    }
  }
  return {
    partitions,
    faults: globalFaults + partitions.reduce((n, p) => n + p.faults, 0),
    warnings: globalWarnings + partitions.reduce((n, p) => n + p.warnings, 0),
    checked: partitions.reduce((n, p) => n + p.checked, 0),
  };
}
