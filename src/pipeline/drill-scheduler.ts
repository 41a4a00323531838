import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Counter, Gauge, type Registry } from 'prom-client';
import { isWalArchiverError, ErrorCodes } from '../../contract/errors.js';
import type { Logger } from '../../contract/log.js';
import { comparePartitionIds } from '../../contract/partition-id.js';
import {
  DEFAULT_DRILL_CONCURRENCY,
  drillPartition,
  seededRandom,
  type DrillResult,
} from '../restore/drill.js';
import type { ObjectStore } from '../store/object-store.js';

/**
 * Restore drills in the background (`run --drill-interval D`): every D the
 * sidecar drills one of the partitions it leads, chosen at random from a
 * seeded source, one drill at a time, downloading one segment at a time in
 * a scratch folder of its own. Archiving never waits for it: the drill only
 * reads the archive. Outcomes go to three metrics and, for a failure, to one
 * error log line naming the partition, the LSN and the first differing file
 * (or the object that failed its check).
 */

export function createDrillMetrics(registry: Registry) {
  const labelNames = ['partition'] as const;
  const registers = [registry];
  return {
    lastSuccess: new Gauge({
      name: 'wal_archiver_drill_last_success_timestamp_seconds',
      help: 'When the last restore drill of the partition succeeded (Unix seconds)',
      labelNames,
      registers,
    }),
    failures: new Counter({
      name: 'wal_archiver_drill_failures_total',
      help: 'Restore drills of the partition that failed, or could not run',
      labelNames,
      registers,
    }),
    lsn: new Gauge({
      name: 'wal_archiver_drill_lsn',
      help: 'The LSN the last successful restore drill of the partition restored to',
      labelNames,
      registers,
    }),
  };
}

export type DrillMetrics = ReturnType<typeof createDrillMetrics>;

export interface DrillSchedulerOptions {
  store: ObjectStore;
  /** The partitions this sidecar leads now. */
  partitions: () => readonly string[];
  /** The archive timeline a led partition is written to (default 1). */
  timelineOf?: (partition: string) => number;
  /** Time between drills (ms). */
  intervalMs: number;
  /** Seeds the choice of partition and backup pair; undefined: a random seed. */
  seed?: number;
  /** Where scratch folders are made (default: the OS temp folder). */
  scratchDir?: string;
  /** Refuse a drill whose objects exceed this many (compressed) bytes. */
  maxScratchBytes?: number;
  registry: Registry;
  logger: Logger;
  now?: () => number;
}

export class DrillScheduler {
  readonly metrics: DrillMetrics;
  private readonly random: () => number;
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(private readonly o: DrillSchedulerOptions) {
    if (!(o.intervalMs > 0)) throw new RangeError(`drill interval must be positive, not ${o.intervalMs}`);
    this.metrics = createDrillMetrics(o.registry);
    this.random = seededRandom(o.seed ?? randomInt(2 ** 32));
  }

  start(): void {
    this.loop ??= this.run();
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    while (!signal.aborted) {
      try {
        await sleep(this.o.intervalMs, undefined, { signal });
      } catch {
        return;
      }
      await this.drillOnce();
    }
  }

  /** Drills one led partition now (undefined: none is led, or the drill could not run). */
  async drillOnce(): Promise<DrillResult | undefined> {
    const led = [...this.o.partitions()].sort(comparePartitionIds);
    if (led.length === 0) return undefined;
    const partition = led[Math.floor(this.random() * led.length)]!;
    const labels = { partition };
    const log = this.o.logger.child({ component: 'drill', partition });
    const now = this.o.now ?? Date.now;
    const options = {
      timeline: this.o.timelineOf?.(partition) ?? 1,
      seed: Math.floor(this.random() * 2 ** 32),
      concurrency: DEFAULT_DRILL_CONCURRENCY,
      signal: this.abort.signal,
      ...(this.o.scratchDir !== undefined ? { scratchDir: this.o.scratchDir } : {}),
      ...(this.o.maxScratchBytes !== undefined
        ? { budget: { maxScratchBytes: this.o.maxScratchBytes } }
        : {}),
    };
    let r: DrillResult;
    try {
      r = await drillPartition(this.o.store, partition, options);
      // Retention beside archiving may remove an object between the listing and its download:
      // a missing object counts only when a drill on a fresh listing misses it too.
      if (r.failure?.code === ErrorCodes.NOT_FOUND)
        r = await drillPartition(this.o.store, partition, options);
    } catch (err) {
      if (this.abort.signal.aborted || isWalArchiverError(err, ErrorCodes.ABORTED)) return undefined;
      this.metrics.failures.inc(labels);
      log.error('restore drill could not run', { error: err });
      return undefined;
    }
    if (r.empty) {
      // A partition led before anything of it is archived: nothing to drill yet, and nothing wrong.
      log.debug('restore drill skipped: nothing archived yet');
      return r;
    }
    if (r.ok) {
      this.metrics.lastSuccess.set(labels, now() / 1000);
      this.metrics.lsn.set(labels, r.drilledLsn);
      log.info('restore drill passed', {
        timeline: r.timeline,
        baseLsn: r.baseLsn,
        lsn: r.drilledLsn,
        files: r.files,
        bytes: r.bytes,
      });
    } else {
      this.metrics.failures.inc(labels);
      log.error(`restore drill failed at LSN ${r.failure!.lsn}: ${r.failure!.message}`, {
        timeline: r.timeline,
        lsn: r.failure!.lsn,
        ...(r.failure!.file ? { file: r.failure!.file } : {}),
        ...(r.failure!.key ? { key: r.failure!.key } : {}),
      });
    }
    return r;
  }

  /** Stops the loop, aborting a drill in flight (its scratch folder is removed). */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }
}
