import { describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../../../contract/errors.js';
import { encodeJson } from '../../../../src/manifest/cas.js';
import { historyKey } from '../../../../src/manifest/keys.js';
import {
  claimTimeline,
  listTimelines,
  readHistory,
  type NewTimeline,
} from '../../../../src/timeline/history.js';
import { MemoryStore } from '../../../helpers/memory-store.js';

const P = '7';
const AT = new Date('2026-01-01T00:00:00.000Z');

function wanted(restoreId: string, extra: Partial<NewTimeline> = {}): NewTimeline {
  return { parent: 1, branchLsn: 40, branchedAt: AT, reason: 'restore --to-lsn 40', restoreId, ...extra };
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('claimTimeline', () => {
  it('creates timeline 2 then 3 for two restores, each recorded', async () => {
    const store = new MemoryStore();
    const a = await claimTimeline(store, P, wanted('r-a'));
    const b = await claimTimeline(store, P, wanted('r-b', { parent: 2, branchLsn: 60 }));
    expect(a).toMatchObject({ created: true, timeline: { timeline: 2, parent: 1, branchLsn: 40 } });
    expect(b).toMatchObject({ created: true, timeline: { timeline: 3, parent: 2, branchLsn: 60 } });
    const h = await readHistory(store, P, 3);
    expect(h).toMatchObject({ partition: P, timeline: 3, parent: 2, branch_lsn: 60, restore_id: 'r-b' });
    expect((await listTimelines(store, P)).map((t) => [t.timeline, t.parent, t.branchLsn])).toEqual([
      [1, 0, 0],
      [2, 1, 40],
      [3, 2, 60],
    ]);
    expect((await listTimelines(store, P))[1]!.branchedAt).toBe(AT.getTime());
  });

  it('the same restore twice (two replicas) gets the same timeline', async () => {
    const store = new MemoryStore();
    const first = await claimTimeline(store, P, wanted('r-a'));
    const again = await claimTimeline(store, P, wanted('r-a'));
    expect(first.created).toBe(true);
    expect(again).toEqual({ timeline: first.timeline, created: false });
    const both = await Promise.all([
      claimTimeline(store, P, wanted('r-b')),
      claimTimeline(store, P, wanted('r-b')),
    ]);
    expect(both.map((x) => x.timeline.timeline)).toEqual([3, 3]);
    expect(both.filter((x) => x.created)).toHaveLength(1);
    expect((await listTimelines(store, P)).map((t) => t.timeline)).toEqual([1, 2, 3]);
  });

  it('two concurrent claims for different restores end on two timelines, both recorded', async () => {
    const store = new MemoryStore();
    const [a, b] = await Promise.all([
      claimTimeline(store, P, wanted('r-a')),
      claimTimeline(store, P, wanted('r-b')),
    ]);
    expect(new Set([a.timeline.timeline, b.timeline.timeline])).toEqual(new Set([2, 3]));
    expect(a.created && b.created).toBe(true);
    const listed = await listTimelines(store, P);
    expect(listed.map((t) => t.restoreId).sort()).toEqual(['', 'r-a', 'r-b']);
    expect(listed.find((t) => t.restoreId === 'r-a')!.timeline).toBe(a.timeline.timeline);
  });

  it('refuses a parent that does not exist', async () => {
    const err = await rejection(claimTimeline(new MemoryStore(), P, wanted('r-a', { parent: 4 })));
    expect(isWalArchiverError(err, ErrorCodes.NOT_FOUND)).toBe(true);
    expect((err as Error).message).toMatch(/partition 7 has no timeline 4 \(it has 1\)/);
  });
});

describe('listTimelines', () => {
  it('is timeline 1 alone for an archive without timelines', async () => {
    expect(await listTimelines(new MemoryStore(), P)).toEqual([
      { timeline: 1, parent: 0, branchLsn: 0, branchedAt: 0, reason: 'first', restoreId: '' },
    ]);
  });

  it('a damaged history record is CORRUPT, naming it', async () => {
    const store = new MemoryStore();
    await claimTimeline(store, P, wanted('r-a'));
    await store.create(historyKey(P, 3), Buffer.from('{"schema": 1, "partition": "7", '));
    const err = await rejection(listTimelines(store, P));
    expect(isWalArchiverError(err, ErrorCodes.CORRUPT)).toBe(true);
    expect((err as Error).message).toContain(historyKey(P, 3));
  });

  it('a record of another timeline than its folder is CORRUPT', async () => {
    const store = new MemoryStore();
    const { timeline } = await claimTimeline(store, P, wanted('r-a'));
    const body = (await readHistory(store, P, timeline.timeline))!;
    await store.create(historyKey(P, 5), encodeJson(body));
    const err = await rejection(listTimelines(store, P));
    expect(isWalArchiverError(err, ErrorCodes.CORRUPT)).toBe(true);
    expect((err as Error).message).toMatch(/partition 7 timeline 5 history.*timeline.*is not 5/);
  });

  it('a timeline whose parent has no record is CORRUPT', async () => {
    const store = new MemoryStore();
    await claimTimeline(store, P, wanted('r-a'));
    await claimTimeline(store, P, wanted('r-b', { parent: 2 }));
    await store.delete(historyKey(P, 2));
    const err = await rejection(listTimelines(store, P));
    expect(isWalArchiverError(err, ErrorCodes.CORRUPT)).toBe(true);
    expect((err as Error).message).toBe(
      'partition 7: timeline 3 branches off timeline 2, which has no history record',
    );
  });
});
