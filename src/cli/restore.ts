import { randomBytes, randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseTimeTarget, type RestoreTarget } from '../restore/plan.js';
import { DEFAULT_NODES, restoreAll } from '../restore/restore-all.js';
import { DEFAULT_RESTORE_CONCURRENCY, restorePartition, type RestoreProgress } from '../restore/restore.js';
import { DEFAULT_SAMPLE, verifyArchive, type IncrementalOptions } from '../restore/verify.js';
import { objectStoreFlag, parseCommandFlags } from './shared-flags.js';
import { openObjectStore } from '../store/open.js';
import { UsageError } from '../../contract/cli/flags.js';
import { EXIT_FAILURE, EXIT_OK, type Command, type CommandContext } from '../../contract/cli/runner.js';

/**
 * `wal-archiver restore` and `wal-archiver verify` (Contract 5).
 *
 * Progress goes to stderr: a bar redrawn in place on a terminal, plain lines
 * (at most one every PROGRESS_EVERY_MS per partition, plus each phase change)
 * otherwise. The result goes to stdout.
 */

export const PROGRESS_EVERY_MS = 2_000;

const restoreFlags = {
  'object-store': objectStoreFlag,
  partition: { type: 'string', help: 'the partition to restore', value: 'ID' },
  all: { type: 'bool', help: 'restore every partition into a layout for --nodes nodes', default: false },
  'to-lsn': { type: 'int', help: 'restore up to this LSN exactly', value: 'N', min: 1 },
  'to-time': {
    type: 'string',
    help: 'restore up to the last entry committed at or before this time (ISO 8601 with a zone, or Unix ms)',
    value: 'TIME',
  },
  latest: { type: 'bool', help: 'restore up to the last archived LSN', default: false },
  timeline: {
    type: 'int',
    help: "restore this archive timeline's history (default: the latest timeline that holds the target)",
    value: 'N',
    min: 1,
  },
  target: {
    type: 'string',
    help: 'with --partition: the partition directory to create (<data-dir>/partitions/<id>); with --all: the folder that gets node-<i>/partitions/<id>/ for every node',
    value: 'DIR',
    required: true,
  },
  force: { type: 'bool', help: 'replace a target that is not empty', default: false },
  replica: {
    type: 'bool',
    help: "with --partition: the result replaces one replica of a live partition, which its leader catches up; it continues the partition's timeline instead of starting a new one",
    default: false,
  },
  nodes: {
    type: 'int',
    help: 'the cluster the restored partitions start in: voters 1..N (with --all, a data directory per node)',
    value: 'N',
    min: 1,
    max: 9,
    default: DEFAULT_NODES,
  },
  concurrency: {
    type: 'int',
    help: 'segments downloaded ahead, and partitions restored at once with --all',
    value: 'N',
    min: 1,
    max: 64,
    default: DEFAULT_RESTORE_CONCURRENCY,
  },
} as const;

const restoreHelp = {
  usage:
    'wal-archiver restore --object-store URL (--partition P | --all) (--to-lsn N | --to-time T | --latest) [--timeline N] --target DIR [--force] [--replica] [--nodes N] [--concurrency N]',
  description:
    'Restores a partition (or, with --all, every partition) to an LSN or a point in time: the newest base\nbackup at or before the target plus the archived WAL after it, every object checked against its SHA-256\nand every entry against its content digest. The result is a partition directory storage-node boots from.\nIt is built in DIR.partial and renamed to DIR only once complete. The sidecar started beside the\nrestored node archives it on a new timeline of the same archive, branching at the restored LSN.',
};

const verifyFlags = {
  'object-store': objectStoreFlag,
  partition: { type: 'string', help: 'check only this partition', value: 'ID' },
  concurrency: {
    type: 'int',
    help: 'objects downloaded at once',
    value: 'N',
    min: 1,
    max: 64,
    default: DEFAULT_RESTORE_CONCURRENCY,
  },
  incremental: {
    type: 'bool',
    help: "download only objects new since each partition's verified point, plus a sample of older ones",
    default: false,
  },
  sample: {
    type: 'int',
    help: `with --incremental: older objects checked per partition (default ${DEFAULT_SAMPLE})`,
    value: 'N',
    min: 0,
  },
  'sample-fraction': {
    type: 'string',
    help: 'with --incremental: the share of older objects checked, 0 to 1, instead of --sample',
    value: 'F',
  },
  seed: {
    type: 'int',
    help: 'with --incremental: seeds the sample (default random; printed)',
    value: 'S',
    min: 0,
    max: 2 ** 32 - 1,
  },
} as const;

const verifyHelp = {
  usage:
    'wal-archiver verify --object-store URL [--partition P] [--concurrency N] [--incremental [--sample N | --sample-fraction F] [--seed S]]',
  description:
    'Checks the archive without restoring: every segment and base backup present, checksums (downloaded and\nhashed), entry digests, LSN coverage with no gap from each base backup to the archived LSN, manifests\nconsistent with the objects. Prints each problem with its object; exits 1 on any fault. A clean\npartition advances its verified point (partitions/<id>/verified.json); --incremental then downloads only\nwhat is new since it, plus a seeded sample of older objects.',
};

/** The sampling of `verify --incremental`, from its flags. */
function parseIncremental(f: {
  incremental: boolean;
  sample: number | undefined;
  'sample-fraction': string | undefined;
  seed: number | undefined;
}): IncrementalOptions | undefined {
  const given = (['sample', 'sample-fraction', 'seed'] as const).filter((k) => f[k] !== undefined);
  if (!f.incremental) {
    if (given.length > 0) throw new UsageError(`--${given[0]} needs --incremental`);
    return undefined;
  }
  if (f.sample !== undefined && f['sample-fraction'] !== undefined)
    throw new UsageError('give at most one of --sample N and --sample-fraction F');
  const seed = f.seed ?? randomBytes(4).readUInt32BE(0);
  if (f['sample-fraction'] === undefined)
    return { seed, ...(f.sample !== undefined ? { sample: f.sample } : {}) };
  const raw = f['sample-fraction'];
  const fraction = /^(0|1|0?\.\d+|1\.0*)$/.test(raw) ? Number(raw) : NaN;
  if (!(fraction >= 0 && fraction <= 1))
    throw new UsageError(`flag --sample-fraction: must be a number from 0 to 1 (got "${raw}")`);
  return { seed, fraction };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** Renders restore progress on stderr: a bar on a terminal, throttled plain lines otherwise. */
export function progressRenderer(
  stderr: NodeJS.WritableStream,
  options: { tty?: boolean; now?: () => number; label?: string } = {},
): { update(p: RestoreProgress): void; end(): void } {
  const tty = options.tty ?? (stderr as NodeJS.WriteStream).isTTY === true;
  const now = options.now ?? Date.now;
  const latest = new Map<string, RestoreProgress>();
  const lastLine = new Map<string, { at: number; phase: string }>();
  let drawn = false;
  const describe = (p: RestoreProgress) => {
    const span = Math.max(1, p.targetLsn - p.fromLsn + 1);
    const done = p.phase === 'done' ? 1 : Math.max(0, Math.min(1, (p.appliedLsn - p.fromLsn + 1) / span));
    return {
      done,
      text: `partition ${p.partition}: ${p.phase}, LSN ${p.appliedLsn}/${p.targetLsn}, segments ${p.segmentsDone}/${p.segmentsTotal}, ${formatBytes(p.bytes)}`,
    };
  };
  return {
    update(p) {
      latest.set(p.partition, p);
      if (tty) {
        let applied = 0;
        let total = 0;
        let bytes = 0;
        let finished = 0;
        for (const q of latest.values()) {
          applied += Math.max(0, q.appliedLsn - q.fromLsn + 1);
          total += Math.max(1, q.targetLsn - q.fromLsn + 1);
          bytes += q.bytes;
          if (q.phase === 'done') finished++;
        }
        const ratio = latest.size === 1 ? describe(p).done : Math.min(1, applied / Math.max(1, total));
        const width = 30;
        const filled = Math.round(ratio * width);
        const label =
          latest.size === 1
            ? describe(p).text
            : `${finished}/${latest.size} partitions, ${formatBytes(bytes)}`;
        stderr.write(
          `\r\x1b[K[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${Math.floor(ratio * 100)}% ${label}`,
        );
        drawn = true;
        return;
      }
      const prev = lastLine.get(p.partition);
      const t = now();
      if (!prev || prev.phase !== p.phase || t - prev.at >= PROGRESS_EVERY_MS) {
        lastLine.set(p.partition, { at: t, phase: p.phase });
        stderr.write(`${options.label ?? 'restore'}: ${describe(p).text}\n`);
      }
    },
    end() {
      if (tty && drawn) stderr.write('\n');
      drawn = false;
    },
  };
}

function parseTarget(f: {
  'to-lsn': number | undefined;
  'to-time': string | undefined;
  latest: boolean;
}): RestoreTarget {
  const given = [f['to-lsn'] !== undefined, f['to-time'] !== undefined, f.latest].filter(Boolean).length;
  if (given !== 1) throw new UsageError('give exactly one of --to-lsn N, --to-time T or --latest');
  if (f['to-lsn'] !== undefined) return { kind: 'lsn', lsn: f['to-lsn'] };
  if (f['to-time'] !== undefined) {
    const time = parseTimeTarget(f['to-time']);
    if (!time)
      throw new UsageError(
        `--to-time: "${f['to-time']}" is not a time (use ISO 8601 with a zone, e.g. 2025-01-31T12:00:00Z, or Unix ms)`,
      );
    return { kind: 'time', time };
  }
  return { kind: 'latest' };
}

function describeTarget(t: RestoreTarget): string {
  return t.kind === 'lsn'
    ? `LSN ${t.lsn}`
    : t.kind === 'time'
      ? t.time.toISOString()
      : 'the latest archived LSN';
}

/** ", read from timeline N" when the history restored is an ancestor's up to there. */
function fromNote(r: { timeline: number; fromTimeline: number }): string {
  return r.fromTimeline === r.timeline
    ? ''
    : ` (read from timeline ${r.fromTimeline}, before the branch point)`;
}

export const restoreCommand: Command = {
  summary: 'restore a partition, or every partition, to an LSN or a point in time',
  async run(argv: string[], ctx: CommandContext): Promise<number> {
    const f = parseCommandFlags(argv, restoreFlags, restoreHelp, ctx.env);
    if ((f.partition !== undefined) === f.all)
      throw new UsageError('give exactly one of --partition P or --all');
    const target = parseTarget(f);
    if (f.all && f.replica)
      throw new UsageError('--replica replaces one replica: it goes with --partition, not --all');
    if (f.all && target.kind === 'lsn')
      throw new UsageError("--to-lsn names one partition's LSN: with --all use --to-time or --latest");
    const branch = { restoreId: randomUUID(), reason: `restore to ${describeTarget(target)}` };
    const store = await openObjectStore(f['object-store']);
    const progress = progressRenderer(ctx.stderr);
    try {
      if (f.all) {
        const result = await restoreAll({
          store,
          branch,
          ...(f.timeline !== undefined ? { timeline: f.timeline } : {}),
          target: target as Exclude<RestoreTarget, { kind: 'lsn' }>,
          targetDir: f.target,
          nodes: f.nodes,
          force: f.force,
          concurrency: f.concurrency,
          signal: ctx.signal,
          onProgress: (p) => progress.update(p),
          onNote: (line) => ctx.stderr.write(`restore: ${line}\n`),
        });
        progress.end();
        for (const r of result.partitions) {
          ctx.stdout.write(
            `partition ${r.partition}: LSN ${r.targetLsn} of timeline ${r.timeline}${fromNote(r)} (term ${r.term})${r.backup ? `, base backup at LSN ${r.backup.lsn}` : ''}, ${r.segments.length} segments, ${r.entries} entries replayed (listed in the ${result.sources[r.partition] ?? 'objects'})\n`,
          );
        }
        for (const s of result.skipped)
          ctx.stdout.write(`partition ${s.partition}: not restored (${s.reason})\n`);
        const peers = Array.from(
          { length: result.nodes },
          (_, i) => `${i + 1}=http://HOST-${i + 1}:PORT`,
        ).join(',');
        ctx.stdout.write(
          `restored ${result.partitions.length} partitions to ${describeTarget(target)} for ${result.nodes} nodes in ${result.targetDir} (partitions from the ${result.source})\n` +
            `start each node on its folder, e.g.: storage-node run --id I --data-dir ${join(result.targetDir, 'node-I')} --listen HOST-I:PORT --peers ${peers}\n` +
            `and beside each node its sidecar, on the same archive (it continues on a new timeline): wal-archiver run --data-dir ${join(result.targetDir, 'node-I')} --node-url http://HOST-I:PORT --object-store ${store.url}\n`,
        );
        return EXIT_OK;
      }
      const result = await restorePartition({
        store,
        partition: f.partition!,
        target,
        ...(f.replica ? {} : { branch }),
        ...(f.timeline !== undefined ? { timeline: f.timeline } : {}),
        targetDir: f.target,
        voters: Array.from({ length: f.nodes }, (_, i) => i + 1),
        force: f.force,
        concurrency: f.concurrency,
        signal: ctx.signal,
        onProgress: (p) => progress.update(p),
      });
      progress.end();
      if (result.note) ctx.stderr.write(`restore: ${result.note}\n`);
      ctx.stdout.write(
        `restored partition ${result.partition} to LSN ${result.targetLsn} of timeline ${result.timeline}${fromNote(result)} (term ${result.term}) in ${result.targetDir}: ` +
          `${result.backup ? `base backup ${result.backup.key} + ` : ''}${result.segments.length} segments, ${result.entries} entries replayed, ${formatBytes(result.bytes)} downloaded\n`,
      );
      return EXIT_OK;
    } finally {
      progress.end();
      await store.close();
    }
  },
};

export const verifyCommand: Command = {
  summary: 'check the archive: objects present, checksums, coverage, manifests',
  async run(argv: string[], ctx: CommandContext): Promise<number> {
    const f = parseCommandFlags(argv, verifyFlags, verifyHelp, ctx.env);
    const incremental = parseIncremental(f);
    const store = await openObjectStore(f['object-store']);
    try {
      if (incremental)
        ctx.stdout.write(
          `verify: incremental, sampling ${incremental.fraction !== undefined ? `${incremental.fraction * 100}%` : (incremental.sample ?? DEFAULT_SAMPLE)} of the older objects per partition (--seed ${incremental.seed})\n`,
        );
      const report = await verifyArchive(store, {
        ...(f.partition !== undefined ? { partition: f.partition } : {}),
        ...(incremental ? { incremental } : {}),
        concurrency: f.concurrency,
        scratch: resolve(tmpdir()),
        signal: ctx.signal,
        onFinding: (x) =>
          ctx.stdout.write(
            `${x.severity === 'fault' ? 'FAULT' : 'WARN '} ${x.partition !== undefined ? `partition ${x.partition}${x.timeline !== undefined ? ` timeline ${x.timeline}` : ''}` : 'archive'}${x.key ? ` ${x.key}` : ''}: ${x.message}\n`,
          ),
        onPartition: (r) =>
          ctx.stdout.write(
            `${r.faults > 0 ? 'BAD  ' : 'OK   '} partition ${r.partition}${r.timeline !== 1 ? ` timeline ${r.timeline}` : ''}: ${r.segments} segments, ${r.backups} base backups, ` +
              `${r.archived ? `LSNs ${r.archived.firstLsn}-${r.archived.lastLsn}` : 'no WAL'}, ${formatBytes(r.bytes)} checked` +
              `${r.incremental ? ` (${r.incremental.fresh} new and ${r.incremental.sampled} sampled of ${r.incremental.total} objects)` : ''}` +
              `${r.verifiedLsn !== undefined ? `, verified through LSN ${r.verifiedLsn}` : ''}` +
              `${r.faults ? `, ${r.faults} faults` : ''}${r.warnings ? `, ${r.warnings} warnings` : ''}\n`,
          ),
      });
      ctx.stdout.write(
        `verify: ${new Set(report.partitions.map((p) => p.partition)).size} partitions, ${report.faults} faults, ${report.warnings} warnings, ${report.checked} objects checked\n`,
      );
      if (report.faults > 0) {
        ctx.stderr.write(`wal-archiver verify: the archive has ${report.faults} fault(s) (listed above)\n`);
        return EXIT_FAILURE;
      }
      return EXIT_OK;
    } finally {
      await store.close();
    }
  },
};
