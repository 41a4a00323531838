import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { commit, makeEntry, writeWalEntry } from '../../../../bench/harness.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { archivedThrough, archiverRig, eventually } from './rig.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const AGE_MS = 20_000;

async function rig() {
  const { dir, store, make } = await archiverRig(cleanups, 'segment-age');
  const { archiver } = make({ segmentMaxAgeMs: AGE_MS });
  return { dir, store, archiver };
}

async function write(dir: string, from: number, to: number, committedAt: number): Promise<void> {
  for (let lsn = from; lsn <= to; lsn++) {
    await writeWalEntry(dir, lsn, makeEntry(lsn, 1, randomBytes(512), committedAt));
  }
  await commit(dir, 1, to);
}

function waitArchived(store: ObjectStore, lsn: number, ms: number): Promise<boolean> {
  return eventually(async () => (await archivedThrough(store)) >= lsn, ms);
}

describe('segment age', () => {
  it('counts from the first entry’s commit: entries committed longer ago than the age are sealed at once', async () => {
    const { dir, store, archiver } = await rig();
    await write(dir, 1, 3, Date.now() - 2 * AGE_MS);
    archiver.start();
    // Counted from when the segment was opened, this would wait the whole 20 s age.
    expect(await waitArchived(store, 3, 5_000)).toBe(true);
  });

  it('still holds a segment of fresh entries until the age has passed', async () => {
    const { dir, store, archiver } = await rig();
    await write(dir, 1, 2, Date.now() - 2 * AGE_MS);
    archiver.start();
    expect(await waitArchived(store, 2, 5_000)).toBe(true);
    await write(dir, 3, 4, Date.now());
    archiver.notify();
    expect(await waitArchived(store, 4, 1_500)).toBe(false);
    expect(await archivedThrough(store)).toBe(2);
  });
});
