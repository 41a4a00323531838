import { describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../../../contract/errors.js';
import { encodeJson } from '../../../../src/manifest/cas.js';
import {
  baseBackupKey,
  partitionManifestKey,
  segmentKey,
  splitTimelineKey,
} from '../../../../src/manifest/keys.js';
import { applyPartitionUpdate } from '../../../../src/manifest/partition-manifest.js';
import type { ArchiveSegment, EntryTime, RestoreTarget } from '../../../../src/restore/plan.js';
import { claimTimeline } from '../../../../src/timeline/history.js';
import { chooseTimeline } from '../../../../src/timeline/select.js';
import { MemoryStore } from '../../../helpers/memory-store.js';
import { T0, backup, segment } from '../manifest/fixtures.js';

const P = '7';
/**
 * Timeline 1: LSNs 1-100, base backup at 10.
 * Timeline 2: branched off 1 at LSN 50 at 150 s, base backup at 50, LSNs 51-130.
 * Timeline 3: branched off 2 at LSN 70 at 300 s, base backup at 70, LSNs 71-90.
 * LSN n of timeline t commits at T0 + (n + OFFSET[t]) seconds.
 */
const OFFSET: Record<number, number> = { 1: 0, 2: 150, 3: 300 };
const BRANCH: Record<number, { parent: number; lsn: number; at: number }> = {
  2: { parent: 1, lsn: 50, at: 150 },
  3: { parent: 2, lsn: 70, at: 300 },
};
const secs = (s: number) => new Date(T0 + s * 1000);
const iso = (s: number) => secs(s).toISOString();
const commitAt = (tl: number, lsn: number) => lsn + OFFSET[tl]!;

function timelineManifest(tl: number, base: number, first: number, last: number) {
  const segments = [];
  for (let a = first; a <= last; a += 10) {
    const b = Math.min(a + 9, last);
    segments.push(
      segment(P, a, b, {
        key: segmentKey(P, a, b, tl),
        first_committed_at: iso(commitAt(tl, a)),
        last_committed_at: iso(commitAt(tl, b)),
        max_committed_at: iso(commitAt(tl, b)),
        archived_at: iso(commitAt(tl, b) + 1),
      }),
    );
  }
  const takenAt = tl === 1 ? commitAt(1, base) : BRANCH[tl]!.at + 1;
  const backups = [
    backup(P, base, {
      key: baseBackupKey(P, base, tl),
      taken_at: iso(takenAt),
      max_committed_at: iso(tl === 1 ? commitAt(1, base) : commitAt(BRANCH[tl]!.parent, base)),
    }),
  ];
  return applyPartitionUpdate(undefined, P, { node: 1, term: 3 }, { segments, backups }, secs(1000), tl)
    .manifest;
}

async function archive(): Promise<MemoryStore> {
  const store = new MemoryStore();
  await store.create(partitionManifestKey(P, 1), encodeJson(timelineManifest(1, 10, 1, 100)));
  await store.create(partitionManifestKey(P, 2), encodeJson(timelineManifest(2, 50, 51, 130)));
  await store.create(partitionManifestKey(P, 3), encodeJson(timelineManifest(3, 70, 71, 90)));
  for (const [tl, b] of Object.entries(BRANCH)) {
    const { timeline } = await claimTimeline(store, P, {
      parent: b.parent,
      branchLsn: b.lsn,
      branchedAt: secs(b.at),
      reason: `test ${tl}`,
      restoreId: `r-${tl}`,
    });
    expect(timeline.timeline).toBe(Number(tl));
  }
  return store;
}

async function readEntryTimes(seg: ArchiveSegment): Promise<EntryTime[]> {
  const tl = splitTimelineKey(seg.key)!.timeline;
  const out: EntryTime[] = [];
  for (let l = seg.firstLsn; l <= seg.lastLsn; l++)
    out.push({ lsn: l, committedAt: secs(commitAt(tl, l)).getTime() });
  return out;
}

async function choose(target: RestoreTarget, timeline?: number) {
  const store = await archive();
  const c = await chooseTimeline(store, P, target, { readEntryTimes, ...(timeline ? { timeline } : {}) });
  return { followed: c.followed, from: c.from, targetLsn: c.targetLsn };
}

const lsn = (n: number): RestoreTarget => ({ kind: 'lsn', lsn: n });
const time = (s: number): RestoreTarget => ({ kind: 'time', time: secs(s) });

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

describe('chooseTimeline', () => {
  it('--latest: the highest timeline, to its end', async () => {
    expect(await choose({ kind: 'latest' })).toEqual({ followed: 3, from: 3, targetLsn: 90 });
    expect(await choose({ kind: 'latest' }, 2)).toEqual({ followed: 2, from: 2, targetLsn: 130 });
    expect(await choose({ kind: 'latest' }, 1)).toEqual({ followed: 1, from: 1, targetLsn: 100 });
  });

  it('an LSN before a branch point is read from the parent, whichever timeline is asked for', async () => {
    expect(await choose(lsn(40), 2)).toEqual({ followed: 2, from: 1, targetLsn: 40 });
    expect(await choose(lsn(40), 3)).toEqual({ followed: 3, from: 1, targetLsn: 40 });
    expect(await choose(lsn(60), 3)).toEqual({ followed: 3, from: 2, targetLsn: 60 });
    // At the branch LSN the timeline's own base backup is there.
    expect(await choose(lsn(50), 2)).toEqual({ followed: 2, from: 2, targetLsn: 50 });
    expect(await choose(lsn(70), 3)).toEqual({ followed: 3, from: 3, targetLsn: 70 });
  });

  it('without --timeline, an LSN picks the highest timeline whose history reaches it', async () => {
    expect(await choose(lsn(85))).toEqual({ followed: 3, from: 3, targetLsn: 85 });
    expect(await choose(lsn(60))).toEqual({ followed: 3, from: 2, targetLsn: 60 });
    // Above timeline 1's end (100) and timeline 3's (90), within timeline 2's.
    expect(await choose(lsn(120))).toEqual({ followed: 2, from: 2, targetLsn: 120 });
    expect(await choose(lsn(95), 1)).toEqual({ followed: 1, from: 1, targetLsn: 95 });
  });

  it('a time before a timeline was made is its parent; after it, the timeline', async () => {
    expect(await choose(time(120))).toEqual({ followed: 1, from: 1, targetLsn: 100 });
    expect(await choose(time(40))).toEqual({ followed: 1, from: 1, targetLsn: 40 });
    expect(await choose(time(215))).toEqual({ followed: 2, from: 2, targetLsn: 65 });
    // Made, but nothing of its own committed yet: its base backup at the branch LSN.
    expect(await choose(time(170))).toEqual({ followed: 2, from: 2, targetLsn: 50 });
    expect(await choose(time(385))).toEqual({ followed: 3, from: 3, targetLsn: 85 });
  });

  it('--timeline with a time before its own first entry walks to the parent, capped at the branch LSN', async () => {
    // Its base backup at the branch LSN holds only entries committed by then: read from it.
    expect(await choose(time(120), 2)).toEqual({ followed: 2, from: 2, targetLsn: 50 });
    expect(await choose(time(30), 2)).toEqual({ followed: 2, from: 1, targetLsn: 30 });
    expect(await choose(time(250), 3)).toEqual({ followed: 3, from: 3, targetLsn: 70 });
    expect(await choose(time(120), 3)).toEqual({ followed: 3, from: 2, targetLsn: 50 });
    expect(await choose(time(30), 3)).toEqual({ followed: 3, from: 1, targetLsn: 30 });
  });

  it('a target beyond a timeline end is NOT_FOUND, clearly', async () => {
    const store = await archive();
    for (const [n, tl] of [
      [95, 3],
      [131, 2],
      [200, undefined],
    ] as const) {
      const err = await rejection(
        chooseTimeline(store, P, lsn(n), { readEntryTimes, ...(tl ? { timeline: tl } : {}) }),
      );
      expect(isWalArchiverError(err, ErrorCodes.NOT_FOUND), err.message).toBe(true);
      expect(err.message).toMatch(new RegExp(`partition 7.*\\b${n}\\b`));
      expect(err.stack ?? '').not.toMatch(/INTERNAL/);
    }
  });

  it('a timeline claimed before anything of it was uploaded is its parent up to the branch LSN', async () => {
    const store = await archive();
    await claimTimeline(store, P, {
      parent: 3,
      branchLsn: 80,
      branchedAt: secs(400),
      reason: 'test 4',
      restoreId: 'r-4',
    });
    const pick = async (target: RestoreTarget, timeline?: number) => {
      const c = await chooseTimeline(store, P, target, { readEntryTimes, ...(timeline ? { timeline } : {}) });
      return { followed: c.followed, from: c.from, targetLsn: c.targetLsn };
    };
    expect(await pick({ kind: 'latest' })).toEqual({ followed: 4, from: 3, targetLsn: 80 });
    expect(await pick(time(500))).toEqual({ followed: 4, from: 3, targetLsn: 80 });
    expect(await pick(lsn(80))).toEqual({ followed: 4, from: 3, targetLsn: 80 });
    expect(await pick(lsn(85))).toEqual({ followed: 3, from: 3, targetLsn: 85 });
  });

  it('an unknown --timeline is NOT_FOUND naming the timelines there are', async () => {
    const err = await rejection(chooseTimeline(await archive(), P, lsn(10), { readEntryTimes, timeline: 9 }));
    expect(isWalArchiverError(err, ErrorCodes.NOT_FOUND)).toBe(true);
    expect(err.message).toBe('partition 7 has no timeline 9 (it has 1, 2, 3)');
  });
});
