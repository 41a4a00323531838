import { createHash } from 'node:crypto';
import { baseBackupKey, segmentKey } from '../../../../src/manifest/keys.js';
import type { BackupRecord, SegmentRecord } from '../../../../src/manifest/partition-manifest.js';
import type {
  WalArchivedEvent,
  WalBackupEvent,
  WalLeadershipEvent,
} from '../../../../contract/events/schemas.js';

/** Commit time of an LSN in the fixtures: LSN n is committed n seconds after T0. */
export const T0 = Date.parse('2025-01-01T00:00:00.000Z');
export const at = (seconds: number): string => new Date(T0 + seconds * 1000).toISOString();

export function sha(seed: string): string {
  return createHash('sha256').update(seed).digest('hex');
}

/** The create options of a segment object as the archiver stores it: its LSN range, a checksum made from `seed`. */
export function segmentObject(
  partition: string,
  first: number,
  last: number,
  seed: string,
): { metadata: Record<string, string> } {
  return { metadata: { sha256: sha(seed), 'first-lsn': String(first), 'last-lsn': String(last), partition } };
}

export function segment(
  partition: string,
  first: number,
  last: number,
  extra: Partial<SegmentRecord> = {},
): SegmentRecord {
  return {
    key: segmentKey(partition, first, last),
    first_lsn: first,
    last_lsn: last,
    entries: last - first + 1,
    bytes: 100 * (last - first + 1),
    raw_bytes: 300 * (last - first + 1),
    sha256: sha(`${partition}/${first}-${last}`),
    first_committed_at: at(first),
    last_committed_at: at(last),
    archived_at: at(last + 1),
    term: 1,
    node: 1,
    ...extra,
  };
}

export function backup(partition: string, lsn: number, extra: Partial<BackupRecord> = {}): BackupRecord {
  return {
    key: baseBackupKey(partition, lsn),
    lsn,
    taken_at: at(lsn),
    bytes: 5000,
    sha256: sha(`${partition}/base/${lsn}`),
    trigger: 'size',
    term: 1,
    node: 1,
    ...extra,
  };
}

export function archivedEvent(
  partition: string,
  first: number,
  last: number,
  extra: Partial<WalArchivedEvent> = {},
): WalArchivedEvent {
  const s = segment(partition, first, last);
  return {
    schema: 1,
    partition,
    first_lsn: first,
    last_lsn: last,
    key: s.key,
    bytes: s.bytes,
    raw_bytes: s.raw_bytes,
    entries: s.entries,
    sha256: s.sha256,
    term: 1,
    node: 1,
    committed_lsn: last,
    first_committed_at: s.first_committed_at,
    last_committed_at: s.last_committed_at,
    archived_at: s.archived_at,
    ...extra,
  };
}

export function backupEvent(
  partition: string,
  lsn: number,
  extra: Partial<WalBackupEvent> = {},
): WalBackupEvent {
  return {
    schema: 1,
    partition,
    lsn,
    key: baseBackupKey(partition, lsn),
    bytes: 5000,
    sha256: sha(`${partition}/base/${lsn}`),
    trigger: 'size',
    term: 1,
    node: 1,
    started_at: at(lsn),
    finished_at: at(lsn + 2),
    ...extra,
  };
}

export function leadershipEvent(
  partition: string,
  term: number,
  leader: number | null,
  extra: Partial<WalLeadershipEvent> = {},
): WalLeadershipEvent {
  return {
    schema: 1,
    partition,
    node: leader ?? 1,
    leader,
    term,
    role: leader === null ? 'candidate' : 'leader',
    at: at(term),
    ...extra,
  };
}
