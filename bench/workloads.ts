import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import tar from 'tar-stream';
import { compress, CompressStream } from 'zstd-napi';
import { baseBackupKey } from '../src/manifest/keys.js';
import { readPartitionManifest, updatePartitionManifest } from '../src/manifest/partition-manifest.js';
import { DEFAULT_ARCHIVER_CONFIG } from '../src/pipeline/partition-archiver.js';
import { HashingStream } from '../src/archive/hashing-stream.js';
import { DEFAULT_RESTORE_CONCURRENCY, restorePartition } from '../src/restore/restore.js';
import { encodeKvState, KV_STATE_FILE } from '../contract/state/apply.js';
import { packState } from '../contract/state/snapshot.js';
import { MetadataKeys, type ObjectStore } from '../src/store/object-store.js';
import { openObjectStore } from '../src/store/open.js';
import { formatLsn } from '../contract/wal/lsn.js';
import {
  benchPartitionDir,
  commit,
  forEachLimit,
  kafkaUrl,
  LeadershipServer,
  makeEntry,
  percentile,
  s3Url,
  sampleProcess,
  sidecarStatus,
  sleepMs,
  startSidecar,
  uniqueName,
  waitFor,
  writeWalEntry,
  type SidecarProcess,
} from './harness.js';
import { measured, type FigureInput } from './report.js';

export interface BenchContext {
  quick: boolean;
  /** Scratch folder for data directories (removed afterwards). */
  root: string;
  s3: S3Client;
  bucket: string;
  /** Publish events to the real Kafka (the sidecar's production set-up). */
  kafka: boolean;
  /** Extra node options for the sidecar process (e.g. --cpu-prof). */
  sidecarNodeOptions: string[];
  log: (msg: string) => void;
}

export interface WorkloadResult {
  figures: FigureInput[];
  /** Everything measured, for the JSON file. */
  details: Record<string, unknown>;
}

const MiB = 1024 * 1024;
const TERM = 1;
/** The sidecar's defaults (`wal-archiver run`): upload concurrency 8, 2 segments in flight per partition. */
const SIDECAR_UPLOAD_CONCURRENCY = 8;

function partitionIds(n: number, prefix = ''): string[] {
  return Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`);
}

function seconds(fromMs: number): number {
  return (performance.now() - fromMs) / 1000;
}

/** Writes `perPartition` entries of `size` random bytes into each partition and commits them. */
async function writeBacklog(
  dataDir: string,
  partitions: readonly string[],
  perPartition: number,
  size: number,
  firstLsn = 1,
): Promise<number> {
  let bytes = 0;
  await forEachLimit(partitions, 8, async (p) => {
    const dir = benchPartitionDir(dataDir, p);
    for (let lsn = firstLsn; lsn < firstLsn + perPartition; lsn++) {
      const e = makeEntry(lsn, TERM, randomBytes(size), Date.now());
      await writeWalEntry(dir, lsn, e);
      bytes += e.manifest.length + e.raft.length + e.file.length;
    }
    await commit(dir, TERM, firstLsn + perPartition - 1);
  });
  return bytes;
}

interface SidecarRun {
  sidecar: SidecarProcess;
  node: LeadershipServer;
  store: string;
}

async function launch(ctx: BenchContext, dataDir: string, name: string, extraArgs: string[] = []) {
  const node = new LeadershipServer();
  await node.listen();
  const store = s3Url(ctx.bucket, name);
  const sidecar = await startSidecar({
    dataDir,
    nodeUrl: node.url,
    store,
    ...(ctx.kafka ? { events: kafkaUrl(uniqueName(`bench-${name}`).replace(/-/g, '_')) } : {}),
    // The stand-in node serves leadership only, not the snapshots base backups need.
    extraArgs: ['--backups=false', ...extraArgs],
    nodeOptions: ctx.sidecarNodeOptions,
  });
  await node.whenConnected();
  return { sidecar, node, store } satisfies SidecarRun;
}

async function shutdown(run: SidecarRun): Promise<void> {
  await run.sidecar.stop();
  await run.node.close();
}

/** Waits until every partition in `targets` is archived (and published, with events) through its LSN. */
async function waitArchived(
  run: SidecarRun,
  targets: ReadonlyMap<string, number>,
  timeoutMs: number,
  everyMs = 50,
): Promise<void> {
  await waitFor(
    'the sidecar to archive every committed entry',
    async () => {
      const status = await sidecarStatus(run.sidecar.statusUrl);
      const failed = status.find((s) => s.state === 'failed');
      if (failed) throw new Error(`partition ${failed.partition} failed: ${failed.error}`);
      const by = new Map(status.map((s) => [s.partition, s]));
      for (const [p, lsn] of targets) {
        const s = by.get(p);
        if (!s || s.archived < lsn || (s.published !== null && s.published < lsn)) return false;
      }
      return true;
    },
    timeoutMs,
    everyMs,
  );
}

/** How long a sidecar took over a backlog, and what the process used meanwhile. */
interface BacklogRun {
  elapsed: number;
  proc: Awaited<ReturnType<typeof sampleProcess>>;
}

/** The sidecar's peak memory over a run, held to the 256 MiB the design allows. */
function peakRssFigure(workload: string, proc: BacklogRun['proc']): FigureInput {
  return measured(workload, 'sidecar peak RSS', proc.peakRssBytes / MiB, 'MiB', 'lower', {
    target: { of: 'value', op: '<=', value: 256 },
  });
}

/** The details of a backlog workload: the backlog, the sidecar's run over it, what only it measured (`own`). */
function backlogDetails(
  ctx: BenchContext,
  backlog: { entries: number; partitions: readonly string[]; entryBytes: number; walBytes: number },
  run: BacklogRun,
  own: Record<string, unknown>,
): Record<string, unknown> {
  return {
    entries: backlog.entries,
    partitions: backlog.partitions.length,
    entryBytes: backlog.entryBytes,
    walBytes: backlog.walBytes,
    sidecarSeconds: run.elapsed,
    sidecarCpuSeconds: run.proc.cpuSeconds,
    sidecarPeakRssBytes: run.proc.peakRssBytes,
    ...own,
    events: ctx.kafka ? 'kafka' : 'none',
  };
}

/** Starts a sidecar over a written backlog, leads every partition, and times it until all is archived. */
async function archiveBacklog(
  ctx: BenchContext,
  dataDir: string,
  name: string,
  partitions: readonly string[],
  perPartition: number,
  timeoutMs: number,
): Promise<BacklogRun> {
  const run = await launch(ctx, dataDir, name);
  try {
    const t = performance.now();
    run.node.lead(partitions, TERM);
    await waitArchived(run, new Map(partitions.map((p) => [p, perPartition])), timeoutMs);
    const elapsed = seconds(t);
    return { elapsed, proc: await sampleProcess(run.sidecar.pid) };
  } finally {
    await shutdown(run);
  }
}

async function tarEntry(dir: string, name: string, files: readonly string[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<void>((r, j) => pack.on('end', r).on('error', j));
  pack.entry({ name: `${name}/`, type: 'directory' });
  for (const f of files) pack.entry({ name: `${name}/${f}` }, await readFile(join(dir, f)));
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/**
 * Gitaly's archiver today: one uncompressed tar object per LSN, uploaded by a
 * single worker with a plain PUT, in LSN order.
 */
async function perEntryBaseline(
  ctx: BenchContext,
  dataDir: string,
  partitions: readonly string[],
  perPartition: number,
  limit: number,
): Promise<{ entries: number; seconds: number }> {
  const work: Array<[string, number]> = [];
  for (const p of partitions) for (let lsn = 1; lsn <= perPartition; lsn++) work.push([p, lsn]);
  const sample = work.slice(0, limit);
  const t = performance.now();
  for (const [p, lsn] of sample) {
    const dir = join(benchPartitionDir(dataDir, p), 'wal', formatLsn(lsn));
    const body = await tarEntry(dir, formatLsn(lsn), ['MANIFEST', '1', 'RAFT']);
    await ctx.s3.send(
      new PutObjectCommand({
        Bucket: ctx.bucket,
        Key: `baseline-per-entry/partitions/${p}/wal/${formatLsn(lsn)}.tar`,
        Body: body,
      }),
    );
  }
  return { entries: sample.length, seconds: seconds(t) };
}

// ---------------------------------------------------------------- small

export async function small(ctx: BenchContext): Promise<WorkloadResult> {
  const partitions = partitionIds(16);
  const total = ctx.quick ? 2_000 : 20_000;
  const perPartition = total / partitions.length;
  const dataDir = join(ctx.root, 'small');
  ctx.log(`small: writing ${total} entries of 4 KiB into ${partitions.length} partitions`);
  const bytes = await writeBacklog(dataDir, partitions, perPartition, 4096);

  ctx.log('small: baseline (one uncompressed tar per entry, one worker)');
  const base = await perEntryBaseline(ctx, dataDir, partitions, perPartition, 2_000);
  const baseRate = base.entries / base.seconds;

  ctx.log('small: sidecar');
  const sidecar = await archiveBacklog(ctx, dataDir, 'small', partitions, perPartition, 600_000);
  const rate = total / sidecar.elapsed;
  return {
    figures: [
      measured('small', 'throughput', rate, 'entries/s', 'higher', {
        baseline: { name: 'per-entry uncompressed, 1 worker', value: baseRate },
        target: { of: 'ratio', op: '>=', value: 20 },
        note: `baseline timed over its first ${base.entries} entries`,
      }),
      peakRssFigure('small', sidecar.proc),
    ],
    details: backlogDetails(ctx, { entries: total, partitions, entryBytes: 4096, walBytes: bytes }, sidecar, {
      baselineEntries: base.entries,
      baselineSeconds: base.seconds,
    }),
  };
}

// ---------------------------------------------------------------- large

export async function large(ctx: BenchContext): Promise<WorkloadResult> {
  const partitions = partitionIds(4);
  const total = ctx.quick ? 24 : 200;
  const perPartition = total / partitions.length;
  const size = 8 * MiB;
  const dataDir = join(ctx.root, 'large');
  ctx.log(`large: writing ${total} entries of 8 MiB (incompressible) into ${partitions.length} partitions`);
  const bytes = await writeBacklog(dataDir, partitions, perPartition, size);
  const files = partitions.flatMap((p) =>
    Array.from({ length: perPartition }, (_, i) =>
      join(benchPartitionDir(dataDir, p), 'wal', formatLsn(i + 1), '1'),
    ),
  );

  ctx.log('large: sidecar');
  const sidecar = await archiveBacklog(ctx, dataDir, 'large', partitions, perPartition, 900_000);

  // The same bytes in segment-sized objects (two entries each), plain PUT, the sidecar's concurrency.
  ctx.log('large: raw PUT ceiling');
  const perObject = Math.max(1, Math.floor(DEFAULT_ARCHIVER_CONFIG.segmentMaxBytes / size));
  const groups: string[][] = [];
  for (let i = 0; i < files.length; i += perObject) groups.push(files.slice(i, i + perObject));
  const tPut = performance.now();
  await forEachLimit(groups, SIDECAR_UPLOAD_CONCURRENCY, async (g, i) => {
    const body = Buffer.concat(await Promise.all(g.map((f) => readFile(f))));
    await ctx.s3.send(new PutObjectCommand({ Bucket: ctx.bucket, Key: `ceiling-put/${i}`, Body: body }));
  });
  const putSeconds = seconds(tPut);

  ctx.log('large: zstd ceiling');
  let zstdSeconds = 0;
  for (const f of files) {
    const buf = await readFile(f);
    const t = performance.now();
    compress(buf, { compressionLevel: DEFAULT_ARCHIVER_CONFIG.zstdLevel });
    zstdSeconds += seconds(t);
  }

  const mb = bytes / 1e6;
  const rate = mb / sidecar.elapsed;
  return {
    figures: [
      measured('large', 'throughput', rate, 'MB/s', 'higher', {
        baseline: { name: 'raw PUT ceiling', value: mb / putSeconds },
        target: { of: 'ratio', op: '>=', value: 0.8 },
      }),
      measured('large', 'throughput vs zstd', rate, 'MB/s', 'higher', {
        baseline: { name: 'zstd ceiling (1 core)', value: (size * total) / 1e6 / zstdSeconds },
      }),
      peakRssFigure('large', sidecar.proc),
    ],
    details: backlogDetails(ctx, { entries: total, partitions, entryBytes: size, walBytes: bytes }, sidecar, {
      putCeilingSeconds: putSeconds,
      putCeilingObjectBytes: perObject * size,
      putCeilingConcurrency: SIDECAR_UPLOAD_CONCURRENCY,
      zstdCeilingSeconds: zstdSeconds,
    }),
  };
}

// ---------------------------------------------------------------- steady

export async function steady(ctx: BenchContext): Promise<WorkloadResult> {
  const partitions = partitionIds(16);
  const rate = 1_000;
  const durationS = ctx.quick ? 15 : 60;
  const dataDir = join(ctx.root, 'steady');
  // As storage-node creates a partition: its raft/ folder and hard state exist before it is led.
  for (const p of partitions) await commit(benchPartitionDir(dataDir, p), TERM, 0);
  const run = await launch(ctx, dataDir, 'steady');
  const committedAt = new Map<string, number[]>(partitions.map((p) => [p, [0]]));
  const next = new Map<string, number>(partitions.map((p) => [p, 1]));
  const pool = Array.from({ length: 64 }, () => randomBytes(4096));
  let written = 0;
  let cpu0;
  let cpu1;
  let writeSeconds: number;
  try {
    run.node.lead(partitions, TERM);
    await waitFor(
      'every partition to resume',
      async () => (await sidecarStatus(run.sidecar.statusUrl)).every((s) => s.state === 'archiving'),
      60_000,
    );
    ctx.log(`steady: ${rate} entries/s of 4 KiB into ${partitions.length} partitions for ${durationS} s`);
    cpu0 = await sampleProcess(run.sidecar.pid);
    const t0 = performance.now();
    let turn = 0;
    while (seconds(t0) < durationS) {
      const due = Math.floor(seconds(t0) * rate) - written;
      const touched = new Set<string>();
      const batch: Array<[string, number, number]> = [];
      for (let i = 0; i < due; i++) {
        const p = partitions[turn++ % partitions.length]!;
        const lsn = next.get(p)!;
        next.set(p, lsn + 1);
        touched.add(p);
        batch.push([p, lsn, turn]);
      }
      // Bounded, so a writer that fell behind catches up without running out of file descriptors.
      await forEachLimit(batch, 32, async ([p, lsn, k]) => {
        const e = makeEntry(lsn, TERM, pool[k % pool.length]!, Date.now());
        await writeWalEntry(benchPartitionDir(dataDir, p), lsn, e);
      });
      written += due;
      await Promise.all(
        [...touched].map(async (p) => {
          const lsn = next.get(p)! - 1;
          await commit(benchPartitionDir(dataDir, p), TERM, lsn);
          const times = committedAt.get(p)!;
          const now = Date.now();
          while (times.length <= lsn) times.push(now);
        }),
      );
      await sleepMs(5);
    }
    writeSeconds = seconds(t0);
    if (written / writeSeconds < 0.95 * rate) {
      ctx.log(
        `steady: the WAL writer reached only ${Math.round(written / writeSeconds)} entries/s ` +
          `(it writes in bursts when behind, which lengthens the lag); see the file create cost`,
      );
    }
    cpu1 = await sampleProcess(run.sidecar.pid);
    await waitArchived(run, new Map(partitions.map((p) => [p, next.get(p)! - 1])), 120_000);
  } finally {
    await shutdown(run);
  }
  const store = await openObjectStore(run.store);
  const lags: number[] = [];
  try {
    for (const p of partitions) {
      const m = (await readPartitionManifest(store, p))?.value;
      const times = committedAt.get(p)!;
      for (const s of m?.segments ?? []) {
        const durable = Date.parse(s.archived_at);
        for (let lsn = s.first_lsn; lsn <= s.last_lsn; lsn++) lags.push((durable - times[lsn]!) / 1000);
      }
    }
  } finally {
    await store.close();
  }
  lags.sort((a, b) => a - b);
  const cpuPct = ((cpu1.cpuSeconds - cpu0.cpuSeconds) / writeSeconds) * 100;
  const fig = (name: string, v: number, target?: number): FigureInput =>
    measured(
      'steady',
      name,
      v,
      's',
      'lower',
      target !== undefined ? { target: { of: 'value', op: '<=', value: target } } : {},
    );
  return {
    figures: [
      fig('commit-to-durable lag p50', percentile(lags, 50)),
      fig('commit-to-durable lag p99', percentile(lags, 99), 1),
      fig('commit-to-durable lag max', lags.at(-1) ?? NaN),
      measured('steady', 'sidecar CPU', cpuPct, '% of a core', 'lower'),
    ],
    details: {
      rate,
      durationSeconds: writeSeconds,
      entriesWritten: written,
      achievedRate: written / writeSeconds,
      entriesMeasured: lags.length,
      segmentMaxAgeMs: DEFAULT_ARCHIVER_CONFIG.segmentMaxAgeMs,
      sidecarCpuPercent: cpuPct,
      sidecarPeakRssBytes: cpu1.peakRssBytes,
      events: ctx.kafka ? 'kafka' : 'none',
    },
  };
}

// ---------------------------------------------------------------- many

/**
 * Waits until a sidecar has finished what it started with (publishing, the global manifest projector,
 * and the garbage collector's clean-up after them, which comes in bursts): quiet, under 5% of a core,
 * over three 2 s samples in a row, or two minutes at most. Returns the seconds waited.
 */
async function settle(pid: number): Promise<number> {
  const t = performance.now();
  let quiet = 0;
  while (quiet < 3 && seconds(t) < 120) {
    const a = await sampleProcess(pid);
    await sleepMs(2_000);
    const b = await sampleProcess(pid);
    quiet = (b.cpuSeconds - a.cpuSeconds) / 2 < 0.05 ? quiet + 1 : 0;
  }
  return seconds(t);
}

/** CPU (% of a core) and RSS of a sidecar over `windowS` seconds in which nothing is written. */
async function idleWindow(pid: number, windowS: number): Promise<{ cpuPct: number; rss: number }> {
  const i0 = await sampleProcess(pid);
  const t = performance.now();
  await sleepMs(windowS * 1000);
  const i1 = await sampleProcess(pid);
  return { cpuPct: ((i1.cpuSeconds - i0.cpuSeconds) / seconds(t)) * 100, rss: i1.rssBytes };
}

async function bareNodeRss(): Promise<number> {
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  try {
    await sleepMs(1_000);
    return (await sampleProcess(child.pid!)).rssBytes;
  } finally {
    child.kill('SIGTERM');
  }
}

export async function many(ctx: BenchContext): Promise<WorkloadResult> {
  const n = ctx.quick ? 1_000 : 10_000;
  const partitions = partitionIds(n);
  const active = partitions.slice(0, Math.max(1, Math.round(n / 100)));
  const windowS = ctx.quick ? 8 : 20;
  const dataDir = join(ctx.root, 'many');
  ctx.log(`many: ${n} partitions with one committed entry each`);
  await writeBacklog(dataDir, partitions, 1, 1024);
  const lsn = new Map(partitions.map((p) => [p, 1]));

  const first = await launch(ctx, dataDir, 'many');
  let startSeconds: number;
  let settleSeconds = 0;
  let idle;
  let busy;
  try {
    const t = performance.now();
    first.node.lead(partitions, TERM);
    await waitArchived(first, lsn, 900_000, 500);
    startSeconds = seconds(t);
    settleSeconds = await settle(first.sidecar.pid);
    ctx.log(`many: first start archived ${n} partitions in ${startSeconds.toFixed(1)} s; idle window`);
    idle = await idleWindow(first.sidecar.pid, windowS);

    ctx.log(`many: ${active.length} active partitions, one entry/s each`);
    const b0 = await sampleProcess(first.sidecar.pid);
    const tb = performance.now();
    while (seconds(tb) < windowS) {
      const tick = performance.now();
      await forEachLimit(active, 16, async (p) => {
        const l = lsn.get(p)! + 1;
        lsn.set(p, l);
        const dir = benchPartitionDir(dataDir, p);
        await writeWalEntry(dir, l, makeEntry(l, TERM, randomBytes(4096), Date.now()));
        await commit(dir, TERM, l);
      });
      await sleepMs(Math.max(0, 1000 - (performance.now() - tick)));
    }
    const b1 = await sampleProcess(first.sidecar.pid);
    busy = {
      cpuPct: ((b1.cpuSeconds - b0.cpuSeconds) / seconds(tb)) * 100,
      rss: b1.rssBytes,
      peak: b1.peakRssBytes,
    };
    await waitArchived(first, lsn, 120_000, 500);
  } finally {
    await shutdown(first);
  }

  // A restart resumes every partition from its manifest; the active ones have one new entry each.
  for (const p of active) {
    const l = lsn.get(p)! + 1;
    lsn.set(p, l);
    const dir = benchPartitionDir(dataDir, p);
    await writeWalEntry(dir, l, makeEntry(l, TERM, randomBytes(4096), Date.now()));
    await commit(dir, TERM, l);
  }
  ctx.log('many: restart and resume');
  const tSpawn = performance.now();
  const second = await launch(ctx, dataDir, 'many');
  let resumeSeconds: number;
  let caughtUpSeconds: number;
  let restartSettleSeconds: number;
  let idleAfterRestart: { cpuPct: number; rss: number };
  let peak: number;
  try {
    second.node.lead(partitions, TERM);
    await waitFor(
      'every partition to resume',
      async () => {
        const s = await sidecarStatus(second.sidecar.statusUrl);
        return s.length === n && s.every((x) => x.state === 'archiving');
      },
      900_000,
      250,
    );
    resumeSeconds = seconds(tSpawn);
    await waitArchived(second, lsn, 300_000, 250);
    caughtUpSeconds = seconds(tSpawn);
    restartSettleSeconds = await settle(second.sidecar.pid);
    ctx.log('many: idle window after the restart');
    idleAfterRestart = await idleWindow(second.sidecar.pid, windowS);
    peak = (await sampleProcess(second.sidecar.pid)).peakRssBytes;
  } finally {
    await shutdown(second);
  }
  const bare = await bareNodeRss();
  return {
    figures: [
      measured('many', 'idle CPU', idle.cpuPct, '% of a core', 'lower', {
        target: { of: 'value', op: '<=', value: 2 },
      }),
      measured('many', 'idle CPU after a restart', idleAfterRestart.cpuPct, '% of a core', 'lower', {
        target: { of: 'value', op: '<=', value: 2 },
      }),
      measured('many', `CPU, ${active.length} partitions active`, busy.cpuPct, '% of a core', 'lower'),
      measured('many', 'RSS', Math.max(idle.rss, busy.rss, idleAfterRestart.rss) / MiB, 'MiB', 'lower', {
        baseline: { name: 'bare node process', value: bare / MiB },
        target: { of: 'value', op: '<=', value: 512 },
      }),
      measured('many', 'restart to all resumed', resumeSeconds, 's', 'lower', {
        target: { of: 'value', op: '<=', value: 5 },
      }),
      measured('many', 'first start, archive all', startSeconds, 's', 'lower'),
    ],
    details: {
      partitions: n,
      active: active.length,
      activeRate: '1 entry/s per active partition',
      windowSeconds: windowS,
      idleCpuPercent: idle.cpuPct,
      activeCpuPercent: busy.cpuPct,
      idleRssBytes: idle.rss,
      activeRssBytes: busy.rss,
      peakRssBytes: Math.max(busy.peak, peak),
      bareNodeRssBytes: bare,
      resumeSeconds,
      resumeCaughtUpSeconds: caughtUpSeconds,
      firstStartSeconds: startSeconds,
      settleSecondsBeforeIdleWindow: settleSeconds,
      idleCpuAfterRestartPercent: idleAfterRestart.cpuPct,
      settleSecondsAfterRestart: restartSettleSeconds,
      events: ctx.kafka ? 'kafka' : 'none',
    },
  };
}

// ---------------------------------------------------------------- restore

async function uploadBaseBackup(store: ObjectStore, partition: string, stateDir: string, spool: string) {
  const lsn = 1;
  const digest = new HashingStream();
  await pipeline(
    packState(stateDir),
    new CompressStream({ compressionLevel: DEFAULT_ARCHIVER_CONFIG.zstdLevel, checksumFlag: true }),
    digest,
    createWriteStream(spool),
  );
  const sha256 = digest.hash.digest('hex');
  const key = baseBackupKey(partition, lsn);
  await store.create(key, createReadStream(spool), {
    metadata: {
      [MetadataKeys.SHA256]: sha256,
      [MetadataKeys.FIRST_LSN]: String(lsn),
      [MetadataKeys.LAST_LSN]: String(lsn),
      [MetadataKeys.PARTITION]: partition,
    },
    contentType: 'application/zstd',
  });
  await updatePartitionManifest(
    store,
    partition,
    { node: 1, term: TERM },
    {
      backups: [
        {
          key,
          lsn,
          taken_at: new Date().toISOString(),
          bytes: digest.bytes,
          sha256,
          trigger: 'manual',
          term: TERM,
          node: 1,
        },
      ],
    },
  );
  await rm(spool, { force: true });
  return { key, bytes: digest.bytes };
}

/**
 * The floor under any restore on this file system: the restored state's files (same folders, sizes
 * and count) written with plain synchronous writes from memory, nothing downloaded, verified or synced.
 */
async function writeFilesFloor(
  restored: string,
  scratch: string,
): Promise<{ seconds: number; files: number; bytes: number }> {
  const files: Array<{ rel: string; size: number }> = [];
  const dirs = new Set<string>();
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const d of await readdir(dir, { withFileTypes: true })) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      if (d.isDirectory()) {
        dirs.add(r);
        await walk(join(dir, d.name), r);
      } else files.push({ rel: r, size: (await stat(join(dir, d.name))).size });
    }
  };
  await walk(restored, '');
  const largest = files.reduce((n, f) => Math.max(n, f.size), 0);
  const source = randomBytes(largest);
  const t = performance.now();
  mkdirSync(scratch, { recursive: true });
  for (const d of dirs) mkdirSync(join(scratch, d), { recursive: true });
  for (const f of files) writeFileSync(join(scratch, f.rel), source.subarray(0, f.size), { flag: 'wx' });
  const elapsed = seconds(t);
  await rm(scratch, { recursive: true, force: true });
  return { seconds: elapsed, files: files.length, bytes: files.reduce((n, f) => n + f.size, 0) };
}

async function getCeiling(ctx: BenchContext, bucket: string, keys: readonly string[]): Promise<number> {
  const t = performance.now();
  await forEachLimit(keys, DEFAULT_RESTORE_CONCURRENCY, async (key) => {
    const out = await ctx.s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    await pipeline(
      out.Body as NodeJS.ReadableStream,
      new Writable({
        write(_c, _e, done) {
          done();
        },
      }),
    );
  });
  return seconds(t);
}

export async function restore(ctx: BenchContext): Promise<WorkloadResult> {
  const partition = 'r1';
  const backupMiB = ctx.quick ? 32 : 256;
  const entries = ctx.quick ? 2_000 : 20_000;
  const dataDir = join(ctx.root, 'restore');
  const pdir = benchPartitionDir(dataDir, partition);
  ctx.log(`restore: a ${backupMiB} MiB base backup at LSN 1 and ${entries} WAL entries after it`);
  const stateSrc = join(ctx.root, 'restore-state');
  const packDir = join(stateSrc, 'repositories', 'bench.git', 'objects', 'pack');
  await mkdir(packDir, { recursive: true });
  // The key-value state a partition has beside its repositories (packState needs the file to exist).
  await writeFile(
    join(stateSrc, KV_STATE_FILE),
    encodeKvState(new Map([[Buffer.from('bench').toString('base64'), Buffer.from('state')]])),
  );
  for (let i = 0; i < backupMiB / 8; i++)
    await writeFile(join(packDir, `base-${i}.pack`), randomBytes(8 * MiB));
  await writeWalEntry(pdir, 1, makeEntry(1, TERM, randomBytes(4096), Date.now()));
  await writeBacklog(dataDir, [partition], entries, 4096, 2);

  const run = await launch(ctx, dataDir, 'restore');
  try {
    run.node.lead([partition], TERM);
    await waitArchived(run, new Map([[partition, entries + 1]]), 600_000);
  } finally {
    await shutdown(run);
  }
  const store = await openObjectStore(run.store);
  try {
    const backup = await uploadBaseBackup(store, partition, stateSrc, join(ctx.root, 'backup.spool'));
    await rm(stateSrc, { recursive: true, force: true });
    const manifest = (await readPartitionManifest(store, partition))!.value;
    const keys = [backup.key, ...manifest.segments.map((s) => s.key)];
    const bytes = backup.bytes + manifest.segments.reduce((n, s) => n + s.bytes, 0);

    ctx.log('restore: raw GET ceiling');
    const getBefore = await getCeiling(
      ctx,
      ctx.bucket,
      keys.map((k) => `restore/${k}`),
    );
    ctx.log('restore: restorePartition');
    const target = join(ctx.root, 'restored', 'partitions', partition);
    const t = performance.now();
    const result = await restorePartition({
      store,
      partition,
      target: { kind: 'latest' },
      targetDir: target,
      voters: [1],
    });
    const restoreSeconds = seconds(t);
    const getAfter = await getCeiling(
      ctx,
      ctx.bucket,
      keys.map((k) => `restore/${k}`),
    );
    const getSeconds = Math.min(getBefore, getAfter);
    ctx.log('restore: writing the same files');
    const floor = await writeFilesFloor(join(target, 'state'), join(ctx.root, 'files-floor'));
    const mb = bytes / 1e6;
    if (result.targetLsn !== entries + 1)
      throw new Error(`restore ended at LSN ${result.targetLsn}, expected ${entries + 1}`);
    return {
      figures: [
        measured('restore', 'throughput (to latest)', mb / restoreSeconds, 'MB/s', 'higher', {
          baseline: { name: 'raw GET ceiling', value: mb / getSeconds },
          target: { of: 'ratio', op: '>=', value: 0.7 },
        }),
        measured('restore', 'time to restore', restoreSeconds, 's', 'lower', {
          baseline: { name: 'raw GET of the same objects', value: getSeconds },
        }),
        measured('restore', 'time to restore vs its files', restoreSeconds, 's', 'lower', {
          baseline: { name: 'writing the same files, nothing else', value: floor.seconds },
        }),
      ],
      details: {
        backupRawBytes: backupMiB * MiB,
        backupBytes: backup.bytes,
        entries,
        segments: manifest.segments.length,
        objectBytes: bytes,
        restoreSeconds,
        entriesApplied: result.entries,
        getCeilingSeconds: [getBefore, getAfter],
        getConcurrency: DEFAULT_RESTORE_CONCURRENCY,
        restoreFunction: 'restorePartition (src/restore/restore.ts)',
        restoredFiles: floor.files,
        restoredFileBytes: floor.bytes,
        writeFilesSeconds: floor.seconds,
      },
    };
  } finally {
    await store.close();
  }
}
