/**
 * `npm run bench [-- --quick] [-- --only small,large] [-- --no-kafka] [-- --cpu-prof]`
 *
 * Runs each workload against the real MinIO (and Kafka for events) next to
 * its baseline, prints one table with every figure, its baseline and the
 * ratio, and writes bench/results/<date>.json and <date>.svg (and latest.*).
 * scripts/bench.mjs builds this and starts the services first.
 */
import { mkdir, mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { createBucket, rawClient, removeBucket, REPO_ROOT, S3_ENDPOINT, KAFKA_BROKERS } from './harness.js';
import { figure, formatReport, renderSvg, type Figure } from './report.js';
import { large, many, restore, small, steady, type BenchContext, type WorkloadResult } from './workloads.js';

const WORKLOADS = { small, large, steady, restore, many } as const;
type WorkloadName = keyof typeof WORKLOADS;

interface Args {
  quick: boolean;
  only: WorkloadName[];
  kafka: boolean;
  cpuProf: boolean;
}

const USAGE =
  'usage: npm run bench -- [--quick] [--only small,large,steady,restore,many] [--no-kafka] [--cpu-prof]\n';

function parseArgs(argv: readonly string[]): Args {
  const args: Args = {
    quick: false,
    only: Object.keys(WORKLOADS) as WorkloadName[],
    kafka: true,
    cpuProf: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') args.quick = true;
    else if (a === '--no-kafka') args.kafka = false;
    else if (a === '--cpu-prof') args.cpuProf = true;
    else if (a === '--only' || a.startsWith('--only=')) {
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

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date();
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const resultsDir = join(REPO_ROOT, 'bench', 'results');
  await mkdir(resultsDir, { recursive: true });
  const root = await mkdtemp(join(tmpdir(), 'wal-bench-'));
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
  const machine = `${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  const base = join(resultsDir, stamp);
  const write = async (final: boolean) => {
    const json = {
      schema: 1,
      mode,
      complete: final,
      started: started.toISOString(),
      finished: new Date().toISOString(),
      machine,
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
