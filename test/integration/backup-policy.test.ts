import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import { archiveFromManifest, lastRestorableLsn, planRestore } from '../../src/restore/plan.js';
import { startLocalCluster } from '../../storage-node/cluster.js';
import { leaderOf, statusOf, waitFor, writeMany } from '../helpers/node-cluster.js';
import { startSidecars } from '../helpers/sidecars.js';
import { createTestBucket } from './object-store.s3-helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

describe('base backups by policy, inside wal-archiver run', () => {
  it('takes base backups as WAL crosses the size threshold; the latest point needs only the newest backup and the WAL after it', async () => {
    const work = await mkdtemp(join(tmpdir(), 'policy-'));
    cleanups.push(() => rm(work, { recursive: true, force: true }));
    const bucket = await createTestBucket({ objectLock: false, prefix: 'policy' });
    cleanups.push(() => bucket.cleanup());
    const dataDir = join(work, 'nodes');
    const c = await startLocalCluster({ nodes: 3, partitions: 1, dataDir, basePort: 7860 });
    cleanups.push(() => c.stop());
    const sidecars = await startSidecars(
      {
        urls: c.urls,
        dataDir,
        objectStore: bucket.url,
        metricsBase: 9860,
        // A tiny size threshold, no minimum interval: a backup after every ~8 KiB of WAL.
        extraArgs: ['--segment-age', '100ms', '--backup-size', '8KiB', '--backup-min-interval', '0ms'],
      },
      cleanups,
    );

    // Steady writes in rounds; each round adds well over the threshold.
    for (let round = 0; round < 3; round++) {
      await writeMany(c.urls, ['1'], 15, 3, `r${round}`);
      await new Promise((r) => setTimeout(r, 1_500));
    }
    const leader = await leaderOf(c.urls, '1');
    const commit = (await statusOf(c.urls[leader - 1]!, '1')).committed;
    const manifest = await waitFor(
      'archive to the commit LSN with at least two base backups',
      async () => {
        const m = (await readPartitionManifest(bucket.store, '1'))?.value;
        return m && (m.archived?.last_lsn ?? 0) >= commit && m.backups.length >= 2 ? m : undefined;
      },
      60_000,
      250,
    ).catch(async (err: unknown) => {
      const m = (await readPartitionManifest(bucket.store, '1'))?.value;
      throw new Error(
        `${(err as Error).message}; archived ${JSON.stringify(m?.archived)}, backups ${JSON.stringify(m?.backups)}, ` +
          `sidecar problems: ${sidecars.flatMap((s) => s.problems()).join('\n')}`,
      );
    });
    // Backups are listed with what restore and operators need, triggered by size (the first by 'first').
    for (const b of manifest.backups) {
      expect(b.key).toBe(`partitions/1/base/${b.lsn.toString(36).padStart(13, '0')}.tar.zst`);
      expect(b.sha256).toMatch(/^[0-9a-f]{64}$/);
      expect(['first', 'size']).toContain(b.trigger);
      const head = await bucket.store.head(b.key);
      expect(head?.metadata.sha256).toBe(b.sha256);
    }
    expect(manifest.backups.map((b) => b.trigger)).toContain('size');

    const archive = archiveFromManifest(manifest);
    const plan = planRestore(archive, lastRestorableLsn(archive));
    const newest = manifest.backups.at(-1)!;
    expect(plan.backup?.key).toBe(newest.key);
    expect(plan.fromLsn).toBe(newest.lsn + 1);
    // Only segments after the newest backup are read.
    for (const s of plan.segments) expect(s.lastLsn).toBeGreaterThan(newest.lsn);

    const metrics = await (await fetch(`${sidecars[leader - 1]!.url}/metrics`)).text();
    expect(metrics).toMatch(/wal_archiver_base_backups_total\{partition="1",reason="size"\} [1-9]/);
  });
});
