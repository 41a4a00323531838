/**
 * The global manifest, `manifest.json` at the store's root (Contract 4): one
 * line per partition, for operators and for `restore --all`.
 *
 *   {
 *     "schema": 1,
 *     "version": 42,                    // +1 per write
 *     "partitions": {
 *       "7": {
 *         "leader": { "node": 2, "term": 5 },   // node null: the term is known, its leader not; null: nothing known
 *         "archived_lsn": 840,                  // 0 when nothing is archived
 *         "committed_lsn": 845,                 // highest commit LSN reported with a segment
 *         "lag_entries": 5,                     // committed_lsn - archived_lsn
 *         "lag_seconds": 0.8,                   // optional: archived_at - last_committed_at of the newest segment
 *         "last_archived_at": "…" | null,
 *         "latest_backup": { "key", "lsn", "taken_at", "bytes" } | null,
 *         "backups_count": 3,
 *         "segments_count": 17,
 *         "archived_bytes": 123456,
 *         "timeline": 2                         // only after a restore: the timeline the line is of
 *       }
 *     },
 *     "updated_at": "…"
 *   }
 *
 * It is a projection: `foldEvent` folds `wal.archived`, `wal.backups` and
 * `wal.leadership` events into it. The fold is pure and tolerates
 * at-least-once delivery and any interleaving of partitions: LSNs and times
 * are maxima, the leader with the highest term wins (a known leader beats an
 * unknown one of the same term), the latest backup is the one with the
 * highest LSN. Counts and bytes grow only with an event that advances its
 * partition (a segment past `archived_lsn`, a backup past the latest), so a
 * redelivered event is not counted twice; built from the objects they are
 * exact.
 *
 * A partition's line is of its latest archive timeline (src/timeline): an
 * event of a later timeline than the line's starts the line again from it
 * (a restored cluster's LSNs and terms start over), one of an earlier
 * timeline is ignored.
 *
 * `GlobalManifestWriter` applies batches with compare-and-swap, so several
 * sidecars writing at once never lose each other's updates.
 * `rebuildFromEvents` replays the topics; `rebuildFromObjects` reads the
 * partition manifests, or lists the objects where there is none.
 */

import { randomBytes } from 'node:crypto';
import { ErrorCodes, isWalArchiverError, throwIfAborted } from '../../contract/errors.js';
import {
  Topics,
  type ConsumedEvent,
  type EventBus,
  type Subscription,
} from '../../contract/events/event-bus.js';
import { comparePartitionIds, isPartitionId } from '../../contract/partition-id.js';
import { sleep } from '../../contract/retry.js';
import {
  FieldReader,
  corrupt,
  parseTopicEvent,
  type TopicEvent,
  type WalArchivedEvent,
  type WalBackupEvent,
  type WalLeadershipEvent,
} from '../../contract/events/schemas.js';
import type { ObjectInfo, ObjectStore } from '../store/object-store.js';
import { MetadataKeys } from '../store/object-store.js';
import { readDocument, updateDocument, type CasOptions, type StoredDocument } from './cas.js';
import { GLOBAL_MANIFEST_KEY, tryParseBaseKey, tryParseSegmentKey } from './keys.js';
import { listArchivedPartitions, type ArchivedPartition } from './archived-partitions.js';
import { listTimelines } from '../timeline/history.js';
import { formatLsn } from '../../contract/wal/lsn.js';
import { contiguousPrefix, readPartitionManifest, type PartitionManifest } from './partition-manifest.js';

export const GLOBAL_MANIFEST_SCHEMA = 1;

export interface GlobalLeader {
  /** The leader's node ID; null when the term is known but its leader is not. */
  node: number | null;
  term: number;
}

export interface LatestBackup {
  key: string;
  lsn: number;
  taken_at: string;
  bytes: number;
}

export interface GlobalPartitionEntry {
  leader: GlobalLeader | null;
  archived_lsn: number;
  committed_lsn: number;
  lag_entries: number;
  lag_seconds?: number;
  last_archived_at: string | null;
  latest_backup: LatestBackup | null;
  backups_count: number;
  segments_count: number;
  archived_bytes: number;
  /** The archive timeline the line describes; absent: timeline 1. */
  timeline?: number;
}

export interface GlobalManifest {
  schema: 1;
  version: number;
  partitions: Record<string, GlobalPartitionEntry>;
  updated_at: string;
}

/** The events the global manifest is a fold of. */
export type ManifestEvent = Exclude<TopicEvent, { topic: typeof Topics.ENTRIES }>;

/** The topics the global manifest is folded from. */
export const MANIFEST_TOPICS = [Topics.ARCHIVED, Topics.BACKUPS, Topics.LEADERSHIP] as const;

// ---------------------------------------------------------------------------
// Ordering and parsing

function sortedPartitions(
  partitions: Record<string, GlobalPartitionEntry>,
): Record<string, GlobalPartitionEntry> {
  const out: Record<string, GlobalPartitionEntry> = {};
  for (const id of Object.keys(partitions).sort(comparePartitionIds))
    out[id] = partitions[id] as GlobalPartitionEntry;
  return out;
}

function parseEntry(value: unknown, id: string): GlobalPartitionEntry {
  const r = new FieldReader(value, `global manifest partition ${id}`);
  let leader: GlobalLeader | null = null;
  if (r.has('leader')) {
    const l = new FieldReader(r.object('leader'), `global manifest partition ${id} leader`);
    leader = { node: l.has('node') ? l.node('node') : null, term: l.term('term') };
  }
  let latest: LatestBackup | null = null;
  if (r.has('latest_backup')) {
    const b = new FieldReader(r.object('latest_backup'), `global manifest partition ${id} latest_backup`);
    latest = { key: b.string('key'), lsn: b.lsn('lsn'), taken_at: b.time('taken_at'), bytes: b.int('bytes') };
  }
  const entry: GlobalPartitionEntry = {
    leader,
    archived_lsn: r.int('archived_lsn'),
    committed_lsn: r.int('committed_lsn'),
    lag_entries: r.int('lag_entries'),
    last_archived_at: r.optionalTime('last_archived_at'),
    latest_backup: latest,
    backups_count: r.int('backups_count'),
    segments_count: r.int('segments_count'),
    archived_bytes: r.int('archived_bytes'),
  };
  if (r.has('timeline')) {
    const timeline = r.int('timeline', 1);
    if (timeline !== 1) entry.timeline = timeline;
  }
  if (r.has('lag_seconds')) {
    const v = r.obj.lag_seconds;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
      throw r.fail('lag_seconds', 'must be a number ≥ 0');
    entry.lag_seconds = v;
  }
  return withLag(entry);
}

/** Validates a global manifest document; CORRUPT for anything malformed. */
export function parseGlobalManifest(value: unknown): GlobalManifest {
  const r = new FieldReader(value, 'global manifest');
  r.schema(GLOBAL_MANIFEST_SCHEMA);
  const raw = new FieldReader(r.object('partitions'), 'global manifest partitions');
  const partitions: Record<string, GlobalPartitionEntry> = {};
  for (const id of Object.keys(raw.obj)) {
    if (!isPartitionId(id))
      throw corrupt('global manifest', `partition ID ${JSON.stringify(id)} is malformed`);
    partitions[id] = parseEntry(raw.obj[id], id);
  }
  return {
    schema: 1,
    version: r.int('version', 1),
    partitions: sortedPartitions(partitions),
    updated_at: r.time('updated_at'),
  };
}

// ---------------------------------------------------------------------------
// The fold

export function emptyGlobalManifest(now: Date): GlobalManifest {
  return { schema: 1, version: 0, partitions: {}, updated_at: now.toISOString() };
}

export function emptyPartitionEntry(): GlobalPartitionEntry {
  return {
    leader: null,
    archived_lsn: 0,
    committed_lsn: 0,
    lag_entries: 0,
    last_archived_at: null,
    latest_backup: null,
    backups_count: 0,
    segments_count: 0,
    archived_bytes: 0,
  };
}

/** The leader to keep of two: higher term, then a known leader, then the lower node ID (for determinism). */
export function preferLeader(a: GlobalLeader | null, b: GlobalLeader | null): GlobalLeader | null {
  if (!a) return b;
  if (!b) return a;
  if (a.term !== b.term) return a.term > b.term ? a : b;
  if (a.node === null) return b;
  if (b.node === null) return a;
  return a.node <= b.node ? a : b;
}

function maxTime(a: string | null, b: string | null): string | null {
  if (a === null) return b;
  if (b === null) return a;
  return a >= b ? a : b;
}

function withLag(e: GlobalPartitionEntry): GlobalPartitionEntry {
  e.lag_entries = Math.max(0, e.committed_lsn - e.archived_lsn);
  return e;
}

function secondsBetween(from: string, to: string): number {
  return Math.max(0, Date.parse(to) - Date.parse(from)) / 1000;
}

function foldArchived(e: GlobalPartitionEntry, ev: WalArchivedEvent): void {
  e.leader = preferLeader(e.leader, { node: ev.node, term: ev.term });
  if (ev.last_lsn > e.archived_lsn) {
    e.archived_lsn = ev.last_lsn;
    e.segments_count += 1;
    e.archived_bytes += ev.bytes;
    e.lag_seconds = secondsBetween(ev.last_committed_at, ev.archived_at);
  }
  e.committed_lsn = Math.max(e.committed_lsn, ev.committed_lsn);
  e.last_archived_at = maxTime(e.last_archived_at, ev.archived_at);
  withLag(e);
}

function foldBackup(e: GlobalPartitionEntry, ev: WalBackupEvent): void {
  e.leader = preferLeader(e.leader, { node: ev.node, term: ev.term });
  if (!e.latest_backup || ev.lsn > e.latest_backup.lsn) {
    e.latest_backup = { key: ev.key, lsn: ev.lsn, taken_at: ev.finished_at, bytes: ev.bytes };
    e.backups_count += 1;
  }
}

function foldLeadership(e: GlobalPartitionEntry, ev: WalLeadershipEvent): void {
  e.leader = preferLeader(e.leader, { node: ev.leader, term: ev.term });
}

function copyEntry(e: GlobalPartitionEntry): GlobalPartitionEntry {
  return {
    ...e,
    leader: e.leader && { ...e.leader },
    latest_backup: e.latest_backup && { ...e.latest_backup },
  };
}

/**
 * Folds events into the manifest's partitions. Pure: returns a new manifest
 * (same version and updated_at; the writer sets those) and leaves `state`
 * alone. Folding an event twice, or events of different partitions in any
 * order, gives the same result.
 */
export function foldEvents(state: GlobalManifest, events: readonly ManifestEvent[]): GlobalManifest {
  const partitions = { ...state.partitions };
  const copied = new Set<string>();
  for (const event of events) {
    const id = event.value.partition;
    let entry = partitions[id];
    if (!entry) entry = emptyPartitionEntry();
    else if (!copied.has(id)) entry = copyEntry(entry);
    copied.add(id);
    if (event.topic !== Topics.LEADERSHIP) {
      const timeline = event.value.timeline ?? 1;
      const current = entry.timeline ?? 1;
      if (timeline < current) {
        partitions[id] = entry;
        continue;
      }
      if (timeline > current) entry = { ...emptyPartitionEntry(), timeline };
    }
    partitions[id] = entry;
    switch (event.topic) {
      case Topics.ARCHIVED:
        foldArchived(entry, event.value);
        break;
      case Topics.BACKUPS:
        foldBackup(entry, event.value);
        break;
      case Topics.LEADERSHIP:
        foldLeadership(entry, event.value);
        break;
    }
  }
  return { ...state, partitions: sortedPartitions(partitions) };
}

/** Folds one event: `foldEvents(state, [event])`. */
export function foldEvent(state: GlobalManifest, event: ManifestEvent): GlobalManifest {
  return foldEvents(state, [event]);
}

/** The join of two entries of one partition: the larger of everything. */
export function mergeEntries(a: GlobalPartitionEntry, b: GlobalPartitionEntry): GlobalPartitionEntry {
  // Lines of different timelines do not mix: the later timeline's is the partition's now.
  if ((a.timeline ?? 1) !== (b.timeline ?? 1))
    return copyEntry((a.timeline ?? 1) > (b.timeline ?? 1) ? a : b);
  const ahead = a.archived_lsn >= b.archived_lsn ? a : b;
  const backupOf = (x: GlobalPartitionEntry, y: GlobalPartitionEntry) =>
    !y.latest_backup || (x.latest_backup !== null && x.latest_backup.lsn >= y.latest_backup.lsn) ? x : y;
  const withBackup = backupOf(a, b);
  const out: GlobalPartitionEntry = {
    leader: preferLeader(a.leader, b.leader),
    archived_lsn: ahead.archived_lsn,
    committed_lsn: Math.max(a.committed_lsn, b.committed_lsn),
    lag_entries: 0,
    last_archived_at: maxTime(a.last_archived_at, b.last_archived_at),
    latest_backup: withBackup.latest_backup && { ...withBackup.latest_backup },
    backups_count: Math.max(a.backups_count, b.backups_count),
    segments_count: Math.max(a.segments_count, b.segments_count),
    archived_bytes: Math.max(a.archived_bytes, b.archived_bytes),
    ...(a.timeline !== undefined && a.timeline !== 1 ? { timeline: a.timeline } : {}),
  };
  const lagSeconds = ahead.lag_seconds ?? (a === ahead ? b : a).lag_seconds;
  if (lagSeconds !== undefined) out.lag_seconds = lagSeconds;
  if (out.leader) out.leader = { ...out.leader };
  return withLag(out);
}

/** Merges `partitions` into `state` partition by partition (mergeEntries). Pure. */
export function mergePartitions(
  state: GlobalManifest,
  partitions: Record<string, GlobalPartitionEntry>,
): GlobalManifest {
  const out = { ...state.partitions };
  for (const [id, entry] of Object.entries(partitions)) {
    const existing = out[id];
    out[id] = existing ? mergeEntries(existing, entry) : withLag(copyEntry(entry));
  }
  return { ...state, partitions: sortedPartitions(out) };
}

/**
 * Whether two manifests hold the same partitions with the same values. Folds
 * and merges copy only the entries they change, so an entry that is the same
 * object in both is equal without being compared: with thousands of
 * partitions, a batch compares only the few it touched.
 */
function samePartitions(a: GlobalManifest, b: GlobalManifest): boolean {
  const ids = Object.keys(a.partitions);
  if (ids.length !== Object.keys(b.partitions).length) return false;
  for (const id of ids) {
    const x = a.partitions[id];
    const y = b.partitions[id];
    if (x === y) continue;
    if (!y || JSON.stringify(x) !== JSON.stringify(y)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Projections of other documents

/** The global entry a partition manifest stands for (committed LSN unknown: taken as the archived LSN). */
export function entryFromPartitionManifest(m: PartitionManifest): GlobalPartitionEntry {
  const archivedLsn = m.archived?.last_lsn ?? 0;
  let lastArchivedAt: string | null = null;
  let bytes = 0;
  let lagSeconds: number | undefined;
  for (const s of m.segments) {
    bytes += s.bytes;
    lastArchivedAt = maxTime(lastArchivedAt, s.archived_at);
    if (s.last_lsn === archivedLsn) lagSeconds = secondsBetween(s.last_committed_at, s.archived_at);
  }
  let latest: LatestBackup | null = null;
  for (const b of m.backups) {
    if (!latest || b.lsn > latest.lsn)
      latest = { key: b.key, lsn: b.lsn, taken_at: b.taken_at, bytes: b.bytes };
  }
  const entry: GlobalPartitionEntry = {
    leader: m.leader && { node: m.leader.node, term: m.leader.term },
    archived_lsn: archivedLsn,
    committed_lsn: archivedLsn,
    lag_entries: 0,
    last_archived_at: lastArchivedAt,
    latest_backup: latest,
    backups_count: m.backups.length,
    segments_count: m.segments.length,
    archived_bytes: bytes,
    ...(m.timeline !== undefined && m.timeline !== 1 ? { timeline: m.timeline } : {}),
  };
  if (lagSeconds !== undefined) entry.lag_seconds = lagSeconds;
  return entry;
}

/** Parses one consumed event value into a manifest event; none for `wal.entries` (nothing to fold). */
function toManifestEvent(topic: string, value: unknown): ManifestEvent | undefined {
  const parsed = parseTopicEvent(topic, value);
  return parsed.topic === Topics.ENTRIES ? undefined : parsed;
}

/**
 * Parses a batch of consumed events of `topic` into manifest events; each
 * one that does not parse goes to `onSkip` (which may throw to stop the batch).
 */
export function toManifestEvents(
  topic: string,
  batch: readonly ConsumedEvent[],
  onSkip: (consumed: ConsumedEvent, err: unknown) => void,
): ManifestEvent[] {
  const events: ManifestEvent[] = [];
  for (const consumed of batch) {
    let event: ManifestEvent | undefined;
    try {
      event = toManifestEvent(topic, consumed.value);
    } catch (err) {
      onSkip(consumed, err);
      continue;
    }
    if (event) events.push(event);
  }
  return events;
}

// ---------------------------------------------------------------------------
// The writer

export interface GlobalManifestWriterOptions extends CasOptions {
  now?: () => Date;
}

export interface GlobalManifestWrite {
  manifest: GlobalManifest;
  /** False when nothing changed (nothing written). */
  written: boolean;
  etag: string | undefined;
  attempts: number;
}

/**
 * Writes the global manifest with compare-and-swap: read, fold, replace on
 * the ETag read, and on a lost race read again and fold again (bounded).
 * A batch that changes nothing is not written.
 */
export class GlobalManifestWriter {
  private readonly now: () => Date;
  /**
   * The manifest and its ETag as this writer last read or wrote it: the next
   * update goes against it without reading the document first. When another
   * writer changed it meanwhile the compare-and-swap fails and the update
   * reads it (a stale copy costs one request, not a conflict).
   */
  private stored: StoredDocument<GlobalManifest> | undefined;

  constructor(
    readonly store: ObjectStore,
    private readonly options: GlobalManifestWriterOptions = {},
  ) {
    this.now = options.now ?? (() => new Date());
  }

  /** The stored manifest and its ETag; undefined when there is none; CORRUPT when malformed. */
  read(options: { signal?: AbortSignal } = {}): Promise<StoredDocument<GlobalManifest> | undefined> {
    return readGlobalManifest(this.store, options);
  }

  /** Folds a batch of events into the stored manifest. */
  apply(
    events: readonly ManifestEvent[],
    options: { signal?: AbortSignal } = {},
  ): Promise<GlobalManifestWrite> {
    return this.update((base) => foldEvents(base, events), options);
  }

  /** Merges partition entries (e.g. a rebuild) into the stored manifest, keeping the larger of each value. */
  merge(
    partitions: Record<string, GlobalPartitionEntry>,
    options: { signal?: AbortSignal } = {},
  ): Promise<GlobalManifestWrite> {
    return this.update((base) => mergePartitions(base, partitions), options);
  }

  private async update(
    change: (base: GlobalManifest) => GlobalManifest,
    options: { signal?: AbortSignal },
  ): Promise<GlobalManifestWrite> {
    const result = await updateDocument(
      this.store,
      GLOBAL_MANIFEST_KEY,
      parseGlobalManifest,
      (current) => {
        const now = this.now();
        const base = current ?? emptyGlobalManifest(now);
        const next = change(base);
        if (current && samePartitions(current, next)) return undefined;
        return { ...next, version: base.version + 1, updated_at: now.toISOString() };
      },
      { ...this.options, signal: options.signal ?? this.options.signal, current: this.stored },
    );
    this.stored =
      result.value !== undefined && result.etag !== undefined
        ? { value: result.value, etag: result.etag }
        : undefined;
    return {
      manifest: result.value ?? emptyGlobalManifest(this.now()),
      written: result.written,
      etag: result.etag,
      attempts: result.attempts,
    };
  }
}

/** Reads and validates the global manifest; undefined when there is none. */
export function readGlobalManifest(
  store: ObjectStore,
  options: { signal?: AbortSignal } = {},
): Promise<StoredDocument<GlobalManifest> | undefined> {
  return readDocument(store, GLOBAL_MANIFEST_KEY, parseGlobalManifest, options);
}

// ---------------------------------------------------------------------------
// Rebuilding from the events

/** How long the topics must stay quiet before a replay counts as caught up. */
export const DEFAULT_REBUILD_IDLE_MS = 5_000;
/** The longest a replay runs. */
export const DEFAULT_REBUILD_MAX_MS = 10 * 60_000;

export interface RebuildFromEventsOptions {
  /**
   * Consumer group name stem; each topic is read by its own group `<group>.<topic>`
   * (members of one group should subscribe to the same topics). Default a
   * fresh `manifest-rebuild-<random>`, so the replay starts at the beginning.
   */
  group?: string;
  idleMs?: number;
  maxMs?: number;
  signal?: AbortSignal;
  now?: () => Date;
  /** Told about each malformed event, which is skipped. */
  onSkip?: (topic: string, err: unknown) => void;
}

export interface RebuildFromEventsResult {
  /** The fold of every event seen (version 0: not stored). */
  manifest: GlobalManifest;
  events: number;
  skipped: number;
  /** False when maxMs ran out before the topics went quiet. */
  caughtUp: boolean;
}

/**
 * Replays `wal.archived`, `wal.backups` and `wal.leadership` from the
 * beginning with a fresh consumer group and folds them. The event bus offers
 * no end offsets, so "caught up" means: no event for `idleMs` since the
 * subscriptions started or since the last batch. Choose `idleMs` above the
 * bus's consumer start-up time (a Kafka group join takes seconds); events
 * published during the replay may or may not be included. Malformed events
 * are skipped and counted.
 */
export async function rebuildFromEvents(
  bus: EventBus,
  options: RebuildFromEventsOptions = {},
): Promise<RebuildFromEventsResult> {
  const idleMs = options.idleMs ?? DEFAULT_REBUILD_IDLE_MS;
  const maxMs = options.maxMs ?? DEFAULT_REBUILD_MAX_MS;
  const group =
    options.group ?? `manifest-rebuild-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const now = options.now ?? (() => new Date());
  let state = emptyGlobalManifest(now());
  let events = 0;
  let skipped = 0;
  let lastActivity = Date.now();
  let failure: unknown;
  const subscriptions: Subscription[] = [];
  const started = Date.now();
  try {
    for (const topic of MANIFEST_TOPICS) {
      subscriptions.push(
        await bus.subscribe({
          topic,
          group: `${group}.${topic}`,
          fromBeginning: true,
          handler: async (batch) => {
            const parsed = toManifestEvents(topic, batch, (_consumed, err) => {
              if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
              skipped++;
              options.onSkip?.(topic, err);
            });
            state = foldEvents(state, parsed);
            events += batch.length;
            lastActivity = Date.now();
          },
          onError: (err) => {
            failure ??= err;
          },
        }),
      );
    }
    lastActivity = Date.now();
    let caughtUp = false;
    while (Date.now() - started < maxMs) {
      throwIfAborted(options.signal);
      if (Date.now() - lastActivity >= idleMs) {
        caughtUp = true;
        break;
      }
      await sleep(Math.min(100, idleMs), options.signal);
    }
    if (!caughtUp && failure !== undefined) throw failure;
    return { manifest: { ...state, updated_at: now().toISOString() }, events, skipped, caughtUp };
  } finally {
    await Promise.allSettled(subscriptions.map((s) => s.stop()));
  }
}

// ---------------------------------------------------------------------------
// Rebuilding from the objects

export const DEFAULT_REBUILD_CONCURRENCY = 8;

export interface RebuildFromObjectsOptions {
  signal?: AbortSignal;
  now?: () => Date;
  /** Parallel head() requests (default 8). */
  concurrency?: number;
}

export interface RebuildProblem {
  partition: string;
  key: string;
  message: string;
}

export interface RebuildFromObjectsResult {
  /** Version 0: not stored. */
  manifest: GlobalManifest;
  /** Where each partition's entry came from. */
  sources: Record<string, 'manifest' | 'objects'>;
  /** Objects that were skipped: a malformed partition manifest, metadata that contradicts a key. */
  problems: RebuildProblem[];
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Metadata that contradicts the key makes an object unusable; absent metadata is tolerated. */
function metadataProblem(
  info: ObjectInfo | undefined,
  expect: Record<string, readonly string[]>,
): string | undefined {
  if (!info) return 'disappeared while being read';
  for (const [name, values] of Object.entries(expect)) {
    const got = info.metadata[name];
    if (got !== undefined && !values.includes(got))
      return `metadata ${name}=${got} contradicts the key (${values[0]})`;
  }
  const sha = info.metadata[MetadataKeys.SHA256];
  if (sha !== undefined && !/^[0-9a-f]{64}$/.test(sha)) return `metadata ${MetadataKeys.SHA256} is malformed`;
  return undefined;
}

/** An LSN as metadata may carry it: decimal, or the 13-character WAL name. */
function lsnForms(lsn: number): string[] {
  return [String(lsn), formatLsn(lsn)];
}

async function entryFromObjects(
  store: ObjectStore,
  partition: string,
  listed: ArchivedPartition,
  options: RebuildFromObjectsOptions,
  problems: RebuildProblem[],
): Promise<GlobalPartitionEntry> {
  const concurrency = options.concurrency ?? DEFAULT_REBUILD_CONCURRENCY;
  const segments = (
    await mapLimit(listed.segments, concurrency, async (obj) => {
      const k = tryParseSegmentKey(obj.key)!;
      const info = await store.head(obj.key, { signal: options.signal });
      const problem = metadataProblem(info, {
        [MetadataKeys.FIRST_LSN]: lsnForms(k.firstLsn),
        [MetadataKeys.LAST_LSN]: lsnForms(k.lastLsn),
        [MetadataKeys.PARTITION]: [partition],
      });
      if (problem) {
        problems.push({ partition, key: obj.key, message: problem });
        return undefined;
      }
      return { first_lsn: k.firstLsn, last_lsn: k.lastLsn, info: info! };
    })
  ).filter((s) => s !== undefined);
  const backups = (
    await mapLimit(listed.backups, concurrency, async (obj) => {
      const k = tryParseBaseKey(obj.key)!;
      const info = await store.head(obj.key, { signal: options.signal });
      const problem = metadataProblem(info, { [MetadataKeys.PARTITION]: [partition] });
      if (problem) {
        problems.push({ partition, key: obj.key, message: problem });
        return undefined;
      }
      return { lsn: k.lsn, info: info! };
    })
  ).filter((b) => b !== undefined);

  const entry = emptyPartitionEntry();
  entry.archived_lsn = contiguousPrefix(segments)?.last_lsn ?? 0;
  entry.committed_lsn = entry.archived_lsn;
  entry.segments_count = segments.length;
  for (const s of segments) {
    entry.archived_bytes += s.info.size;
    entry.last_archived_at = maxTime(entry.last_archived_at, s.info.lastModified.toISOString());
  }
  entry.backups_count = backups.length;
  for (const b of backups) {
    if (!entry.latest_backup || b.lsn > entry.latest_backup.lsn) {
      entry.latest_backup = {
        key: b.info.key,
        lsn: b.lsn,
        taken_at: b.info.lastModified.toISOString(),
        bytes: b.info.size,
      };
    }
  }
  return entry;
}

/**
 * Rebuilds the global manifest from the object store alone: lists
 * `partitions/`, and for each partition takes its manifest.json when there
 * is a valid one, else derives the entry from the listing (segments
 * `partitions/<id>/wal/<first>-<last>.tar.zst`, base backups
 * `partitions/<id>/base/<LSN>.tar.zst`, checked against their metadata by
 * head()), with the leader unknown and no lag. Keys that are neither are
 * ignored.
 */
export async function rebuildFromObjects(
  store: ObjectStore,
  options: RebuildFromObjectsOptions = {},
): Promise<RebuildFromObjectsResult> {
  const now = options.now ?? (() => new Date());
  const listed = await listArchivedPartitions(store, options.signal ? { signal: options.signal } : {});

  const partitions: Record<string, GlobalPartitionEntry> = {};
  const sources: Record<string, 'manifest' | 'objects'> = {};
  const problems: RebuildProblem[] = [];
  for (const [id, p] of listed) {
    throwIfAborted(options.signal);
    // After a restore the partition's line is of its latest timeline (its manifest, when it has one).
    try {
      const latest = (await listTimelines(store, id, options.signal)).at(-1)!.timeline;
      const stored =
        latest === 1
          ? undefined
          : await readPartitionManifest(store, id, { timeline: latest, signal: options.signal });
      if (stored) {
        partitions[id] = entryFromPartitionManifest(stored.value);
        sources[id] = 'manifest';
        continue;
      }
    } catch (err) {
      // A damaged history record or manifest is a problem to report; the store being down is not.
      if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
      problems.push({
        partition: id,
        key: String(err.details['key'] ?? `partitions/${id}/timelines/`),
        message: err.message,
      });
    }
    if (p.manifest) {
      try {
        const stored = await readPartitionManifest(store, id, { signal: options.signal });
        if (stored) {
          partitions[id] = entryFromPartitionManifest(stored.value);
          sources[id] = 'manifest';
          continue;
        }
      } catch (err) {
        if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
        problems.push({ partition: id, key: p.manifest.key, message: err.message });
      }
    }
    if (p.segments.length === 0 && p.backups.length === 0) continue;
    partitions[id] = await entryFromObjects(store, id, p, options, problems);
    sources[id] = 'objects';
  }
  return {
    manifest: {
      schema: 1,
      version: 0,
      partitions: sortedPartitions(partitions),
      updated_at: now().toISOString(),
    },
    sources,
    problems,
  };
}
