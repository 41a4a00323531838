/**
 * The partition manifest, `partitions/<id>/manifest.json` (Contract 4).
 *
 * Written only by the partition's archiving sidecar, inside its pipeline,
 * after each segment or base backup upload: it is what restore starts from,
 * and it never depends on the event bus. Document (schema 1):
 *
 *   {
 *     "schema": 1,
 *     "partition": "7",
 *     "leader": { "node": 2, "term": 5 },            // the last writer; null before the first write
 *     "version": 12,                                 // +1 per write
 *     "archived": { "first_lsn": 1, "last_lsn": 840 },  // contiguous range covered by segments; null when none
 *     "segments": [ { "key", "first_lsn", "last_lsn", "entries", "bytes", "raw_bytes", "sha256",
 *                     "first_committed_at", "last_committed_at", "max_committed_at" (optional),
 *                     "archived_at", "term", "node" } ],
 *     "backups":  [ { "key", "lsn", "taken_at", "max_committed_at" (optional), "bytes", "sha256", "trigger", "term", "node" } ],
 *     "updated_at": "2025-01-01T00:00:00.000Z",
 *     "timeline": 2                                  // only on timelines after the first
 *   }
 *
 * A partition's timeline N >= 2 (src/timeline/history.ts) has a manifest of
 * its own, `partitions/<id>/timelines/<N>/manifest.json`, whose records all
 * name keys of that timeline; fencing is per timeline, since a restored
 * cluster's terms start again.
 *
 * Segments are sorted by first LSN (then last LSN), backups by LSN.
 *
 * Rules, all in pure functions (`applyPartitionUpdate`):
 * - Fencing: the writer carries its Raft (node, term). A stored leader with a
 *   higher term, or another node at the same term (Raft elects at most one
 *   leader per term), makes the write fail with FENCED, which is not
 *   retryable: a stale leader's sidecar stops. Otherwise the writer becomes
 *   the recorded leader.
 * - Never backwards: segments and backups are unions by key (a key names one
 *   immutable object, so the same key with a different checksum or range is
 *   CORRUPT). `archived` is the contiguous run of segments (overlaps allowed,
 *   a gap ends it) that contains the previous `archived.last_lsn`, so
 *   `last_lsn` only grows; the first write takes the lowest run. Retention
 *   removes segments explicitly, which moves `first_lsn` up; a removal that
 *   would uncover the previous `last_lsn` is refused.
 * - Re-applying an update already applied changes nothing and writes nothing.
 *
 * Time → LSN: every segment records the commit times of its first and last
 * entries, so the manifest knows the commit time of every segment boundary;
 * restore planning (`src/restore/plan.ts`) resolves a time and covers an LSN
 * range from them.
 */

import { ErrorCodes, WalArchiverError, isWalArchiverError } from '../../contract/errors.js';
import {
  BACKUP_TRIGGERS,
  FieldReader,
  corrupt,
  type BackupTrigger,
  type WalArchivedEvent,
  type WalBackupEvent,
} from '../../contract/events/schemas.js';
import type { ObjectStore } from '../store/object-store.js';
import { readDocument, updateDocument, type StoredDocument, type UpdateOptions } from './cas.js';
import { parsePartitionId } from '../../contract/partition-id.js';
import { partitionManifestKey, tryParseBaseKey, tryParseSegmentKey } from './keys.js';

export const PARTITION_MANIFEST_SCHEMA = 1;

export interface LeaderRef {
  node: number;
  term: number;
}

export interface ArchivedRange {
  first_lsn: number;
  last_lsn: number;
}

export interface SegmentRecord {
  key: string;
  first_lsn: number;
  last_lsn: number;
  entries: number;
  bytes: number;
  raw_bytes: number;
  sha256: string;
  /** Commit time of the entry at first_lsn. */
  first_committed_at: string;
  /** Commit time of the entry at last_lsn. */
  last_committed_at: string;
  /**
   * The greatest commit time of any entry in the segment (stamps need not
   * grow with the LSN). Absent in records written before it was recorded.
   */
  max_committed_at?: string;
  archived_at: string;
  term: number;
  node: number;
}

export interface BackupRecord {
  key: string;
  lsn: number;
  taken_at: string;
  /**
   * At least the greatest commit time of the entries up to `lsn` (absent when
   * the node could not bound them): a time target at or after it reaches `lsn`.
   */
  max_committed_at?: string;
  bytes: number;
  sha256: string;
  trigger: BackupTrigger;
  term: number;
  node: number;
}

export interface PartitionManifest {
  schema: 1;
  partition: string;
  leader: LeaderRef | null;
  version: number;
  archived: ArchivedRange | null;
  segments: SegmentRecord[];
  backups: BackupRecord[];
  /**
   * Every LSN up to this one has been published on `wal.entries` (at least
   * once). A new leader's sidecar resumes publishing after it, so a handoff
   * while the event bus was down loses no event.
   */
  published_lsn: number;
  updated_at: string;
  /** The timeline this manifest is of; absent: timeline 1. */
  timeline?: number;
}

/** Who writes: the sidecar of the partition's leader, with the Raft term it leads in. */
export interface ManifestWriter {
  node: number;
  term: number;
}

/** What one write adds or removes. Empty: only records the writer as leader. */
export interface PartitionManifestUpdate {
  segments?: readonly SegmentRecord[];
  backups?: readonly BackupRecord[];
  /** Retention: keys of segments to forget (oldest first). */
  removeSegments?: readonly string[];
  /** Retention: keys of base backups to forget. */
  removeBackups?: readonly string[];
  /** The writer's `wal.entries` cursor; the stored one only grows. */
  publishedLsn?: number;
}

// ---------------------------------------------------------------------------
// Parsing

/**
 * The parser of one kind of record (`segment`, `backup`) of a partition
 * manifest's lists: a reader named after the record, its fields read by `read`.
 */
function recordParser<T>(
  kind: string,
  read: (r: FieldReader, partition: string, timeline: number) => T,
): (value: unknown, partition: string, index: number, timeline: number) => T {
  return (value, partition, index, timeline) =>
    read(
      new FieldReader(value, `partition ${partition}${onTimeline(timeline)} manifest ${kind} ${index}`),
      partition,
      timeline,
    );
}

/** " timeline N" after the partition in messages, for timelines after the first. */
export function onTimeline(timeline: number): string {
  return timeline === 1 ? '' : ` timeline ${timeline}`;
}

/** `max_committed_at`, which records written before it existed lack. */
function maxCommittedAt(r: FieldReader): { max_committed_at?: string } {
  return r.has('max_committed_at') ? { max_committed_at: r.time('max_committed_at') } : {};
}

function readSegmentRecord(r: FieldReader, partition: string, timeline: number): SegmentRecord {
  const s: SegmentRecord = {
    key: r.string('key'),
    first_lsn: r.lsn('first_lsn'),
    last_lsn: r.lsn('last_lsn'),
    entries: r.int('entries', 1),
    bytes: r.int('bytes'),
    raw_bytes: r.int('raw_bytes'),
    sha256: r.sha256(),
    first_committed_at: r.time('first_committed_at'),
    last_committed_at: r.time('last_committed_at'),
    ...maxCommittedAt(r),
    archived_at: r.time('archived_at'),
    term: r.term('term'),
    node: r.node('node'),
  };
  const parsed = tryParseSegmentKey(s.key, timeline);
  if (
    !parsed ||
    parsed.partition !== partition ||
    parsed.firstLsn !== s.first_lsn ||
    parsed.lastLsn !== s.last_lsn
  ) {
    throw r.fail(
      'key',
      `is not the segment key of partition ${partition}${onTimeline(timeline)}, LSNs ${s.first_lsn}-${s.last_lsn}`,
    );
  }
  if (s.entries > s.last_lsn - s.first_lsn + 1) throw r.fail('entries', 'is more than the LSN range holds');
  // Commit stamps need not grow with the LSN (a new leader whose clock is
  // behind), so the last entry's time may be before the first's.
  return s;
}

function readBackupRecord(r: FieldReader, partition: string, timeline: number): BackupRecord {
  const b: BackupRecord = {
    key: r.string('key'),
    lsn: r.lsn('lsn'),
    taken_at: r.time('taken_at'),
    ...maxCommittedAt(r),
    bytes: r.int('bytes'),
    sha256: r.sha256(),
    trigger: r.oneOf('trigger', BACKUP_TRIGGERS),
    term: r.term('term'),
    node: r.node('node'),
  };
  const parsed = tryParseBaseKey(b.key, timeline);
  if (!parsed || parsed.partition !== partition || parsed.lsn !== b.lsn) {
    throw r.fail(
      'key',
      `is not the base backup key of partition ${partition}${onTimeline(timeline)}, LSN ${b.lsn}`,
    );
  }
  return b;
}

const parseSegmentRecord = recordParser('segment', readSegmentRecord);
const parseBackupRecord = recordParser('backup', readBackupRecord);

function parseLeader(r: FieldReader): LeaderRef | null {
  if (!r.has('leader')) return null;
  const l = new FieldReader(r.object('leader'), `${r.what} leader`);
  return { node: l.node('node'), term: l.term('term') };
}

function parseArchived(r: FieldReader): ArchivedRange | null {
  if (!r.has('archived')) return null;
  const a = new FieldReader(r.object('archived'), `${r.what} archived`);
  const range = { first_lsn: a.lsn('first_lsn'), last_lsn: a.lsn('last_lsn') };
  if (range.first_lsn > range.last_lsn) throw a.fail('last_lsn', 'is below first_lsn');
  return range;
}

/**
 * Validates a partition manifest document; CORRUPT for anything malformed,
 * for a different partition than `expectedPartition`, or for an `archived`
 * range the segments do not cover.
 */
export function parsePartitionManifest(
  value: unknown,
  expectedPartition?: string,
  expectedTimeline = 1,
): PartitionManifest {
  const r = new FieldReader(
    value,
    expectedPartition
      ? `partition ${expectedPartition}${onTimeline(expectedTimeline)} manifest`
      : 'partition manifest',
  );
  r.schema(PARTITION_MANIFEST_SCHEMA);
  const partition = r.partition();
  if (expectedPartition !== undefined && partition !== expectedPartition) {
    throw r.fail('partition', `is not ${expectedPartition}`);
  }
  const timeline = r.has('timeline') ? r.int('timeline', 1) : 1;
  if (timeline !== expectedTimeline) throw r.fail('timeline', `is not ${expectedTimeline}`);
  const m: PartitionManifest = {
    schema: 1,
    partition,
    leader: parseLeader(r),
    version: r.int('version', 1),
    archived: parseArchived(r),
    segments: r.array('segments').map((s, i) => parseSegmentRecord(s, partition, i, timeline)),
    backups: r.array('backups').map((b, i) => parseBackupRecord(b, partition, i, timeline)),
    published_lsn: r.has('published_lsn') ? r.int('published_lsn', 0) : 0,
    updated_at: r.time('updated_at'),
    ...(timeline !== 1 ? { timeline } : {}),
  };
  const keys = new Set<string>();
  for (const s of m.segments) {
    if (keys.has(s.key)) throw r.fail('segments', `lists ${s.key} twice`);
    keys.add(s.key);
  }
  for (const b of m.backups) {
    if (keys.has(b.key)) throw r.fail('backups', `lists ${b.key} twice`);
    keys.add(b.key);
  }
  if (m.archived) {
    const run = runContaining(m.segments, m.archived.last_lsn);
    if (!run || run.first_lsn !== m.archived.first_lsn || run.last_lsn !== m.archived.last_lsn) {
      throw r.fail('archived', 'is not the contiguous range of its segments');
    }
  } else if (m.segments.length > 0) {
    throw r.fail('archived', 'is missing although there are segments');
  }
  m.segments.sort(compareSegments);
  m.backups.sort(compareBackups);
  return m;
}

// ---------------------------------------------------------------------------
// Records from events

/** The manifest record of an uploaded segment, from its `wal.archived` event. */
export function segmentFromArchivedEvent(e: WalArchivedEvent): SegmentRecord {
  return {
    key: e.key,
    first_lsn: e.first_lsn,
    last_lsn: e.last_lsn,
    entries: e.entries,
    bytes: e.bytes,
    raw_bytes: e.raw_bytes,
    sha256: e.sha256,
    first_committed_at: e.first_committed_at,
    last_committed_at: e.last_committed_at,
    archived_at: e.archived_at,
    term: e.term,
    node: e.node,
  };
}

/** The manifest record of a base backup, from its `wal.backups` event. */
export function backupFromBackupEvent(e: WalBackupEvent): BackupRecord {
  return {
    key: e.key,
    lsn: e.lsn,
    taken_at: e.finished_at,
    bytes: e.bytes,
    sha256: e.sha256,
    trigger: e.trigger,
    term: e.term,
    node: e.node,
  };
}

// ---------------------------------------------------------------------------
// Pure update logic

export function compareSegments(a: SegmentRecord, b: SegmentRecord): number {
  return a.first_lsn - b.first_lsn || a.last_lsn - b.last_lsn || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

export function compareBackups(a: BackupRecord, b: BackupRecord): number {
  return a.lsn - b.lsn || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

/**
 * The contiguous runs of LSNs the segments cover, lowest first: overlapping
 * or adjacent segments join one run, a gap starts the next.
 */
export function contiguousRuns(
  segments: readonly { first_lsn: number; last_lsn: number }[],
): ArchivedRange[] {
  const sorted = [...segments].sort((a, b) => a.first_lsn - b.first_lsn || a.last_lsn - b.last_lsn);
  const runs: ArchivedRange[] = [];
  for (const s of sorted) {
    const run = runs[runs.length - 1];
    if (run && s.first_lsn <= run.last_lsn + 1) run.last_lsn = Math.max(run.last_lsn, s.last_lsn);
    else runs.push({ first_lsn: s.first_lsn, last_lsn: s.last_lsn });
  }
  return runs;
}

/** The contiguous prefix: the lowest run, ending at the first gap; null without segments. */
export function contiguousPrefix(
  segments: readonly { first_lsn: number; last_lsn: number }[],
): ArchivedRange | null {
  return contiguousRuns(segments)[0] ?? null;
}

function runContaining(
  segments: readonly { first_lsn: number; last_lsn: number }[],
  lsn: number,
): ArchivedRange | undefined {
  return contiguousRuns(segments).find((r) => r.first_lsn <= lsn && lsn <= r.last_lsn);
}

/**
 * The fencing check. Throws FENCED (not retryable) when the stored leader has
 * a higher term than the writer, or the same term but another node.
 */
export function checkFence(partition: string, stored: LeaderRef | null, writer: ManifestWriter): void {
  if (!stored) return;
  if (stored.term > writer.term || (stored.term === writer.term && stored.node !== writer.node)) {
    throw new WalArchiverError(
      ErrorCodes.FENCED,
      `partition ${partition} manifest is owned by node ${stored.node} at term ${stored.term}; ` +
        `node ${writer.node} at term ${writer.term} may no longer write it`,
      {
        retryable: false,
        details: {
          partition,
          stored_node: stored.node,
          stored_term: stored.term,
          node: writer.node,
          term: writer.term,
        },
      },
    );
  }
}

function invalidInput(err: unknown): never {
  if (isWalArchiverError(err, ErrorCodes.CORRUPT)) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, err.message, {
      retryable: false,
      cause: err,
      details: err.details,
    });
  }
  throw err;
}

function sameSegmentObject(a: SegmentRecord, b: SegmentRecord): boolean {
  return (
    a.sha256 === b.sha256 && a.bytes === b.bytes && a.first_lsn === b.first_lsn && a.last_lsn === b.last_lsn
  );
}

function sameBackupObject(a: BackupRecord, b: BackupRecord): boolean {
  return a.sha256 === b.sha256 && a.bytes === b.bytes && a.lsn === b.lsn;
}

/**
 * Adds reported records to `into` by key: a new key is added, a known one must
 * name the same object (CORRUPT otherwise: a key names one immutable object);
 * a malformed record is INVALID_ARGUMENT.
 */
function mergeRecords<T extends { key: string }>(
  into: Map<string, T>,
  reported: readonly unknown[] | undefined,
  parse: (raw: unknown, index: number) => T,
  same: (a: T, b: T) => boolean,
  conflict: (recorded: T, reportedNow: T) => string,
  partition: string,
): void {
  (reported ?? []).forEach((raw, i) => {
    let r: T;
    try {
      r = parse(raw, i);
    } catch (err) {
      invalidInput(err);
    }
    const existing = into.get(r.key);
    if (existing && !same(existing, r))
      throw corrupt(`partition ${partition} manifest`, conflict(existing, r), { partition, key: r.key });
    if (!existing) into.set(r.key, r);
  });
}

/** An empty manifest at version 0, as the base of a partition's first write. */
export function emptyPartitionManifest(partition: string, now: Date, timeline = 1): PartitionManifest {
  return {
    schema: 1,
    partition: parsePartitionId(partition),
    leader: null,
    version: 0,
    archived: null,
    segments: [],
    backups: [],
    published_lsn: 0,
    updated_at: now.toISOString(),
    ...(timeline !== 1 ? { timeline } : {}),
  };
}

function contentOf(m: PartitionManifest): string {
  return JSON.stringify([m.leader, m.archived, m.segments, m.backups, m.published_lsn]);
}

export interface ApplyResult {
  manifest: PartitionManifest;
  /** False when the update was already applied: nothing needs writing. */
  changed: boolean;
}

/**
 * Applies an update to a partition manifest (undefined: none stored yet).
 * Pure: returns a new manifest and leaves `current` alone. Throws FENCED,
 * INVALID_ARGUMENT (malformed records, a removal that would uncover the
 * archived range) or CORRUPT (a key recorded with another checksum).
 */
export function applyPartitionUpdate(
  current: PartitionManifest | undefined,
  partition: string,
  writer: ManifestWriter,
  update: PartitionManifestUpdate,
  now: Date,
  timeline = 1,
): ApplyResult {
  const base = current ?? emptyPartitionManifest(partition, now, timeline);
  if (base.partition !== partition) {
    throw corrupt(`partition ${partition} manifest`, `holds partition ${base.partition}`);
  }
  if (
    !Number.isSafeInteger(writer.node) ||
    writer.node < 1 ||
    !Number.isSafeInteger(writer.term) ||
    writer.term < 0
  ) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `invalid manifest writer ${JSON.stringify(writer)}`,
      {
        retryable: false,
      },
    );
  }
  checkFence(partition, base.leader, writer);

  const segments = new Map(base.segments.map((s) => [s.key, s]));
  const backups = new Map(base.backups.map((b) => [b.key, b]));

  for (const key of update.removeSegments ?? []) segments.delete(key);
  for (const key of update.removeBackups ?? []) backups.delete(key);

  mergeRecords(
    segments,
    update.segments,
    (raw, i) => parseSegmentRecord(raw, partition, i, timeline),
    sameSegmentObject,
    (was, now) =>
      `segment ${now.key} is recorded with sha256 ${was.sha256} (${was.bytes} bytes), now reported with ${now.sha256} (${now.bytes} bytes)`,
    partition,
  );
  mergeRecords(
    backups,
    update.backups,
    (raw, i) => parseBackupRecord(raw, partition, i, timeline),
    sameBackupObject,
    (was, now) =>
      `base backup ${now.key} is recorded with sha256 ${was.sha256}, now reported with ${now.sha256}`,
    partition,
  );

  const segmentList = [...segments.values()].sort(compareSegments);
  let archived: ArchivedRange | null;
  if (base.archived) {
    const run = runContaining(segmentList, base.archived.last_lsn);
    if (!run) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `partition ${partition}: removing these segments would uncover archived LSN ${base.archived.last_lsn}`,
        { retryable: false, details: { partition, lsn: base.archived.last_lsn } },
      );
    }
    archived = run;
  } else {
    archived = contiguousPrefix(segmentList);
  }

  const next: PartitionManifest = {
    schema: 1,
    partition,
    leader: { node: writer.node, term: writer.term },
    version: base.version + 1,
    archived,
    segments: segmentList,
    backups: [...backups.values()].sort(compareBackups),
    published_lsn: Math.max(base.published_lsn, update.publishedLsn ?? 0),
    updated_at: now.toISOString(),
    ...(timeline !== 1 ? { timeline } : {}),
  };
  if (current && contentOf(current) === contentOf(next)) return { manifest: current, changed: false };
  return { manifest: next, changed: true };
}

// ---------------------------------------------------------------------------
// Queries

/** The segments within the archived range (those restore may use), by first LSN. */
export function archivedSegments(m: PartitionManifest): SegmentRecord[] {
  const a = m.archived;
  if (!a) return [];
  return m.segments.filter((s) => s.first_lsn >= a.first_lsn && s.last_lsn <= a.last_lsn);
}

/** The base backup with the greatest LSN ≤ `lsn` (any LSN when omitted), or undefined. */
export function latestBackupAtOrBefore(
  m: PartitionManifest,
  lsn = Number.MAX_SAFE_INTEGER,
): BackupRecord | undefined {
  let best: BackupRecord | undefined;
  for (const b of m.backups) if (b.lsn <= lsn && (!best || b.lsn > best.lsn)) best = b;
  return best;
}

// ---------------------------------------------------------------------------
// Object store

export interface PartitionManifestOptions extends UpdateOptions<PartitionManifest> {
  /** The clock (tests pass a fixed one). */
  now?: () => Date;
  /** The timeline whose manifest this is (default 1). */
  timeline?: number;
}

export interface PartitionManifestWrite {
  manifest: PartitionManifest;
  /** False when the update was already applied (nothing written). */
  written: boolean;
  etag: string | undefined;
  attempts: number;
}

/** Reads and validates a partition's manifest; undefined when there is none; CORRUPT when it is malformed. */
export async function readPartitionManifest(
  store: ObjectStore,
  partition: string,
  options: { signal?: AbortSignal; timeline?: number } = {},
): Promise<StoredDocument<PartitionManifest> | undefined> {
  const timeline = options.timeline ?? 1;
  return readDocument(
    store,
    partitionManifestKey(partition, timeline),
    (v) => parsePartitionManifest(v, partition, timeline),
    options.signal ? { signal: options.signal } : {},
  );
}

/**
 * Applies `update` to the stored partition manifest with compare-and-swap,
 * re-reading and re-applying after a lost race (bounded). Throws FENCED when
 * a newer leader owns the manifest, CORRUPT when the stored one is malformed
 * (it is never overwritten then).
 */
export async function updatePartitionManifest(
  store: ObjectStore,
  partition: string,
  writer: ManifestWriter,
  update: PartitionManifestUpdate,
  options: PartitionManifestOptions = {},
): Promise<PartitionManifestWrite> {
  const now = options.now ?? (() => new Date());
  const timeline = options.timeline ?? 1;
  const result = await updateDocument(
    store,
    partitionManifestKey(partition, timeline),
    (v) => parsePartitionManifest(v, partition, timeline),
    (current) => {
      const applied = applyPartitionUpdate(current, partition, writer, update, now(), timeline);
      return applied.changed ? applied.manifest : undefined;
    },
    options,
  );
  return {
    manifest: result.value ?? emptyPartitionManifest(partition, now(), timeline),
    written: result.written,
    etag: result.etag,
    attempts: result.attempts,
  };
}
