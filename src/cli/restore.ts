import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseTimeTarget, type RestoreTarget } from '../restore/plan.js';
import { DEFAULT_NODES, restoreAll } from '../restore/restore-all.js';
import { DEFAULT_RESTORE_CONCURRENCY, restorePartition, type RestoreProgress } from '../restore/restore.js';
import { verifyArchive } from '../restore/verify.js';
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
  target: {
    type: 'string',
    help: 'with --partition: the partition directory to create (<data-dir>/partitions/<id>); with --all: the folder that gets node-<i>/partitions/<id>/ for every node',
    value: 'DIR',
    required: true,
  },
  force: { type: 'bool', help: 'replace a target that is not empty', default: false },
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
    'wal-archiver restore --object-store URL (--partition P | --all) (--to-lsn N | --to-time T | --latest) --target DIR [--force] [--nodes N] [--concurrency N]',
  description:
    'Restores a partition (or, with --all, every partition) to an LSN or a point in time: the newest base\nbackup at or before the target plus the archived WAL after it, every object checked against its SHA-256\nand every entry against its content digest. The result is a partition directory storage-node boots from.\nIt is built in DIR.partial and renamed to DIR only once complete.',
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
} as const;

const verifyHelp = {
  usage: 'wal-archiver verify --object-store URL [--partition P] [--concurrency N]',
  description:
    'Checks the archive without restoring: every segment and base backup present, checksums (downloaded and\nhashed), entry digests, LSN coverage with no gap from each base backup to the archived LSN, manifests\nconsistent with the objects. Prints each problem with its object; exits 1 on any fault.',
};

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

export const restoreCommand: Command = {
  summary: 'restore a partition, or every partition, to an LSN or a point in time',
  async run(argv: string[], ctx: CommandContext): Promise<number> {
    const f = parseCommandFlags(argv, restoreFlags, restoreHelp, ctx.env);
    if ((f.partition !== undefined) === f.all)
      throw new UsageError('give exactly one of --partition P or --all');
    const target = parseTarget(f);
    if (f.all && target.kind === 'lsn')
      throw new UsageError("--to-lsn names one partition's LSN: with --all use --to-time or --latest");
    const store = await openObjectStore(f['object-store']);
    const progress = progressRenderer(ctx.stderr);
    try {
      if (f.all) {
        const result = await restoreAll({
          store,
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
            `partition ${r.partition}: LSN ${r.targetLsn} (term ${r.term})${r.backup ? `, base backup at LSN ${r.backup.lsn}` : ''}, ${r.segments.length} segments, ${r.entries} entries replayed (listed in the ${result.sources[r.partition] ?? 'objects'})\n`,
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
            `start each node on its folder, e.g.: storage-node run --id I --data-dir ${join(result.targetDir, 'node-I')} --listen HOST-I:PORT --peers ${peers}\n`,
        );
        return EXIT_OK;
      }
      const result = await restorePartition({
        store,
        partition: f.partition!,
        target,
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
        `restored partition ${result.partition} to LSN ${result.targetLsn} (term ${result.term}) in ${result.targetDir}: ` +
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
    const store = await openObjectStore(f['object-store']);
    try {
      const report = await verifyArchive(store, {
        ...(f.partition !== undefined ? { partition: f.partition } : {}),
        concurrency: f.concurrency,
        scratch: resolve(tmpdir()),
        signal: ctx.signal,
        onFinding: (x) =>
          ctx.stdout.write(
            `${x.severity === 'fault' ? 'FAULT' : 'WARN '} ${x.partition !== undefined ? `partition ${x.partition}` : 'archive'}${x.key ? ` ${x.key}` : ''}: ${x.message}\n`,
          ),
        onPartition: (r) =>
          ctx.stdout.write(
            `${r.faults > 0 ? 'BAD  ' : 'OK   '} partition ${r.partition}: ${r.segments} segments, ${r.backups} base backups, ` +
              `${r.archived ? `LSNs ${r.archived.firstLsn}-${r.archived.lastLsn}` : 'no WAL'}, ${formatBytes(r.bytes)} checked` +
              `${r.faults ? `, ${r.faults} faults` : ''}${r.warnings ? `, ${r.warnings} warnings` : ''}\n`,
          ),
      });
      ctx.stdout.write(
        `verify: ${report.partitions.length} partitions, ${report.faults} faults, ${report.warnings} warnings\n`,
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
