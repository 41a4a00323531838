import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commit } from '../../../../bench/harness.js';
import { readCommitLsn } from '../../../../src/tail/committed.js';
import { CommitWatcher, TRAILING_CHECK_MS } from '../../../../src/tail/watch.js';
import { partitionDir } from '../../../../contract/wal/entry.js';

let root: string;
let watcher: CommitWatcher | undefined;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'watch-'));
});
afterEach(async () => {
  await watcher?.close();
  watcher = undefined;
  await rm(root, { recursive: true, force: true });
});

const dir = (partition: string) => partitionDir(root, partition);

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A watcher whose every notification reads the Commit, as the archiver does; `last` is the newest read. */
function following(partition: string) {
  const reads: number[] = [];
  let pending = Promise.resolve();
  watcher = new CommitWatcher(root, (p) => {
    if (p !== partition) return;
    pending = pending.then(async () => {
      reads.push(await readCommitLsn(dir(p)));
    });
  });
  watcher.add(partition);
  return { reads, last: () => reads.at(-1) ?? 0 };
}

/** inotify watches this process holds (Linux: the `inotify` lines of its inotify descriptors' fdinfo). */
function inotifyWatches(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (!readlinkSync(`/proc/self/fd/${fd}`).includes('inotify')) continue;
      n += readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('inotify')).length;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

describe('CommitWatcher', () => {
  it.runIf(existsSync('/proc/self/fdinfo'))(
    'costs one inotify watch a partition, before and after commits',
    async () => {
      const ids = Array.from({ length: 20 }, (_, i) => `w${i}`);
      for (const p of ids) await commit(dir(p), 1, 0);
      const before = inotifyWatches();
      const seen = new Set<string>();
      watcher = new CommitWatcher(root, (p) => seen.add(p));
      for (const p of ids) watcher.add(p);
      await pause(2 * TRAILING_CHECK_MS);
      expect(inotifyWatches() - before).toBe(ids.length);
      for (let lsn = 1; lsn <= 5; lsn++) for (const p of ids) await commit(dir(p), 1, lsn);
      await until(() => seen.size === ids.length, 'every partition to be reported');
      await pause(3 * TRAILING_CHECK_MS);
      expect(inotifyWatches() - before).toBe(ids.length);
      await watcher.close();
      expect(inotifyWatches()).toBe(before);
    },
  );

  it('reports each hard-state replacement of a watched partition, and nothing of others', async () => {
    const seen: string[] = [];
    for (const p of ['a', 'b']) await commit(dir(p), 1, 0);
    watcher = new CommitWatcher(root, (p) => seen.push(p));
    watcher.add('a');
    await pause(200);
    seen.length = 0;
    await commit(dir('a'), 1, 1);
    await commit(dir('b'), 1, 1);
    await until(() => seen.includes('a'), 'a commit of a');
    await pause(200);
    expect(seen.every((p) => p === 'a')).toBe(true);
  });

  it('watches a partition whose hard state appears only after it was added', async () => {
    const seen: string[] = [];
    await mkdir(dir('late'), { recursive: true });
    watcher = new CommitWatcher(root, (p) => seen.push(p), 100);
    watcher.add('late');
    await pause(200);
    expect(watcher.counts()).toEqual({ watched: 1, waiting: 1 });
    await commit(dir('late'), 1, 0);
    await until(() => seen.length >= 1, 'the hard state to be noticed');
    expect(watcher.counts()).toEqual({ watched: 1, waiting: 0 });
    await pause(200);
    const before = seen.length;
    await commit(dir('late'), 1, 1);
    await until(() => seen.length > before, 'a commit after the hard state appeared');
    await pause(200);
    const again = seen.length;
    await commit(dir('late'), 1, 2);
    await until(() => seen.length > again, 'a second commit');
  });

  it('reports the last commit of a quick burst, and the commits after it', async () => {
    await commit(dir('p'), 1, 0);
    const f = following('p');
    await pause(200);
    // Back to back, as the node replaces its hard state under load: inside chokidar's throttle windows.
    for (let lsn = 1; lsn <= 200; lsn++) await commit(dir('p'), 1, lsn);
    await until(() => f.last() === 200, 'the last commit of the burst');
    // A burst leaves chokidar's own watch on a replaced file: later, slower commits are still reported.
    for (let lsn = 201; lsn <= 203; lsn++) {
      await pause(2 * TRAILING_CHECK_MS);
      await commit(dir('p'), 1, lsn);
      await until(() => f.last() === lsn, `commit ${lsn} after the burst`);
    }
  });

  it('looks for a hard state that went away, and follows it when it is back', async () => {
    await commit(dir('gone'), 1, 0);
    const f = following('gone');
    await pause(200);
    await rm(join(dir('gone'), 'raft'), { recursive: true });
    await until(() => watcher!.counts().waiting === 1, 'the hard state to be missed');
    await commit(dir('gone'), 2, 7);
    await until(() => f.last() === 7, 'the new hard state');
  });
});
