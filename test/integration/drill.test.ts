import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import { openObjectStore } from '../../src/store/open.js';
import { startLocalCluster } from '../../storage-node/cluster.js';
import { leaderOf, statusOf, waitFor, writeMany } from '../helpers/node-cluster.js';
import { startSidecars } from '../helpers/sidecars.js';

const BIN = fileURLToPath(new URL('../../bin/wal-archiver.js', import.meta.url));
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Drills over an archive a real cluster and its sidecars wrote: the sidecar's
 * own background drills report success in its metrics, `wal-archiver drill`
 * passes, and fails naming the segment once one of its bytes is flipped.
 */
describe('restore drills on a live archive', () => {
  it('run --drill-interval reports success; drill passes, then fails on a tampered segment and names it', async () => {
    const work = await mkdtemp(join(tmpdir(), 'drill-'));
    cleanups.push(() => rm(work, { recursive: true, force: true }));
    const archiveDir = join(work, 'archive');
    const url = pathToFileURL(archiveDir).href;
    const store = await openObjectStore(url);
    cleanups.push(() => store.close());
    const dataDir = join(work, 'nodes');
    const c = await startLocalCluster({ nodes: 3, partitions: 1, dataDir, basePort: 7420 });
    cleanups.push(() => c.stop());
    const sidecars = await startSidecars(
      {
        urls: c.urls,
        dataDir,
        objectStore: url,
        metricsBase: 9420,
        extraArgs: [
          '--segment-age',
          '100ms',
          '--backup-entries',
          '20',
          '--backup-min-interval',
          '0ms',
          '--drill-interval',
          '300ms',
          '--drill-seed',
          '7',
        ],
      },
      cleanups,
    );
    for (let round = 0; round < 3; round++) {
      await writeMany(c.urls, ['1'], 25, 3, `r${round}`);
      await new Promise((r) => setTimeout(r, 1_000));
    }
    const leader = await leaderOf(c.urls, '1');
    const commit = (await statusOf(c.urls[leader - 1]!, '1')).committed;
    const manifest = await waitFor(
      'archive to the commit LSN with at least two base backups',
      async () => {
        const m = (await readPartitionManifest(store, '1'))?.value;
        return m && (m.archived?.last_lsn ?? 0) >= commit && m.backups.length >= 2 ? m : undefined;
      },
      60_000,
      250,
    );

    // The leader's sidecar drills its partition in the background and says so.
    const metrics = await waitFor(
      'a successful background drill',
      async () => {
        const text = await (await fetch(`${sidecars[leader - 1]!.url}/metrics`)).text();
        return /wal_archiver_drill_last_success_timestamp_seconds\{partition="1"\} [1-9]/.test(text)
          ? text
          : undefined;
      },
      30_000,
      250,
    ).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}; ${sidecars[leader - 1]!.problems().join('\n')}`);
    });
    const stamp = Number(
      /wal_archiver_drill_last_success_timestamp_seconds\{partition="1"\} (\S+)/.exec(metrics)![1],
    );
    expect(Math.abs(stamp - Date.now() / 1000)).toBeLessThan(60);
    expect(metrics).toMatch(/wal_archiver_drill_lsn\{partition="1"\} [1-9]/);
    expect(metrics).not.toMatch(/wal_archiver_drill_failures_total\{partition="1"\} [1-9]/);
    for (const s of sidecars) await s.stop();

    const ok = await cli(['drill', '--object-store', url]);
    expect(ok.stderr).not.toMatch(/FAILED|error/);
    expect(ok.code).toBe(0);
    const [b1, b2] = manifest.backups.slice(-2);
    expect(ok.stdout).toMatch(
      /^drill: partition 1 timeline 1 OK base \d+ → LSN \d+, [1-9]\d* files, [1-9]\d* bytes$/m,
    );
    const line = /OK base (\d+) → LSN (\d+)/.exec(ok.stdout)!;
    // The newest two backups, or a later pair the sidecars took meanwhile.
    expect(Number(line[1])).toBeGreaterThanOrEqual(b1!.lsn);
    expect(Number(line[2])).toBeGreaterThanOrEqual(b2!.lsn);

    // Flip one byte of the segment holding the first LSN replayed after the base backup.
    const final = (await readPartitionManifest(store, '1'))!.value;
    const base = Number(line[1]);
    const seg = final.segments.find((s) => s.first_lsn <= base + 1 && s.last_lsn >= base + 1)!;
    const path = join(archiveDir, seg.key);
    const bytes = await readFile(path);
    bytes[bytes.length >> 1] ^= 0x01;
    await writeFile(path, bytes);

    const bad = await cli(['drill', '--object-store', url, '--partition', '1']);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(
      new RegExp(`^drill: partition 1 timeline 1 FAILED at LSN ${seg.first_lsn}: .*checksum mismatch`, 'm'),
    );
    expect(bad.stdout).toContain(seg.key);
  }, 150_000);
});
