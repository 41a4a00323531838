import { ErrorCodes, WalArchiverError, isWalArchiverError } from '../../contract/errors.js';
import { silentLogger, type Logger } from '../../contract/log.js';
import { updateDocument, type CasOptions } from '../manifest/cas.js';
import {
  baseBackupPrefix,
  partitionManifestKey,
  segmentPrefix,
  tryParseBaseKey,
  tryParseSegmentKey,
} from '../manifest/keys.js';
import {
  applyPartitionUpdate,
  parsePartitionManifest,
  type ManifestWriter,
  type PartitionManifest,
} from '../manifest/partition-manifest.js';
import type { ObjectStore } from '../store/object-store.js';

/**
 * Retention: which base backups to keep, and which WAL segments no kept
 * backup needs; planned by a pure function, executed by an idempotent one.
 *
 * The retention window starts at the oldest kept backup: a restore to any
 * point from there on needs that backup (or a newer one) plus every segment
 * holding an LSN above it, so every segment with last_lsn > its LSN is kept.
 * A backup is kept when any rule keeps it:
 * - keepCount: the newest N backups;
 * - keepAge: every backup finished within the last keepAge ms, and the newest
 *   one finished before that, which is what a restore to the start of the
 *   window begins from;
 * - the newest backup, always.
 * Without any backup nothing is deleted (restore needs all the WAL). The
 * segment holding the archived LSN is never removed (the manifest's archived
 * range must stay anchored).
 *
 * Executing (applyRetention) first removes the records from the partition
 * manifest (compare-and-swap), then deletes the objects, so a crash in
 * between leaves unreferenced objects, never a manifest naming a deleted
 * object. Objects under retention lock (WORM) are left in the manifest and
 * the store and reported; a later run deletes them once the lock expires.
 * Unreferenced leftovers of an earlier run (below the window) are found by
 * listing (`orphans`) and deleted too.
 */

export interface RetentionPolicy {
  /** Keep at least the newest N base backups (N ≥ 1). */
  keepCount?: number;
  /** Keep every base backup finished within this many milliseconds (and the one before). */
  keepAge?: number;
}

export interface RetentionPlan {
  partition: string;
  /** Keys of base backups to delete, oldest first. */
  deleteBackups: string[];
  /** Keys of segments to delete, lowest LSN first. */
  deleteSegments: string[];
  /** Keys of base backups kept, oldest first. */
  keepBackups: string[];
  /** Number of segments kept. */
  keepSegments: number;
  /** LSN of the oldest kept backup: the window starts here; undefined when there is no backup. */
  windowStartLsn: number | undefined;
  /** Why each backup is kept or deleted, and why segments go: key → reason. */
  reasons: Record<string, string>;
  /** Objects found by listing that no manifest record names, below the window: deleted too. */
  orphans: string[];
}

function invalid(message: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, message, { retryable: false });
}

export function validateRetentionPolicy(policy: RetentionPolicy): void {
  const { keepCount, keepAge } = policy;
  if (keepCount === undefined && keepAge === undefined) {
    throw invalid('retention needs a keep count or a keep age');
  }
  if (keepCount !== undefined && (!Number.isSafeInteger(keepCount) || keepCount < 1)) {
    throw invalid(`retention keep count must be a positive integer, not ${keepCount}`);
  }
  if (keepAge !== undefined && (typeof keepAge !== 'number' || !(keepAge > 0))) {
    throw invalid(`retention keep age must be a positive duration, not ${keepAge}`);
  }
}

export interface PlanOptions {
  /**
   * Keys found by listing the partition's `base/` and `wal/` folders. Those no
   * manifest record names and that lie entirely below the window (and below
   * the archived range, for segments) are leftovers of an interrupted run.
   */
  objects?: Iterable<string>;
  /**
   * LSNs that must stay restorable whatever the policy: the branch points of
   * later timelines that have no base backup of their own there yet (their
   * history up to it is this timeline's). The newest backup at or before
   * each is kept, and every segment above it.
   */
  protect?: readonly number[];
}

/** Plans retention for one partition (pure). */
export function planRetention(
  manifest: PartitionManifest,
  policy: RetentionPolicy,
  now: Date,
  options: PlanOptions = {},
): RetentionPlan {
  validateRetentionPolicy(policy);
  const partition = manifest.partition;
  const timeline = manifest.timeline ?? 1;
  const backups = [...manifest.backups].sort((a, b) => a.lsn - b.lsn);
  const reasons: Record<string, string> = {};
  const plan: RetentionPlan = {
    partition,
    deleteBackups: [],
    deleteSegments: [],
    keepBackups: [],
    keepSegments: manifest.segments.length,
    windowStartLsn: undefined,
    reasons,
    orphans: [],
  };
  if (backups.length === 0) return plan;

  const keep = new Map<string, string>();
  const newest = backups[backups.length - 1]!;
  keep.set(newest.key, 'newest backup');
  if (policy.keepCount !== undefined) {
    backups.slice(-policy.keepCount).forEach((b) => {
      if (!keep.has(b.key)) keep.set(b.key, `among the newest ${policy.keepCount}`);
    });
  }
  if (policy.keepAge !== undefined) {
    const cutoff = now.getTime() - policy.keepAge;
    let anchor: (typeof backups)[number] | undefined;
    for (const b of backups) {
      const t = Date.parse(b.taken_at);
      if (t > cutoff) {
        if (!keep.has(b.key)) keep.set(b.key, 'within the keep age');
      } else {
        anchor = b;
      }
    }
    if (anchor && !keep.has(anchor.key)) keep.set(anchor.key, 'restore point for the start of the keep age');
  }
  // A branch point below every backup was restored from the WAL alone: keep all of it.
  let fromStart = false;
  for (const lsn of options.protect ?? []) {
    const needed = backups.filter((b) => b.lsn <= lsn).at(-1);
    if (!needed) fromStart = true;
    else if (!keep.has(needed.key))
      keep.set(needed.key, `a later timeline branches at LSN ${lsn} and needs it`);
  }
  for (const b of backups) {
    const why = keep.get(b.key);
    if (why !== undefined) {
      plan.keepBackups.push(b.key);
      reasons[b.key] = `keep: ${why}`;
    } else {
      plan.deleteBackups.push(b.key);
      reasons[b.key] = 'delete: older than every kept backup and outside every keep rule';
    }
  }
  const windowStart = fromStart ? 0 : Math.min(...backups.filter((b) => keep.has(b.key)).map((b) => b.lsn));
  plan.windowStartLsn = windowStart;
  const archivedLast = manifest.archived?.last_lsn;
  for (const s of [...manifest.segments].sort(
    (a, b) => a.first_lsn - b.first_lsn || a.last_lsn - b.last_lsn,
  )) {
    const anchored = archivedLast !== undefined && s.last_lsn >= archivedLast;
    if (s.last_lsn <= windowStart && !anchored) {
      plan.deleteSegments.push(s.key);
      reasons[s.key] = `delete: every LSN is at or below ${windowStart}, the oldest kept backup`;
    }
  }
  plan.keepSegments = manifest.segments.length - plan.deleteSegments.length;

  if (options.objects !== undefined) {
    const named = new Set([...manifest.segments.map((s) => s.key), ...manifest.backups.map((b) => b.key)]);
    const oldestBackup = backups[0]!.lsn;
    const archivedFirst = manifest.archived?.first_lsn;
    for (const key of options.objects) {
      if (named.has(key)) continue;
      const seg = tryParseSegmentKey(key, timeline);
      if (seg?.partition === partition) {
        if (archivedFirst !== undefined && seg.lastLsn < archivedFirst && seg.lastLsn <= windowStart) {
          plan.orphans.push(key);
          reasons[key] = `delete: unreferenced segment below the archived range (starts at ${archivedFirst})`;
        }
        continue;
      }
      const base = tryParseBaseKey(key, timeline);
      if (base?.partition === partition && base.lsn < oldestBackup) {
        plan.orphans.push(key);
        reasons[key] = `delete: unreferenced base backup older than every listed one`;
      }
    }
  }
  return plan;
}

/** Plans retention with the partition's object listing, so leftovers of an interrupted run are found too. */
export async function listPartitionObjects(
  store: ObjectStore,
  partition: string,
  signal?: AbortSignal,
  timeline = 1,
): Promise<string[]> {
  const keys: string[] = [];
  for (const prefix of [baseBackupPrefix(partition, timeline), segmentPrefix(partition, timeline)]) {
    for await (const o of store.list(prefix, { signal })) keys.push(o.key);
  }
  return keys;
}

export interface ApplyRetentionOptions extends Omit<CasOptions, 'signal'> {
  dryRun?: boolean;
  signal?: AbortSignal;
  logger?: Logger;
  now?: () => Date;
  /** The timeline the plan is for (default 1). */
  timeline?: number;
}

export interface RetentionResult {
  partition: string;
  dryRun: boolean;
  /** Records removed from the manifest (or that would be, in a dry run). */
  unlisted: string[];
  /** Objects deleted (or that would be); a key already gone counts as deleted. */
  deleted: string[];
  /** Objects left because they are under retention lock, with the lock's end when known. */
  locked: Array<{ key: string; retainUntil?: string }>;
  /** Objects whose deletion failed otherwise (left for the next run). */
  failed: Array<{ key: string; error: string }>;
}

/**
 * Executes a plan: manifest first (CAS; `writer` is the leader's (node,
 * term), or undefined to act as the leader the manifest records, for a run
 * from any process), then the objects. Idempotent: a second run finds
 * nothing left to do. Objects under retention lock are neither unlisted nor
 * deleted, and are reported in `locked`.
 */
export async function applyRetention(
  store: ObjectStore,
  partition: string,
  writer: ManifestWriter | undefined,
  plan: RetentionPlan,
  options: ApplyRetentionOptions = {},
): Promise<RetentionResult> {
  const now = options.now ?? (() => new Date());
  const timeline = options.timeline ?? 1;
  const log = (options.logger ?? silentLogger).child({ partition, ...(timeline !== 1 ? { timeline } : {}) });
  const signal = options.signal;
  const result: RetentionResult = {
    partition,
    dryRun: options.dryRun ?? false,
    unlisted: [],
    deleted: [],
    locked: [],
    failed: [],
  };
  if (plan.partition !== partition)
    throw invalid(`retention plan is for partition ${plan.partition}, not ${partition}`);

  // Locked objects stay listed: a restore may still use what cannot be deleted.
  const candidates = [...plan.deleteBackups, ...plan.deleteSegments];
  const unlockable = new Set<string>();
  for (const key of [...candidates, ...plan.orphans]) {
    const info = await store.head(key, { signal });
    const until = info?.retention?.retainUntil;
    if (until !== undefined && until.getTime() > now().getTime()) {
      result.locked.push({ key, retainUntil: until.toISOString() });
    } else {
      unlockable.add(key);
    }
  }
  const removeBackups = plan.deleteBackups.filter((k) => unlockable.has(k));
  const removeSegments = plan.deleteSegments.filter((k) => unlockable.has(k));

  if (result.dryRun) {
    result.unlisted = [...removeBackups, ...removeSegments];
    result.deleted = [...result.unlisted, ...plan.orphans.filter((k) => unlockable.has(k))];
    return result;
  }

  if (removeBackups.length + removeSegments.length > 0) {
    const written = await updateDocument<PartitionManifest>(
      store,
      partitionManifestKey(partition, timeline),
      (v) => parsePartitionManifest(v, partition, timeline),
      (current) => {
        if (current === undefined) return undefined;
        const w = writer ?? current.leader;
        if (w === null) return undefined;
        const present = new Set([...current.backups, ...current.segments].map((r) => r.key));
        const update = {
          removeBackups: removeBackups.filter((k) => present.has(k)),
          removeSegments: removeSegments.filter((k) => present.has(k)),
        };
        if (update.removeBackups.length + update.removeSegments.length === 0) return undefined;
        // A newer backup listed meanwhile only moves the window up, never down:
        // everything planned is still below it.
        const applied = applyPartitionUpdate(current, partition, w, update, now(), timeline);
        return applied.changed ? applied.manifest : undefined;
      },
      { ...options, signal },
    );
    const after = new Set(
      [...(written.value?.backups ?? []), ...(written.value?.segments ?? [])].map((r) => r.key),
    );
    result.unlisted = [...removeBackups, ...removeSegments].filter((k) => !after.has(k));
  }

  const toDelete = [...result.unlisted, ...plan.orphans.filter((k) => unlockable.has(k))];
  for (const key of toDelete) {
    try {
      await store.delete(key, { signal });
      result.deleted.push(key);
    } catch (err) {
      if (isWalArchiverError(err, ErrorCodes.OBJECT_LOCKED)) {
        result.locked.push({ key });
      } else if (isWalArchiverError(err, ErrorCodes.ABORTED) || signal?.aborted) {
        throw err;
      } else {
        result.failed.push({ key, error: err instanceof Error ? err.message : String(err) });
      }
    }
  }
  log.info('retention applied', {
    unlisted: result.unlisted.length,
    deleted: result.deleted.length,
    locked: result.locked.length,
    failed: result.failed.length,
  });
  return result;
}
