import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commit, makeEntry, writeWalEntry } from '../../../../bench/harness.js';
import { silentLogger } from '../../../../contract/log.js';
import { readPartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import { createArchiverMetrics, type ArchiverMetrics } from '../../../../src/pipeline/metrics.js';
import {
  DEFAULT_ARCHIVER_CONFIG,
  PartitionArchiver,
  type ArchiverConfig,
} from '../../../../src/pipeline/partition-archiver.js';
import { Semaphore } from '../../../../src/semaphore.js';
import { openObjectStore } from '../../../../src/store/open.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { partitionDir } from '../../../../contract/wal/entry.js';

/** A partition directory, a folder object store and a factory of archivers for partition 1 (term 1). */
export async function archiverRig(cleanups: Array<() => Promise<unknown>>, label: string) {
  const root = await mkdtemp(join(tmpdir(), `${label}-`));
  cleanups.push(() => rm(root, { recursive: true, force: true }));
  await mkdir(join(root, 'archive'));
  const store = await openObjectStore(`file://${join(root, 'archive')}`);
  cleanups.push(() => store.close());
  const dir = partitionDir(join(root, 'data'), '1');
  await mkdir(dir, { recursive: true });
  const spoolDir = join(root, 'spool');
  const make = (
    config: Partial<ArchiverConfig> = {},
    metrics: ArchiverMetrics = createArchiverMetrics(),
    through: ObjectStore = store,
  ) => {
    const archiver = new PartitionArchiver({
      partition: '1',
      partitionDir: dir,
      node: 1,
      term: 1,
      store: through,
      spoolDir,
      uploads: new Semaphore(2),
      config: { ...DEFAULT_ARCHIVER_CONFIG, segmentMaxAgeMs: 50, ...config },
      metrics,
      logger: silentLogger,
    });
    cleanups.push(() => archiver.stop());
    return { archiver, metrics };
  };
  return { root, dir, store, spoolDir, make };
}

/** Writes committed entries `from..to` whose staged file has `size` random bytes. */
export async function writeEntries(dir: string, from: number, to: number, size = 512): Promise<void> {
  for (let lsn = from; lsn <= to; lsn++) {
    await writeWalEntry(dir, lsn, makeEntry(lsn, 1, randomBytes(size), Date.now()));
  }
  await commit(dir, 1, to);
}

export async function archivedThrough(store: ObjectStore): Promise<number> {
  return (await readPartitionManifest(store, '1'))?.value.archived?.last_lsn ?? 0;
}

/** Polls until `check` holds or `ms` passed; returns whether it held. */
export async function eventually(check: () => Promise<boolean> | boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= until) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The value of a labelled counter (0 when the series does not exist). */
export async function counterValue(
  metric: { get(): Promise<{ values: Array<{ labels: Record<string, unknown>; value: number }> }> },
  labels: Record<string, string>,
): Promise<number> {
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}
