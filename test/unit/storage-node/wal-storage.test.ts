import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { entryDir, listEntryLsns } from '../../../contract/wal/entry.js';
import { formatLsn } from '../../../contract/wal/lsn.js';
import { encodePayload } from '../../../contract/wal/entry-info.js';
import { linkTree } from '../../../contract/state/snapshot.js';
import type { Entry } from '../../../storage-node/raft/index.js';
import { WalStorage } from '../../../storage-node/wal-storage.js';

const dirs: string[] = [];
afterEach(async () => {
  while (dirs.length) await rm(dirs.pop()!, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'wal-storage-'));
  dirs.push(dir);
  return dir;
}

const empty = (index: number, term = 1): Entry => ({ index, term, type: 'empty', data: new Uint8Array(0) });
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => empty(from + i));

describe('WalStorage: the oldest LSN on disk', () => {
  it('follows appends, compaction and a reopen', async () => {
    const dir = await tempDir();
    const s = await WalStorage.open(dir, '1', [1, 2, 3]);
    expect(s.oldestLsn).toBe(0);
    await s.append(range(1, 10));
    expect(s.oldestLsn).toBe(1);
    await s.compact(4, [1, 2, 3]);
    expect(s.oldestLsn).toBe(5);
    expect((await listEntryLsns(dir))[0]).toBe(5);
    expect((await WalStorage.open(dir, '1', [1, 2, 3])).oldestLsn).toBe(5);
    await s.compact(10, [1, 2, 3]);
    expect(s.oldestLsn).toBe(0);
    await s.append(range(11, 12));
    expect(s.oldestLsn).toBe(11);
  });

  it('after a snapshot install, is the oldest shipped entry, not the log start', async () => {
    // The leader's WAL still holds 6..20 (not archived past 5); it ships them with a snapshot at 20.
    const leaderDir = await tempDir();
    const leader = await WalStorage.open(leaderDir, '1', [1, 2, 3]);
    await leader.append(range(1, 20));
    await leader.compact(5, [1, 2, 3]);
    const shipped = join(await tempDir(), 'shipped');
    for (const lsn of await listEntryLsns(leaderDir)) {
      await linkTree(entryDir(leaderDir, lsn), join(shipped, formatLsn(lsn)));
    }

    const followerDir = await tempDir();
    const follower = await WalStorage.open(followerDir, '1', [1, 2, 3]);
    await follower.append(range(1, 3));
    await follower.resetToSnapshot({ index: 20, term: 1, voters: [1, 2, 3] }, shipped);
    expect(follower.logStart.index).toBe(20);
    expect(follower.oldestLsn).toBe(6);
    expect((await listEntryLsns(followerDir))[0]).toBe(6);
    // Reopened, the shipped entries below the log start are still counted.
    expect((await WalStorage.open(followerDir, '1', [1, 2, 3])).oldestLsn).toBe(6);
    // Compacting past them drops them.
    await follower.append(range(21, 30));
    await follower.compact(25, [1, 2, 3]);
    expect(follower.oldestLsn).toBe(26);
  });
});

describe('WalStorage: whether the highest stamp bounds every entry', () => {
  const stamped = (index: number, at: number): Entry => ({
    index,
    term: 1,
    type: 'normal',
    data: encodePayload({ manifest: Buffer.alloc(0), files: [] }, at),
  });

  it('holds across compaction and a reopen, and not once a snapshot brought entries without stamps', async () => {
    const dir = await tempDir();
    const s = await WalStorage.open(dir, '1', [1, 2, 3]);
    await s.append([stamped(1, 1_000), stamped(2, 3_000), stamped(3, 2_000)]);
    expect([s.highestStamp, s.highestStampCoversAll]).toEqual([3_000, true]);
    await s.compact(3, [1, 2, 3]);
    const reopened = await WalStorage.open(dir, '1', [1, 2, 3]);
    expect([reopened.highestStamp, reopened.highestStampCoversAll]).toEqual([3_000, true]);

    await reopened.resetToSnapshot({ index: 10, term: 1, voters: [1, 2, 3] });
    expect(reopened.highestStampCoversAll).toBe(false);
    await reopened.append([stamped(11, 4_000)]);
    await reopened.compact(11, [1, 2, 3]);
    // Compacted with a stamp that is a lower bound only: a reopen must not take it for a whole one.
    const again = await WalStorage.open(dir, '1', [1, 2, 3]);
    expect([again.highestStamp, again.highestStampCoversAll]).toEqual([4_000, false]);
  });
});
