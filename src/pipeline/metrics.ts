import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** The sidecar's Prometheus metrics (served on /metrics). */
export function createArchiverMetrics(registry: Registry = new Registry()) {
  const labelNames = ['partition'] as const;
  const r = [registry];
  return {
    registry,
    archivedLsn: new Gauge({
      name: 'wal_archiver_archived_lsn',
      help: 'Highest LSN of the contiguous archived prefix',
      labelNames,
      registers: r,
    }),
    committedLsn: new Gauge({
      name: 'wal_archiver_committed_lsn',
      help: 'Commit LSN last seen in the node hard state',
      labelNames,
      registers: r,
    }),
    lagEntries: new Gauge({
      name: 'wal_archiver_lag_entries',
      help: 'Committed entries not yet archived',
      labelNames,
      registers: r,
    }),
    lagSeconds: new Gauge({
      name: 'wal_archiver_lag_seconds',
      help: 'Age of the oldest committed entry not yet archived',
      labelNames,
      registers: r,
    }),
    publishedLsn: new Gauge({
      name: 'wal_archiver_published_lsn',
      help: 'Highest LSN published on wal.entries',
      labelNames,
      registers: r,
    }),
    eventsPending: new Gauge({
      name: 'wal_archiver_events_pending',
      help: 'Events waiting for the event bus',
      labelNames,
      registers: r,
    }),
    bytesIn: new Counter({
      name: 'wal_archiver_bytes_in_total',
      help: 'WAL entry bytes packed into segments',
      labelNames,
      registers: r,
    }),
    bytesOut: new Counter({
      name: 'wal_archiver_bytes_out_total',
      help: 'Compressed segment bytes uploaded',
      labelNames,
      registers: r,
    }),
    compressionRatio: new Gauge({
      name: 'wal_archiver_compression_ratio',
      help: 'Raw over compressed bytes of the last segment',
      labelNames,
      registers: r,
    }),
    segments: new Counter({
      name: 'wal_archiver_segments_total',
      help: 'Segments uploaded',
      labelNames,
      registers: r,
    }),
    entries: new Counter({
      name: 'wal_archiver_entries_archived_total',
      help: 'Entries archived',
      labelNames,
      registers: r,
    }),
    uploadSeconds: new Histogram({
      name: 'wal_archiver_segment_upload_seconds',
      help: 'Time to upload one segment',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: r,
    }),
    retries: new Counter({
      name: 'wal_archiver_retries_total',
      help: 'Retried operations',
      labelNames: ['partition', 'operation'] as const,
      registers: r,
    }),
    errors: new Counter({
      name: 'wal_archiver_errors_total',
      help: 'Errors, by kind',
      labelNames: ['partition', 'kind'] as const,
      registers: r,
    }),
    stopped: new Gauge({
      name: 'wal_archiver_partition_stopped',
      help: '1 when archiving of the partition stopped on an error (corrupt WAL …)',
      labelNames,
      registers: r,
    }),
    backups: new Counter({
      name: 'wal_archiver_base_backups_total',
      help: 'Base backups taken, by reason',
      labelNames: ['partition', 'reason'] as const,
      registers: r,
    }),
    backupBytes: new Counter({
      name: 'wal_archiver_base_backup_bytes_total',
      help: 'Compressed bytes of base backups taken',
      labelNames,
      registers: r,
    }),
    backupSeconds: new Histogram({
      name: 'wal_archiver_base_backup_seconds',
      help: 'Time to take one base backup',
      buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1800],
      registers: r,
    }),
    sinceBackupSeconds: new Gauge({
      name: 'wal_archiver_seconds_since_base_backup',
      help: 'Time since the latest base backup (absent: none yet)',
      labelNames,
      registers: r,
    }),
    walBytesSinceBackup: new Gauge({
      name: 'wal_archiver_wal_bytes_since_base_backup',
      help: 'Raw WAL bytes archived since the latest base backup',
      labelNames,
      registers: r,
    }),
    verifiedLsn: new Gauge({
      name: 'wal_archiver_verified_lsn',
      help: 'LSN the archive records `verify` last found the partition clean through (absent: never verified)',
      labelNames,
      registers: r,
    }),
    verifiedTimestamp: new Gauge({
      name: 'wal_archiver_verified_timestamp_seconds',
      help: 'When `verify` last found the partition clean, from the archive (absent: never verified)',
      labelNames,
      registers: r,
    }),
    leading: new Gauge({
      name: 'wal_archiver_partition_archiving',
      help: '1 while this sidecar archives the partition',
      labelNames,
      registers: r,
    }),
  };
}

export type ArchiverMetrics = ReturnType<typeof createArchiverMetrics>;

/** Counters of the global manifest projector, read when /metrics is scraped. */
export function registerProjectorMetrics(
  registry: Registry,
  stats: () => {
    eventsFolded: number;
    eventsSkipped: number;
    writes: number;
    writeConflicts: number;
    errors: number;
  },
): void {
  const counters = [
    ['wal_archiver_manifest_events_folded', 'Events folded into the global manifest', 'eventsFolded'],
    ['wal_archiver_manifest_events_skipped', 'Malformed events the projector skipped', 'eventsSkipped'],
    ['wal_archiver_manifest_writes', 'Global manifest versions written', 'writes'],
    [
      'wal_archiver_manifest_write_conflicts',
      'Global manifest writes that lost a race and were redone',
      'writeConflicts',
    ],
    ['wal_archiver_manifest_errors', 'Projector failures (each retried)', 'errors'],
  ] as const;
  for (const [name, help, field] of counters) {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(stats()[field]);
      },
    });
  }
}

/** The lag gauges of a partition: committed LSN, entries not yet archived, and the age of the oldest. */
export function reportLag(
  m: ArchiverMetrics,
  labels: { partition: string },
  committedLsn: number,
  archivedLsn: number,
  oldestPendingTime: number,
  now: number,
): void {
  m.committedLsn.set(labels, committedLsn);
  m.lagEntries.set(labels, Math.max(0, committedLsn - archivedLsn));
  m.lagSeconds.set(labels, oldestPendingTime ? Math.max(0, (now - oldestPendingTime) / 1000) : 0);
}

/** Counts one archived segment. */
export function reportSegment(
  m: ArchiverMetrics,
  labels: { partition: string },
  record: { last_lsn: number; entries: number; raw_bytes: number; bytes: number },
): void {
  m.archivedLsn.set(labels, record.last_lsn);
  m.segments.inc(labels);
  m.entries.inc(labels, record.entries);
  m.bytesIn.inc(labels, record.raw_bytes);
  m.bytesOut.inc(labels, record.bytes);
  if (record.bytes > 0) m.compressionRatio.set(labels, record.raw_bytes / record.bytes);
}
