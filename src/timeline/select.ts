import { ErrorCodes, WalArchiverError, isWalArchiverError } from '../../contract/errors.js';
import {
  BEFORE_ARCHIVE,
  lastRestorableLsn,
  loadPartitionArchive,
  resolveTarget,
  type EntryTimesReader,
  type PartitionArchive,
  type RestoreTarget,
} from '../restore/plan.js';
import type { ObjectStore } from '../store/object-store.js';
import { ancestry, findTimeline, listTimelines, type TimelineInfo } from './history.js';

/**
 * Which timeline a restore reads, and the exact LSN it restores to.
 *
 * The history of timeline N is its parent's up to N's branch LSN, then N's
 * own entries, whose first base backup is at the branch LSN. So every target
 * is restored from one timeline's own objects: N's when the target is past
 * its branch LSN (or at it, with N's backup there), else the ancestor's
 * whose own part holds it. `followed` is the timeline whose history was
 * restored (a new timeline branches off it), `from` the one whose objects
 * were read.
 *
 * Without `--timeline`, the target picks the latest timeline holding it:
 * - `--latest`: the highest-numbered timeline, to its end;
 * - `--to-lsn L`: the highest-numbered timeline whose history reaches L (a
 *   target before a branch point is the same history on both sides);
 * - `--to-time T`: the highest-numbered timeline made at or before T (the
 *   history that was being written at T; a timeline made later did not exist
 *   then).
 */
export interface TimelineChoice {
  /** The timeline whose history is restored. */
  followed: number;
  /** The timeline whose objects are read (`followed` or one of its ancestors). */
  from: number;
  /** Its archive, already loaded. */
  archive: PartitionArchive;
  targetLsn: number;
  timelines: TimelineInfo[];
}

export interface ChooseTimelineOptions {
  /** `--timeline N`: restore that timeline's history. */
  timeline?: number;
  signal?: AbortSignal;
  /** Reads a segment's entry commit times (for a time target). */
  readEntryTimes: EntryTimesReader;
  /** The timelines, when the caller has listed them already. */
  timelines?: TimelineInfo[];
}

function hasOwnEntries(archive: PartitionArchive, branchLsn: number): boolean {
  return lastRestorableLsn(archive) > branchLsn;
}

export async function chooseTimeline(
  store: ObjectStore,
  partition: string,
  target: RestoreTarget,
  o: ChooseTimelineOptions,
): Promise<TimelineChoice> {
  const timelines = o.timelines ?? (await listTimelines(store, partition, o.signal));
  const archives = new Map<number, PartitionArchive>();
  const load = async (n: number): Promise<PartitionArchive> => {
    let a = archives.get(n);
    if (!a) {
      a = await loadPartitionArchive(store, partition, {
        timeline: n,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      archives.set(n, a);
    }
    return a;
  };
  const followed = o.timeline ?? (await defaultTimeline(timelines, target, load));
  findTimeline(timelines, partition, followed);
  const chain = ancestry(timelines, partition, followed);

  // Walk from the followed timeline back towards timeline 1 until one's own part holds the target.
  let cap = Number.MAX_SAFE_INTEGER;
  let current: RestoreTarget = target;
  for (const t of chain) {
    const archive = await load(t.timeline);
    if (t.timeline === 1) return done(t.timeline, archive, await resolveCapped(archive, current, cap, o));
    const own = archive.archived !== null || archive.backups.length > 0;
    const ownBase = archive.backups.find((b) => b.lsn === t.branchLsn) !== undefined;
    if (current.kind === 'lsn') {
      if (current.lsn > t.branchLsn || (current.lsn === t.branchLsn && ownBase))
        return done(t.timeline, archive, await resolveCapped(archive, current, cap, o));
    } else if (current.kind === 'latest') {
      if (own && hasOwnEntries(archive, t.branchLsn))
        return done(t.timeline, archive, await resolveCapped(archive, current, cap, o));
      if (ownBase) return done(t.timeline, archive, t.branchLsn);
      current = { kind: 'lsn', lsn: Math.min(cap, t.branchLsn) };
    } else if (own) {
      try {
        return done(t.timeline, archive, await resolveCapped(archive, current, cap, o));
      } catch (err) {
        if (!isWalArchiverError(err) || err.details?.['reason'] !== BEFORE_ARCHIVE) throw err;
      }
    }
    cap = Math.min(cap, t.branchLsn);
  }
  // Unreachable: the chain ends at timeline 1, which always answers.
  throw new WalArchiverError(ErrorCodes.INTERNAL, `partition ${partition}: no timeline holds the target`);

  function done(from: number, archive: PartitionArchive, targetLsn: number): TimelineChoice {
    return { followed, from, archive, targetLsn, timelines };
  }
}

/** Resolves a target on one timeline's own archive, never beyond `cap` (a child's branch LSN). */
async function resolveCapped(
  archive: PartitionArchive,
  target: RestoreTarget,
  cap: number,
  o: ChooseTimelineOptions,
): Promise<number> {
  if (target.kind === 'lsn' && target.lsn > cap) target = { kind: 'lsn', lsn: cap };
  const lsn = await resolveTarget(archive, target, o.readEntryTimes);
  return Math.min(lsn, cap);
}

async function defaultTimeline(
  timelines: readonly TimelineInfo[],
  target: RestoreTarget,
  load: (n: number) => Promise<PartitionArchive>,
): Promise<number> {
  const newestFirst = [...timelines].sort((a, b) => b.timeline - a.timeline);
  switch (target.kind) {
    case 'latest':
      return newestFirst[0]!.timeline;
    case 'time': {
      const t = target.time.getTime();
      return (newestFirst.find((x) => x.branchedAt <= t) ?? newestFirst.at(-1)!).timeline;
    }
    case 'lsn':
      for (const x of newestFirst) {
        if (x.timeline === 1) return 1;
        const end = Math.max(x.branchLsn, lastRestorableLsn(await load(x.timeline)));
        if (target.lsn <= end) return x.timeline;
      }
      return 1;
  }
}
