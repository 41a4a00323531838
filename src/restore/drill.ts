import { createHash } from 'node:crypto';
import { findTimeline, listTimelines } from '../timeline/history.js';
import { open, lstat, mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, WalArchiverError, isWalArchiverError } from '../../contract/errors.js';
import { rm } from '../../contract/fs/durable-fs.js';
import { tryParseSegmentKey } from '../manifest/keys.js';
import type { ObjectStore } from '../store/object-store.js';
import {
  lastRestorableLsn,
  loadPartitionArchive,
  planRestore,
  type ArchiveBackup,
  type PartitionArchive,
  type RestorePlan,
} from './plan.js';
import { checksumOf, extractBackup, restorePartition, type RestoreProgress } from './restore.js';

/**
 * Restore drills: proving, without touching a live node, that a partition's
 * archive restores.
 *
 * With two base backups B1 < B2 on the timeline, the drill restores from B1
 * plus the archived WAL up to B2's LSN into a scratch folder and compares the
 * result with B2's own content, file by file and byte for byte: two
 * independent paths to the same state must agree. With one backup (or none)
 * it replays from it (or from LSN 1) to the archived end; the restore path
 * checks every object's SHA-256 and every entry's content digest on the way.
 *
 * Everything happens in a scratch folder made with mkdtemp (0700) and
 * removed whatever happens. Downloads go one at a time unless told
 * otherwise, and a scratch budget refuses a drill whose objects are larger
 * than it before anything is downloaded.
 */

/** Segments downloaded ahead during a drill: one, so a drill stays light beside archiving. */
export const DEFAULT_DRILL_CONCURRENCY = 1;

export interface DrillOptions {
  /** The timeline drilled (default 1). */
  timeline?: number;
  /** Chooses the pair of consecutive base backups compared; undefined: the newest two. */
  seed?: number;
  /** Where the scratch folder is made (default: the OS temp folder). */
  scratchDir?: string;
  /** Segments downloaded ahead (default 1). */
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (p: RestoreProgress) => void;
  budget?: {
    /** The most compressed bytes the drill may download into its scratch folder. */
    maxScratchBytes?: number;
  };
}

export interface DrillFailure {
  /** The LSN the drill stopped at: the entry or backup concerned, or the drilled LSN. */
  lsn: number;
  /** The first file that differs (relative to `state/`), when the states disagree. */
  file?: string;
  /** The object that failed its check, when one did. */
  key?: string;
  /** One line: what differs or failed. */
  message: string;
  /** The error code, when the restore path raised the failure: NOT_FOUND for a missing object or a gap. */
  code?: string;
}

export interface DrillResult {
  partition: string;
  timeline: number;
  /** 'compare': B1 + WAL against B2; 'replay': one backup (or none) to the archived end. */
  mode: 'compare' | 'replay';
  ok: boolean;
  /** The LSN of the base backup restored from (0: replay from LSN 1). */
  baseLsn: number;
  baseKey?: string;
  /** The backup compared with (compare mode). */
  compareKey?: string;
  /** The LSN restored to. */
  drilledLsn: number;
  /** Files compared (compare mode) or restored (replay mode). */
  files: number;
  /** Bytes of those files. */
  bytes: number;
  /** Compressed bytes downloaded. */
  downloaded: number;
  failure?: DrillFailure;
  /** The partition has nothing archived (no segment, no base backup): nothing to drill. */
  empty?: boolean;
}

/** A seeded random source in [0, 1): SHA-256 of the seed and a counter, so a seeded drill chooses the same every time. */
export function seededRandom(seed: number): () => number {
  let n = 0;
  return () => createHash('sha256').update(`${seed}:${n++}`).digest().readUInt32BE(0) / 4294967296;
}

/** The pair of consecutive base backups a drill compares: seeded, or the newest two. */
export function chooseBackupPair(
  backups: readonly ArchiveBackup[],
  seed: number | undefined,
): [ArchiveBackup, ArchiveBackup] | undefined {
  if (backups.length < 2) return undefined;
  const pairs = backups.length - 1;
  const i = seed === undefined ? pairs - 1 : Math.floor(seededRandom(seed)() * pairs);
  return [backups[i]!, backups[i + 1]!];
}

/** What a drill will do: the restore plan, and the backup compared with (compare mode). */
export interface DrillPlan {
  /** The archive view the restore plans on (in compare mode, without the backups after B1). */
  view: PartitionArchive;
  plan: RestorePlan;
  compare: ArchiveBackup | undefined;
  /** Compressed bytes of every object the drill downloads. */
  plannedBytes: number;
}

/** Plans a drill (pure): see the top of this file. */
export function planDrill(archive: PartitionArchive, seed: number | undefined): DrillPlan {
  const pair = chooseBackupPair(archive.backups, seed);
  if (pair) {
    const [b1, b2] = pair;
    // Restore must start from B1, not from B2 (the newest backup at B2's LSN): plan on a view without the later ones.
    const view: PartitionArchive = { ...archive, backups: archive.backups.filter((b) => b.lsn <= b1.lsn) };
    const plan = planRestore(view, b2.lsn);
    return { view, plan, compare: b2, plannedBytes: objectBytes(plan) + b2.bytes };
  }
  const plan = planRestore(archive, lastRestorableLsn(archive));
  return { view: archive, plan, compare: undefined, plannedBytes: objectBytes(plan) };
}

function objectBytes(plan: RestorePlan): number {
  return (plan.backup?.bytes ?? 0) + plan.segments.reduce((n, s) => n + s.bytes, 0);
}

async function loadArchive(
  store: ObjectStore,
  partition: string,
  timeline: number,
  signal: AbortSignal | undefined,
): Promise<PartitionArchive> {
  const timelines = await listTimelines(store, partition, signal);
  findTimeline(timelines, partition, timeline);
  return loadPartitionArchive(store, partition, { timeline, ...(signal ? { signal } : {}) });
}

/** Drills one partition (see the top of this file). A failed check is a result; only a drill that could not run throws. */
export async function drillPartition(
  store: ObjectStore,
  partition: string,
  options: DrillOptions = {},
): Promise<DrillResult> {
  const timeline = options.timeline ?? 1;
  const signal = options.signal;
  const archive = await loadArchive(store, partition, timeline, signal);
  const base = { partition, timeline };
  if (!archive.archived && archive.backups.length === 0) {
    // Nothing proves that nothing restores: a drill of an empty partition fails, marked empty.
    return {
      ...base,
      mode: 'replay',
      ok: false,
      empty: true,
      failure: { lsn: 0, message: 'nothing is archived (no segment and no base backup)' },
      baseLsn: 0,
      drilledLsn: 0,
      files: 0,
      bytes: 0,
      downloaded: 0,
    };
  }
  let drill: DrillPlan;
  try {
    drill = planDrill(archive, options.seed);
  } catch (err) {
    // A gap, or WAL that does not reach B2: the archive cannot restore what it claims.
    return failed(base, archive, undefined, lastRestorableLsn(archive), err);
  }
  const { plan, compare, view } = drill;
  const max = options.budget?.maxScratchBytes;
  if (max !== undefined && drill.plannedBytes > max) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `partition ${partition}: the drill to LSN ${plan.targetLsn} would download ${drill.plannedBytes} bytes, more than the scratch budget of ${max} bytes`,
      {
        retryable: false,
        details: { partition, lsn: plan.targetLsn, bytes: drill.plannedBytes, budget: max },
      },
    );
  }
  const mode = compare ? 'compare' : 'replay';
  const result: DrillResult = {
    ...base,
    mode,
    ok: true,
    baseLsn: plan.backup?.lsn ?? 0,
    ...(plan.backup ? { baseKey: plan.backup.key } : {}),
    ...(compare ? { compareKey: compare.key } : {}),
    drilledLsn: plan.targetLsn,
    files: 0,
    bytes: 0,
    downloaded: 0,
  };
  const scratch = await mkdtemp(join(options.scratchDir ?? tmpdir(), `wal-archiver-drill-${partition}-`));
  try {
    const restoredDir = join(scratch, 'restored');
    try {
      const restored = await restorePartition({
        store,
        partition,
        target: { kind: 'lsn', lsn: plan.targetLsn },
        targetDir: restoredDir,
        voters: [1],
        atomic: false,
        archive: view,
        concurrency: options.concurrency ?? DEFAULT_DRILL_CONCURRENCY,
        ...(signal ? { signal } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      });
      result.downloaded = restored.bytes;
    } catch (err) {
      return failed(base, archive, result, plan.targetLsn, err);
    }
    const restoredState = join(restoredDir, 'state');
    if (!compare) {
      const listed = await listTree(restoredState);
      result.files = listed.files;
      result.bytes = listed.bytes;
      return result;
    }
    const expectedState = join(scratch, 'expected');
    try {
      const sha = await checksumOf(
        store,
        partition,
        compare.key,
        `base backup at LSN ${compare.lsn}`,
        compare.sha256,
        signal,
      );
      result.downloaded += await extractBackup(store, partition, compare, sha, expectedState, signal);
    } catch (err) {
      return failed(base, archive, result, compare.lsn, err);
    }
    const diff = await compareTrees(restoredState, expectedState);
    result.files = diff.files;
    result.bytes = diff.bytes;
    if (diff.first) {
      result.ok = false;
      result.failure = {
        lsn: compare.lsn,
        file: diff.first.file,
        key: compare.key,
        message: `${diff.first.file}: ${diff.first.why} (restored from ${plan.backup ? `base backup ${plan.backup.key}` : 'LSN 1'} + WAL, against base backup ${compare.key})`,
      };
    }
    return result;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** A drill that found the archive wanting: the object and LSN from the error, when it names them. */
function failed(
  base: { partition: string; timeline: number },
  archive: PartitionArchive,
  partial: DrillResult | undefined,
  lsn: number,
  err: unknown,
): DrillResult {
  if (!isWalArchiverError(err, ErrorCodes.CORRUPT) && !isWalArchiverError(err, ErrorCodes.NOT_FOUND))
    throw err;
  const details = err.details ?? {};
  const key = typeof details['key'] === 'string' ? details['key'] : undefined;
  // A segment that fails its checksum names no entry: its first LSN is where the drill stopped.
  const segment = key !== undefined ? tryParseSegmentKey(key) : undefined;
  const at = typeof details['lsn'] === 'number' ? details['lsn'] : (segment?.firstLsn ?? lsn);
  const prefix = `partition ${base.partition}: `;
  const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
  return {
    ...(partial ?? {
      ...base,
      mode: archive.backups.length >= 2 ? 'compare' : 'replay',
      baseLsn: 0,
      drilledLsn: lsn,
      files: 0,
      bytes: 0,
      downloaded: 0,
    }),
    ok: false,
    failure: { lsn: at, ...(key ? { key } : {}), message: message.split('\n')[0]!, code: err.code },
  };
}

// ---------------------------------------------------------------------------
// Comparing states

interface TreeItem {
  rel: string;
  dir: boolean;
  mode: number;
  size: number;
}

/** Every file and folder below `root`, sorted by path; anything else is reported as it is. */
async function walk(root: string): Promise<TreeItem[]> {
  const out: TreeItem[] = [];
  const visit = async (dir: string, rel: string) => {
    const names = (await readdir(dir)).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const info = await lstat(join(dir, name));
      out.push({ rel: r, dir: info.isDirectory(), mode: info.mode & 0o7777, size: info.size });
      if (info.isDirectory()) await visit(join(dir, name), r);
    }
  };
  await visit(root, '');
  return out;
}

async function listTree(root: string): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for (const item of await walk(root)) {
    if (item.dir) continue;
    files++;
    bytes += item.size;
  }
  return { files, bytes };
}

const CHUNK = 64 * 1024;

/** The first byte offset where two files differ; undefined when they are equal (sizes already equal). */
async function firstDifference(a: string, b: string): Promise<number | undefined> {
  const fa = await open(a, 'r');
  try {
    const fb = await open(b, 'r');
    try {
      const ba = Buffer.alloc(CHUNK);
      const bb = Buffer.alloc(CHUNK);
      for (let pos = 0; ;) {
        const [ra, rb] = await Promise.all([fa.read(ba, 0, CHUNK, pos), fb.read(bb, 0, CHUNK, pos)]);
        const n = Math.min(ra.bytesRead, rb.bytesRead);
        if (n === 0) return ra.bytesRead === rb.bytesRead ? undefined : pos;
        if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
          for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return pos + i;
        }
        if (ra.bytesRead !== rb.bytesRead) return pos + n;
        pos += n;
      }
    } finally {
      await fb.close();
    }
  } finally {
    await fa.close();
  }
}

/** The order `walk` lists paths in: segment by segment, so a folder's contents come right after it. */
function comparePaths(a: string, b: string): number {
  const x = a.split('/');
  const y = b.split('/');
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i]! < y[i]! ? -1 : 1;
  }
  return x.length - y.length;
}

/**
 * Compares two state folders: the same names, kinds, modes, sizes and bytes.
 * Returns the files compared, their bytes, and the first difference in path order.
 */
export async function compareTrees(
  restored: string,
  expected: string,
): Promise<{ files: number; bytes: number; first?: { file: string; why: string } }> {
  const [left, right] = await Promise.all([walk(restored), walk(expected)]);
  const byPath = new Map(right.map((i) => [i.rel, i]));
  const seen = new Set(left.map((i) => i.rel));
  const missing = right.find((i) => !seen.has(i.rel));
  let files = 0;
  let bytes = 0;
  const differs = (file: string, why: string) => ({ files, bytes, first: { file, why } });
  for (const mine of left) {
    // The first difference in path order: a file only the backup holds may come before this one.
    if (missing && comparePaths(missing.rel, mine.rel) < 0)
      return differs(missing.rel, 'in the base backup, not in the restored state');
    const theirs = byPath.get(mine.rel);
    if (!theirs) return differs(mine.rel, 'in the restored state, not in the base backup');
    if (mine.dir !== theirs.dir)
      return differs(
        mine.rel,
        `a ${mine.dir ? 'folder' : 'file'} restored, a ${theirs.dir ? 'folder' : 'file'} in the base backup`,
      );
    if (mine.mode !== theirs.mode)
      return differs(
        mine.rel,
        `mode ${mine.mode.toString(8)} restored, ${theirs.mode.toString(8)} in the base backup`,
      );
    if (mine.dir) continue;
    if (mine.size !== theirs.size)
      return differs(mine.rel, `${mine.size} bytes restored, ${theirs.size} in the base backup`);
    const at = await firstDifference(join(restored, mine.rel), join(expected, mine.rel));
    if (at !== undefined) return differs(mine.rel, `bytes differ from offset ${at}`);
    files++;
    bytes += mine.size;
  }
  if (missing) return differs(missing.rel, 'in the base backup, not in the restored state');
  return { files, bytes };
}

/** The one line a person reads for a drill. */
export function describeDrill(r: DrillResult): string {
  const head = `drill: partition ${r.partition} timeline ${r.timeline}`;
  if (!r.ok) return `${head} FAILED at LSN ${r.failure!.lsn}: ${r.failure!.message}`;
  const from = r.baseLsn > 0 ? `base ${r.baseLsn}` : 'LSN 1';
  const replay = r.mode === 'replay' ? ' (replayed to the archived end: fewer than two base backups)' : '';
  return `${head} OK ${from} → LSN ${r.drilledLsn}, ${r.files} files, ${r.bytes} bytes${replay}`;
}
