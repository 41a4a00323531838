import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { commit, makeEntry, writeWalEntry } from '../../../../bench/harness.js';
import { silentLogger } from '../../../../contract/log.js';
import { readPartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import { createArchiverMetrics } from '../../../../src/pipeline/metrics.js';
import { DEFAULT_ARCHIVER_CONFIG, PartitionArchiver } from '../../../../src/pipeline/partition-archiver.js';
import { Semaphore } from '../../../../src/semaphore.js';
import { openObjectStore } from '../../../../src/store/open.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { partitionDir } from '../../../../contract/wal/entry.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const AGE_MS = 20_000;

async function rig() {
  const root = await mkdtemp(join(tmpdir(), 'segment-age-'));
  cleanups.push(() => rm(root, { recursive: true, force: true }));
  await mkdir(join(root, 'archive'));
  const store = await openObjectStore(`file://${join(root, 'archive')}`);
  cleanups.push(() => store.close());
  const dir = partitionDir(join(root, 'data'), '1');
  await mkdir(dir, { recursive: true });
  const archiver = new PartitionArchiver({
    partition: '1',
    partitionDir: dir,
    node: 1,
    term: 1,
    store,
    spoolDir: join(root, 'spool'),
    uploads: new Semaphore(2),
    config: { ...DEFAULT_ARCHIVER_CONFIG, segmentMaxAgeMs: AGE_MS },
    metrics: createArchiverMetrics(),
    logger: silentLogger,
  });
  cleanups.push(() => archiver.stop());
  return { dir, store, archiver };
}

async function write(dir: string, from: number, to: number, committedAt: number): Promise<void> {
  for (let lsn = from; lsn <= to; lsn++) {
    await writeWalEntry(dir, lsn, makeEntry(lsn, 1, randomBytes(512), committedAt));
  }
  await commit(dir, 1, to);
}

async function archivedThrough(store: ObjectStore): Promise<number> {
  return (await readPartitionManifest(store, '1'))?.value.archived?.last_lsn ?? 0;
}

async function waitArchived(store: ObjectStore, lsn: number, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if ((await archivedThrough(store)) >= lsn) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
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
