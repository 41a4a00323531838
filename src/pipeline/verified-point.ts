import { describeError, isWalArchiverError, ErrorCodes } from '../../contract/errors.js';
import type { Logger } from '../../contract/log.js';
import { verifiedKey } from '../manifest/keys.js';
import { readVerifiedPoint } from '../restore/verified-record.js';
import type { ObjectStore } from '../store/object-store.js';
import type { ArchiverMetrics } from './metrics.js';

/**
 * Exports each led partition's verified point (what `verify` last recorded
 * in the archive, verified-record.ts) as `wal_archiver_verified_lsn` and
 * `wal_archiver_verified_timestamp_seconds`.
 *
 * Read when a partition has resumed, then every `intervalMs`, off the
 * archiving path: one partition at a time, a HEAD per partition, the body
 * only when its ETag changed. A partition with no record (or a damaged one)
 * has no sample of either gauge; one this sidecar no longer leads loses them.
 * A store that fails is logged and tried at the next round.
 */

export const VERIFIED_POLL_INTERVAL_MS = 60_000;

export interface VerifiedPointOptions {
  store: ObjectStore;
  metrics: ArchiverMetrics;
  logger: Logger;
  /** The partitions this sidecar leads now. */
  leading: () => string[];
  intervalMs?: number;
  /** The timeline a partition archives to (default 1). */
  timelineOf?: (partition: string) => number;
}

export class VerifiedPointExporter {
  private readonly abort = new AbortController();
  private readonly etags = new Map<string, string>();
  private readonly failing = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> = Promise.resolve();
  private inRound = false;
  private readonly pending = new Set<Promise<void>>();

  constructor(private readonly o: VerifiedPointOptions) {}

  start(): void {
    this.timer = setInterval(() => this.refreshAll(), this.o.intervalMs ?? VERIFIED_POLL_INTERVAL_MS);
    this.timer.unref();
  }

  /** One round over every led partition (skipped while the previous one runs). */
  refreshAll(): Promise<void> {
    if (this.inRound || this.abort.signal.aborted) return this.round;
    this.inRound = true;
    this.round = (async () => {
      for (const partition of this.o.leading()) await this.refresh(partition);
    })().finally(() => (this.inRound = false));
    return this.round;
  }

  /** Reads one partition's record and sets its gauges; never throws. */
  refresh(partition: string): Promise<void> {
    const p = this.read(partition).finally(() => this.pending.delete(p));
    this.pending.add(p);
    return p;
  }

  private async read(partition: string): Promise<void> {
    const signal = this.abort.signal;
    if (signal.aborted) return;
    const timeline = this.o.timelineOf?.(partition) ?? 1;
    try {
      const info = await this.o.store.head(verifiedKey(partition, timeline), { signal });
      if (info && info.etag === this.etags.get(partition)) return;
      const point = info ? await readVerifiedPoint(this.o.store, partition, { timeline, signal }) : undefined;
      if (signal.aborted || !this.o.leading().includes(partition)) return;
      if (point?.state === 'ok') {
        const labels = { partition };
        this.o.metrics.verifiedLsn.set(labels, point.stored.value.verified_lsn);
        this.o.metrics.verifiedTimestamp.set(labels, Date.parse(point.stored.value.verified_at) / 1000);
        this.etags.set(partition, point.stored.etag);
      } else {
        if (point?.state === 'damaged')
          this.o.logger.warn('the verified record is damaged; not exported', {
            partition,
            error: point.message,
          });
        this.forget(partition);
      }
      this.failing.delete(partition);
    } catch (err) {
      if (signal.aborted || isWalArchiverError(err, ErrorCodes.ABORTED)) return;
      // One line per failing spell, not one per round.
      const log = this.failing.has(partition) ? this.o.logger.debug : this.o.logger.warn;
      log.call(this.o.logger, 'could not read the verified record', { partition, error: describeError(err) });
      this.failing.add(partition);
    }
  }

  /** Drops a partition's gauges (no longer led, or no record). */
  forget(partition: string): void {
    this.etags.delete(partition);
    this.o.metrics.verifiedLsn.remove({ partition });
    this.o.metrics.verifiedTimestamp.remove({ partition });
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.abort.abort();
    await Promise.all([this.round, ...this.pending]);
  }
}
