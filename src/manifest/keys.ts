/**
 * Object keys of the archive (Contract 2), relative to the store's prefix:
 *
 *   partitions/<id>/wal/<first LSN>-<last LSN>.tar.zst   a segment
 *   partitions/<id>/base/<LSN>.tar.zst                   a base backup
 *   partitions/<id>/manifest.json                        the partition's manifest
 *   partitions/<id>/verified.json                        where `verify` got to (timeline 1)
 *   manifest.json                                        the global manifest
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

/** `partitions/<id>/`; INVALID_ARGUMENT unless `partition` is a partition ID. */
export function partitionPrefix(partition: string): string {
  return `${PARTITIONS_PREFIX}${parsePartitionId(partition)}/`;
}

/** `partitions/<id>/manifest.json` */
export function partitionManifestKey(partition: string): string {
  return `${partitionPrefix(partition)}${PARTITION_MANIFEST_NAME}`;
}

/**
 * Where `verify` records how far it got: `partitions/<id>/verified.json` for
 * timeline 1, `partitions/<id>/timelines/<N>/verified.json` for timeline N.
 * No listing, rebuild, retention or restore reads it.
 */
export function verifiedKey(partition: string, timeline = 1): string {
  if (!Number.isSafeInteger(timeline) || timeline < 1)
    throw invalid(`timeline ${timeline} is not a timeline`);
  const folder = timeline === 1 ? '' : `timelines/${timeline}/`;
  return `${partitionPrefix(partition)}${folder}${VERIFIED_NAME}`;
}

/** `partitions/<id>/wal/`: lists a partition's segments in LSN order. */
export function segmentPrefix(partition: string): string {
  return `${partitionPrefix(partition)}wal/`;
}

/** `partitions/<id>/base/`: lists a partition's base backups in LSN order. */
export function baseBackupPrefix(partition: string): string {
  return `${partitionPrefix(partition)}base/`;
}

/** `partitions/<id>/wal/<first>-<last>.tar.zst` */
export function segmentKey(partition: string, firstLsn: number, lastLsn: number): string {
  const first = formatLsn(firstLsn);
  const last = formatLsn(lastLsn);
  if (firstLsn > lastLsn) throw invalid(`segment first LSN ${firstLsn} is above its last LSN ${lastLsn}`);
  return `${segmentPrefix(partition)}${first}-${last}${SEGMENT_SUFFIX}`;
}

/** `partitions/<id>/base/<LSN>.tar.zst` */
export function baseBackupKey(partition: string, lsn: number): string {
  return `${baseBackupPrefix(partition)}${formatLsn(lsn)}${BASE_BACKUP_SUFFIX}`;
}

function splitPartitionKey(key: string, folder: string): { partition: string; name: string } | undefined {
  if (typeof key !== 'string' || !key.startsWith(PARTITIONS_PREFIX)) return undefined;
  const parts = key.slice(PARTITIONS_PREFIX.length).split('/');
  if (parts.length !== 3 || parts[1] !== folder) return undefined;
  const [partition, , name] = parts as [string, string, string];
  if (!isPartitionId(partition)) return undefined;
  return { partition, name };
}

/** The partition and LSN range of a segment key, or undefined when the key is not exactly one. */
export function tryParseSegmentKey(key: string): SegmentKeyInfo | undefined {
  const split = splitPartitionKey(key, 'wal');
  const m = split && SEGMENT_NAME.exec(split.name);
  if (!split || !m) return undefined;
  const firstLsn = tryParseLsn(m[1] as string);
  const lastLsn = tryParseLsn(m[2] as string);
  if (firstLsn === undefined || lastLsn === undefined || firstLsn > lastLsn) return undefined;
  return { partition: split.partition, firstLsn, lastLsn };
}

/** Like tryParseSegmentKey, but throws INVALID_ARGUMENT. */
export function parseSegmentKey(key: string): SegmentKeyInfo {
  const info = tryParseSegmentKey(key);
  if (!info) throw invalid(`not a segment key: ${JSON.stringify(key)}`);
  return info;
}

/** The partition and LSN of a base backup key, or undefined when the key is not exactly one. */
export function tryParseBaseKey(key: string): BaseKeyInfo | undefined {
  const split = splitPartitionKey(key, 'base');
  const m = split && BASE_NAME.exec(split.name);
  if (!split || !m) return undefined;
  const lsn = tryParseLsn(m[1] as string);
  if (lsn === undefined) return undefined;
  return { partition: split.partition, lsn };
}

/** Like tryParseBaseKey, but throws INVALID_ARGUMENT. */
export function parseBaseKey(key: string): BaseKeyInfo {
  const info = tryParseBaseKey(key);
  if (!info) throw invalid(`not a base backup key: ${JSON.stringify(key)}`);
  return info;
}

/** The partition whose manifest `key` is, or undefined. */
export function tryParsePartitionManifestKey(key: string): string | undefined {
  if (typeof key !== 'string' || !key.startsWith(PARTITIONS_PREFIX)) return undefined;
  const parts = key.slice(PARTITIONS_PREFIX.length).split('/');
  if (parts.length !== 2 || parts[1] !== PARTITION_MANIFEST_NAME) return undefined;
  return isPartitionId(parts[0]) ? parts[0] : undefined;
}

/** The partition a key under `partitions/` belongs to, or undefined. */
export function partitionOfKey(key: string): string | undefined {
  if (typeof key !== 'string' || !key.startsWith(PARTITIONS_PREFIX)) return undefined;
  const id = key.slice(PARTITIONS_PREFIX.length).split('/')[0];
  return isPartitionId(id) ? id : undefined;
}
