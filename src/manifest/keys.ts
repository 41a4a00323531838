/**
 * Object keys of the archive (Contract 2), relative to the store's prefix:
 *
 *   partitions/<id>/wal/<first LSN>-<last LSN>.tar.zst   a segment
 *   partitions/<id>/base/<LSN>.tar.zst                   a base backup
 *   partitions/<id>/manifest.json                        the partition's manifest
 *   partitions/<id>/verified.json                        where `verify` got to (timeline 1)
 *   manifest.json                                        the global manifest
 *
 * Those are timeline 1. A partition restored to an earlier point continues on
 * a new timeline N >= 2, whose objects live in a folder of their own with the
 * same names inside, beside its history record:
 *
 *   partitions/<id>/timelines/<N>/wal/…, base/…, manifest.json
 *   partitions/<id>/timelines/<N>/history.json           where N branched off
 *
 * Every function here takes the timeline last, default 1, so an archive
 * written before timelines existed is timeline 1 as it is. Parsing a key
 * matches one timeline only (default 1): a key of another timeline is not
 * "a segment" to code that works on one.
 *
 * LSNs are written as the WAL names its entry directories: base 36, lower
 * case, zero-padded to 13 characters, so a sorted listing of a partition's
 * segments or base backups is LSN order.
 */

import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { isPartitionId, parsePartitionId } from '../../contract/partition-id.js';
import { LSN_NAME_LENGTH, formatLsn, tryParseLsn } from '../../contract/wal/lsn.js';

export const GLOBAL_MANIFEST_KEY = 'manifest.json';
export const PARTITIONS_PREFIX = 'partitions/';
export const PARTITION_MANIFEST_NAME = 'manifest.json';
export const SEGMENT_SUFFIX = '.tar.zst';
export const BASE_BACKUP_SUFFIX = '.tar.zst';
export const VERIFIED_NAME = 'verified.json';

const LSN = `[0-9a-z]{${LSN_NAME_LENGTH}}`;
const SEGMENT_NAME = new RegExp(`^(${LSN})-(${LSN})\\.tar\\.zst$`);
const BASE_NAME = new RegExp(`^(${LSN})\\.tar\\.zst$`);

export const TIMELINES_FOLDER = 'timelines';
export const HISTORY_NAME = 'history.json';
/** The highest timeline number (keys and files hold it as decimal). */
export const MAX_TIMELINE = 999_999_999;
const TIMELINE_TEXT = /^[1-9][0-9]{0,8}$/;

export interface SegmentKeyInfo {
  partition: string;
  firstLsn: number;
  lastLsn: number;
}

export interface BaseKeyInfo {
  partition: string;
  lsn: number;
}

function invalid(message: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, message, { retryable: false });
}

/** Whether `n` is a timeline number: an integer from 1 to MAX_TIMELINE. */
export function isTimeline(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 1 && n <= MAX_TIMELINE;
}

/** A timeline number from text (a flag, a file, a key); undefined when it is not one. */
export function tryParseTimeline(text: string): number | undefined {
  return TIMELINE_TEXT.test(text) ? Number(text) : undefined;
}

function checkTimeline(timeline: number): number {
  if (!isTimeline(timeline))
    throw invalid(`timeline ${String(timeline)} is not an integer from 1 to ${MAX_TIMELINE}`);
  return timeline;
}

/** `partitions/<id>/`; INVALID_ARGUMENT unless `partition` is a partition ID. */
export function partitionPrefix(partition: string): string {
  return `${PARTITIONS_PREFIX}${parsePartitionId(partition)}/`;
}

/** `partitions/<id>/timelines/`: the folder of a partition's timelines after the first. */
export function timelinesPrefix(partition: string): string {
  return `${partitionPrefix(partition)}${TIMELINES_FOLDER}/`;
}

/** The folder a timeline's objects live in: `partitions/<id>/` for 1, `partitions/<id>/timelines/<N>/` after. */
export function timelinePrefix(partition: string, timeline = 1): string {
  return checkTimeline(timeline) === 1
    ? partitionPrefix(partition)
    : `${timelinesPrefix(partition)}${timeline}/`;
}

/**
 * Where `verify` records how far it got: `partitions/<id>/verified.json` for
 * timeline 1, `partitions/<id>/timelines/<N>/verified.json` for timeline N.
 * No listing, rebuild, retention or restore reads it.
 */
export function verifiedKey(partition: string, timeline = 1): string {
  return `${timelinePrefix(partition, timeline)}${VERIFIED_NAME}`;
}

/** `partitions/<id>/timelines/<N>/history.json`: where timeline N >= 2 branched off. */
export function historyKey(partition: string, timeline: number): string {
  if (checkTimeline(timeline) === 1) throw invalid('timeline 1 has no history record: it is the first');
  return `${timelinePrefix(partition, timeline)}${HISTORY_NAME}`;
}

/** `partitions/<id>/manifest.json` (timeline 1), `partitions/<id>/timelines/<N>/manifest.json` */
export function partitionManifestKey(partition: string, timeline = 1): string {
  return `${timelinePrefix(partition, timeline)}${PARTITION_MANIFEST_NAME}`;
}

/** `…/wal/`: lists a partition's segments of one timeline in LSN order. */
export function segmentPrefix(partition: string, timeline = 1): string {
  return `${timelinePrefix(partition, timeline)}wal/`;
}

/** `…/base/`: lists a partition's base backups of one timeline in LSN order. */
export function baseBackupPrefix(partition: string, timeline = 1): string {
  return `${timelinePrefix(partition, timeline)}base/`;
}

/** `…/wal/<first>-<last>.tar.zst` */
export function segmentKey(partition: string, firstLsn: number, lastLsn: number, timeline = 1): string {
  const first = formatLsn(firstLsn);
  const last = formatLsn(lastLsn);
  if (firstLsn > lastLsn) throw invalid(`segment first LSN ${firstLsn} is above its last LSN ${lastLsn}`);
  return `${segmentPrefix(partition, timeline)}${first}-${last}${SEGMENT_SUFFIX}`;
}

/** `…/base/<LSN>.tar.zst` */
export function baseBackupKey(partition: string, lsn: number, timeline = 1): string {
  return `${baseBackupPrefix(partition, timeline)}${formatLsn(lsn)}${BASE_BACKUP_SUFFIX}`;
}

/**
 * The partition, timeline and the rest of a key under `partitions/`:
 * `<id>/<rest…>` is timeline 1, `<id>/timelines/<N>/<rest…>` timeline N.
 */
export function splitTimelineKey(
  key: string,
): { partition: string; timeline: number; rest: string[] } | undefined {
  if (typeof key !== 'string' || !key.startsWith(PARTITIONS_PREFIX)) return undefined;
  const parts = key.slice(PARTITIONS_PREFIX.length).split('/');
  const partition = parts[0];
  if (!isPartitionId(partition)) return undefined;
  if (parts[1] !== TIMELINES_FOLDER) return { partition, timeline: 1, rest: parts.slice(1) };
  const timeline = tryParseTimeline(parts[2] ?? '');
  if (timeline === undefined || timeline === 1) return undefined;
  return { partition, timeline, rest: parts.slice(3) };
}

function splitPartitionKey(
  key: string,
  folder: string,
  timeline: number,
): { partition: string; name: string } | undefined {
  const split = splitTimelineKey(key);
  if (!split || split.timeline !== timeline || split.rest.length !== 2 || split.rest[0] !== folder)
    return undefined;
  return { partition: split.partition, name: split.rest[1] as string };
}

/** The timeline N a history record key belongs to, or undefined. */
export function tryParseHistoryKey(key: string): { partition: string; timeline: number } | undefined {
  const split = splitTimelineKey(key);
  if (!split || split.timeline === 1 || split.rest.length !== 1 || split.rest[0] !== HISTORY_NAME)
    return undefined;
  return { partition: split.partition, timeline: split.timeline };
}

/** The partition and LSN range of a segment key of `timeline`, or undefined when the key is not exactly one. */
export function tryParseSegmentKey(key: string, timeline = 1): SegmentKeyInfo | undefined {
  const split = splitPartitionKey(key, 'wal', timeline);
  const m = split && SEGMENT_NAME.exec(split.name);
  if (!split || !m) return undefined;
  const firstLsn = tryParseLsn(m[1] as string);
  const lastLsn = tryParseLsn(m[2] as string);
  if (firstLsn === undefined || lastLsn === undefined || firstLsn > lastLsn) return undefined;
  return { partition: split.partition, firstLsn, lastLsn };
}

/** Like tryParseSegmentKey, but throws INVALID_ARGUMENT. */
export function parseSegmentKey(key: string, timeline = 1): SegmentKeyInfo {
  const info = tryParseSegmentKey(key, timeline);
  if (!info) throw invalid(`not a segment key: ${JSON.stringify(key)}`);
  return info;
}

/** The partition and LSN of a base backup key of `timeline`, or undefined when the key is not exactly one. */
export function tryParseBaseKey(key: string, timeline = 1): BaseKeyInfo | undefined {
  const split = splitPartitionKey(key, 'base', timeline);
  const m = split && BASE_NAME.exec(split.name);
  if (!split || !m) return undefined;
  const lsn = tryParseLsn(m[1] as string);
  if (lsn === undefined) return undefined;
  return { partition: split.partition, lsn };
}

/** Like tryParseBaseKey, but throws INVALID_ARGUMENT. */
export function parseBaseKey(key: string, timeline = 1): BaseKeyInfo {
  const info = tryParseBaseKey(key, timeline);
  if (!info) throw invalid(`not a base backup key: ${JSON.stringify(key)}`);
  return info;
}

/** The partition whose manifest (of `timeline`) `key` is, or undefined. */
export function tryParsePartitionManifestKey(key: string, timeline = 1): string | undefined {
  const split = splitTimelineKey(key);
  if (!split || split.timeline !== timeline || split.rest.length !== 1) return undefined;
  return split.rest[0] === PARTITION_MANIFEST_NAME ? split.partition : undefined;
}

/** The partition a key under `partitions/` belongs to, or undefined. */
export function partitionOfKey(key: string): string | undefined {
  if (typeof key !== 'string' || !key.startsWith(PARTITIONS_PREFIX)) return undefined;
  const id = key.slice(PARTITIONS_PREFIX.length).split('/')[0];
  return isPartitionId(id) ? id : undefined;
}
