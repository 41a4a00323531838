import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { Command } from '../../contract/cli/runner.js';
import { drillCommand } from '../../src/cli/drill.js';
import { manifestCommand } from '../../src/cli/manifest.js';
import { restoreCommand, verifyCommand } from '../../src/cli/restore.js';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { openObjectStore } from '../../src/store/open.js';
import { listTimelines } from '../../src/timeline/history.js';
import { RESTORED_FILE, RESTORED_STATE_DIR } from '../../src/timeline/restored.js';
import { startLocalCluster, type StartedCluster } from '../../storage-node/cluster.js';
import { LOAD_DEFAULTS, readLoadRecord, runLoad, type WriteRecord } from '../../storage-node/load.js';
import { captureContext, runCommand } from '../helpers/cli-context.js';
import { leaderOf, statusOf, waitFor } from '../helpers/node-cluster.js';
import { expectedRefs, refsIn } from '../helpers/refs.js';
import { uniqueName } from '../helpers/services.js';
import { startSidecars, type SidecarProcess } from '../helpers/sidecars.js';
import { createTestBucket } from './object-store.s3-helpers.js';

/**
 * The recovery flow of the README, end to end, twice: restore the cluster to
 * a time, boot it, run the sidecars on the same archive URL (they continue
 * on a new timeline with no other step), write, then restore again from the
 * continuation. Every restore is compared with the refs the write record
 * says the cluster had at that point.
 */

const P = '1';

interface Era {
  dataDir: string;
  cluster: StartedCluster;
  sidecars: SidecarProcess[];
}

async function cli(
  command: Command,
  argv: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const c = captureContext();
  const code = await runCommand(command, argv, c);
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

describe.each([
  ['folder store', 'file'],
  ['MinIO', 's3'],
] as const)('timelines: restore, write, restore again from the continuation (%s)', (_name, kind) => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
  });

  it('each restore continues on a new timeline of the same archive, and every point of every timeline restores as it was', async () => {
    const work = await mkdtemp(join(tmpdir(), 'timelines-'));
    cleanups.push(() => rm(work, { recursive: true, force: true }));
    let url: string;
    let store: ObjectStore;
    if (kind === 's3') {
      const bucket = await createTestBucket({ objectLock: false, prefix: 'archive' });
      cleanups.push(() => bucket.cleanup());
      url = bucket.url;
      store = bucket.store;
    } else {
      url = pathToFileURL(join(work, 'archive')).href;
      store = await openObjectStore(url);
      cleanups.push(() => store.close());
    }
    const basePort = kind === 's3' ? 7620 : 7600;
    const metricsBase = kind === 's3' ? 9620 : 9600;

    const start = async (dataDir: string): Promise<Era> => {
      const cluster = await startLocalCluster({ nodes: 3, partitions: 1, dataDir, basePort });
      cleanups.push(() => cluster.stop());
      const sidecars = await startSidecars(
        {
          urls: cluster.urls,
          dataDir,
          objectStore: url,
          metricsBase,
          extraArgs: ['--segment-age', '200ms', '--segment-entries', '5', '--backups=false'],
        },
        cleanups,
      );
      return { dataDir, cluster, sidecars };
    };
    const stop = async (era: Era) => {
      for (const s of era.sidecars) await s.stop();
      await era.cluster.stop();
    };
    const load = async (era: Era, count: number, seed: number): Promise<WriteRecord[]> => {
      const file = join(work, `record-${uniqueName('r')}.jsonl`);
      const summary = await runLoad({
        ...LOAD_DEFAULTS,
        nodeUrls: era.cluster.urls,
        rate: 40,
        size: 2000,
        partitions: [P],
        count,
        durationMs: 60_000,
        git: true,
        record: file,
        seed,
        maxInFlight: 2,
        progressIntervalMs: 0,
        log: () => undefined,
      });
      expect(summary.ok).toBe(count);
      return (await readLoadRecord(file)).writes;
    };
    const waitArchived = async (era: Era, timeline: number): Promise<number> => {
      const leader = await leaderOf(era.cluster.urls, P);
      const commit = (await statusOf(era.cluster.urls[leader - 1]!, P)).committed;
      await waitFor(
        `partition ${P} timeline ${timeline} archived through ${commit}`,
        async () => {
          const m = await readPartitionManifest(store, P, { timeline });
          return (m?.value.archived?.last_lsn ?? 0) >= commit || undefined;
        },
        60_000,
        100,
      );
      return commit;
    };
    /** Restores the partition to a point and checks its refs against the history it should have. */
    const restoreAndCompare = async (
      point: string[],
      history: WriteRecord[],
      expected: { lsn: number; timeline: number },
    ) => {
      const dir = join(work, uniqueName('check'), 'partitions', P);
      const r = await cli(restoreCommand, [
        '--object-store',
        url,
        '--partition',
        P,
        ...point,
        '--target',
        dir,
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(`to LSN ${expected.lsn} of timeline ${expected.timeline}`);
      const repos = [...new Set(history.map((w) => w.relativePath))];
      expect(await refsIn(join(dir, 'state'), repos)).toEqual(expectedRefs(history, P, expected.lsn));
      await rm(join(dir, '..', '..'), { recursive: true, force: true });
    };
    /** Step 1 of the flow: every partition to a time, for three nodes. */
    const restoreAll = (time: string, target: string) =>
      cli(restoreCommand, [
        '--object-store',
        url,
        '--all',
        '--to-time',
        time,
        '--nodes',
        '3',
        '--target',
        target,
      ]);
    /** The last LSN committed at or before `time` in a write record. */
    const lsnAt = (writes: WriteRecord[], time: string) =>
      Math.max(...writes.filter((w) => Date.parse(w.committedAt) <= Date.parse(time)).map((w) => w.lsn));
    const timeAt = (writes: WriteRecord[], fraction: number) =>
      [...writes].sort((a, b) => Date.parse(a.committedAt) - Date.parse(b.committedAt))[
        Math.floor(writes.length * fraction)
      ]!.committedAt;

    // Timeline 1: the first cluster.
    const era1 = await start(join(work, 'nodes'));
    const w1 = await load(era1, 24, 11);
    const end1 = await waitArchived(era1, 1);
    await stop(era1);

    // Step 1–3 of the flow: restore --all to a time, boot the nodes, run the sidecars on the same URL.
    const t1 = timeAt(w1, 0.5);
    const b1 = lsnAt(w1, t1);
    expect(b1).toBeLessThan(end1);
    const r1 = join(work, 'restored-1');
    const all1 = await restoreAll(t1, r1);
    expect(all1.code, all1.stderr).toBe(0);
    const era2 = await start(r1);
    // The sidecar's first step: the new timeline, with a base backup at the restored LSN.
    await waitFor(
      'timeline 2 with its first base backup',
      async () => {
        const m = await readPartitionManifest(store, P, { timeline: 2 });
        return m?.value.backups.some((b) => b.lsn === b1 && b.trigger === 'restore') || undefined;
      },
      60_000,
      100,
    );
    const timelines = await listTimelines(store, P);
    expect(timelines.map((t) => [t.timeline, t.parent, t.branchLsn])).toEqual([
      [1, 0, 0],
      [2, 1, b1],
    ]);
    const w2 = await load(era2, 16, 12);
    for (const w of w2) expect(w.lsn).toBeGreaterThan(b1);
    const end2 = await waitArchived(era2, 2);
    // Timeline 1 is untouched: its manifest still ends where the first cluster left it.
    expect((await readPartitionManifest(store, P))?.value.archived?.last_lsn).toBe(end1);
    // The leader's restored copy of the state went once it was uploaded.
    const leader2 = await leaderOf(era2.cluster.urls, P);
    expect(
      await stat(join(r1, `node-${leader2}`, 'partitions', P, RESTORED_STATE_DIR)).catch(() => null),
    ).toBeNull();

    const history2 = [...w1.filter((w) => w.lsn <= b1), ...w2];
    await restoreAndCompare(['--latest'], history2, { lsn: end2, timeline: 2 });
    const t2 = timeAt(w2, 0.5);
    await restoreAndCompare(['--to-time', t2], history2, { lsn: lsnAt(w2, t2), timeline: 2 });
    // A time on the first timeline, after the branch point: the history that was being written then.
    const t1late = timeAt(w1, 0.8);
    expect(lsnAt(w1, t1late)).toBeGreaterThan(b1);
    await restoreAndCompare(['--to-time', t1late], w1, { lsn: lsnAt(w1, t1late), timeline: 1 });
    // An LSN past the branch point names timeline 2's entry; --timeline 1 names the first one's.
    await restoreAndCompare(['--to-lsn', String(b1 + 2)], history2, { lsn: b1 + 2, timeline: 2 });
    await restoreAndCompare(['--to-lsn', String(b1 + 2), '--timeline', '1'], w1, {
      lsn: b1 + 2,
      timeline: 1,
    });
    await stop(era2);

    // Twice: restore from the continuation (a time on timeline 2), boot, write.
    const r2 = join(work, 'restored-2');
    const all2 = await restoreAll(t2, r2);
    expect(all2.code, all2.stderr).toBe(0);
    const b2 = lsnAt(w2, t2);
    expect(all2.stdout).toContain(`partition ${P}: LSN ${b2} of timeline 2`);
    const era3 = await start(r2);
    const w3 = await load(era3, 10, 13);
    const end3 = await waitArchived(era3, 3);
    const history3 = [...history2.filter((w) => w.lsn <= b2), ...w3];
    await restoreAndCompare(['--latest'], history3, { lsn: end3, timeline: 3 });
    const t3 = timeAt(w3, 0.5);
    await restoreAndCompare(['--to-time', t3], history3, { lsn: lsnAt(w3, t3), timeline: 3 });
    await restoreAndCompare(['--to-time', timeAt(w2, 0.9)], history2, {
      lsn: lsnAt(w2, timeAt(w2, 0.9)),
      timeline: 2,
    });
    await restoreAndCompare(['--to-time', t1late], w1, { lsn: lsnAt(w1, t1late), timeline: 1 });
    // Before the first branch point every timeline holds the same history: timeline 3 reads it from timeline 1.
    await restoreAndCompare(['--to-lsn', String(b1 - 1), '--timeline', '3'], w1, {
      lsn: b1 - 1,
      timeline: 3,
    });
    await stop(era3);
    // One replica replaced in a live cluster goes on in its partition's history: no new timeline.
    const replica = join(work, 'replica', 'partitions', P);
    const rr = await cli(restoreCommand, [
      '--object-store',
      url,
      '--partition',
      P,
      '--latest',
      '--replica',
      '--target',
      replica,
    ]);
    expect(rr.code, rr.stderr).toBe(0);
    expect(await stat(join(replica, RESTORED_FILE)).catch(() => null)).toBeNull();
    expect(await stat(join(r2, 'node-1', 'partitions', P, RESTORED_FILE))).toBeTruthy();

    // The operator's view: the timelines as a tree, and verify checks each.
    const m = await cli(manifestCommand, ['--object-store', url, '--partition', P]);
    expect(m.code, m.stderr).toBe(0);
    expect(m.stdout).toMatch(new RegExp(`timeline 1 .*LSNs 1-${end1}`));
    expect(m.stdout).toMatch(new RegExp(`timeline 2 .*from timeline 1 at LSN ${b1}`));
    expect(m.stdout).toMatch(new RegExp(`timeline 3 .*from timeline 2 at LSN ${b2}`));
    const v = await cli(verifyCommand, ['--object-store', url]);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(v.stdout).toMatch(/OK +partition 1 timeline 3:/);
    // A drill of the latest timeline replays from its first base backup (the restored state) to its end.
    const d = await cli(drillCommand, ['--object-store', url, '--partition', P]);
    expect(d.code, d.stdout + d.stderr).toBe(0);
    expect(d.stdout).toContain(`drill: partition ${P} timeline 3 OK`);
  }, 300_000);
});
