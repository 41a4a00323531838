import { execFile, execFileSync } from 'node:child_process';
import { existsSync, watch, type FSWatcher } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readAll } from '../../src/manifest/cas.js';
import { partitionManifestKey } from '../../src/manifest/keys.js';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import { restorePartition } from '../../src/restore/restore.js';
import { verifyArchive, type VerifyFinding } from '../../src/restore/verify.js';
import {
  archiverPositionPath,
  entryDir,
  listEntryLsns,
  partitionDir,
  readAppliedLsn,
} from '../../contract/wal/entry.js';
import { startLocalCluster, type StartedCluster } from '../../storage-node/cluster.js';
import { createTestBucket, type TestBucket } from '../integration/object-store.s3-helpers.js';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { leaderOf, statusOf, waitFor, writeMany } from '../helpers/node-cluster.js';
import { SeededRandom } from '../helpers/seeded-random.js';
import { kafkaUrl, S3_ENDPOINT, uniqueName } from '../helpers/services.js';
import { SidecarProcess } from '../helpers/sidecars.js';
import {
  archivedLsn,
  committedNow,
  OwnServices,
  RunReport,
  sleep,
  statuses,
  steadyWorkload,
} from './harness.js';
import {
  checkAgainstWal,
  checkArchive,
  checkEntryEvents,
  checkReplay,
  checkRestore,
  checkStaleNotArchived,
  type StaleEntries,
} from './invariants.js';

/**
 * The fault-injection suite: a 3-node storage cluster with a sidecar each, a
 * MinIO behind a fault proxy, a Kafka of the suite's own, and a steady write
 * workload; faults from a seeded schedule; then the invariants. See
 * scripts/test-faults.mjs for how it is run, FAULT_SEED and FAULT_SCALE.
 */

const DEFAULT_SEEDS = '20250611';
const SEEDS = (process.env.FAULT_SEED || DEFAULT_SEEDS).split(',').map((s) => Number(s.trim()));
const SCALE = Number(process.env.FAULT_SCALE || '1');
const PARTITIONS = ['1', '2', '3', '4'];
/** Lag must be back to normal this long after a fault ends. */
const LAG_LIMIT_MS = 30_000;
const SIDECAR_KILLS = Math.max(5, Math.ceil(50 * SCALE));
const OUTAGE_MS = Math.max(3_000, 30_000 * SCALE);
const SPOOL_MOUNT_BYTES = 16 * 1024 * 1024;
/** A sidecar that finds a committed entry gone before it was archived says so in one of these. */
const FORBIDDEN = /missing from the WAL|pruned before they were archived/;

const scaled = (ms: number) => Math.max(1_000, Math.round(ms * SCALE));
const replayLine = (seed: number) =>
  `replay: FAULT_SEED=${seed}${process.env.FAULT_SCALE ? ` FAULT_SCALE=${process.env.FAULT_SCALE}` : ''} npm run test:faults`;

const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

interface Rig {
  seed: number;
  rng: SeededRandom;
  report: RunReport;
  work: string;
  dataDir: string;
  nodeDirs: string[];
  cluster: StartedCluster;
  sidecars: SidecarProcess[];
  bucket: TestBucket;
  proxy: FaultProxy;
  events: string;
  storeUrl: string;
  spool: { root: string; mode: 'tmpfs' | 'file' };
  services: OwnServices;
  stale: StaleEntries[];
}

/** A tmpfs of its own for the sidecars' spool, so "disk full" is a real ENOSPC; else a plain folder. */
async function spoolRoot(work: string): Promise<{ root: string; mode: 'tmpfs' | 'file' }> {
  const root = join(work, 'spool');
  await mkdir(root, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${SPOOL_MOUNT_BYTES}`, 'tmpfs', root], {
      stdio: 'pipe',
    });
    cleanups.push(async () => execFileSync('umount', ['-l', root], { stdio: 'pipe' }));
    return { root, mode: 'tmpfs' };
  } catch {
    return { root, mode: 'file' };
  }
}

async function setup(seed: number, report: RunReport): Promise<Rig> {
  const work = await mkdtemp(join(tmpdir(), 'faults-'));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const services = new OwnServices();
  const spool = await spoolRoot(work);
  const bucket = await createTestBucket({ objectLock: false, prefix: 'faults' });
  cleanups.push(() => bucket.cleanup());
  const proxy = new FaultProxy('127.0.0.1', Number(new URL(S3_ENDPOINT).port));
  await proxy.start();
  cleanups.push(() => proxy.stop());
  const storeUrl = `s3://${bucket.bucket}/faults?endpoint=${encodeURIComponent(`http://127.0.0.1:${proxy.port}`)}&region=us-east-1&forcePathStyle=true`;
  const events = kafkaUrl(uniqueName('faults'));
  const dataDir = join(work, 'nodes');
  const cluster = await startLocalCluster({
    nodes: 3,
    partitions: PARTITIONS.length,
    dataDir,
    basePort: 7900,
    events,
    extraArgs: ['--fault-injection'],
  });
  cleanups.push(() => cluster.stop());
  const nodeDirs = cluster.urls.map((_, i) => join(dataDir, `node-${i + 1}`));
  const sidecars = cluster.urls.map(
    (url, i) =>
      new SidecarProcess({
        dataDir: nodeDirs[i]!,
        nodeUrl: url,
        objectStore: storeUrl,
        events,
        metricsPort: 9900 + i + 1,
        extraArgs: ['--segment-age', '1s', '--spool-dir', join(spool.root, `node-${i + 1}`)],
      }),
  );
  for (const s of sidecars) {
    await s.start();
    cleanups.push(() => s.stop());
  }
  report.note(
    `setup: spool on ${spool.mode === 'tmpfs' ? 'a tmpfs' : 'a plain folder'}, store via proxy :${proxy.port}`,
  );
  return {
    seed,
    rng: new SeededRandom(seed),
    report,
    work,
    dataDir,
    nodeDirs,
    cluster,
    sidecars,
    bucket,
    proxy,
    events,
    storeUrl,
    spool,
    services,
    stale: [],
  };
}

/**
 * Watches, once a second, that no node's WAL starts past what the archive
 * holds (no entry pruned before it was archived), and that no sidecar logged
 * a pruned or missing entry.
 */
function startWatch(rig: Rig) {
  let stopped = false;
  const seen = new Set<string>();
  const loop = (async () => {
    while (!stopped) {
      for (const p of PARTITIONS) {
        const views = await statuses(rig.cluster.urls, p);
        const archived = await archivedLsn(rig.bucket.store, p).catch(() => undefined);
        if (archived === undefined) continue;
        for (const s of views) {
          if (s.firstLsn <= 0) continue;
          const key = `prune ${s.node}/${p}/${s.firstLsn}`;
          if (seen.has(key)) continue;
          seen.add(key);
          rig.report.check(
            s.firstLsn - 1 <= archived,
            `node ${s.node} partition ${p}: WAL starts at LSN ${s.firstLsn} but the archive ends at ${archived} (pruned before archived)`,
          );
        }
      }
      for (const [i, sc] of rig.sidecars.entries()) {
        for (const line of sc.output) {
          // The same stop, logged again by each restart of the sidecar, is one violation.
          const key = line.replace(/"time":"[^"]*",?/, '');
          if (!FORBIDDEN.test(line) || seen.has(key)) continue;
          seen.add(key);
          rig.report.check(false, `sidecar ${i + 1}: ${line.slice(0, 400)}`);
        }
      }
      await sleep(1_000);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      // One last look at the logs.
      for (const [i, sc] of rig.sidecars.entries()) {
        const bad = sc.output.filter(
          (l) => FORBIDDEN.test(l) && !seen.has(l.replace(/"time":"[^"]*",?/, '')),
        );
        rig.report.check(bad.length === 0, `sidecar ${i + 1}: ${bad.join(' | ').slice(0, 400)}`);
      }
    },
  };
}

/** After a fault ends: the archive reaches what was committed when it ended within LAG_LIMIT_MS. */
async function lagBackToNormal(rig: Rig, fault: string): Promise<void> {
  const started = Date.now();
  const targets = await committedNow(rig.cluster.urls, PARTITIONS);
  const behind = async () => {
    const out: string[] = [];
    for (const p of PARTITIONS) {
      const a = await archivedLsn(rig.bucket.store, p).catch(() => 0);
      if (a < targets.get(p)!) out.push(`partition ${p} archived ${a} of ${targets.get(p)}`);
    }
    return out;
  };
  // A partition whose archiving stopped on entries pruned before they were archived is a violation the
  // watch already recorded (the sidecar's line); waiting on its lag again after every fault adds nothing.
  const stoppedOnPrune = async () => {
    const out = new Set<string>();
    for (const sc of rig.sidecars)
      for (const r of await sc.status().catch(() => []))
        if (r.state === 'failed' && FORBIDDEN.test(r.error ?? '')) out.add(`partition ${r.partition} `);
    return out;
  };
  let last: string[] = [];
  let pruned: string[] = [];
  try {
    await waitFor(
      `lag after ${fault}`,
      async () => {
        last = await behind();
        if (last.length === 0) return true;
        const stopped = await stoppedOnPrune();
        pruned = last.filter((l) => [...stopped].some((p) => l.startsWith(p)));
        if (pruned.length === last.length) {
          last = [];
          return true;
        }
        return undefined;
      },
      LAG_LIMIT_MS,
      250,
    );
  } catch {
    // Reported below.
  }
  if (pruned.length > 0 && last.length === 0)
    rig.report.note(`${fault}: not waiting on ${pruned.join('; ')}: its archiving stopped on pruned entries`);
  const seconds = (Date.now() - started) / 1000;
  rig.report.lagSeconds.push({ fault, seconds });
  const states = await Promise.all(rig.sidecars.map((s) => s.status().catch((e: unknown) => String(e))));
  rig.report.check(
    last.length === 0,
    `lag not back to normal ${LAG_LIMIT_MS / 1000} s after ${fault}: ${last.join('; ')}; sidecars ${JSON.stringify(states).slice(0, 600)}`,
  );
  rig.report.note(`${fault}: archive caught up in ${seconds.toFixed(1)} s`);
}

// ---------------------------------------------------------------------------------------------------------
// Faults

async function killSidecar(rig: Rig): Promise<void> {
  // Mostly the sidecar of some partition's leader (the one mid-segment, mid-upload, mid-manifest).
  let index = rig.rng.int(0, 2);
  if (rig.rng.next() < 0.75) {
    const p = rig.rng.pick(PARTITIONS);
    const views = await statuses(rig.cluster.urls, p);
    const leader = views.find((s) => s.role === 'leader')?.node;
    if (leader) index = leader - 1;
  }
  const sc = rig.sidecars[index]!;
  await sc.kill('SIGKILL');
  rig.report.fault('sidecar-sigkill');
  await sleep(rig.rng.int(0, 300));
  await sc.start();
}

async function sidecarKillBurst(rig: Rig, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    await sleep(rig.rng.int(100, 1_200));
    await killSidecar(rig);
  }
}

async function killLeaderNode(rig: Rig): Promise<void> {
  const p = rig.rng.pick(PARTITIONS);
  const leader = await leaderOf(rig.cluster.urls, p);
  const node = rig.cluster.cluster.node(leader);
  rig.report.note(`SIGKILL node ${leader}, leader of partition ${p}`);
  await node.kill('SIGKILL');
  rig.report.fault('leader-node-sigkill');
  await leaderOf(
    rig.cluster.urls.filter((_, i) => i !== leader - 1),
    p,
    [leader],
  );
  await sleep(rig.rng.int(500, 3_000));
  await node.restart();
}

async function isolateLeader(rig: Rig): Promise<void> {
  const p = rig.rng.pick(PARTITIONS);
  const leader = await leaderOf(rig.cluster.urls, p);
  const url = rig.cluster.urls[leader - 1]!;
  const faults = (isolate: boolean) =>
    fetch(`${url}/v1/faults`, { method: 'POST', body: JSON.stringify({ isolate }) }).then((r) => {
      if (!r.ok) throw new Error(`POST ${url}/v1/faults: HTTP ${r.status}`);
    });
  await faults(true);
  rig.report.fault('node-cut-off');
  const before = await statusOf(url, p);
  rig.report.note(
    `node ${leader} cut off while leading partition ${p} (term ${before.term}, appended ${before.appended})`,
  );
  // Writes straight to the cut-off leader: appended there, never committed.
  await Promise.all(
    Array.from({ length: 5 }, (_, i) =>
      fetch(`${url}/v1/partitions/${p}/transactions`, {
        method: 'POST',
        body: JSON.stringify({
          operations: [
            {
              setKey: {
                key: Buffer.from(`stale-${i}`).toString('base64'),
                value: Buffer.from('never committed').toString('base64'),
              },
            },
          ],
        }),
        signal: AbortSignal.timeout(1_500),
      })
        .then((r) => r.arrayBuffer())
        .catch(() => undefined),
    ),
  );
  const after = await statusOf(url, p);
  if (after.term === before.term && after.appended > before.appended) {
    rig.stale.push({
      partition: p,
      node: leader,
      term: before.term,
      fromLsn: before.appended + 1,
      toLsn: after.appended,
    });
    rig.report.note(
      `node ${leader} holds uncommitted LSNs ${before.appended + 1}..${after.appended} of partition ${p}`,
    );
  }
  await leaderOf(
    rig.cluster.urls.filter((_, i) => i !== leader - 1),
    p,
    [leader],
  );
  await sleep(rig.rng.int(2_000, 5_000));
  await faults(false);
}

async function objectStoreDown(rig: Rig): Promise<void> {
  rig.report.fault('object-store-unreachable');
  await rig.proxy.cut();
  await sleep(OUTAGE_MS);
  await rig.proxy.restore();
}

async function kafkaDown(rig: Rig): Promise<void> {
  await rig.services.stopKafka();
  rig.report.fault('kafka-stopped');
  await sleep(OUTAGE_MS / 2);
  // A handoff while the bus is down: the new leader's sidecar must still publish every entry once it is back.
  await killLeaderNode(rig);
  await sleep(OUTAGE_MS / 2);
  await rig.services.up();
}

/** Fills the spool's filesystem (tmpfs) so every write there fails with ENOSPC; else puts files where the folders were. */
async function spoolFull(rig: Rig): Promise<void> {
  rig.report.fault('spool-disk-full');
  const hold = scaled(15_000);
  if (rig.spool.mode === 'tmpfs') {
    const filler = join(rig.spool.root, 'filler');
    const fh = await open(filler, 'w');
    const chunk = Buffer.alloc(256 * 1024, 1);
    try {
      for (;;) await fh.write(chunk);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
    } finally {
      await fh.close();
    }
    await sleep(hold);
    await rm(filler, { force: true });
  } else {
    const dirs = rig.sidecars.map((_, i) => join(rig.spool.root, `node-${i + 1}`));
    for (const d of dirs) {
      await rm(d, { recursive: true, force: true });
      await writeFile(d, 'not a folder');
    }
    await sleep(hold);
    for (const d of dirs) await rm(d, { force: true });
  }
}

async function slowStore(rig: Rig): Promise<void> {
  rig.report.fault('object-store-slow');
  rig.proxy.latencyMs = 150;
  const until = Date.now() + scaled(20_000);
  // Kills while uploads crawl: mid-upload.
  while (Date.now() < until) {
    await sleep(rig.rng.int(1_000, 3_000));
    if (Date.now() < until) await killSidecar(rig);
  }
  rig.proxy.latencyMs = 0;
}

// ---------------------------------------------------------------------------------------------------------
// Node faults beyond leaders: followers, a node without its sidecar, a restored partition

const BIN = fileURLToPath(new URL('../../bin/wal-archiver.js', import.meta.url));
const runFile = promisify(execFile);
const FOLLOWER_KILLS = Math.max(2, Math.ceil(5 * SCALE));
/** How long a node runs without its sidecar while writes go on. */
const SIDECAR_DOWN_MS = scaled(15_000);

/** A node that is a follower of partition `p` right now (seeded pick), with the leader. */
async function followerOf(rig: Rig, p: string): Promise<{ leader: number; follower: number }> {
  const leader = await leaderOf(rig.cluster.urls, p);
  const others = [1, 2, 3].filter((n) => n !== leader);
  return { leader, follower: rig.rng.pick(others) };
}

/** Starts a node's process again and waits until it serves; a node that does not come back is a violation. */
async function bringBack(rig: Rig, id: number, after: string): Promise<boolean> {
  const node = rig.cluster.cluster.node(id);
  try {
    await node.start();
    await node.waitReady();
    return true;
  } catch (err) {
    rig.report.check(false, `node ${id} did not come back after ${after}: ${String(err)}`);
    return false;
  }
}

/** Waits until `node` has applied partition `p` through what was committed when called; a violation if not. */
async function caughtUp(rig: Rig, id: number, p: string, what: string): Promise<boolean> {
  const target = (await committedNow(rig.cluster.urls, [p])).get(p)!;
  const url = rig.cluster.urls[id - 1]!;
  let last: unknown;
  const ok = await waitFor(
    `node ${id} to catch up on partition ${p}`,
    async () => {
      last = await statusOf(url, p);
      const s = last as Awaited<ReturnType<typeof statusOf>>;
      return s.error === undefined && s.applied >= target ? true : undefined;
    },
    LAG_LIMIT_MS,
    200,
  ).catch(() => false);
  rig.report.check(
    ok,
    `node ${id} did not catch up on partition ${p} to LSN ${target} within ${LAG_LIMIT_MS / 1000} s after ${what}: status ${JSON.stringify(last)}; last output ${rig.cluster.cluster.node(id).recentOutput().slice(-3).join(' | ').slice(0, 400)}`,
  );
  return ok;
}

/**
 * Makes node `id` the leader of partition `p` by SIGKILLing whoever leads it
 * (restarted once a new leader is elected) until `id` wins; false if it never
 * did within `attempts`.
 */
async function makeLead(rig: Rig, p: string, id: number, attempts = 8): Promise<boolean> {
  for (let i = 0; i < attempts; i++) {
    const leader = await leaderOf(rig.cluster.urls, p);
    if (leader === id) return true;
    const node = rig.cluster.cluster.node(leader);
    await node.kill('SIGKILL');
    rig.report.fault('leader-node-sigkill');
    await leaderOf(
      rig.cluster.urls.filter((_, j) => j !== leader - 1),
      p,
      [leader],
    );
    await bringBack(rig, leader, 'a SIGKILL to hand partition leadership on');
  }
  return (await leaderOf(rig.cluster.urls, p)) === id;
}

/** SIGKILLs followers of random partitions at random moments, each restarted after a short delay. */
async function killFollowers(rig: Rig): Promise<void> {
  for (let i = 0; i < FOLLOWER_KILLS; i++) {
    await sleep(rig.rng.int(200, 2_000));
    const p = rig.rng.pick(PARTITIONS);
    const { follower } = await followerOf(rig, p);
    await rig.cluster.cluster.node(follower).kill('SIGKILL');
    rig.report.fault('follower-node-sigkill');
    rig.report.note(`SIGKILL node ${follower}, a follower of partition ${p}`);
    await sleep(rig.rng.int(200, 2_000));
    if (await bringBack(rig, follower, 'a follower SIGKILL'))
      await caughtUp(rig, follower, p, 'a follower SIGKILL');
  }
}

/** What is in a partition folder that a snapshot install touches, for the timeline. */
async function installLeftovers(pdir: string): Promise<string> {
  const names = await readdir(pdir).catch(() => [] as string[]);
  const incoming = await readdir(join(pdir, 'snapshot-incoming')).catch(() => undefined);
  const parts = [
    names.includes('state') ? 'state/' : 'NO state/',
    ...names.filter((n) => n.startsWith('state.old-') || n.startsWith('snapshot-wal-')),
    ...(incoming ? [`snapshot-incoming/{${incoming.join(',')}}`] : []),
  ];
  return parts.join(' ');
}

/**
 * A follower that lags so far that the leader has compacted past it: it is
 * stopped while the leader writes, archives and prunes, then started again
 * and SIGKILLed the moment the snapshot arrives (`snapshot-incoming/`
 * appears) or is installed (`snapshot-wal-*` or `state.old-*` appears);
 * restarted, it must catch up (its state is compared with the others' at
 * the end).
 */
async function killFollowerInSnapshot(rig: Rig): Promise<void> {
  const p = rig.rng.pick(PARTITIONS);
  const phase = rig.rng.pick(['transfer', 'install'] as const);
  const { follower } = await followerOf(rig, p);
  const node = rig.cluster.cluster.node(follower);
  const pdir = partitionDir(rig.nodeDirs[follower - 1]!, p);
  const behind = (await statusOf(rig.cluster.urls[follower - 1]!, p)).appended;
  await node.kill('SIGKILL');
  rig.report.fault('follower-node-sigkill');
  rig.report.note(
    `SIGKILL node ${follower}, a follower of partition ${p} at LSN ${behind}; writing until compacted past it`,
  );
  // The leader prunes only what is archived and past every active follower: the stopped one soon is not.
  const compacted = await waitFor(
    `the leader of partition ${p} to compact past LSN ${behind}`,
    async () => {
      await writeMany(rig.cluster.urls, [p], 40, 4, 'lag');
      const views = await statuses(rig.cluster.urls, p);
      const leader = views.find((s) => s.role === 'leader');
      return leader && leader.firstLsn > behind + 1 ? leader : undefined;
    },
    120_000,
    500,
  ).catch(() => undefined);
  if (!compacted) {
    rig.report.note(
      `partition ${p}: the leader did not compact past LSN ${behind}; no snapshot to interrupt`,
    );
    await bringBack(rig, follower, 'a follower SIGKILL');
    return;
  }
  rig.report.note(`partition ${p}: node ${compacted.node} leads with its WAL from LSN ${compacted.firstLsn}`);
  let seen: string | undefined;
  let killed: Promise<unknown> | undefined;
  // Reopening removes the leftovers of an earlier install: only a name created after the start counts.
  const before = new Set(await readdir(pdir));
  const watcher: FSWatcher = watch(pdir, (_event, name) => {
    if (killed || !name) return;
    const hit =
      phase === 'transfer'
        ? name === 'snapshot-incoming' && existsSync(join(pdir, name))
        : (name.startsWith('snapshot-wal-') || name.startsWith('state.old-')) && !before.has(name);
    if (!hit) return;
    seen = name;
    killed = node.kill('SIGKILL');
  });
  try {
    await node.start();
    await waitFor(
      `node ${follower} to receive a snapshot of partition ${p}`,
      async () => killed,
      30_000,
      20,
    ).catch(() => undefined);
  } finally {
    watcher.close();
  }
  if (!killed) {
    // The follower caught up without the step watched for (an install of an empty tail has no snapshot-wal-*
    // and may race the watch); still a follower that was behind, restarted.
    rig.report.note(`node ${follower}: no ${phase} of a snapshot of partition ${p} seen; not killed in it`);
    await node.waitReady().catch(() => undefined);
  } else {
    await killed;
    rig.report.fault(`follower-sigkill-in-snapshot-${phase}`);
    rig.report.note(
      `SIGKILL node ${follower} on ${seen} (snapshot ${phase}, partition ${p}); left: ${await installLeftovers(pdir)}`,
    );
    await sleep(rig.rng.int(200, 1_500));
    if (!(await bringBack(rig, follower, `a SIGKILL during a snapshot ${phase}`))) return;
  }
  await caughtUp(rig, follower, p, `a SIGKILL during a snapshot ${phase}`);
  const applied = await readAppliedLsn(pdir).catch(() => undefined);
  rig.report.check(
    existsSync(join(pdir, 'state')),
    `node ${follower} partition ${p}: no state/ after a SIGKILL during a snapshot ${phase} (applied_lsn ${applied})`,
  );
}

/**
 * A node restarted while its sidecar is stopped: it is made the leader of a
 * partition (so nothing archives that partition meanwhile) whose
 * `archiver/position` is removed (as on a node started before its sidecar);
 * its other partitions keep a stale position. Writes go on; the node must
 * prune nothing unarchived (the watch checks every second, and once more
 * here); then the sidecar starts and lag must recover with no gap.
 */
async function nodeWithoutSidecar(rig: Rig): Promise<void> {
  const p = rig.rng.pick(PARTITIONS);
  const id = rig.rng.int(1, 3);
  const sc = rig.sidecars[id - 1]!;
  const node = rig.cluster.cluster.node(id);
  await sc.kill('SIGTERM');
  rig.report.fault('sidecar-stopped-node-restarted');
  await node.stop();
  await rm(archiverPositionPath(partitionDir(rig.nodeDirs[id - 1]!, p)), { force: true });
  rig.report.note(`sidecar ${id} stopped; node ${id} restarted without partition ${p}'s archiver/position`);
  if (!(await bringBack(rig, id, 'a restart with its sidecar stopped'))) {
    await sc.start();
    return;
  }
  const leads = await makeLead(rig, p, id);
  rig.report.note(
    `node ${id} ${leads ? 'leads' : 'could not be made to lead'} partition ${p} without its sidecar`,
  );
  const until = Date.now() + SIDECAR_DOWN_MS;
  while (Date.now() < until) {
    await writeMany(rig.cluster.urls, [p], 20, 4, 'nosidecar');
    await sleep(500);
  }
  const archived = await archivedLsn(rig.bucket.store, p);
  for (const s of await statuses(rig.cluster.urls, p))
    rig.report.check(
      s.firstLsn <= 0 || s.firstLsn - 1 <= archived,
      `node ${s.node} partition ${p}: WAL starts at LSN ${s.firstLsn} but the archive ends at ${archived}, with node ${id}'s sidecar stopped (pruned before archived)`,
    );
  await sc.start();
}

/**
 * A partition restored from the archive and booted: node `id` (a follower)
 * and its sidecar stop, the partition's folder is replaced by
 * `wal-archiver restore --latest` output, the node starts; it must catch up
 * from the leader, and once it leads, its sidecar archives on with no gap or
 * conflicting copy (the lag check, and the archive checks at the end).
 */
async function restoredPartition(rig: Rig): Promise<void> {
  const p = rig.rng.pick(PARTITIONS);
  const { follower: id } = await followerOf(rig, p);
  const sc = rig.sidecars[id - 1]!;
  const node = rig.cluster.cluster.node(id);
  await sc.kill('SIGTERM');
  await node.stop();
  const pdir = partitionDir(rig.nodeDirs[id - 1]!, p);
  const target = join(rig.work, `restored-${p}-${Date.now()}`);
  let out: string;
  try {
    out = (
      await runFile(
        process.execPath,
        [
          BIN,
          'restore',
          '--object-store',
          rig.storeUrl,
          '--partition',
          p,
          '--latest',
          '--target',
          target,
          '--nodes',
          '3',
          // One replica of a live partition: it goes on in its cluster's history, no new timeline.
          '--replica',
        ],
        { env: { ...process.env, WAL_ARCHIVER_LOG_LEVEL: 'warn' } },
      )
    ).stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    rig.report.check(
      false,
      `partition ${p}: restore --latest for node ${id} failed: ${(e.stderr || e.message || '').trim().slice(0, 400)}`,
    );
    await bringBack(rig, id, 'a failed restore');
    await sc.start();
    return;
  }
  await rm(pdir, { recursive: true, force: true });
  await rename(target, pdir);
  rig.report.fault('restored-partition-rejoined');
  rig.report.note(
    `node ${id}: partition ${p} replaced by a restore (${out.split('\n').at(-1)!.slice(0, 200)})`,
  );
  if (!(await bringBack(rig, id, `booting a restored partition ${p}`))) {
    await sc.start();
    return;
  }
  await sc.start();
  if (!(await caughtUp(rig, id, p, `booting a restored partition ${p}`))) return;
  const leads = await makeLead(rig, p, id);
  rig.report.note(`node ${id} ${leads ? 'leads' : 'could not be made to lead'} its restored partition ${p}`);
  if (!leads) return;
  // Its sidecar takes over the archive: it must carry it past what is committed now.
  await writeMany(rig.cluster.urls, [p], 40, 4, 'restored');
  await lagBackToNormal(rig, `partition ${p} led from a restore`);
  const mine = (await sc.status().catch(() => [])).find((r) => r.partition === p);
  rig.report.check(
    mine !== undefined && mine.state !== 'failed',
    `sidecar ${id}: partition ${p}, restored and led by node ${id}, is not archiving: ${JSON.stringify(mine)}`,
  );
}

const MAJOR_FAULTS: Record<string, (rig: Rig) => Promise<void>> = {
  'leader-node-sigkill': killLeaderNode,
  'leader-node-sigkill-2': killLeaderNode,
  'node-cut-off': isolateLeader,
  'object-store-unreachable': objectStoreDown,
  'kafka-stopped': kafkaDown,
  'spool-disk-full': spoolFull,
  'object-store-slow': slowStore,
  'follower-node-sigkills': killFollowers,
  'follower-sigkill-in-snapshot': killFollowerInSnapshot,
  'sidecar-stopped-node-restarted': nodeWithoutSidecar,
  'restored-partition-rejoined': restoredPartition,
};

// ---------------------------------------------------------------------------------------------------------
// Corruption: after the invariants, with the sidecars stopped

async function corruptWalEntry(rig: Rig, p: string): Promise<void> {
  const leader = await leaderOf(rig.cluster.urls, p);
  const sc = rig.sidecars[leader - 1]!;
  await sc.kill('SIGTERM');
  // The node keeps these (never past the archiver's position): committed, not archived.
  const written = await writeMany(rig.cluster.urls, [p], 8, 2, 'corrupt');
  const lsns = written.get(p)!.sort((a, b) => a - b);
  const pdir = partitionDir(rig.nodeDirs[leader - 1]!, p);
  const onDisk = new Set(await listEntryLsns(pdir));
  const victim = lsns.filter((l) => onDisk.has(l)).at(-3)!;
  const file = join(entryDir(pdir, victim), '1');
  const bytes = await readFile(file);
  bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
  await writeFile(file, bytes);
  rig.report.fault('wal-entry-bit-flip');
  await sc.start();
  const failed = await waitFor(
    `partition ${p} to stop on the damaged entry`,
    async () => (await sc.status()).find((r) => r.partition === p && r.state === 'failed'),
    30_000,
    200,
  ).catch(() => undefined);
  rig.report.check(
    failed !== undefined && new RegExp(`LSN ${victim}\\b`).test(failed.error ?? ''),
    `partition ${p}: a flipped byte in LSN ${victim} was not reported with its LSN (status ${JSON.stringify(failed)})`,
  );
  const archived = await archivedLsn(rig.bucket.store, p);
  rig.report.check(
    archived < victim,
    `partition ${p}: archived through ${archived}, past the damaged LSN ${victim}`,
  );
  rig.report.note(`partition ${p}: damaged LSN ${victim} reported, archive ends at ${archived}`);
  await sc.kill('SIGTERM');
}

async function corruptObjects(rig: Rig, [deleted, truncated, tampered]: string[]): Promise<void> {
  const store = rig.bucket.store;
  const segmentOf = async (p: string) => {
    const m = (await readPartitionManifest(store, p))!.value;
    return rig.rng.pick(m.segments.slice(0, -1).length ? m.segments.slice(0, -1) : m.segments);
  };
  const del = await segmentOf(deleted!);
  await store.delete(del.key);
  rig.report.fault('segment-deleted');

  // A segment no base backup skips: restoring to its last LSN must read it.
  const cutManifest = (await readPartitionManifest(store, truncated!))!.value;
  const needed = cutManifest.segments.filter(
    (s) => !cutManifest.backups.some((b) => b.lsn >= s.first_lsn - 1 && b.lsn <= s.last_lsn),
  );
  const cut = rig.rng.pick(needed.length ? needed : cutManifest.segments);
  const info = (await store.head(cut.key))!;
  const body = await readAll(await store.get(cut.key));
  await store.delete(cut.key);
  await store.create(cut.key, body.subarray(0, Math.floor(body.length / 2)), { metadata: info.metadata });
  rig.report.fault('segment-truncated');

  const tamperedSegment = await segmentOf(tampered!);
  const mkey = partitionManifestKey(tampered!);
  const stored = (await readPartitionManifest(store, tampered!))!;
  const text = JSON.stringify(stored.value).replace(
    tamperedSegment.sha256,
    tamperedSegment.sha256.replace(/^./, (c) => (c === '0' ? '1' : '0')),
  );
  await store.replace(mkey, Buffer.from(text), { ifMatch: stored.etag, contentType: 'application/json' });
  rig.report.fault('manifest-tampered');

  const findings: VerifyFinding[] = [];
  for (const partition of [deleted!, truncated!, tampered!])
    await verifyArchive(store, {
      partition,
      scratch: join(rig.work, 'verify'),
      onFinding: (f) => findings.push(f),
    });
  const faultOn = (key: string) => findings.some((f) => f.severity === 'fault' && f.key === key);
  rig.report.check(faultOn(del.key), `verify did not name the deleted segment ${del.key}`);
  rig.report.check(faultOn(cut.key), `verify did not name the truncated segment ${cut.key}`);
  rig.report.check(
    faultOn(tamperedSegment.key) || faultOn(mkey),
    `verify did not name the tampered manifest ${mkey} or its altered record ${tamperedSegment.key}`,
  );
  // Restore refuses the damaged archive, naming the object, rather than restoring something else.
  const refused = await restorePartition({
    store,
    partition: truncated!,
    target: { kind: 'lsn', lsn: cut.last_lsn },
    targetDir: join(rig.work, 'refused', 'partitions', truncated!),
    voters: [1, 2, 3],
  }).then(
    () => undefined,
    (err: unknown) => String(err),
  );
  rig.report.check(
    refused !== undefined && refused.includes(cut.key),
    `restore of partition ${truncated} to LSN ${cut.last_lsn} over a truncated segment did not fail naming ${cut.key}: ${refused ?? 'it succeeded'}`,
  );
}

// ---------------------------------------------------------------------------------------------------------

async function runSeed(seed: number): Promise<RunReport> {
  const report = new RunReport(seed);
  const rig = await setup(seed, report);
  const workload = steadyWorkload(rig.cluster.urls, PARTITIONS);
  const watch = startWatch(rig);
  try {
    await sleep(2_000);
    const majors = rig.rng.shuffle(Object.keys(MAJOR_FAULTS));
    const perBurst = Math.ceil(SIDECAR_KILLS / (majors.length + 1));
    for (const name of majors) {
      await sidecarKillBurst(rig, perBurst);
      await lagBackToNormal(rig, 'sidecar kills');
      report.note(`fault ${name}`);
      await MAJOR_FAULTS[name]!(rig);
      await lagBackToNormal(rig, name);
    }
    while ((report.faults.get('sidecar-sigkill') ?? 0) < SIDECAR_KILLS) await killSidecar(rig);
    await lagBackToNormal(rig, 'sidecar kills');
  } finally {
    report.written = (await workload.stop()).ok;
  }

  // Settle: every node holds the same commit and has applied it; the archive and wal.entries reach it.
  const commits = new Map<string, number>();
  for (const p of PARTITIONS) {
    let views: Awaited<ReturnType<typeof statuses>> = [];
    const settled = await waitFor(
      `partition ${p} to settle on every node`,
      async () => {
        views = await statuses(rig.cluster.urls, p);
        const c = Math.max(...views.map((s) => s.committed));
        return views.length === 3 && views.every((s) => s.committed === c && s.applied >= c) ? c : undefined;
      },
      60_000,
      200,
    ).catch(() => undefined);
    // A node that never settles (a partition stopped) is a violation; the other checks still run.
    report.check(
      settled !== undefined,
      `partition ${p} did not settle on every node within 60 s: ${JSON.stringify(views).slice(0, 600)}`,
    );
    const commit = settled ?? Math.max(0, ...views.map((s) => Math.min(s.committed, s.applied)));
    commits.set(p, commit);
    await waitFor(
      `partition ${p} archived and published through ${commit}`,
      async () => {
        const m = (await readPartitionManifest(rig.bucket.store, p))?.value;
        return (m?.archived?.last_lsn ?? 0) >= commit && (m?.published_lsn ?? 0) >= commit ? true : undefined;
      },
      60_000,
      250,
    ).catch(() => undefined);
  }
  await watch.stop();

  const terms = new Map<string, Map<number, number>>();
  const check = join(rig.work, 'check');
  for (const p of PARTITIONS) {
    const commit = commits.get(p)!;
    const archive = await checkArchive(report, rig.bucket.store, p, commit, check, () =>
      committedNow(rig.cluster.urls, [p]).then((m) => m.get(p)!),
    );
    terms.set(p, archive.terms);
    report.archived += archive.entries.size;
    await checkAgainstWal(report, archive, p, commit, rig.nodeDirs);
    for (const s of rig.stale.filter((x) => x.partition === p)) checkStaleNotArchived(report, archive, s);
    await checkReplay(report, archive, p, commit, rig.nodeDirs, rig.work);
    await checkRestore(report, rig.bucket.store, p, commit, archive.upper, rig.nodeDirs, rig.work);
    await rm(check, { recursive: true, force: true });
  }
  await checkEntryEvents(report, rig.events, commits, terms, rig.stale, () =>
    committedNow(rig.cluster.urls, PARTITIONS),
  );

  // Corruption is detected and reported.
  for (const s of rig.sidecars) await s.kill('SIGTERM');
  const [walVictim, ...objectVictims] = rig.rng.shuffle(PARTITIONS);
  await corruptWalEntry(rig, walVictim!);
  await corruptObjects(rig, objectVictims);
  return report;
}

describe('fault injection', () => {
  it.each(SEEDS)(
    'seed %i: nothing committed is lost, nothing uncommitted is archived, corruption is named',
    async (seed) => {
      expect(Number.isInteger(seed), `FAULT_SEED must be integers, got ${process.env.FAULT_SEED}`).toBe(true);
      let report: RunReport | undefined;
      try {
        report = await runSeed(seed);
      } catch (err) {
        console.error(`fault run seed ${seed} failed: ${String(err)}\n${replayLine(seed)}`);
        throw err;
      }
      console.log(report.summary());
      if (report.violations.length > 0) console.error(`${report.timeline.join('\n')}\n${replayLine(seed)}`);
      expect(report.faults.get('sidecar-sigkill') ?? 0).toBeGreaterThanOrEqual(SIDECAR_KILLS);
      expect(report.violations, `${report.violations.length} violations; ${replayLine(seed)}`).toEqual([]);
    },
  );
});
