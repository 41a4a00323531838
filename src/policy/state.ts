import { latestBackupAtOrBefore, type PartitionManifest } from '../manifest/partition-manifest.js';
import type { PolicyState } from './decide.js';

/**
 * The policy state of a partition as its manifest tells it: the last base
 * backup, and the WAL archived after that backup's LSN. A segment that
 * straddles the backup LSN counts with the share of its entries (and raw
 * bytes, pro rata) above it. Pure: the caller adds what only it knows.
 */
export function policyStateFromManifest(
  manifest: PartitionManifest | undefined,
  live: Pick<PolicyState, 'leading' | 'backupRunning' | 'manualRequested'> & { lastFailureAt?: number },
): PolicyState {
  const last = manifest ? latestBackupAtOrBefore(manifest) : undefined;
  const lastLsn = last?.lsn ?? 0;
  let bytes = 0;
  let entries = 0;
  // Overlapping segments (after a handoff) hold the same entries: count each LSN once.
  let covered = lastLsn;
  const sorted = [...(manifest?.segments ?? [])].sort(
    (a, b) => a.first_lsn - b.first_lsn || a.last_lsn - b.last_lsn,
  );
  for (const s of sorted) {
    if (s.last_lsn <= covered) continue;
    const fresh = s.last_lsn - Math.max(s.first_lsn, covered + 1) + 1;
    const span = s.last_lsn - s.first_lsn + 1;
    entries += Math.min(fresh, s.entries);
    bytes += Math.round((s.raw_bytes * fresh) / span);
    covered = s.last_lsn;
  }
  return {
    walBytesSinceBackup: bytes,
    walEntriesSinceBackup: entries,
    lastBackupAt: last ? Date.parse(last.taken_at) : undefined,
    lastBackupLsn: lastLsn,
    archivedLsn: manifest?.archived?.last_lsn ?? 0,
    backupRunning: live.backupRunning,
    leading: live.leading,
    manualRequested: live.manualRequested,
    ...(live.lastFailureAt !== undefined ? { lastFailureAt: live.lastFailureAt } : {}),
  };
}
