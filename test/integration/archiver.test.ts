import { execFileSync, execSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConsumedEvent } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { entryDir, partitionDir } from '../../contract/wal/entry.js';
import { startLocalCluster } from '../../storage-node/cluster.js';
import { readArchive, replay } from '../helpers/archive-check.js';
import {
  leaderOf,
  statusOf,
  treeDigest,
  waitFor,
  writeMany,
  writeUntilStopped,
} from '../helpers/node-cluster.js';
import { kafkaUrl, S3_ENDPOINT, uniqueName } from '../helpers/services.js';
import { startSidecars, type ArchivingCluster, type SidecarProcess } from '../helpers/sidecars.js';
import { createTestBucket } from './object-store.s3-helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
const nodeLines: string[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

type Setup = ArchivingCluster;

async function setup(o: {
  partitions: number;
  basePort: number;
  metricsBase: number;
  events?: string;
  sidecarArgs?: string[];
}): Promise<Setup> {
  const work = await mkdtemp(join(tmpdir(), 'archiver-'));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const bucket = await createTestBucket({ objectLock: false, prefix: 'cluster-a' });
  cleanups.push(() => bucket.cleanup());
  const dataDir = join(work, 'nodes');
  const cluster = await startLocalCluster({
    onLine: (node, line) => {
      if (/snapshot|compacted/.test(line)) nodeLines.push(`[node ${node.id}] ${line}`);
    },
    env: { ...process.env, WAL_ARCHIVER_LOG_LEVEL: 'debug' },
    nodes: 3,
    partitions: o.partitions,
    dataDir,
    basePort: o.basePort,
    ...(o.events ? { events: o.events } : {}),
  });
  cleanups.push(() => cluster.stop());
  const sidecars = await startSidecars(
    {
      urls: cluster.urls,
      dataDir,
      objectStore: bucket.url,
      ...(o.events ? { events: o.events } : {}),
      metricsBase: o.metricsBase,
      extraArgs: ['--segment-age', '200ms', ...(o.sidecarArgs ?? [])],
    },
    cleanups,
  );
  return { cluster, dataDir, sidecars, bucket, work };
}

/** Keeps writing until stopped; failed writes (during failovers) are retried by the client, or skipped. */
function backgroundWrites(urls: string[], partitions: string[]) {
  const writes = writeUntilStopped({
    urls,
    partitions,
    workers: 8,
    attempts: 30,
    requestTimeoutMs: 5_000,
    request: (_p, w, i) => ({
      operations: [
        {
          setKey: {
            key: Buffer.from(`w${w}-${i}`).toString('base64'),
            value: Buffer.alloc(300, w).toString('base64'),
          },
        },
      ],
    }),
  });
  return { stop: async () => (await writes.stop()).ok };
}

async function committedOf(urls: string[], partition: string): Promise<number> {
  const leader = await leaderOf(urls, partition);
  return (await statusOf(urls[leader - 1]!, partition)).committed;
}

async function waitArchived(
  store: ObjectStore,
  partition: string,
  commit: number,
  published: boolean,
  sidecars: SidecarProcess[] = [],
): Promise<void> {
  try {
    await waitArchivedInner(store, partition, commit, published);
  } catch (err) {
    const m = (await readPartitionManifest(store, partition).catch(() => undefined))?.value;
    const statuses = await Promise.all(sidecars.map((s) => s.status().catch((e: unknown) => String(e))));
    const problems = sidecars.map((s) => s.problems().slice(-5));
    console.error(nodeLines.filter((l) => l.includes(`"partition":"${partition}"`)).join('\n'));
    throw new Error(
      `${(err as Error).message}\nmanifest: leader ${JSON.stringify(m?.leader)} archived ${JSON.stringify(m?.archived)} published ${m?.published_lsn}` +
        `\nsidecars: ${JSON.stringify(statuses)}\nproblems: ${JSON.stringify(problems, null, 1)}`,
    );
  }
}

async function waitArchivedInner(
  store: ObjectStore,
  partition: string,
  commit: number,
  published: boolean,
): Promise<void> {
  await waitFor(
    `partition ${partition} archived${published ? ' and published' : ''} through ${commit}`,
    async () => {
      const m = (await readPartitionManifest(store, partition))?.value;
      const ok = (m?.archived?.last_lsn ?? 0) >= commit && (!published || (m?.published_lsn ?? 0) >= commit);
      return ok ? true : undefined;
    },
    60_000,
    200,
  );
}

/** Reads wal.entries from the start until every partition's LSNs 1..commit were seen. */
async function readEntryEvents(
  eventsUrl: string,
  commits: Map<string, number>,
): Promise<Map<string, ConsumedEvent[]>> {
  const bus = await openEventBus(eventsUrl);
  const byPartition = new Map<string, ConsumedEvent[]>([...commits.keys()].map((p) => [p, []]));
  const complete = () =>
    [...commits].every(([p, c]) => new Set(byPartition.get(p)!.map((e) => e.value.lsn as number)).size >= c);
  const sub = await bus.subscribe({
    topic: 'entries',
    group: uniqueName('check'),
    fromBeginning: true,
    handler: async (events) => {
      for (const e of events) byPartition.get(e.key)?.push(e);
    },
  });
  try {
    await waitFor('every entry event', async () => (complete() ? true : undefined), 60_000, 200);
  } finally {
    await sub.stop();
    await bus.close();
  }
  return byPartition;
}

/** At least once, in LSN order: the first time each LSN appears, it follows the one before it. */
function checkEventOrder(
  partition: string,
  events: ConsumedEvent[],
  commit: number,
  terms: Map<number, number>,
): void {
  const firsts: number[] = [];
  const seen = new Set<number>();
  for (const e of events) {
    const lsn = e.value.lsn as number;
    expect(e.value.partition).toBe(partition);
    // An event for an LSN carries the committed entry's term: never an uncommitted entry's.
    if (lsn <= commit)
      expect(e.value.term, `partition ${partition} LSN ${lsn} event term`).toBe(terms.get(lsn));
    if (!seen.has(lsn)) {
      seen.add(lsn);
      firsts.push(lsn);
    }
  }
  const expected = Array.from({ length: firsts.length }, (_, i) => i + 1);
  expect(firsts.slice(0, commit), `partition ${partition}: first appearance of each LSN`).toEqual(
    expected.slice(0, commit),
  );
}

describe('wal-archiver run', () => {
  it('archives every committed entry of 8 partitions with no gap while each partition\u2019s leader is killed in turn', async () => {
    const prefix = uniqueName('arch');
    const events = kafkaUrl(prefix);
    const s = await setup({ partitions: 8, basePort: 7510, metricsBase: 9310, events });
    const partitions = ['1', '2', '3', '4', '5', '6', '7', '8'];
    const writes = backgroundWrites(s.cluster.urls, partitions);
    try {
      await new Promise((r) => setTimeout(r, 2_000));
      for (const p of partitions) {
        const leader = await leaderOf(s.cluster.urls, p);
        await s.cluster.cluster.node(leader).kill('SIGKILL');
        await leaderOf(
          s.cluster.urls.filter((_, i) => i !== leader - 1),
          p,
          [leader],
        );
        await new Promise((r) => setTimeout(r, 500));
        await s.cluster.cluster.node(leader).restart();
      }
      await new Promise((r) => setTimeout(r, 1_000));
    } finally {
      const ok = await writes.stop();
      expect(ok).toBeGreaterThan(200);
    }

    const commits = new Map<string, number>();
    for (const p of partitions) commits.set(p, await committedOf(s.cluster.urls, p));
    for (const p of partitions) await waitArchived(s.bucket.store, p, commits.get(p)!, true, s.sidecars);

    const eventsByPartition = await readEntryEvents(events, commits);
    for (const p of partitions) {
      const commit = commits.get(p)!;
      const view = await readArchive(s.bucket.store, p, commit, join(s.work, 'check'));
      // The archived entries, replayed, give exactly the state the nodes hold: every entry's bytes are the committed ones.
      const replayed = join(s.work, `replay-${p}`);
      await replay(view, commit, replayed);
      const leader = await leaderOf(s.cluster.urls, p);
      await waitFor(`leader of ${p} to apply ${commit}`, async () =>
        (await statusOf(s.cluster.urls[leader - 1]!, p)).applied >= commit ? true : undefined,
      );
      const fromArchive = await treeDigest(replayed);
      const onNode = await treeDigest(join(partitionDir(join(s.dataDir, `node-${leader}`), p), 'state'));
      const differing = [...new Set([...Object.keys(fromArchive), ...Object.keys(onNode)])].filter(
        (k) => fromArchive[k] !== onNode[k],
      );
      expect(differing, `partition ${p}: replayed archive vs node ${leader} state`).toEqual([]);
      checkEventOrder(p, eventsByPartition.get(p)!, commit, view.terms);
    }
    for (const sc of s.sidecars) {
      const errors = sc.problems().filter((l) => /"level":"error"/.test(l));
      if (errors.length) console.error(nodeLines.join('\n'));
      expect(errors, errors.join('\n')).toEqual([]);
    }
  });

  it('keeps archiving while Kafka is down, and publishes every event in order once it is back', async () => {
    // A broker of this test's own, so stopping it disturbs nothing else.
    const servicesDir = await mkdtemp(join(tmpdir(), 'own-kafka-'));
    const env = {
      ...process.env,
      WAL_SERVICES_DIR: servicesDir,
      WAL_SERVICES_S3_PORT: '19300',
      WAL_SERVICES_S3_CONSOLE_PORT: '19301',
      WAL_SERVICES_KAFKA_PORT: '19392',
      WAL_SERVICES_KAFKA_CONTROLLER_PORT: '19393',
    };
    const services = (cmd: string) =>
      execFileSync(process.execPath, ['scripts/services.mjs', cmd], { env, stdio: 'pipe' });
    services('up');
    cleanups.push(async () => {
      services('down');
      await rm(servicesDir, { recursive: true, force: true });
    });
    const events = `kafka://127.0.0.1:19392?topicPrefix=${uniqueName('down')}`;
    const s = await setup({ partitions: 2, basePort: 7530, metricsBase: 9330, events });
    const partitions = ['1', '2'];
    await writeMany(s.cluster.urls, partitions, 100, 8, 'before');

    services('down');
    const during = await writeMany(s.cluster.urls, partitions, 300, 8, 'during');
    const commits = new Map<string, number>();
    for (const p of partitions) commits.set(p, await committedOf(s.cluster.urls, p));
    // Archiving went on without the bus.
    for (const p of partitions) await waitArchived(s.bucket.store, p, commits.get(p)!, false, s.sidecars);
    for (const p of partitions) {
      const m = (await readPartitionManifest(s.bucket.store, p))!.value;
      expect(m.published_lsn, `partition ${p} published while the bus was down`).toBeLessThan(
        Math.max(...during.get(p)!),
      );
    }
    services('up');
    for (const p of partitions) await waitArchived(s.bucket.store, p, commits.get(p)!, true, s.sidecars);
    const eventsByPartition = await readEntryEvents(events, commits);
    for (const p of partitions) {
      const view = await readArchive(s.bucket.store, p, commits.get(p)!, join(s.work, 'check'));
      checkEventOrder(p, eventsByPartition.get(p)!, commits.get(p)!, view.terms);
    }
  });

  it('writes segments a standard S3 client, zstd and tar open to the entry directories, byte for byte', async () => {
    const s = await setup({
      partitions: 1,
      basePort: 7550,
      metricsBase: 9350,
      events: `file://${join(tmpdir(), uniqueName('ev'))}`,
    });
    // Fewer entries than the node prunes in one batch, so the WAL still holds them to compare.
    await writeMany(s.cluster.urls, ['1'], 12, 2, 'std');
    const commit = await committedOf(s.cluster.urls, '1');
    await waitArchived(s.bucket.store, '1', commit, true);
    const leader = await leaderOf(s.cluster.urls, '1');
    const walOf = partitionDir(join(s.dataDir, `node-${leader}`), '1');
    const out = join(s.work, 'std');
    const manifest = (await readPartitionManifest(s.bucket.store, '1'))!.value;
    let checked = 0;
    for (const seg of manifest.segments) {
      const dir = join(out, seg.key.replace(/\//g, '_'));
      execSync(
        `mkdir -p "${dir}" && aws s3 cp "s3://${s.bucket.bucket}/cluster-a/${seg.key}" - --endpoint-url "${S3_ENDPOINT}" --region us-east-1 --only-show-errors | zstd -q -d | tar -x -C "${dir}"`,
        {
          env: {
            ...process.env,
            AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID,
            AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY,
          },
        },
      );
      for (const name of (await readdir(dir)).sort()) {
        const lsn = parseInt(name, 36);
        for (const file of await readdir(join(dir, name))) {
          const fromArchive = await readFile(join(dir, name, file));
          const fromNode = await readFile(join(entryDir(walOf, lsn), file));
          expect(fromArchive.equals(fromNode), `LSN ${lsn} ${file}`).toBe(true);
          checked++;
        }
        expect((await readdir(join(dir, name))).sort()).toEqual((await readdir(entryDir(walOf, lsn))).sort());
      }
    }
    expect(checked).toBeGreaterThanOrEqual(commit * 2);
  });
});
