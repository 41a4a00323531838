import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { UsageError } from '../../../contract/cli/flags.js';
import {
  clusterCommand,
  defaultStorageNodeBin,
  LocalCluster,
  parseClusterFlags,
  startLocalCluster,
  type StartedCluster,
} from '../../../storage-node/cluster.js';
import { captureContext } from '../../helpers/cli-context.js';

/**
 * A stand-in for `storage-node run`: serves GET /healthz, writes its arguments
 * to <data-dir>/args.json, logs a line on stderr, exits 0 on SIGTERM. Node
 * FAKE_CRASH_ID exits with code 3 shortly after it starts serving.
 */
const FAKE_NODE = `
import { createServer } from 'node:http';
import { mkdirSync, writeFileSync } from 'node:fs';
const argv = process.argv.slice(2);
const flag = (name) => argv[argv.indexOf('--' + name) + 1];
const id = flag('id');
mkdirSync(flag('data-dir'), { recursive: true });
writeFileSync(flag('data-dir') + '/args.json', JSON.stringify(argv));
const [host, port] = [flag('listen').slice(0, flag('listen').lastIndexOf(':')), Number(flag('listen').split(':').pop())];
const server = createServer((req, res) => { res.writeHead(req.url === '/healthz' ? 200 : 404); res.end('ok'); });
server.listen(port, host, () => {
  process.stderr.write('{"msg":"serving","node":' + id + '}\\n');
  process.stdout.write('storage-node ' + id + ' serving\\n');
  if (process.env.FAKE_CRASH_ID === id) setTimeout(() => process.exit(3), 200);
});
process.on('SIGTERM', () => { process.stderr.write('stopping\\n'); server.close(); process.exit(0); });
`;

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A base port whose next `n` ports are free right now. */
async function freeBasePort(n: number): Promise<number> {
  for (;;) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    let ok = true;
    for (let i = 1; i <= n && ok; i++) ok = await portFree(base + i);
    if (ok) return base;
  }
}

async function until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

let root: string;
let bin: string;
let started: StartedCluster | undefined;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cluster-'));
  bin = join(root, 'fake-node.mjs');
  await writeFile(bin, FAKE_NODE);
});
afterEach(async () => {
  await started?.stop();
  started = undefined;
  await rm(root, { recursive: true, force: true });
});

describe('cluster flags', () => {
  const base = ['--partitions', '2', '--data-dir', '/tmp/x'];
  it('accepts the documented flags and fills the defaults', () => {
    expect(parseClusterFlags(base)).toEqual({
      nodes: 3,
      partitions: 2,
      dataDir: '/tmp/x',
      basePort: 7100,
      host: '127.0.0.1',
    });
    expect(
      parseClusterFlags([...base, '--nodes', '5', '--base-port', '9000', '--events', 'file:///tmp/ev']),
    ).toMatchObject({ nodes: 5, basePort: 9000, events: 'file:///tmp/ev' });
  });

  it.each([
    [['--nodes', '0', ...base], /--nodes must be from 1 to 9/],
    [['--nodes', '10', ...base], /--nodes must be from 1 to 9/],
    [['--nodes', 'three', ...base], /whole number/],
    [['--partitions', '0', '--data-dir', 'd'], /at least 1/],
    [['--data-dir', 'd'], /missing required flag --partitions/],
    [['--partitions', '1'], /missing required flag --data-dir/],
    [[...base, '--base-port', '65533'], /ports 65534..65536 must be within/],
    [[...base, '--base-port', '-5'], /--base-port -5/],
    [[...base, '--events', 'not a url'], /--events/],
    [[...base, '--host', 'a b'], /--host/],
    [[...base, '--bogus', '1'], /unknown flag --bogus/],
    [[...base, 'extra'], /unexpected argument/],
  ])('%j is a usage error', (argv, message) => {
    expect(() => parseClusterFlags(argv)).toThrow(UsageError);
    expect(() => parseClusterFlags(argv)).toThrow(message);
  });

  it('the command refuses bad flags before starting anything', async () => {
    const { ctx } = captureContext();
    await expect(clusterCommand.run(['--nodes', '12', ...base], ctx)).rejects.toBeInstanceOf(UsageError);
  });
});

describe('defaultStorageNodeBin', () => {
  it('finds bin/storage-node.js of this package from source and from dist', () => {
    const expected = join(process.cwd(), 'bin', 'storage-node.js');
    expect(defaultStorageNodeBin()).toBe(expected);
    expect(
      defaultStorageNodeBin(new URL('../../../dist/storage-node/cluster.js', import.meta.url).href),
    ).toBe(expected);
  });
});

describe('LocalCluster', () => {
  it('starts N nodes with the right arguments, waits for /healthz, kills and restarts one', async () => {
    const basePort = await freeBasePort(3);
    const lines: string[] = [];
    const exits: Array<{ id: number; expected: boolean; signal: string | null }> = [];
    started = await startLocalCluster({
      nodes: 3,
      partitions: 4,
      dataDir: root,
      basePort,
      events: 'file:///tmp/events',
      extraArgs: ['--tick', '20ms'],
      bin,
      onLine: (node, line) => lines.push(`[node ${node.id}] ${line}`),
      onExit: (node, info) => exits.push({ id: node.id, expected: info.expected, signal: info.signal }),
      readyTimeoutMs: 15_000,
    });
    expect(started.urls).toEqual([1, 2, 3].map((i) => `http://127.0.0.1:${basePort + i}`));
    const peers = started.urls.map((u, i) => `${i + 1}=${u}`).join(',');
    const args = JSON.parse(await readFile(join(root, 'node-2', 'args.json'), 'utf8')) as string[];
    expect(args).toEqual([
      'run',
      '--id',
      '2',
      '--data-dir',
      join(root, 'node-2'),
      '--listen',
      `127.0.0.1:${basePort + 2}`,
      '--peers',
      peers,
      '--partitions',
      '4',
      '--events',
      'file:///tmp/events',
      '--tick',
      '20ms',
    ]);
    for (const url of started.urls) expect((await fetch(`${url}/healthz`)).status).toBe(200);
    await until(() => lines.filter((l) => l.includes('"msg":"serving"')).length === 3);
    expect(lines).toContain('[node 1] {"msg":"serving","node":1}');

    const node2 = started.nodes[1]!;
    const pid = node2.pid;
    expect(await node2.kill('SIGKILL')).toMatchObject({ signal: 'SIGKILL', expected: true });
    expect(node2.running).toBe(false);
    await expect(fetch(`${node2.url}/healthz`)).rejects.toThrow();
    await node2.restart();
    expect(node2.running).toBe(true);
    expect(node2.pid).not.toBe(pid);
    expect((await fetch(`${node2.url}/healthz`)).status).toBe(200);

    await started.stop();
    expect(started.nodes.every((n) => !n.running)).toBe(true);
    expect(exits.every((e) => e.expected)).toBe(true);
    expect(exits.filter((e) => e.signal === null)).toHaveLength(3);
    expect(lines.filter((l) => l.endsWith('stopping'))).toHaveLength(3);
  });

  it('startLocalCluster fails with the node and its last output when a node does not start', async () => {
    const basePort = await freeBasePort(2);
    const broken = join(root, 'broken.mjs');
    await writeFile(
      broken,
      `process.stderr.write('storage-node: --listen: address in use\\n'); process.exit(1);`,
    );
    await expect(
      startLocalCluster({
        nodes: 2,
        partitions: 1,
        dataDir: root,
        basePort,
        bin: broken,
        readyTimeoutMs: 10_000,
      }),
    ).rejects.toThrow(
      /node \d exited before it served \(last output: storage-node: --listen: address in use\)/,
    );
  });

  it('validates its options like the flags', () => {
    expect(() => new LocalCluster({ nodes: 0, partitions: 1, dataDir: root })).toThrow(UsageError);
    expect(() => new LocalCluster({ nodes: 3, partitions: 0, dataDir: root })).toThrow(UsageError);
    expect(() => new LocalCluster({ nodes: 3, partitions: 1, dataDir: root, basePort: 65534 })).toThrow(
      UsageError,
    );
  });
});

describe('cluster command', () => {
  it('prints each URL once it serves, reports an unexpected exit in one line, keeps the others, stops on abort', async () => {
    const basePort = await freeBasePort(3);
    const controller = new AbortController();
    const { ctx, stdout, stderr } = captureContext({
      signal: controller.signal,
      env: {
        ...process.env,
        STORAGE_NODE_BIN: bin,
        FAKE_CRASH_ID: '3',
      },
    });
    const done = clusterCommand.run(
      ['--nodes', '3', '--partitions', '2', '--data-dir', root, '--base-port', String(basePort)],
      ctx,
    );
    await until(() => stderr().includes('node 3 exited unexpectedly'));
    await until(() => stdout().split('\n').filter(Boolean).length >= 2);
    expect(stdout()).toContain(`node 1 http://127.0.0.1:${basePort + 1}\n`);
    expect(stdout()).toContain(`node 2 http://127.0.0.1:${basePort + 2}\n`);
    expect(stderr()).toMatch(/\[node 2\] \{"msg":"serving","node":2\}\n/);
    expect(stderr()).toMatch(/\[node 1\] storage-node 1 serving\n/);
    const exitLines = stderr()
      .split('\n')
      .filter((l) => l.includes('exited unexpectedly'));
    expect(exitLines).toEqual([
      'storage-node cluster: node 3 exited unexpectedly (exit code 3); 2 nodes still running',
    ]);
    // The others still serve.
    expect((await fetch(`http://127.0.0.1:${basePort + 1}/healthz`)).status).toBe(200);

    controller.abort();
    expect(await done).toBe(0);
    await expect(fetch(`http://127.0.0.1:${basePort + 1}/healthz`)).rejects.toThrow();
    expect(
      stderr()
        .split('\n')
        .filter((l) => l.includes('exited unexpectedly')),
    ).toHaveLength(1);
  });

  it('exits 1 when every node has exited', async () => {
    const broken = join(root, 'broken.mjs');
    await writeFile(broken, `process.exit(2);`);
    const { ctx, stderr } = captureContext({
      env: {
        ...process.env,
        STORAGE_NODE_BIN: broken,
      },
    });
    const basePort = await freeBasePort(2);
    const code = await clusterCommand.run(
      ['--nodes', '2', '--partitions', '1', '--data-dir', root, '--base-port', String(basePort)],
      ctx,
    );
    expect(code).toBe(1);
    expect(stderr()).toMatch(/every node exited \(2 unexpectedly\)/);
  });
});
