import { ErrorCodes, isWalArchiverError } from '../../contract/errors.js';
import type { Logger } from '../../contract/log.js';
import type { PartitionManifest } from '../manifest/partition-manifest.js';
import type { ArchiverMetrics } from '../pipeline/metrics.js';
import { decide, policyStateFromManifest, type BackupSlots, type Thresholds } from '../policy/index.js';
import type { StorageNode } from '../node/storage-node.js';
import type { ObjectStore } from '../store/object-store.js';
import { applyRetention, planRetention, type RetentionPolicy } from './retention.js';
import { takeBaseBackup, type BackupRetentionConfig, type BaseBackupResult } from './take.js';

/** Base backups taken by the archiving sidecar when the policy says so (issue: thresholds on WAL volume). */
export interface BackupOptions {
  slots: BackupSlots;
  thresholds: Required<Thresholds>;
  storageNode: StorageNode;
  retention?: BackupRetentionConfig;
  /** Applied after each backup when set: how many / how long base backups are kept. */
  keep?: RetentionPolicy;
  spoolDir: string;
  zstdLevel?: number;
}

export interface BackupTriggerOptions {
  backup: BackupOptions;
  store: ObjectStore;
  partition: string;
  node: number;
  /** The term the partition is led in: the backup's manifest write is fenced by it. */
  term: number;
  /** The timeline the partition is archived to (known once the archiver resumed). */
  timeline: () => number;
  /** Aborts a backup in flight (the partition's archiver stopped). */
  signal: AbortSignal;
  metrics: ArchiverMetrics;
  logger: Logger;
  now: () => number;
  /** A backup was taken and recorded: its result (the manifest it wrote, the event to publish). */
  onTaken: (result: BaseBackupResult) => void;
}

/**
 * One partition's base backups while it is led here: asked at every turn of
 * archiving, it runs the policy on the partition manifest and, when the
 * policy says so and a node-wide slot is free, takes a base backup beside
 * archiving (never blocking it), then applies retention when configured.
 * A failed attempt leaves nothing that looks complete and is retried by the
 * policy later; a newer leader (FENCED) abandons it quietly.
 */
export class BackupTrigger {
  private run: Promise<void> | undefined;
  private failedAt: number | undefined;
  private manual = false;

  constructor(private readonly o: BackupTriggerOptions) {}

  /** Asks for a base backup at the next decision (`wal-archiver backup` goes through the node instead). */
  request(): void {
    this.manual = true;
  }

  /** Resolves when no backup is running (after the signal aborted one). */
  async settled(): Promise<void> {
    await this.run;
  }

  /** Runs the policy on `manifest`; starts a backup when it says so. */
  consider(manifest: PartitionManifest | undefined): void {
    const b = this.o.backup;
    if (this.run || this.o.signal.aborted) return;
    const state = policyStateFromManifest(manifest, {
      leading: true,
      backupRunning: false,
      manualRequested: this.manual,
      ...(this.failedAt === undefined ? {} : { lastFailureAt: this.failedAt }),
    });
    const d = decide(state, this.o.now(), b.thresholds);
    this.o.logger.debug('base backup policy', {
      decision: d,
      walBytes: state.walBytesSinceBackup,
      archivedLsn: state.archivedLsn,
    });
    if (d.action !== 'backup') return;
    const release = b.slots.tryAcquire(this.o.partition);
    if (!release) return;
    this.run = this.take(d.reason).finally(() => {
      release();
      this.run = undefined;
    });
  }

  private async take(trigger: BaseBackupResult['record']['trigger']): Promise<void> {
    const { backup: b, metrics, logger: log } = this.o;
    const started = performance.now();
    try {
      const result = await takeBaseBackup({
        store: this.o.store,
        storageNode: b.storageNode,
        partition: this.o.partition,
        node: this.o.node,
        term: this.o.term,
        timeline: this.o.timeline(),
        trigger,
        ...(b.retention ? { retention: b.retention } : {}),
        signal: this.o.signal,
        logger: log,
        spoolDir: b.spoolDir,
        ...(b.zstdLevel === undefined ? {} : { zstdLevel: b.zstdLevel }),
      });
      this.manual = false;
      this.failedAt = undefined;
      metrics.backups.inc({ partition: this.o.partition, reason: trigger });
      metrics.backupBytes.inc({ partition: this.o.partition }, result.record.bytes);
      metrics.backupSeconds.observe((performance.now() - started) / 1000);
      // takeBaseBackup logged it (with key, LSN, trigger, sizes and duration): once is enough.
      this.o.onTaken(result);
      if (b.keep) await this.applyRetention(result.manifest, b.keep);
    } catch (err) {
      if (this.o.signal.aborted) return;
      if (isWalArchiverError(err, ErrorCodes.FENCED)) {
        log.warn('base backup abandoned: a newer leader owns the partition', { error: err });
        return;
      }
      this.failedAt = this.o.now();
      metrics.errors.inc({ partition: this.o.partition, kind: 'backup' });
      log.warn('base backup failed; the policy will try again later', { error: err, trigger });
    }
  }

  private async applyRetention(manifest: PartitionManifest, keep: RetentionPolicy): Promise<void> {
    const plan = planRetention(manifest, keep, new Date(this.o.now()));
    const writer = { node: this.o.node, term: this.o.term };
    const outcome = await applyRetention(this.o.store, this.o.partition, writer, plan, {
      logger: this.o.logger,
      timeline: this.o.timeline(),
    });
    if (outcome.locked.length > 0)
      this.o.logger.info('retention kept objects still under lock', { locked: outcome.locked.length });
  }
}

/** Time of the last base backup and WAL archived since, for metrics and status. */
export function backupProgress(
  manifest: PartitionManifest | undefined,
): { lastBackupAt: number | undefined; walBytesSince: number; walEntriesSince: number } | undefined {
  if (!manifest) return undefined;
  const st = policyStateFromManifest(manifest, {
    leading: true,
    backupRunning: false,
    manualRequested: false,
  });
  return {
    lastBackupAt: st.lastBackupAt,
    walBytesSince: st.walBytesSinceBackup,
    walEntriesSince: st.walEntriesSinceBackup,
  };
}
