import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';
import { contentDigest, encodeEntryInfo } from '../contract/wal/entry-info.js';
import { encodeLogEntry, newLogEntry, operation, referenceChange } from '../contract/wal/log-entry.js';
import { formatLsn } from '../contract/wal/lsn.js';
import { EntryType, encodeHardState, encodeRaftEntry } from '../contract/wal/raftpb.js';
import { partitionDir } from '../contract/wal/entry.js';
import { plainS3ClientConfig, uniqueName } from '../test/helpers/services.js';
import { sleep } from '../contract/retry.js';

/** The repository root (this file runs from dist/bench/). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

// Where the services are, and their names and URLs: the same as the integration tests'.
export {
  KAFKA_BROKERS,
  S3_ENDPOINT,
  S3_REGION,
  kafkaUrl,
  s3Url,
  uniqueName,
} from '../test/helpers/services.js';

/** A plain S3 client: what the baselines and ceilings use (no tar, no zstd, no conditional writes). */
export function rawClient(): S3Client {
  return new S3Client({
    ...plainS3ClientConfig(),
    requestHandler: { httpAgent: { keepAlive: true, maxSockets: 32 } },
  });
}

export async function createBucket(client: S3Client, label: string): Promise<string> {
  const bucket = uniqueName(label);
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return bucket;
}

export async function removeBucket(client: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const out = await client.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
    const keys = (out.Contents ?? []).map((o) => ({ Key: o.Key! }));
    if (keys.length === 0) break;
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

// ---------------------------------------------------------------- WAL

export interface BenchEntry {
  manifest: Buffer;
  raft: Buffer;
  file: Buffer;
}

/**
 * One entry as storage-node writes it: a MANIFEST with a reference change
 * and a hard link of staged file `1` (a packfile) into the repository, the
 * file, and a RAFT record whose data carries the content digest and commit
 * time, so the archiver's digest check and restore's apply both run for real.
 */
export function makeEntry(lsn: number, term: number, file: Buffer, committedAt: number): BenchEntry {
  const oid = randomBytes(20).toString('hex');
  const manifest = encodeLogEntry(
    newLogEntry({
      relativePath: '@hashed/be/nc/bench.git',
      referenceTransactions: [{ changes: [referenceChange('refs/heads/main', oid)] }],
      operations: [operation.createHardLink('1', `bench.git/objects/pack/pack-${formatLsn(lsn)}.pack`)],
    }),
  );
  const data = encodeEntryInfo({
    contentSha256: contentDigest({ manifest, files: [{ name: '1', data: file }] }),
    committedAt,
    files: 1,
  });
  const raft = encodeRaftEntry({ term, index: lsn, type: EntryType.Normal, data });
  return { manifest, raft, file };
}

/**
 * Writes an entry in the data-directory layout (staged, then renamed into
 * `wal/<LSN>/`) without fsync: the WAL writer is set-up, not what is measured.
 */
export async function writeWalEntry(pdir: string, lsn: number, e: BenchEntry): Promise<void> {
  const staging = join(pdir, 'staging', `entry-${formatLsn(lsn)}`);
  await mkdir(staging, { recursive: true });
  await writeFile(join(staging, 'MANIFEST'), e.manifest);
  await writeFile(join(staging, '1'), e.file);
  await writeFile(join(staging, 'RAFT'), e.raft);
  await mkdir(join(pdir, 'wal'), { recursive: true });
  await rename(staging, join(pdir, 'wal', formatLsn(lsn)));
}

/** Replaces `raft/hard_state` (by rename, as the node does): entries up to `commit` are committed. */
export async function commit(pdir: string, term: number, lsn: number): Promise<void> {
  const file = join(pdir, 'raft', 'hard_state');
  await mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${randomBytes(4).toString('hex')}`;
  await writeFile(tmp, encodeHardState({ term, vote: 1, commit: lsn }));
  await rename(tmp, file);
}

export function benchPartitionDir(dataDir: string, partition: string): string {
  return partitionDir(dataDir, partition);
}

/** Runs `fn` over `items` with at most `limit` at once. */
export async function forEachLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// ---------------------------------------------------------------- process sampling

export interface ProcSample {
  /** CPU seconds (user + system) since the process started. */
  cpuSeconds: number;
  rssBytes: number;
  /** Peak resident set size since the process started. */
  peakRssBytes: number;
}

const CLOCK_TICKS = 100;

export async function sampleProcess(pid: number): Promise<ProcSample> {
  const [stat, status] = await Promise.all([
    readFile(`/proc/${pid}/stat`, 'utf8'),
    readFile(`/proc/${pid}/status`, 'utf8'),
  ]);
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of stat (utime, stime); the slice starts at field 3.
  const ticks = Number(fields[11]) + Number(fields[12]);
  const kb = (name: string) =>
    Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { cpuSeconds: ticks / CLOCK_TICKS, rssBytes: kb('VmRSS'), peakRssBytes: kb('VmHWM') };
}

// ---------------------------------------------------------------- a stand-in storage node

/**
 * Serves the one thing the sidecar asks its storage node for: the leadership
 * stream (`GET /v1/leadership/stream`, NDJSON), so a sidecar-only benchmark
 * decides which partitions it leads.
 */
export class LeadershipServer {
  private readonly server: http.Server;
  private readonly clients = new Set<http.ServerResponse>();
  private readonly lines = new Map<string, string>();
  private connected: (() => void) | undefined;
  url = '';

  constructor() {
    this.server = http.createServer((req, res) => {
      if (!req.url?.startsWith('/v1/leadership/stream')) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.write([...this.lines.values()].join(''));
      this.clients.add(res);
      res.on('close', () => this.clients.delete(res));
      this.connected?.();
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  whenConnected(): Promise<void> {
    if (this.clients.size > 0) return Promise.resolve();
    return new Promise((r) => (this.connected = r));
  }

  /** Announces this node (1) as the leader of `partitions` in `term`. */
  lead(partitions: readonly string[], term: number): void {
    let chunk = '';
    for (const partition of partitions) {
      const line =
        JSON.stringify({
          partition,
          node: 1,
          leader: 1,
          term,
          role: 'leader',
          at: new Date().toISOString(),
        }) + '\n';
      this.lines.set(partition, line);
      chunk += line;
    }
    for (const c of this.clients) c.write(chunk);
  }

  reset(): void {
    this.lines.clear();
    for (const c of this.clients) c.end();
    this.clients.clear();
  }

  async close(): Promise<void> {
    this.reset();
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

// ---------------------------------------------------------------- the sidecar under test

export interface SidecarProcess {
  child: ChildProcess;
  pid: number;
  statusUrl: string;
  /** The sidecar's stderr (JSON logs), for the report when something goes wrong. */
  stderr: () => string;
  stop(): Promise<void>;
}

/**
 * Starts the real `wal-archiver run` (the built CLI) as a child process, so
 * its CPU and memory are its own, and waits until it serves.
 */
export async function startSidecar(o: {
  dataDir: string;
  nodeUrl: string;
  store: string;
  events?: string;
  extraArgs?: string[];
  nodeOptions?: string[];
}): Promise<SidecarProcess> {
  const args = [
    'run',
    '--data-dir',
    o.dataDir,
    '--node-url',
    o.nodeUrl,
    '--object-store',
    o.store,
    '--metrics-port',
    '0',
    ...(o.events ? ['--events', o.events] : []),
    ...(o.extraArgs ?? []),
  ];
  // Started as `npx wal-archiver` starts it, through the script's own interpreter line (with the
  // Node flags the sidecar runs with); options of the bench's own go in through NODE_OPTIONS.
  const nodeOptions = [process.env.NODE_OPTIONS ?? '', ...(o.nodeOptions ?? [])].join(' ').trim();
  const child = spawn(join(REPO_ROOT, 'bin', 'wal-archiver.js'), args, {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
      ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}),
      WAL_ARCHIVER_LOG_LEVEL: process.env.WAL_ARCHIVER_LOG_LEVEL ?? 'warn',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  const statusUrl = await new Promise<string>((resolveUrl, reject) => {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      err = (err + d).slice(-20_000);
      const m = /metrics at (http:\/\/[^\s/]+)\/metrics/.exec(err);
      if (m) resolveUrl(m[1]!);
    });
    child.once('exit', (code) =>
      reject(new Error(`wal-archiver run exited with ${code}: ${err.slice(-2000)}`)),
    );
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    child,
    pid: child.pid!,
    statusUrl,
    stderr: () => err,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export interface PartitionStatus {
  partition: string;
  state: string;
  archived: number;
  committed: number;
  published: number | null;
  error?: string;
}

export async function sidecarStatus(url: string): Promise<PartitionStatus[]> {
  const res = await fetch(`${url}/v1/status`);
  return (await res.json()) as PartitionStatus[];
}

export { sleep as sleepMs } from '../contract/retry.js';

/** Polls `check` every `everyMs` until it returns true; throws after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
  everyMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}
