/**
 * Timelines of a partition's archive.
 *
 * A restore to an earlier point makes a history that differs from the
 * archived one at every LSN after that point. The restored cluster writes it
 * on a new timeline of the same archive, as PostgreSQL does: timeline 1 is
 * the archive as first written (`partitions/<id>/…`), timeline N >= 2 lives
 * in `partitions/<id>/timelines/<N>/` and begins with its history record,
 * `history.json`, created once (conditional create) and never changed:
 *
 *   {
 *     "schema": 1,
 *     "partition": "7",
 *     "timeline": 2,
 *     "parent": 1,                      // the timeline the restore followed
 *     "branch_lsn": 840,                // the restored LSN: LSNs up to it are the parent's history
 *     "branched_at": "2026-…Z",         // when the restore ran; the new history starts after it
 *     "reason": "restore --to-time 2026-…Z",
 *     "restore_id": "…",                // the restore it came from (every replica carries it)
 *     "created_at": "2026-…Z"
 *   }
 *
 * The history of timeline N is its parent's history up to `branch_lsn`, then
 * its own entries. Nothing of the parent is written or removed by the branch.
 */

import { ErrorCodes, WalArchiverError, isWalArchiverError } from '../../contract/errors.js';
import { FieldReader } from '../../contract/events/schemas.js';
import { decodeJson, encodeJson, readAll } from '../manifest/cas.js';
import { historyKey, isTimeline, timelinesPrefix, tryParseHistoryKey } from '../manifest/keys.js';
import type { ObjectStore } from '../store/object-store.js';

export const HISTORY_SCHEMA = 1;
/** A history record is a few hundred bytes: anything far larger is not one. */
const MAX_HISTORY_BYTES = 64 * 1024;

export interface TimelineHistory {
  schema: 1;
  partition: string;
  timeline: number;
  parent: number;
  branch_lsn: number;
  branched_at: string;
  reason: string;
  restore_id: string;
  created_at: string;
}

/** One timeline of a partition: timeline 1 has no parent (0) and branches at LSN 0. */
export interface TimelineInfo {
  timeline: number;
  parent: number;
  branchLsn: number;
  /** Unix ms of the restore that made it; 0 for timeline 1. */
  branchedAt: number;
  reason: string;
  restoreId: string;
}

export const FIRST_TIMELINE: Readonly<TimelineInfo> = Object.freeze({
  timeline: 1,
  parent: 0,
  branchLsn: 0,
  branchedAt: 0,
  reason: 'first',
  restoreId: '',
});

/** Validates a history record; CORRUPT for anything malformed or not the record of (`partition`, `timeline`). */
export function parseHistory(value: unknown, partition: string, timeline: number): TimelineHistory {
  const r = new FieldReader(value, `partition ${partition} timeline ${timeline} history`);
  r.schema(HISTORY_SCHEMA);
  const h: TimelineHistory = {
    schema: 1,
    partition: r.partition(),
    timeline: r.int('timeline', 2),
    parent: r.int('parent', 1),
    branch_lsn: r.lsn('branch_lsn'),
    branched_at: r.time('branched_at'),
    reason: r.string('reason'),
    restore_id: r.string('restore_id'),
    created_at: r.time('created_at'),
  };
  if (h.partition !== partition) throw r.fail('partition', `is not ${partition}`);
  if (h.timeline !== timeline) throw r.fail('timeline', `is not ${timeline} (the folder it is in)`);
  if (h.parent >= h.timeline) throw r.fail('parent', `is not below the timeline ${h.timeline}`);
  return h;
}

function infoOf(h: TimelineHistory): TimelineInfo {
  return {
    timeline: h.timeline,
    parent: h.parent,
    branchLsn: h.branch_lsn,
    branchedAt: Date.parse(h.branched_at),
    reason: h.reason,
    restoreId: h.restore_id,
  };
}

/** Reads one history record; undefined when there is none. */
export async function readHistory(
  store: ObjectStore,
  partition: string,
  timeline: number,
  signal?: AbortSignal,
): Promise<TimelineHistory | undefined> {
  const key = historyKey(partition, timeline);
  let body: Buffer;
  try {
    body = await readAll(await store.get(key, signal ? { signal } : {}), MAX_HISTORY_BYTES);
  } catch (err) {
    if (isWalArchiverError(err, ErrorCodes.NOT_FOUND)) return undefined;
    throw err;
  }
  return parseHistory(decodeJson(body, `${store.url} ${key}`), partition, timeline);
}

/**
 * Every timeline of a partition, timeline 1 first, then by number. A
 * timeline whose record names a parent that has no record is CORRUPT: its
 * history cannot be followed.
 */
export async function listTimelines(
  store: ObjectStore,
  partition: string,
  signal?: AbortSignal,
): Promise<TimelineInfo[]> {
  const numbers: number[] = [];
  for await (const o of store.list(timelinesPrefix(partition), signal ? { signal } : {})) {
    const parsed = tryParseHistoryKey(o.key);
    if (parsed && parsed.partition === partition) numbers.push(parsed.timeline);
  }
  numbers.sort((a, b) => a - b);
  const timelines: TimelineInfo[] = [{ ...FIRST_TIMELINE }];
  for (const n of numbers) {
    const h = await readHistory(store, partition, n, signal);
    if (h) timelines.push(infoOf(h));
  }
  const known = new Set(timelines.map((t) => t.timeline));
  for (const t of timelines) {
    if (t.timeline !== 1 && !known.has(t.parent)) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `partition ${partition}: timeline ${t.timeline} branches off timeline ${t.parent}, which has no history record`,
        {
          retryable: false,
          details: { partition, timeline: t.timeline, key: historyKey(partition, t.timeline) },
        },
      );
    }
  }
  return timelines;
}

/** The timeline `n` of a list, or an error naming the ones there are. */
export function findTimeline(timelines: readonly TimelineInfo[], partition: string, n: number): TimelineInfo {
  const t = timelines.find((x) => x.timeline === n);
  if (!t) {
    throw new WalArchiverError(
      ErrorCodes.NOT_FOUND,
      `partition ${partition} has no timeline ${n} (it has ${timelines.map((x) => x.timeline).join(', ')})`,
      { retryable: false, details: { partition, timeline: n } },
    );
  }
  return t;
}

/** The timelines from `n` back to timeline 1: `n`, its parent, its parent's parent … */
export function ancestry(timelines: readonly TimelineInfo[], partition: string, n: number): TimelineInfo[] {
  const chain: TimelineInfo[] = [];
  for (let t = findTimeline(timelines, partition, n); ; t = findTimeline(timelines, partition, t.parent)) {
    chain.push(t);
    if (t.timeline === 1) return chain;
  }
}

export interface NewTimeline {
  parent: number;
  branchLsn: number;
  branchedAt: Date;
  reason: string;
  restoreId: string;
}

/**
 * The timeline a restore continues on: the one whose record carries
 * `restoreId` when there is one (another replica's sidecar, or an earlier
 * attempt, made it), else a new one numbered after every timeline there is,
 * made by conditional create. Two sidecars racing for one number: one
 * creates it, the other finds it taken, reads it, and either finds its own
 * restore there or tries the next number.
 */
export async function claimTimeline(
  store: ObjectStore,
  partition: string,
  wanted: NewTimeline,
  options: { now?: () => Date; signal?: AbortSignal; attempts?: number } = {},
): Promise<{ timeline: TimelineInfo; created: boolean }> {
  const now = options.now ?? (() => new Date());
  const attempts = options.attempts ?? 20;
  for (let attempt = 1; ; attempt++) {
    const timelines = await listTimelines(store, partition, options.signal);
    const own = timelines.find((t) => t.restoreId === wanted.restoreId && t.timeline !== 1);
    if (own) return { timeline: own, created: false };
    findTimeline(timelines, partition, wanted.parent);
    const next = Math.max(...timelines.map((t) => t.timeline)) + 1;
    if (!isTimeline(next)) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `partition ${partition} has no timeline number left`,
        {
          retryable: false,
        },
      );
    }
    const record: TimelineHistory = {
      schema: 1,
      partition,
      timeline: next,
      parent: wanted.parent,
      branch_lsn: wanted.branchLsn,
      branched_at: wanted.branchedAt.toISOString(),
      reason: wanted.reason,
      restore_id: wanted.restoreId,
      created_at: now().toISOString(),
    };
    try {
      await store.create(historyKey(partition, next), encodeJson(record), {
        contentType: 'application/json',
        ...(options.signal ? { signal: options.signal } : {}),
      });
      return { timeline: infoOf(record), created: true };
    } catch (err) {
      if (!isWalArchiverError(err, ErrorCodes.ALREADY_EXISTS) || attempt >= attempts) throw err;
    }
  }
}
