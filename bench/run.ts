/**
 * `npm run bench [-- --quick] [-- --only small,large] [-- --no-kafka] [-- --cpu-prof]`
 *
 * Runs each workload against the real MinIO (and Kafka for events) next to
 * its baseline, prints one table with every figure, its baseline and the
 * ratio, and writes bench/results/<date>.json and <date>.svg (and latest.*).
 * scripts/bench.mjs builds this and starts the services first.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, unlinkSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { createBucket, rawClient, removeBucket, REPO_ROOT, S3_ENDPOINT, KAFKA_BROKERS } from './harness.js';
import { figure, formatReport, renderSvg, type Figure } from './report.js';
import { large, many, restore, small, steady, type BenchContext, type WorkloadResult } from './workloads.js';

// Steady runs before large: after large, the stand-in WAL writer fell behind its rate (file creation here is
// slow and shared with everything else on two cores), and the lag measured that instead of the sidecar.
const WORKLOADS = { small, steady, large, restore, many } as const;
type WorkloadName = keyof typeof WORKLOADS;

interface Args {
  quick: boolean;
  only: WorkloadName[];
  kafka: boolean;
  cpuProf: boolean;
  dir: string;
}

const USAGE =
  'usage: npm run bench -- [--quick] [--only small,steady,large,restore,many] [--no-kafka] [--cpu-prof] [--dir DIR]\n' +
  '  --dir DIR   where the workloads write WAL and restore (default: the temporary folder)\n';

/** Above this cost of creating one file, the WAL writer and restore measure the file system more than us. */
const SLOW_FILE_CREATE_MS = 0.25;

function parseArgs(argv: readonly string[]): Args {
  const args: Args = {
    quick: false,
    only: Object.keys(WORKLOADS) as WorkloadName[],
    kafka: true,
    cpuProf: false,
    dir: tmpdir(),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') args.quick = true;
    else if (a === '--no-kafka') args.kafka = false;
    else if (a === '--cpu-prof') args.cpuProf = true;
    else if (a === '--dir' || a.startsWith('--dir=')) {
      const dir = a === '--dir' ? argv[++i] : a.slice('--dir='.length);
      if (!dir) throw new Error(`--dir needs a folder\n${USAGE}`);
      args.dir = resolve(dir);
    } else if (a === '--only' || a.startsWith('--only=')) {
      const list = a === '--only' ? argv[++i] : a.slice('--only='.length);
      const names = (list ?? '').split(',').filter(Boolean);
      for (const n of names) {
        if (!(n in WORKLOADS)) throw new Error(`unknown workload ${JSON.stringify(n)}\n${USAGE}`);
      }
      args.only = names as WorkloadName[];
    } else if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${JSON.stringify(a)}\n${USAGE}`);
  }
  return args;
}

/**
 * What creating one empty file costs in `dir`, in ms (the median of five rounds of 100). Every WAL
 * entry the workloads write is four new inodes (a folder and three files), and restore creates one per
 * file it applies: where this is high, those figures are bound by the file system, and the machine line
 * says so.
 */
async function fileCreateCost(dir: string): Promise<number> {
  const probe = join(dir, 'file-create-probe');
  await mkdir(probe, { recursive: true });
  const rounds: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t = performance.now();
    for (let i = 0; i < 100; i++) {
      const fd = openSync(join(probe, `${r}-${i}`), 'wx');
      closeSync(fd);
    }
    rounds.push((performance.now() - t) / 100);
    for (let i = 0; i < 100; i++) unlinkSync(join(probe, `${r}-${i}`));
  }
  await rm(probe, { recursive: true, force: true });
  return rounds.sort((a, b) => a - b)[2]!;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date();
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const resultsDir = join(REPO_ROOT, 'bench', 'results');
  await mkdir(resultsDir, { recursive: true });
  await mkdir(args.dir, { recursive: true });
  const root = await mkdtemp(join(args.dir, 'wal-bench-'));
  const fileCreateMs = await fileCreateCost(root);
  if (fileCreateMs > SLOW_FILE_CREATE_MS) {
    process.stderr.write(
      `bench: creating a file in ${args.dir} costs ${fileCreateMs.toFixed(2)} ms; the WAL writer and restore ` +
        `will measure that file system (try --dir on another one)\n`,
    );
  }
  const s3 = rawClient();
  const bucket = await createBucket(s3, 'wal-bench');
  const profDir = join(resultsDir, `${stamp}-profiles`);
  const ctx: BenchContext = {
    quick: args.quick,
    root,
    s3,
    bucket,
    kafka: args.kafka,
    sidecarNodeOptions: args.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [],
    log: (msg) => process.stderr.write(`bench: ${msg}\n`),
  };
  const figures: Figure[] = [];
  const results: Record<string, WorkloadResult['details'] | { error: string }> = {};
  let failed = 0;
  const mode = args.quick ? 'quick' : 'full';
  const machine =
    `${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}, ` +
    `creating a file in ${args.dir}: ${fileCreateMs.toFixed(3)} ms`;
  const base = join(resultsDir, stamp);
  const write = async (final: boolean) => {
    const json = {
      schema: 1,
      mode,
      complete: final,
      started: started.toISOString(),
      finished: new Date().toISOString(),
      machine,
      workDir: args.dir,
      fileCreateMs,
      services: { s3: S3_ENDPOINT, kafka: args.kafka ? KAFKA_BROKERS : null },
      figures,
      workloads: results,
    };
    await writeFile(`${base}.json`, JSON.stringify(json, null, 2) + '\n');
    await writeFile(
      `${base}.svg`,
      renderSvg(figures, {
        title: `wal-archiver benchmark (${mode})`,
        subtitle: `${started.toISOString()} · ${machine}`,
      }),
    );
    if (!final) return;
    await copyFile(`${base}.json`, join(resultsDir, 'latest.json'));
    await copyFile(`${base}.svg`, join(resultsDir, 'latest.svg'));
    process.stdout.write(
      `\nwal-archiver benchmark (${mode}), ${started.toISOString()}\n${machine}\n\n${formatReport(figures)}`,
    );
    process.stdout.write(`\nwrote ${base}.json and ${base}.svg\n`);
  };
  try {
    for (const name of args.only) {
      const t = performance.now();
      try {
        const r = await WORKLOADS[name](ctx);
        figures.push(...r.figures.map(figure));
        results[name] = { ...r.details, wallSeconds: (performance.now() - t) / 1000 };
      } catch (err) {
        failed++;
        const message = err instanceof Error ? err.message : String(err);
        ctx.log(`${name} failed: ${message}`);
        results[name] = { error: message };
      } finally {
        await rm(root, { recursive: true, force: true });
        await mkdir(root, { recursive: true });
        // The next workload starts with nothing of this one's left to write back (`large` leaves
        // gigabytes of unsynced WAL and objects behind).
        spawnSync('sync', { stdio: 'ignore' });
      }
      // Written after every workload, so a run cut short still leaves what it measured.
      await write(false);
    }
  } finally {
    await removeBucket(s3, bucket).catch((err: unknown) =>
      ctx.log(`could not remove bucket ${bucket}: ${err}`),
    );
    s3.destroy();
    await rm(root, { recursive: true, force: true });
  }

  await write(true);
  if (args.cpuProf) process.stdout.write(`sidecar CPU profiles in ${profDir}\n`);
  return failed > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
