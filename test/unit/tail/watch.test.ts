import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CommitWatcher } from '../../../src/tail/watch.js';

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

/** Replaces hard_state by rename, as the node does. */
async function commit(partition: string, n: number): Promise<void> {
  const dir = join(root, 'partitions', partition, 'raft');
  await writeFile(join(dir, 'hard_state.tmp'), String(n));
  await rename(join(dir, 'hard_state.tmp'), join(dir, 'hard_state'));
}

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('CommitWatcher', () => {
  it('reports each hard-state replacement of a watched partition, and nothing of others', async () => {
    const seen: string[] = [];
    for (const p of ['a', 'b']) await mkdir(join(root, 'partitions', p, 'raft'), { recursive: true });
    watcher = new CommitWatcher(root, (p) => seen.push(p));
    watcher.add('a');
    await new Promise((r) => setTimeout(r, 200));
    await commit('a', 1);
    await commit('b', 1);
    await until(() => seen.includes('a'), 'a commit of a');
    await new Promise((r) => setTimeout(r, 200));
    expect(seen.every((p) => p === 'a')).toBe(true);
  });

  it('watches a partition whose raft/ folder appears only after it was added', async () => {
    const seen: string[] = [];
    await mkdir(join(root, 'partitions', 'late'), { recursive: true });
    watcher = new CommitWatcher(root, (p) => seen.push(p));
    watcher.add('late');
    await new Promise((r) => setTimeout(r, 200));
    await mkdir(join(root, 'partitions', 'late', 'raft'));
    await until(() => seen.length >= 1, 'the raft folder to be noticed');
    const before = seen.length;
    await new Promise((r) => setTimeout(r, 200));
    await commit('late', 1);
    await until(() => seen.length > before, 'a commit inside the late raft folder');
    const again = seen.length;
    await commit('late', 2);
    await until(() => seen.length > again, 'a second commit');
  });
});
