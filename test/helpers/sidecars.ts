import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PartitionReport } from '../../src/pipeline/sidecar.js';
import type { StartedCluster } from '../../storage-node/cluster.js';
import type { TestBucket } from '../integration/object-store.s3-helpers.js';
import { getJson, waitFor } from './node-cluster.js';

const BIN = fileURLToPath(new URL('../../bin/wal-archiver.js', import.meta.url));

export interface SidecarProcessOptions {
  dataDir: string;
  nodeUrl: string;
  objectStore: string;
  events?: string;
  metricsPort: number;
  extraArgs?: string[];
}

/** A `wal-archiver run` process beside a storage node, as in production (for kill/restart tests). */
export class SidecarProcess {
  private child: ChildProcess | undefined;
  readonly output: string[] = [];
  readonly url: string;

  constructor(private readonly o: SidecarProcessOptions) {
    this.url = `http://127.0.0.1:${o.metricsPort}`;
  }

  async start(): Promise<void> {
    const args = [
      BIN,
      'run',
      '--data-dir',
      this.o.dataDir,
      '--node-url',
      this.o.nodeUrl,
      '--object-store',
      this.o.objectStore,
      '--metrics-port',
      String(this.o.metricsPort),
      ...(this.o.events ? ['--events', this.o.events] : []),
      ...(this.o.extraArgs ?? []),
    ];
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, WAL_ARCHIVER_LOG_LEVEL: process.env.WAL_ARCHIVER_LOG_LEVEL ?? 'warn' },
    });
    this.child = child;
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) if (line) this.output.push(line);
      if (this.output.length > 2000) this.output.splice(0, this.output.length - 2000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    await waitFor(
      `sidecar ${this.url} to serve`,
      async () => (await fetch(`${this.url}/healthz`)).ok || undefined,
      20_000,
      100,
    );
  }

  async status(): Promise<PartitionReport[]> {
    return getJson<PartitionReport[]>(`${this.url}/v1/status`);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    await exited;
  }

  async stop(): Promise<void> {
    await this.kill('SIGTERM');
  }

  /** Log lines at warn/error level, for assertion messages. */
  problems(): string[] {
    return this.output.filter((l) => /"level":"(warn|error)"/.test(l) || !l.startsWith('{')).slice(-20);
  }
}

export interface ClusterSidecarsOptions {
  /** The node URLs of a local cluster; node n keeps its data in `<dataDir>/node-n`. */
  urls: readonly string[];
  dataDir: string;
  objectStore: string;
  events?: string;
  /** Node n's sidecar serves its metrics on port `metricsBase + n`. */
  metricsBase: number;
  extraArgs?: string[];
}

/** Starts a sidecar beside each node of a local cluster, in node order; each one's stop goes on `cleanups`. */
export async function startSidecars(
  o: ClusterSidecarsOptions,
  cleanups: Array<() => Promise<unknown>>,
): Promise<SidecarProcess[]> {
  const sidecars = o.urls.map(
    (url, i) =>
      new SidecarProcess({
        dataDir: join(o.dataDir, `node-${i + 1}`),
        nodeUrl: url,
        objectStore: o.objectStore,
        ...(o.events ? { events: o.events } : {}),
        metricsPort: o.metricsBase + i + 1,
        ...(o.extraArgs ? { extraArgs: o.extraArgs } : {}),
      }),
  );
  for (const s of sidecars) {
    await s.start();
    cleanups.push(() => s.stop());
  }
  return sidecars;
}

/** A local cluster with a sidecar beside each node archiving to a test bucket, as the integration tests set one up. */
export interface ArchivingCluster {
  cluster: StartedCluster;
  /** The nodes' data directories, `node-n` below it. */
  dataDir: string;
  sidecars: SidecarProcess[];
  bucket: TestBucket;
  /** The test's scratch folder. */
  work: string;
}
