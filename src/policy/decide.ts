import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import type { BackupTrigger } from '../../contract/events/schemas.js';

/**
 * When to take a base backup of a partition: a pure function of the
 * partition's state, the clock (passed in) and the thresholds. No I/O, no
 * clock reads, so every decision can be tested from a table.
 */

/** What the sidecar knows about one partition when it asks. Times are Unix milliseconds. */
export interface PolicyState {
  /** Raw WAL bytes archived after the last base backup's LSN. */
  walBytesSinceBackup: number;
  /** WAL entries archived after the last base backup's LSN. */
  walEntriesSinceBackup: number;
  /** When the last base backup finished; undefined when the partition has none. */
  lastBackupAt: number | undefined;
  /** LSN of the last base backup; 0 when there is none. */
  lastBackupLsn: number;
  /** Highest LSN archived (the manifest's `archived.last_lsn`); 0 when nothing is. */
  archivedLsn: number;
  /** A base backup of this partition is in flight. */
  backupRunning: boolean;
  /** This node leads the partition (only the leader's sidecar takes backups). */
  leading: boolean;
  /** An operator asked for a backup. */
  manualRequested: boolean;
  /** When the last attempt failed, if it did since the last success. */
  lastFailureAt?: number;
}

export interface Thresholds {
  /** Raw WAL bytes since the last backup that trigger one ('size'). */
  maxBytes: number;
  /** WAL entries since the last backup that trigger one ('entries'). */
  maxEntries: number;
  /** Milliseconds since the last backup that trigger one ('age'), if anything changed. */
  maxAge: number;
  /** No threshold-triggered backup sooner than this after the last one (ms). */
  minInterval?: number;
  /** After a failed attempt, wait this long before the next automatic one (ms). */
  retryAfter?: number;
}

export const DEFAULT_THRESHOLDS: Readonly<Required<Thresholds>> = Object.freeze({
  maxBytes: 1024 * 1024 * 1024,
  maxEntries: 100_000,
  maxAge: 24 * 60 * 60 * 1000,
  minInterval: 5 * 60 * 1000,
  retryAfter: 60 * 1000,
});

/** Why no backup is taken now (for logs and tests). */
export type NoBackupReason =
  | 'not-leader'
  | 'running'
  | 'nothing-archived'
  | 'unchanged'
  | 'min-interval'
  | 'retry-later'
  | 'below-thresholds';

export type Decision = { action: 'none'; why: NoBackupReason } | { action: 'backup'; reason: BackupTrigger };

function none(why: NoBackupReason): Decision {
  return { action: 'none', why };
}

/**
 * Decides whether to take a base backup now.
 *
 * In order: only the leader, never two at once for a partition; a manual
 * request is honoured at once (even with nothing new: taking the same LSN
 * again resolves to the existing backup); nothing new since the last backup
 * (archivedLsn ≤ lastBackupLsn, the backup may be ahead of the archive since
 * snapshots are taken at the applied LSN) means no backup; a partition with
 * archived WAL and no backup gets its first one; after a failure wait
 * `retryAfter`; then `minInterval`, and the thresholds: size, entries, age.
 * A clock that went backwards counts as no time elapsed.
 */
export function decide(state: PolicyState, now: number, thresholds: Thresholds): Decision {
  if (!state.leading) return none('not-leader');
  if (state.backupRunning) return none('running');
  if (state.manualRequested) return { action: 'backup', reason: 'manual' };
  if (state.archivedLsn <= 0) return none('nothing-archived');
  if (state.archivedLsn <= state.lastBackupLsn) return none('unchanged');
  const retryAfter = thresholds.retryAfter ?? DEFAULT_THRESHOLDS.retryAfter;
  if (state.lastFailureAt !== undefined && elapsed(now, state.lastFailureAt) < retryAfter) {
    return none('retry-later');
  }
  if (state.lastBackupAt === undefined) return { action: 'backup', reason: 'first' };
  const since = elapsed(now, state.lastBackupAt);
  if (since < (thresholds.minInterval ?? 0)) return none('min-interval');
  if (state.walBytesSinceBackup >= thresholds.maxBytes) return { action: 'backup', reason: 'size' };
  if (state.walEntriesSinceBackup >= thresholds.maxEntries) return { action: 'backup', reason: 'entries' };
  if (since >= thresholds.maxAge) return { action: 'backup', reason: 'age' };
  return none('below-thresholds');
}

function elapsed(now: number, then: number): number {
  return Math.max(0, now - then);
}

function invalid(message: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, message, { retryable: false });
}

const FIELDS = ['maxBytes', 'maxEntries', 'maxAge', 'minInterval', 'retryAfter'] as const;

/**
 * Checks thresholds: every value a positive number (Infinity switches a
 * trigger off; minInterval and retryAfter may be 0). INVALID_ARGUMENT otherwise.
 */
export function validateThresholds(t: Partial<Thresholds>, what = 'backup thresholds'): void {
  for (const name of FIELDS) {
    const v = t[name];
    if (v === undefined) continue;
    const mayBeZero = name === 'minInterval' || name === 'retryAfter';
    if (typeof v !== 'number' || Number.isNaN(v) || v < 0 || (v === 0 && !mayBeZero)) {
      throw invalid(`${what}: ${name} must be a ${mayBeZero ? 'non-negative' : 'positive'} number, not ${v}`);
    }
  }
}

/** Per-partition overrides: partition ID → the thresholds that differ from the defaults. */
export type ThresholdOverrides =
  ReadonlyMap<string, Partial<Thresholds>> | Readonly<Record<string, Partial<Thresholds>>>;

/** The thresholds for one partition: its overrides on top of the defaults, validated. */
export function resolveThresholds(
  defaults: Thresholds,
  overrides: ThresholdOverrides | undefined,
  partition: string,
): Required<Thresholds> {
  const own =
    overrides === undefined
      ? undefined
      : overrides instanceof Map
        ? (overrides as ReadonlyMap<string, Partial<Thresholds>>).get(partition)
        : Object.hasOwn(overrides, partition)
          ? (overrides as Readonly<Record<string, Partial<Thresholds>>>)[partition]
          : undefined;
  const merged: Required<Thresholds> = {
    maxBytes: defaults.maxBytes,
    maxEntries: defaults.maxEntries,
    maxAge: defaults.maxAge,
    minInterval: defaults.minInterval ?? DEFAULT_THRESHOLDS.minInterval,
    retryAfter: defaults.retryAfter ?? DEFAULT_THRESHOLDS.retryAfter,
  };
  for (const name of FIELDS) {
    const v = own?.[name];
    if (v !== undefined) merged[name] = v;
  }
  validateThresholds(merged, `backup thresholds of partition ${partition}`);
  return merged;
}
