import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyEntry } from '../../../contract/state/apply.js';
import { buildTransaction } from '../../../storage-node/api.js';
import { MAIN_REF } from '../../../storage-node/git-workload.js';
import {
  loadSucceeded,
  readLoadRecord,
  runLoad,
  WriteClient,
  type LoadOptions,
} from '../../../storage-node/load.js';

const run = promisify(execFile);

/**
 * Three in-process HTTP servers that speak the write side of the node API: the
 * leader of a partition applies the transaction (buildTransaction + applyEntry
 * into one shared state per partition, as if replicated), followers answer 421.
 */
class FakeCluster {
  servers: Server[] = [];
  urls: string[] = [];
  leader = new Map<string, number>();
  lsn = new Map<string, number>();
  /** Requests per node index. */
  hits: number[] = [];
  /** Status to answer with instead of serving, per node index. */
  failWith = new Map<number, number>();
  partitions: string[];
  delayMs = 0;

  constructor(
    readonly root: string,
    partitions: string[],
  ) {
    this.partitions = partitions;
    for (const p of partitions) this.leader.set(p, 0);
  }

  async start(n = 3): Promise<void> {
    for (let i = 0; i < n; i++) {
      this.hits.push(0);
      const server = createServer((req, res) => {
        void this.handle(i, req).then(({ status, body }) => {
          res.writeHead(status, { 'content-type': 'application/json' });
          res.end(JSON.stringify(body));
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      this.servers.push(server);
      this.urls.push(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    }
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.servers.map((s) => new Promise<void>((r) => s.close(() => r()) && s.closeAllConnections())),
    );
  }

  stateDir(partition: string): string {
    return join(this.root, 'nodes', partition, 'state');
  }

  private async handle(i: number, req: IncomingMessage): Promise<{ status: number; body: unknown }> {
    this.hits[i]!++;
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const forced = this.failWith.get(i);
    if (forced) return { status: forced, body: { error: `forced ${forced}`, code: 'UNAVAILABLE' } };
    if (req.method === 'GET' && req.url === '/v1/partitions') {
      return { status: 200, body: this.partitions.map((partition) => ({ partition, node: i + 1 })) };
    }
    const m = /^\/v1\/partitions\/([^/]+)\/transactions$/.exec(req.url ?? '');
    if (req.method !== 'POST' || !m) return { status: 404, body: { error: 'not found' } };
    const partition = decodeURIComponent(m[1]!);
    const leader = this.leader.get(partition);
    if (leader === undefined) return { status: 404, body: { error: 'no such partition', code: 'NOT_FOUND' } };
    if (leader !== i) {
      return {
        status: 421,
        body: { error: 'not the leader', leader: leader + 1, leaderUrl: this.urls[leader] },
      };
    }
    let built;
    try {
      built = buildTransaction(JSON.parse(Buffer.concat(chunks).toString('utf8')));
    } catch (err) {
      return { status: 400, body: { error: (err as Error).message, code: 'INVALID_ARGUMENT' } };
    }
    const lsn = (this.lsn.get(partition) ?? 0) + 1;
    this.lsn.set(partition, lsn);
    const entryDir = join(this.root, 'nodes', partition, 'wal', String(lsn));
    await mkdir(entryDir, { recursive: true });
    for (const f of built.files) await writeFile(join(entryDir, f.name), f.data);
    await applyEntry(built.manifest, { stateDir: this.stateDir(partition), entryDir, lsn });
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    return { status: 200, body: { partition, lsn, term: 2, committedAt: new Date().toISOString() } };
  }
}

let root: string;
let cluster: FakeCluster;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'load-routing-'));
  cluster = new FakeCluster(root, ['1', '2', '3']);
  await cluster.start();
});
afterEach(async () => {
  await cluster.stop();
  await rm(root, { recursive: true, force: true });
});

const body = { relativePath: 'r.git', references: [{ name: MAIN_REF, newOid: 'a'.repeat(40) }] };
const fastBackoff = { initialMs: 1, maxMs: 5 };

describe('WriteClient', () => {
  it('follows a 421 to the leader and then writes to the cached leader directly', async () => {
    cluster.leader.set('1', 2);
    const client = new WriteClient({ urls: cluster.urls, attempts: 3, requestTimeoutMs: 5000 });
    const first = await client.write('1', body);
    expect(first).toMatchObject({ url: cluster.urls[2], attempts: 2, response: { lsn: 1, term: 2 } });
    expect(client.leaderOf('1')).toBe(cluster.urls[2]);
    const second = await client.write('1', body);
    expect(second).toMatchObject({ url: cluster.urls[2], attempts: 1, response: { lsn: 2 } });
    expect(cluster.hits).toEqual([1, 0, 2]);
  });

  it('moves to the next URL after a connection error or a 5xx, and refreshes a stale leader', async () => {
    const dead = 'http://127.0.0.1:1';
    cluster.failWith.set(0, 503);
    cluster.leader.set('2', 1);
    const client = new WriteClient({
      urls: [dead, cluster.urls[0]!, cluster.urls[1]!],
      attempts: 4,
      requestTimeoutMs: 5000,
      backoff: fastBackoff,
    });
    expect(await client.write('2', body)).toMatchObject({ url: cluster.urls[1], attempts: 3 });
    // The leader moves: the cached one answers 421 and points at the new one.
    cluster.failWith.delete(0);
    cluster.leader.set('2', 0);
    expect(await client.write('2', body)).toMatchObject({ url: cluster.urls[0], attempts: 2 });
  });

  it('gives up after the attempts; a 4xx other than 421 is not retried', async () => {
    for (const i of [0, 1, 2]) cluster.failWith.set(i, 500);
    const client = new WriteClient({
      urls: cluster.urls,
      attempts: 3,
      requestTimeoutMs: 5000,
      backoff: fastBackoff,
    });
    await expect(client.write('1', body)).rejects.toThrow(/after 3 attempts: .*500 forced 500/);
    expect(cluster.hits).toEqual([1, 1, 1]);

    cluster.failWith.clear();
    await expect(client.write('1', { relativePath: '../x' })).rejects.toThrow(/after 1 attempt: .*400/);
    await expect(client.write('nope', body)).rejects.toThrow(/404 no such partition/);
  });

  it('times out a request that does not answer', async () => {
    cluster.delayMs = 500;
    const client = new WriteClient({
      urls: [cluster.urls[0]!],
      attempts: 2,
      requestTimeoutMs: 100,
      backoff: fastBackoff,
    });
    await expect(client.write('1', body)).rejects.toThrow(/timed out after 100 ms/);
  });
});

function options(extra: Partial<LoadOptions>): LoadOptions {
  return {
    nodeUrls: cluster.urls,
    rate: 200,
    size: 1000,
    partitions: 'all',
    git: false,
    repositoriesPerPartition: 1,
    seed: 3,
    maxInFlight: 8,
    requestTimeoutMs: 5000,
    attempts: 3,
    progressIntervalMs: 0,
    log: () => {},
    backoff: fastBackoff,
    ...extra,
  };
}

describe('runLoad', () => {
  it('writes real git history to every partition; the record matches the refs at the end', async () => {
    cluster.leader.set('2', 1);
    cluster.leader.set('3', 2);
    const recordFile = join(root, 'record.jsonl');
    const summary = await runLoad(
      options({
        git: true,
        count: 18,
        rate: 100,
        repositoriesPerPartition: 2,
        record: recordFile,
        nodeUrls: [cluster.urls[1]!],
      }),
    );
    expect(summary).toMatchObject({ partitions: ['1', '2', '3'], issued: 18, ok: 18, failed: 0, skipped: 0 });
    expect(loadSucceeded(summary)).toBe(true);
    expect(summary.perPartition['1']).toMatchObject({ ok: 6, lastLsn: 6 });

    const { writes, failures } = await readLoadRecord(recordFile);
    expect(failures).toEqual([]);
    expect(writes).toHaveLength(18);
    const lastByRepo = new Map<string, (typeof writes)[number]>();
    for (const w of writes) lastByRepo.set(`${w.partition}/${w.relativePath}`, w);
    expect(lastByRepo.size).toBe(6);
    for (const w of lastByRepo.values()) {
      const gitDir = join(cluster.stateDir(w.partition), 'repositories', w.relativePath);
      await run('git', ['--git-dir', gitDir, 'fsck', '--full', '--strict']);
      const head = (await run('git', ['--git-dir', gitDir, 'rev-parse', 'HEAD'])).stdout.trim();
      expect({ [MAIN_REF]: head }).toEqual(w.refs);
      const count = (await run('git', ['--git-dir', gitDir, 'rev-list', '--count', 'HEAD'])).stdout.trim();
      expect(count).toBe('3');
    }
    // Per repository the record is in LSN order.
    for (const key of lastByRepo.keys()) {
      const lsns = writes.filter((w) => `${w.partition}/${w.relativePath}` === key).map((w) => w.lsn);
      expect(lsns).toEqual([...lsns].sort((a, b) => a - b));
    }
  });

  it('counts failed writes, records them, and still exits successfully when others committed', async () => {
    cluster.failWith.set(0, 503);
    cluster.failWith.set(1, 503);
    cluster.failWith.set(2, 503);
    cluster.leader.set('1', 0);
    const recordFile = join(root, 'record.jsonl');
    // Partition 1's leader fails; partition 2's leader is node 2, healed below after the first writes.
    cluster.leader.set('2', 1);
    const done = runLoad(
      options({ partitions: ['1', '2'], count: 6, rate: 20, record: recordFile, attempts: 2 }),
    );
    await new Promise((r) => setTimeout(r, 60));
    cluster.failWith.delete(1);
    cluster.failWith.delete(2);
    const summary = await done;
    expect(summary.issued).toBe(6);
    expect(summary.ok + summary.failed).toBe(6);
    expect(summary.perPartition['1']).toMatchObject({ ok: 0, failed: 3 });
    expect(summary.perPartition['2']!.ok).toBeGreaterThan(0);
    expect(loadSucceeded(summary)).toBe(true);
    const { writes, failures } = await readLoadRecord(recordFile);
    expect(writes).toHaveLength(summary.ok);
    expect(failures).toHaveLength(summary.failed);
    expect(failures[0]).toMatchObject({ partition: '1', failed: true, error: expect.stringMatching(/503/) });
  });

  it('nothing committed is a failed run', async () => {
    for (const i of [0, 1, 2]) cluster.failWith.set(i, 500);
    const summary = await runLoad(options({ partitions: ['1'], count: 2, attempts: 1 }));
    expect(summary).toMatchObject({ ok: 0, failed: 2 });
    expect(loadSucceeded(summary)).toBe(false);
    expect(summary.lastError).toMatch(/500/);
  });

  it('stops on abort: in-flight writes finish, every sent write is in the record', async () => {
    cluster.delayMs = 30;
    const recordFile = join(root, 'record.jsonl');
    const controller = new AbortController();
    const done = runLoad(options({ durationMs: 0, rate: 100, record: recordFile }), controller.signal);
    await new Promise((r) => setTimeout(r, 300));
    controller.abort();
    const summary = await done;
    expect(summary.ok).toBeGreaterThan(5);
    expect(summary.ok + summary.failed).toBe(summary.issued);
    expect(summary.scheduled).toBe(summary.issued + summary.skipped);
    const lines = (await readFile(recordFile, 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(summary.issued);
    const total = [...cluster.lsn.values()].reduce((a, b) => a + b, 0);
    expect(total).toBe(summary.ok);
  });

  it('fails with one line when no node lists partitions', async () => {
    await expect(
      runLoad(options({ nodeUrls: ['http://127.0.0.1:1'], count: 1 }), AbortSignal.timeout(1500)),
    ).rejects.toThrow(/could not list partitions|aborted/);
  });
});
