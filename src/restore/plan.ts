import { ErrorCodes, WalArchiverError, isWalArchiverError } from '../../contract/errors.js';
import { baseBackupPrefix, segmentPrefix, tryParseBaseKey, tryParseSegmentKey } from '../manifest/keys.js';
import { onTimeline, readPartitionManifest, type PartitionManifest } from '../manifest/partition-manifest.js';
import { MetadataKeys, type ObjectStore } from '../store/object-store.js';

/**
 * Planning a restore: which base backup, which segments, and exactly which
 * LSN a target names.
 *
 * Everything here but `loadPartitionArchive` is pure. Planning works on a
 * `PartitionArchive`, a view of one partition's archive taken from its
 * manifest or, when the manifest is missing or damaged, from the object
 * listing. Every way a plan cannot be made ends with one WalArchiverError
 * naming the partition, the LSN and the object concerned.
 */

export interface ArchiveSegment {
  key: string;
  firstLsn: number;
  lastLsn: number;
  /** Hex SHA-256 of the object; undefined when the object carries none (objects only). */
  sha256: string | undefined;
  bytes: number;
  /** Commit times (Unix ms) of the first and last entries, when the manifest records them. */
  firstCommittedAt?: number;
  lastCommittedAt?: number;
  /**
   * The greatest commit time of any entry in the segment (Unix ms), from the
   * manifest record or the object's metadata. Only this lets a time target
   * skip a segment unread: stamps need not grow with the LSN.
   */
  maxCommittedAt?: number;
}

export interface ArchiveBackup {
  key: string;
  lsn: number;
  sha256: string | undefined;
  bytes: number;
  /** The Raft term the backup was taken in (an upper bound of the term of its LSN). */
  term?: number;
  /**
   * When the backup was taken (Unix ms): the manifest's `taken_at`, or from
   * the objects alone the object's last-modified time (both no earlier than
   * the moment the state it holds existed).
   */
  takenAt?: number;
  /**
   * At least the greatest commit time of the entries up to `lsn` (Unix ms),
   * when the node that served it could bound them: any time at or after it
   * reaches `lsn`, even before the backup was taken.
   */
  maxCommittedAt?: number;
}

export interface PartitionArchive {
  partition: string;
  /** The timeline this is the archive of (its own objects only; 1 when absent). */
  timeline?: number;
  /** Where the view came from. */
  source: 'manifest' | 'objects';
  /** Sorted by first LSN, then last LSN. */
  segments: ArchiveSegment[];
  /** Sorted by LSN. */
  backups: ArchiveBackup[];
  /** The contiguous range of LSNs the segments cover; null when there is no segment. */
  archived: { firstLsn: number; lastLsn: number } | null;
  /** Why the manifest was not used, when it was not. */
  note?: string;
}

/** `details.reason` of the error for a time before the first archived entry. */
export const BEFORE_ARCHIVE = 'time-before-archive';

export type RestoreTarget = { kind: 'lsn'; lsn: number } | { kind: 'time'; time: Date } | { kind: 'latest' };

export interface RestorePlan {
  partition: string;
  /** The LSN the restored partition ends at: applied exactly, never one beyond. */
  targetLsn: number;
  /** The newest base backup at or before the target; undefined: replay from LSN 1. */
  backup: ArchiveBackup | undefined;
  /** The first LSN replayed from the segments (backup LSN + 1, or 1). */
  fromLsn: number;
  /** The segments holding fromLsn … targetLsn, in LSN order (they may overlap). */
  segments: ArchiveSegment[];
}

/** The commit time of one entry; 0 for an entry that carries none (a new leader's empty entry). */
export interface EntryTime {
  lsn: number;
  committedAt: number;
}

/** Reads the commit times of the entries in a segment (downloads and verifies it). */
export type EntryTimesReader = (segment: ArchiveSegment) => Promise<EntryTime[]>;

function notFound(message: string, details: Record<string, unknown>): WalArchiverError {
  return new WalArchiverError(ErrorCodes.NOT_FOUND, message, { retryable: false, details });
}

function compareSegments(a: ArchiveSegment, b: ArchiveSegment): number {
  return a.firstLsn - b.firstLsn || a.lastLsn - b.lastLsn || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

// ---------------------------------------------------------------------------
// Views

/** The view of a partition's archive its manifest gives. */
export function archiveFromManifest(m: PartitionManifest): PartitionArchive {
  return {
    partition: m.partition,
    ...(m.timeline !== undefined && m.timeline !== 1 ? { timeline: m.timeline } : {}),
    source: 'manifest',
    segments: m.segments
      .map((s) => ({
        key: s.key,
        firstLsn: s.first_lsn,
        lastLsn: s.last_lsn,
        sha256: s.sha256,
        bytes: s.bytes,
        firstCommittedAt: Date.parse(s.first_committed_at),
        lastCommittedAt: Date.parse(s.last_committed_at),
        ...(s.max_committed_at !== undefined ? { maxCommittedAt: Date.parse(s.max_committed_at) } : {}),
      }))
      .sort(compareSegments),
    backups: m.backups
      .map((b) => ({
        key: b.key,
        lsn: b.lsn,
        sha256: b.sha256,
        bytes: b.bytes,
        term: b.term,
        takenAt: Date.parse(b.taken_at),
        ...(b.max_committed_at !== undefined ? { maxCommittedAt: Date.parse(b.max_committed_at) } : {}),
      }))
      .sort((a, b) => a.lsn - b.lsn),
    archived: m.archived ? { firstLsn: m.archived.first_lsn, lastLsn: m.archived.last_lsn } : null,
  };
}

/** An object of a partition as listed (and headed, for its metadata). */
export interface ListedObject {
  key: string;
  size: number;
  metadata: Record<string, string>;
  lastModified?: Date;
}

/** A time from object metadata (ISO 8601 or Unix ms); undefined when absent or malformed. */
function metadataTime(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  return Number.isFinite(ms) ? ms : undefined;
}

/**
 * The view the objects alone give: segments and base backups from their
 * keys, checksums and each segment's greatest commit time from their
 * metadata (a segment written before that was recorded is read by a time
 * target). The archived range spans every segment,
 * so a gap between them is reported (naming the LSN and the objects around
 * it) rather than silently ending the archive before it.
 */
export function archiveFromObjects(
  partition: string,
  objects: readonly ListedObject[],
  note?: string,
  timeline = 1,
): PartitionArchive {
  const segments: ArchiveSegment[] = [];
  const backups: ArchiveBackup[] = [];
  for (const o of objects) {
    const seg = tryParseSegmentKey(o.key, timeline);
    if (seg && seg.partition === partition) {
      const max = metadataTime(o.metadata[MetadataKeys.MAX_COMMITTED_AT]);
      segments.push({
        key: o.key,
        firstLsn: seg.firstLsn,
        lastLsn: seg.lastLsn,
        sha256: o.metadata[MetadataKeys.SHA256],
        bytes: o.size,
        ...(max !== undefined ? { maxCommittedAt: max } : {}),
      });
      continue;
    }
    const base = tryParseBaseKey(o.key, timeline);
    if (base && base.partition === partition) {
      const takenAt = o.lastModified?.getTime();
      const max = metadataTime(o.metadata[MetadataKeys.MAX_COMMITTED_AT]);
      backups.push({
        key: o.key,
        lsn: base.lsn,
        sha256: o.metadata[MetadataKeys.SHA256],
        bytes: o.size,
        ...(takenAt !== undefined ? { takenAt } : {}),
        ...(max !== undefined ? { maxCommittedAt: max } : {}),
      });
    }
  }
  segments.sort(compareSegments);
  backups.sort((a, b) => a.lsn - b.lsn);
  const first = segments[0]?.firstLsn;
  const last = Math.max(0, ...segments.map((s) => s.lastLsn));
  return {
    partition,
    ...(timeline !== 1 ? { timeline } : {}),
    source: 'objects',
    segments,
    backups,
    archived: first === undefined ? null : { firstLsn: first, lastLsn: last },
    ...(note ? { note } : {}),
  };
}

/**
 * Reads a partition's archive: its manifest, or the object listing when the
 * manifest is missing or damaged (the reason is kept in `note`).
 */
export async function loadPartitionArchive(
  store: ObjectStore,
  partition: string,
  options: { signal?: AbortSignal; timeline?: number } = {},
): Promise<PartitionArchive> {
  const timeline = options.timeline ?? 1;
  const signal = options.signal ? { signal: options.signal } : {};
  const which = `partition ${partition}${onTimeline(timeline)}`;
  let note: string;
  try {
    const stored = await readPartitionManifest(store, partition, { ...signal, timeline });
    if (stored) return archiveFromManifest(stored.value);
    note = `${which} has no manifest; planning from the object listing`;
  } catch (err) {
    if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
    note = `${which} manifest is damaged (${err.message}); planning from the object listing`;
  }
  const objects: ListedObject[] = [];
  for (const prefix of [segmentPrefix(partition, timeline), baseBackupPrefix(partition, timeline)]) {
    for await (const o of store.list(prefix, signal)) {
      if (!tryParseSegmentKey(o.key, timeline) && !tryParseBaseKey(o.key, timeline)) continue;
      const info = await store.head(o.key, signal);
      if (info)
        objects.push({
          key: o.key,
          size: info.size,
          metadata: info.metadata,
          lastModified: info.lastModified,
        });
    }
  }
  return archiveFromObjects(partition, objects, note, timeline);
}

// ---------------------------------------------------------------------------
// Targets

function describeSegment(s: ArchiveSegment | undefined): string {
  return s ? `${s.key} (LSNs ${s.firstLsn}-${s.lastLsn})` : 'no segment';
}

/** The archived segment whose range ends at the archive's last LSN. */
function lastSegment(archive: PartitionArchive): ArchiveSegment | undefined {
  const last = archive.archived?.lastLsn;
  return archive.segments.filter((s) => s.lastLsn === last).at(-1);
}

/** The highest LSN a restore can reach: the end of the archived range, or the newest backup. */
export function lastRestorableLsn(archive: PartitionArchive): number {
  const backup = archive.backups.at(-1)?.lsn ?? 0;
  return Math.max(archive.archived?.lastLsn ?? 0, backup);
}

function assertSomethingArchived(archive: PartitionArchive): void {
  if (!archive.archived && archive.backups.length === 0) {
    throw notFound(
      `partition ${archive.partition}${onTimeline(archive.timeline ?? 1)}: nothing is archived (no segment and no base backup)`,
      {
        partition: archive.partition,
      },
    );
  }
}

/** Checks an LSN target against the archive. */
export function checkLsnTarget(archive: PartitionArchive, lsn: number): number {
  if (!Number.isSafeInteger(lsn) || lsn < 1) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `LSN must be at least 1 (got ${lsn})`, {
      retryable: false,
    });
  }
  assertSomethingArchived(archive);
  const last = lastRestorableLsn(archive);
  if (lsn > last) {
    const seg = lastSegment(archive);
    throw notFound(
      `partition ${archive.partition}${onTimeline(archive.timeline ?? 1)}: LSN ${lsn} is beyond the archive, which ends at LSN ${last}` +
        (seg ? ` (last segment ${seg.key})` : ''),
      { partition: archive.partition, lsn, key: seg?.key },
    );
  }
  return lsn;
}

/**
 * The LSN a time names: the last entry committed at or before `time`, as a
 * prefix. Commit stamps need not grow with the LSN (a new leader whose clock
 * is behind), so the rule is: the highest LSN L such that every entry up to
 * L carries a commit time at or before `time`; the answer stops before the
 * first entry (in LSN order) stamped after it, even when later entries carry
 * earlier stamps. So no entry committed after `time` is ever applied, and
 * the answer depends only on the entries, never on where segments end.
 *
 * - An entry without a commit time (a new leader's empty entry) goes with
 *   the entries before it; leading ones go with the next timed entry.
 * - The search starts at the newest base backup reached by `time`: taken at
 *   or before it (its state existed by then), or whose entries were all
 *   committed at or before it (`maxCommittedAt`); else at the
 *   first archived LSN; so retention that removed the segments before the
 *   oldest kept backup leaves every time from that backup on restorable.
 * - A segment is skipped unread only when its greatest commit time (manifest
 *   record or object metadata) is at or before `time`; one without it
 *   (written before it was recorded, or from the objects alone) is read and
 *   its entries' own RAFT commit times decide.
 */
/** Whether every entry up to the backup's LSN is known to be committed at or before `t`. */
function reachedBy(b: ArchiveBackup, t: number): boolean {
  return (
    (b.takenAt !== undefined && b.takenAt <= t) || (b.maxCommittedAt !== undefined && b.maxCommittedAt <= t)
  );
}

export async function resolveTimeTarget(
  archive: PartitionArchive,
  time: Date,
  readEntryTimes: EntryTimesReader,
): Promise<number> {
  const t = time.getTime();
  if (Number.isNaN(t)) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'invalid time', { retryable: false });
  }
  assertSomethingArchived(archive);
  let start: ArchiveBackup | undefined;
  for (const b of archive.backups) if (reachedBy(b, t) && (!start || b.lsn > start.lsn)) start = b;
  const first = start ? start.lsn + 1 : (archive.archived?.firstLsn ?? 1);
  const end = archive.archived?.lastLsn ?? 0;
  const chain =
    first <= end
      ? coverRange(
          archive,
          first,
          end,
          start ? `a time search from base backup ${start.key}` : 'the archived range',
        )
      : [];
  let answer = first - 1;
  let next = first;
  let stopped = false;
  // The first commit time seen, for the error when the time is before it.
  let firstTimed: EntryTime | undefined;
  for (const seg of chain) {
    if (seg.maxCommittedAt !== undefined && seg.maxCommittedAt <= t) {
      answer = seg.lastLsn;
      next = seg.lastLsn + 1;
      continue;
    }
    const times = (await readEntryTimes(seg)).sort((a, b) => a.lsn - b.lsn);
    for (const e of times) {
      if (e.lsn < next) continue;
      if (e.lsn !== next) {
        throw new WalArchiverError(
          ErrorCodes.CORRUPT,
          `partition ${archive.partition}${onTimeline(archive.timeline ?? 1)}: segment ${seg.key} does not hold LSN ${next}`,
          { retryable: false, details: { partition: archive.partition, lsn: next, key: seg.key } },
        );
      }
      if (e.committedAt > 0) firstTimed ??= e;
      if (e.committedAt > t) {
        stopped = true;
        break;
      }
      // An entry without a time goes with the entries before it; leading
      // ones (nothing accepted yet) go with the next entry that has a time.
      if (e.committedAt > 0 || answer >= first || start) answer = e.lsn;
      next = e.lsn + 1;
    }
    if (stopped) break;
    if (next !== seg.lastLsn + 1) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `partition ${archive.partition}${onTimeline(archive.timeline ?? 1)}: segment ${seg.key} does not hold LSN ${next}`,
        { retryable: false, details: { partition: archive.partition, lsn: next, key: seg.key } },
      );
    }
  }
  if (answer < first && !start) {
    const seg = chain[0];
    const at = firstTimed
      ? `; the first commit time is ${new Date(firstTimed.committedAt).toISOString()}, at LSN ${firstTimed.lsn}`
      : '';
    const oldest = archive.backups.find((b) => b.takenAt !== undefined);
    const committedBy =
      oldest?.maxCommittedAt !== undefined
        ? ` (its entries all committed by ${new Date(oldest.maxCommittedAt).toISOString()})`
        : '';
    const kept = oldest
      ? `; the oldest base backup, LSN ${oldest.lsn}, was taken at ${new Date(oldest.takenAt!).toISOString()}${committedBy}`
      : '';
    throw notFound(
      `partition ${archive.partition}${onTimeline(archive.timeline ?? 1)}: ${time.toISOString()} is before the first archived entry ` +
        `(LSN ${first}${at}; in ${describeSegment(seg)}${kept})`,
      { partition: archive.partition, lsn: first, key: seg?.key, reason: BEFORE_ARCHIVE },
    );
  }
  return answer;
}

/** The LSN a target names, exactly. */
export async function resolveTarget(
  archive: PartitionArchive,
  target: RestoreTarget,
  readEntryTimes: EntryTimesReader,
): Promise<number> {
  switch (target.kind) {
    case 'lsn':
      return checkLsnTarget(archive, target.lsn);
    case 'latest':
      assertSomethingArchived(archive);
      return lastRestorableLsn(archive);
    case 'time':
      return resolveTimeTarget(archive, target.time, readEntryTimes);
  }
}

// ---------------------------------------------------------------------------
// Plans

/**
 * The fewest segments holding every LSN from `from` to `to`, in order (they
 * may overlap). Throws NOT_FOUND naming the first LSN none holds and the
 * segments on either side of the gap.
 */
export function coverRange(
  archive: PartitionArchive,
  from: number,
  to: number,
  purpose: string,
): ArchiveSegment[] {
  const out: ArchiveSegment[] = [];
  let next = from;
  while (next <= to) {
    let best: ArchiveSegment | undefined;
    for (const s of archive.segments) {
      if (s.firstLsn <= next && s.lastLsn >= next && (!best || s.lastLsn > best.lastLsn)) best = s;
    }
    if (!best) {
      const before = out.at(-1);
      const after = archive.segments.find((s) => s.firstLsn > next);
      const around = [
        before ? `the segment before ends at LSN ${before.lastLsn} (${before.key})` : undefined,
        after ? `the next one starts at LSN ${after.firstLsn} (${after.key})` : 'no later segment',
      ]
        .filter(Boolean)
        .join(', ');
      throw notFound(
        `partition ${archive.partition}${onTimeline(archive.timeline ?? 1)}: gap in the archive: no segment holds LSN ${next}, needed for ${purpose}; ${around}`,
        { partition: archive.partition, lsn: next, key: before?.key ?? after?.key },
      );
    }
    out.push(best);
    next = best.lastLsn + 1;
  }
  return out;
}

/** The newest base backup at or before `lsn`. */
export function chooseBackup(archive: PartitionArchive, lsn: number): ArchiveBackup | undefined {
  let best: ArchiveBackup | undefined;
  for (const b of archive.backups) if (b.lsn <= lsn && (!best || b.lsn > best.lsn)) best = b;
  return best;
}

/** Plans a restore to `targetLsn` (already resolved): the base backup and the segments after it. */
export function planRestore(archive: PartitionArchive, targetLsn: number): RestorePlan {
  checkLsnTarget(archive, targetLsn);
  const backup = chooseBackup(archive, targetLsn);
  const fromLsn = backup ? backup.lsn + 1 : 1;
  const purpose = backup
    ? `LSNs ${fromLsn}-${targetLsn} after base backup ${backup.key}`
    : `LSNs 1-${targetLsn} (there is no base backup at or before LSN ${targetLsn}, so replay starts at LSN 1)`;
  const segments = fromLsn <= targetLsn ? coverRange(archive, fromLsn, targetLsn, purpose) : [];
  return { partition: archive.partition, targetLsn, backup, fromLsn, segments };
}

/** The objects a plan reads, with what they hold, for listing and checking them. */
export function planObjects(
  plan: RestorePlan,
): Array<{ key: string; sha256: string | undefined; what: string }> {
  const out: Array<{ key: string; sha256: string | undefined; what: string }> = [];
  if (plan.backup)
    out.push({
      key: plan.backup.key,
      sha256: plan.backup.sha256,
      what: `base backup at LSN ${plan.backup.lsn}`,
    });
  for (const s of plan.segments)
    out.push({ key: s.key, sha256: s.sha256, what: `segment of LSNs ${s.firstLsn}-${s.lastLsn}` });
  return out;
}

/** Parses a --to-time value: ISO 8601 (with a zone), or Unix milliseconds. */
export function parseTimeTarget(text: string): Date | undefined {
  if (/^\d{10,16}$/.test(text)) return new Date(Number(text));
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$/.test(text))
    return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? undefined : new Date(ms);
}
