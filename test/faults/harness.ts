import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import type { PartitionStatus } from '../../storage-node/api.js';
import { statusOf, writeUntilStopped } from '../helpers/node-cluster.js';

/** Shared pieces of the fault-injection suite: run figures, the workload, services control. */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** What one seeded run did and found; `check` counts every invariant check and keeps each violation. */
export class RunReport {
  readonly faults = new Map<string, number>();
  checks = 0;
  readonly violations: string[] = [];
  written = 0;
  archived = 0;
  readonly lagSeconds: Array<{ fault: string; seconds: number }> = [];
  readonly timeline: string[] = [];
  private readonly started = Date.now();

  constructor(readonly seed: number) {}

  fault(kind: string): void {
    this.faults.set(kind, (this.faults.get(kind) ?? 0) + 1);
  }

  note(line: string): void {
    const t = ((Date.now() - this.started) / 1000).toFixed(1).padStart(6);
    this.timeline.push(`${t}s ${line}`);
    // FAULT_TRACE=1 prints the timeline as it happens (a long run is otherwise silent until its figures).
    if (process.env.FAULT_TRACE === '1') console.log(`[seed ${this.seed}] ${t}s ${line}`);
  }

  check(ok: boolean, violation: string): boolean {
    this.checks++;
    if (!ok) {
      this.violations.push(violation);
      this.note(`VIOLATION ${violation}`);
    }
    return ok;
  }

  get faultCount(): number {
    return [...this.faults.values()].reduce((a, b) => a + b, 0);
  }

  summary(): string {
    const kinds = [...this.faults].map(([k, n]) => `${k} ${n}`).join(', ');
    const worstLag = this.lagSeconds.reduce((m, l) => Math.max(m, l.seconds), 0);
    return [
      `fault run seed ${this.seed}:`,
      `  faults injected: ${this.faultCount} (${kinds})`,
      `  entries written: ${this.written}`,
      `  entries archived: ${this.archived}`,
      `  invariant checks made: ${this.checks}`,
      `  lag back to normal after each fault: worst ${worstLag.toFixed(1)} s over ${this.lagSeconds.length} faults`,
      `  violations: ${this.violations.length}`,
      ...this.violations.slice(0, 30).map((v) => `    - ${v}`),
    ].join('\n');
  }
}

/** A steady write workload: `workers` writers, each pausing `pauseMs` between its writes. */
export function steadyWorkload(urls: string[], partitions: string[], workers = 4, pauseMs = 15) {
  return writeUntilStopped({
    urls,
    partitions,
    workers,
    attempts: 40,
    requestTimeoutMs: 3_000,
    pauseMs,
    request: (p, w, i) => {
      const name = `w${w}-${i}`;
      const withFile = i % 4 === 0;
      return {
        relativePath: `repo-${p}.git`,
        files: withFile ? [Buffer.from(`blob ${name} `.repeat(20)).toString('base64')] : [],
        operations: [
          ...(withFile
            ? [
                { createDirectory: { path: `repo-${p}.git` } },
                { createDirectory: { path: `repo-${p}.git/blobs` } },
                { createHardLink: { source: '1', destination: `repo-${p}.git/blobs/${name}` } },
              ]
            : []),
          {
            setKey: {
              key: Buffer.from(name).toString('base64'),
              value: Buffer.alloc(200, w + i).toString('base64'),
            },
          },
        ],
      };
    },
  });
}

/** Every reachable node's view of a partition. */
export async function statuses(urls: readonly string[], partition: string): Promise<PartitionStatus[]> {
  const all = await Promise.all(urls.map((u) => statusOf(u, partition).catch(() => undefined)));
  return all.filter((s): s is PartitionStatus => s !== undefined);
}

/** The highest commit LSN any reachable node knows for each partition. */
export async function committedNow(
  urls: readonly string[],
  partitions: readonly string[],
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const p of partitions) out.set(p, Math.max(0, ...(await statuses(urls, p)).map((s) => s.committed)));
  return out;
}

export async function archivedLsn(store: ObjectStore, partition: string): Promise<number> {
  return (await readPartitionManifest(store, partition))?.value.archived?.last_lsn ?? 0;
}

/** The suite's own Kafka (and MinIO), run by scripts/services.mjs from their own state folder. */
export class OwnServices {
  private readonly env: NodeJS.ProcessEnv;
  readonly dir: string;

  constructor() {
    const given = process.env.WAL_FAULTS_SERVICES_ENV;
    if (!given)
      throw new Error('WAL_FAULTS_SERVICES_ENV is not set: run the suite with `npm run test:faults`');
    const vars = JSON.parse(given) as Record<string, string>;
    this.env = { ...process.env, ...vars };
    this.dir = vars.WAL_SERVICES_DIR!;
  }

  private async kafkaPid(): Promise<number | undefined> {
    try {
      const record = JSON.parse(await readFile(join(this.dir, 'kafka', 'kafka.pid'), 'utf8')) as {
        pid?: number;
      };
      return record.pid;
    } catch {
      return undefined;
    }
  }

  /** Stops the Kafka broker (SIGTERM to its process group) and waits until it is gone. */
  async stopKafka(): Promise<void> {
    const pid = await this.kafkaPid();
    if (!pid) throw new Error(`no Kafka pid file in ${this.dir}`);
    try {
      process.kill(-pid, 'SIGTERM');
    } catch {
      process.kill(pid, 'SIGTERM');
    }
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      if (Date.now() > deadline) {
        process.kill(-pid, 'SIGKILL');
        return;
      }
      await sleep(200);
    }
  }

  /** Starts whatever is not running (Kafka after stopKafka) and waits until it is ready. */
  async up(): Promise<void> {
    await run(process.execPath, [join(ROOT, 'scripts', 'services.mjs'), 'up'], {
      env: this.env,
      cwd: ROOT,
    });
  }
}
