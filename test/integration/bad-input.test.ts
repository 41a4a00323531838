import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import {
  entryDir,
  hardStatePath,
  listEntryLsns,
  partitionDir,
  readHardState,
  writeArchiverPosition,
} from '../../contract/wal/entry.js';
import { startLocalCluster } from '../../storage-node/cluster.js';
import { leaderOf, statusOf, waitFor, writeMany } from '../helpers/node-cluster.js';
import { S3_ENDPOINT } from '../helpers/services.js';
import { startSidecars } from '../helpers/sidecars.js';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { createTestBucket } from './object-store.s3-helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${label}-`));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function cli(bin: 'wal-archiver' | 'storage-node', args: string[]) {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin', `${bin}.js`), ...args], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { code: r.status, stderr: r.stderr.trim(), stdout: r.stdout };
}

async function metric(url: string, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(' ').pop()) : 0;
}

/** `storage-node run` of node 1 of a one-node cluster, with the given flags changed. */
function nodeRun(changed: Partial<Record<'id' | 'listen' | 'peers', string>>): ['storage-node', ...string[]] {
  const flags = {
    id: '1',
    'data-dir': '/tmp/x',
    listen: '127.0.0.1:0',
    peers: '1=http://127.0.0.1:1',
    ...changed,
  };
  return ['storage-node', 'run', ...Object.entries(flags).flatMap(([name, value]) => [`--${name}`, value])];
}

/** `wal-archiver run` beside an unreachable node, archiving to `objectStore`. */
function sidecarRun(objectStore: string, ...more: string[]): ['wal-archiver', ...string[]] {
  return [
    'wal-archiver',
    'run',
    ...['--data-dir', '/tmp/x', '--node-url', 'http://127.0.0.1:1', '--object-store', objectStore],
    ...more,
  ];
}

describe('bad input', () => {
  it.each([
    [nodeRun({ id: '4' }), 2, /--id 4 is not one of the nodes in --peers/],
    [nodeRun({ peers: 'one=two' }), 2, /--peers: "one=two" is not ID=URL/],
    [nodeRun({ listen: 'nowhere' }), 2, /--listen must be HOST:PORT/],
    [sidecarRun('file:///tmp/x', '--metrics-port', 'lots'), 2, /--metrics-port: must be a whole number/],
    [sidecarRun('ftp://host/x'), 2, /unsupported scheme "ftp:"/],
    [
      sidecarRun('s3://no-such-host-bucket?endpoint=http://127.0.0.1:1&region=us-east-1&forcePathStyle=true'),
      1,
      /object store s3:\/\/no-such-host-bucket.*(unreachable|ECONNREFUSED|connect)/i,
    ],
    [['wal-archiver', 'frobnicate'], 2, /unknown command "frobnicate"/],
  ] as const)('%j ends with one clear line and exit %i', (argv, code, message) => {
    const [bin, ...args] = argv;
    const r = cli(bin, [...args]);
    expect(r.code).toBe(code);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.split('\n')).toHaveLength(1);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('storage-node: a corrupt hard_state stops that partition only; malformed requests get 4xx with a reason', async () => {
    const dataDir = await tempDir('sn-bad');
    const c = await startLocalCluster({ nodes: 3, partitions: 2, dataDir, basePort: 7810 });
    cleanups.push(() => c.stop());
    await writeMany(c.urls, ['1', '2'], 10, 2);
    await c.cluster.node(1).stop();
    await writeFile(hardStatePath(partitionDir(join(dataDir, 'node-1'), '2')), Buffer.from([0x08, 0xff]));
    await c.cluster.node(1).restart();

    const broken = await statusOf(c.urls[0]!, '2').catch((e: unknown) => String(e));
    expect(String(broken)).toMatch(/503/);
    const list = (await (await fetch(`${c.urls[0]}/v1/partitions`)).json()) as Array<{
      partition: string;
      error?: string;
    }>;
    expect(list.find((p) => p.partition === '2')?.error).toMatch(/partition 2.*hard_state/);
    expect(list.find((p) => p.partition === '1')?.error).toBeUndefined();
    expect(await metric(c.urls[0]!, 'storage_node_partition_stopped', 'partition="2"')).toBe(1);
    // Partition 1 on the same node keeps working.
    await writeMany(c.urls, ['1'], 5, 1);
    const target = (await statusOf(c.urls[(await leaderOf(c.urls, '1')) - 1]!, '1')).committed;
    await waitFor('node 1 to apply partition 1', async () =>
      (await statusOf(c.urls[0]!, '1')).applied >= target ? true : undefined,
    );

    const leader = await leaderOf(c.urls, '1');
    const post = (url: string, body: string) =>
      fetch(`${url}/v1/partitions/1/transactions`, { method: 'POST', body });
    for (const [body, reason] of [
      ['{not json', /not JSON/],
      [
        '{"files":["eA=="],"operations":[{"createHardLink":{"source":"1","destination":"../x"}}]}',
        /destination/,
      ],
      ['{"files":["%%%"]}', /base64/],
      ['{"references":[{"name":"refs/heads/x","newOid":"zz"}],"relativePath":"r.git"}', /newOid/],
      ['{"surprise":1}', /unknown field "surprise"/],
    ] as const) {
      const res = await post(c.urls[leader - 1]!, body);
      expect(res.status, body).toBe(400);
      const err = (await res.json()) as { error: string; code: string };
      expect(err.error).toMatch(reason);
      expect(err.code).toBe('INVALID_ARGUMENT');
    }
    const follower = c.urls.find((_, i) => i !== leader - 1)!;
    const redirect = await post(follower, '{"operations":[]}');
    expect(redirect.status).toBe(421);
    expect(((await redirect.json()) as { leaderUrl: string }).leaderUrl).toBe(c.urls[leader - 1]);
    expect((await fetch(`${c.urls[0]}/v1/partitions/99`)).status).toBe(404);
  });

  it('wal-archiver: a corrupt committed entry stops its partition with the LSN named, others go on; a cut-off object store is retried', async () => {
    const work = await tempDir('sc-bad');
    const bucket = await createTestBucket({ objectLock: false, prefix: 'bad' });
    cleanups.push(() => bucket.cleanup());
    const proxy = new FaultProxy('127.0.0.1', Number(new URL(S3_ENDPOINT).port));
    await proxy.start();
    cleanups.push(() => proxy.stop());
    const storeUrl = `s3://${bucket.bucket}/bad?endpoint=${encodeURIComponent(`http://127.0.0.1:${proxy.port}`)}&region=us-east-1&forcePathStyle=true`;

    const dataDir = join(work, 'nodes');
    const c = await startLocalCluster({ nodes: 3, partitions: 2, dataDir, basePort: 7820 });
    cleanups.push(() => c.stop());
    // Keep the WAL (as a sidecar would) so a committed entry can be damaged before it is archived.
    for (const n of [1, 2, 3])
      for (const p of ['1', '2']) await writeArchiverPosition(partitionDir(join(dataDir, `node-${n}`), p), 0);
    await writeMany(c.urls, ['1', '2'], 20, 2, 'x');
    const leader = await leaderOf(c.urls, '1');
    const pdir = partitionDir(join(dataDir, `node-${leader}`), '1');
    const commit = (await readHardState(pdir))!.commit;
    const victim = (await listEntryLsns(pdir)).filter((l) => l <= commit).at(-3)!;
    const file = join(entryDir(pdir, victim), '1');
    const bytes = await readFile(file);
    bytes[0]! ^= 0xff;
    await writeFile(file, bytes);

    const sidecars = await startSidecars(
      {
        urls: c.urls,
        dataDir,
        objectStore: storeUrl,
        metricsBase: 9820,
        extraArgs: ['--segment-age', '100ms', '--segment-entries', '4'],
      },
      cleanups,
    );
    const mine = sidecars[leader - 1]!;
    const stopped = await waitFor('partition 1 to stop', async () =>
      (await mine.status()).find((p) => p.partition === '1' && p.state === 'failed'),
    );
    expect(stopped.error).toMatch(new RegExp(`LSN ${victim}.*digest|digest.*LSN ${victim}`));
    expect(await metric(mine.url, 'wal_archiver_partition_stopped', 'partition="1"')).toBe(1);
    expect(mine.problems().join('\n')).toMatch(new RegExp(`"lsn":${victim}`));
    // Nothing at or past the damaged entry was archived; the entries before it were.
    const m1 = (await readPartitionManifest(bucket.store, '1'))!.value;
    expect(m1.archived!.last_lsn).toBeLessThan(victim);
    // Partition 2 went on to the end.
    const p2leader = await leaderOf(c.urls, '2');
    const p2commit = (await statusOf(c.urls[p2leader - 1]!, '2')).committed;
    await waitFor('partition 2 archived', async () =>
      ((await readPartitionManifest(bucket.store, '2'))?.value.archived?.last_lsn ?? 0) >= p2commit
        ? true
        : undefined,
    );

    // Object store unreachable: partition 2 keeps retrying, and catches up when it is back.
    await proxy.cut();
    await writeMany(c.urls, ['2'], 20, 2, 'y');
    const p2sidecar = sidecars[(await leaderOf(c.urls, '2')) - 1]!;
    await waitFor('upload retries to show', async () =>
      (await metric(p2sidecar.url, 'wal_archiver_retries_total', 'partition="2"')) > 0 ? true : undefined,
    );
    expect((await p2sidecar.status()).find((p) => p.partition === '2')?.state).toBe('archiving');
    await proxy.restore();
    const after = (await statusOf(c.urls[(await leaderOf(c.urls, '2')) - 1]!, '2')).committed;
    await waitFor(
      'partition 2 to catch up after the outage',
      async () =>
        ((await readPartitionManifest(bucket.store, '2'))?.value.archived?.last_lsn ?? 0) >= after
          ? true
          : undefined,
      60_000,
    );
  });
});
