/**
 * The global manifest projector: the consumer group, inside every sidecar,
 * that keeps `manifest.json` current (Contract 4).
 *
 * Each sidecar runs one projector. They all join the same consumer groups,
 * one per topic (`<group>.archived`, `<group>.backups`, `<group>.leadership`,
 * as rebuildFromEvents names them: members of one group subscribe to the same
 * topic), so the bus hands each event to one sidecar and the work is shared.
 *
 * A handler batch is parsed (contract/events/schemas.ts), folded and written with
 * `GlobalManifestWriter` (compare-and-swap) before the handler resolves, so
 * the bus commits a position only once the fold is durable. Delivery is at
 * least once and the fold is idempotent, so a redelivered batch changes
 * nothing. Batches of the three topics that arrive while a write is in flight
 * are folded together into the next write.
 *
 * - A malformed event is skipped, counted and logged with its topic, bus
 *   partition and offset: it never crashes the projector and never blocks
 *   the topic.
 * - An object store failure makes the handler throw: the bus keeps the
 *   position and delivers the batch again after a backoff (the folder bus
 *   re-reads it on its next round, the Kafka bus retries the handler while
 *   heartbeating). Failures are logged with rate limiting.
 * - `stop()` leaves the groups after the batch in flight is written and its
 *   position committed.
 */

import { ErrorCodes, WalArchiverError, describeError, isWalArchiverError } from '../../contract/errors.js';
import type { ConsumedEvent, EventBus, Subscription } from '../../contract/events/event-bus.js';
import { createLogger, type Logger } from '../../contract/log.js';
import { sleep } from '../../contract/retry.js';
import type { ObjectStore } from '../store/object-store.js';
import type { CasOptions } from './cas.js';
import {
  GlobalManifestWriter,
  MANIFEST_TOPICS,
  toManifestEvents,
  type ManifestEvent,
} from './global-manifest.js';

/** The consumer group stem every sidecar's projector joins (one group per topic: `<stem>.<topic>`). */
export const DEFAULT_MANIFEST_GROUP = 'wal-archiver-manifest';
/** At most one failure log line per this interval (the rest are counted and summarised). */
export const DEFAULT_ERROR_LOG_INTERVAL_MS = 30_000;
/**
 * The least time between two global manifest writes of one projector: events arriving meanwhile are
 * folded into the next write. With thousands of partitions a write (fold, encode, upload) is costly,
 * and many small ones cost a core; the manifest is an operator's view, a second behind is fine.
 */
export const DEFAULT_MIN_WRITE_INTERVAL_MS = 1_000;
/** Malformed events logged one by one per interval before the rest are only counted. */
export const SKIP_LOG_BURST = 10;

export interface GlobalManifestProjectorOptions {
  store: ObjectStore;
  bus: EventBus;
  /** Consumer group stem; default `wal-archiver-manifest`. */
  group?: string;
  /**
   * Where a group with no committed position starts: true (the default)
   * folds every event still on the topics, so the first projector of a
   * cluster misses nothing published before it started.
   */
  fromBeginning?: boolean;
  logger?: Logger;
  now?: () => Date;
  /** Compare-and-swap tuning of the manifest writes. */
  cas?: Omit<CasOptions, 'signal' | 'onConflict'>;
  errorLogIntervalMs?: number;
  /** Least time between two manifest writes; default DEFAULT_MIN_WRITE_INTERVAL_MS (0: write at once). */
  minWriteIntervalMs?: number;
}

/** Counters for the sidecar's metrics. Events redelivered by the bus are counted again. */
export interface ProjectorStats {
  /** Well-formed events folded into a durable manifest write. */
  eventsFolded: number;
  /** Malformed events skipped. */
  eventsSkipped: number;
  /** Manifest versions this projector wrote (a batch that changed nothing writes none). */
  writes: number;
  /** Lost compare-and-swap races (another writer got there first; the fold was redone). */
  writeConflicts: number;
  /** Failures reported by the subscriptions: failed writes and bus errors. Each is retried. */
  errors: number;
  lastError: string | undefined;
  lastErrorAt: Date | undefined;
  lastWriteAt: Date | undefined;
}

interface PendingFold {
  events: ManifestEvent[];
  resolve: () => void;
  reject: (err: unknown) => void;
}

interface Skip {
  topic: string;
  partition: number;
  offset: string;
  key: string;
  error: string;
}

/** A duration option in ms: its default when not given, INVALID_ARGUMENT unless a number ≥ 0. */
function durationOption(name: string, value: number | undefined, fallback: number): number {
  const ms = value ?? fallback;
  if (!Number.isFinite(ms) || ms < 0) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `manifest projector ${name} must be a number ≥ 0 (got ${String(ms)})`,
      { retryable: false },
    );
  }
  return ms;
}

/** Logs the first occurrences in a window, then counts the rest and reports them once the window ends. */
class RateLimitedLog {
  private windowStart = -Infinity;
  private inWindow = 0;
  private suppressed = 0;

  constructor(
    private readonly intervalMs: number,
    private readonly burst: number,
  ) {}

  /** Whether to log this occurrence; `suppressed` is how many were held back before it. */
  take(nowMs: number): { log: boolean; suppressed: number } {
    if (nowMs - this.windowStart >= this.intervalMs) {
      this.windowStart = nowMs;
      this.inWindow = 0;
    }
    if (this.inWindow < this.burst) {
      this.inWindow++;
      const suppressed = this.suppressed;
      this.suppressed = 0;
      return { log: true, suppressed };
    }
    this.suppressed++;
    return { log: false, suppressed: 0 };
  }
}

export class GlobalManifestProjector {
  readonly group: string;
  private readonly store: ObjectStore;
  private readonly bus: EventBus;
  private readonly fromBeginning: boolean;
  private readonly log: Logger;
  private readonly writer: GlobalManifestWriter;
  private readonly errorLog: RateLimitedLog;
  private readonly skipLog: RateLimitedLog;
  private readonly counters: ProjectorStats = {
    eventsFolded: 0,
    eventsSkipped: 0,
    writes: 0,
    writeConflicts: 0,
    errors: 0,
    lastError: undefined,
    lastErrorAt: undefined,
    lastWriteAt: undefined,
  };
  private subscriptions: Subscription[] = [];
  private pending: PendingFold[] = [];
  private draining?: Promise<void>;
  private failing = 0;
  private readonly minWriteIntervalMs: number;
  private lastWriteStarted = -Infinity;
  /** Cuts the wait between writes short when stopping: what is pending is written at once. */
  private readonly stopping = new AbortController();
  private state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';
  private startPromise?: Promise<void>;
  private stopPromise?: Promise<void>;

  constructor(options: GlobalManifestProjectorOptions) {
    const group = options.group ?? DEFAULT_MANIFEST_GROUP;
    if (typeof group !== 'string' || !/^[A-Za-z0-9._-]{1,180}$/.test(group)) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `manifest projector group "${String(group)}" must be 1-180 characters of [A-Za-z0-9._-]`,
        { retryable: false },
      );
    }
    const interval = durationOption(
      'errorLogIntervalMs',
      options.errorLogIntervalMs,
      DEFAULT_ERROR_LOG_INTERVAL_MS,
    );
    this.minWriteIntervalMs = durationOption(
      'minWriteIntervalMs',
      options.minWriteIntervalMs,
      DEFAULT_MIN_WRITE_INTERVAL_MS,
    );
    this.group = group;
    this.store = options.store;
    this.bus = options.bus;
    this.fromBeginning = options.fromBeginning ?? true;
    this.log = options.logger ?? createLogger({ component: 'manifest-projector' });
    this.writer = new GlobalManifestWriter(this.store, {
      ...options.cas,
      ...(options.now ? { now: options.now } : {}),
      onConflict: () => {
        this.counters.writeConflicts++;
      },
    });
    this.errorLog = new RateLimitedLog(interval, 1);
    this.skipLog = new RateLimitedLog(interval, SKIP_LOG_BURST);
  }

  /** The consumer group of one topic. */
  groupOf(topic: string): string {
    return `${this.group}.${topic}`;
  }

  /** A snapshot of the counters. */
  get stats(): ProjectorStats {
    return { ...this.counters };
  }

  /** Joins the groups of the three topics. Fails (having left any group it joined) if the bus refuses. */
  start(): Promise<void> {
    if (this.state !== 'new') {
      return Promise.reject(
        new WalArchiverError(ErrorCodes.INTERNAL, 'manifest projector started twice', { retryable: false }),
      );
    }
    this.state = 'starting';
    this.startPromise = this.join();
    return this.startPromise;
  }

  private async join(): Promise<void> {
    try {
      for (const topic of MANIFEST_TOPICS) {
        const sub = await this.bus.subscribe({
          topic,
          group: this.groupOf(topic),
          fromBeginning: this.fromBeginning,
          handler: (batch) => this.handle(topic, batch),
          onError: (err) => this.reportError(topic, err),
        });
        this.subscriptions.push(sub);
        if (this.state !== 'starting') return;
      }
    } catch (err) {
      await this.stopSubscriptions();
      this.state = 'stopped';
      throw err;
    }
    this.state = 'running';
    this.log.info('global manifest projector started', {
      group: this.group,
      topics: MANIFEST_TOPICS.map((t) => this.bus.topicName(t)),
      store: this.store.url,
    });
  }

  /**
   * Leaves the groups once the batch in flight is written and its position
   * committed (a start in progress is finished first). Safe to call more than once.
   */
  stop(): Promise<void> {
    this.stopPromise ??= (async () => {
      const wasRunning = this.state === 'running' || this.state === 'starting';
      this.state = 'stopping';
      this.stopping.abort();
      await this.startPromise?.catch(() => undefined);
      await this.stopSubscriptions();
      await this.draining;
      this.state = 'stopped';
      if (wasRunning) {
        this.log.info('global manifest projector stopped', { group: this.group, ...this.counterFields() });
      }
    })();
    return this.stopPromise;
  }

  private async stopSubscriptions(): Promise<void> {
    const subs = this.subscriptions;
    this.subscriptions = [];
    const results = await Promise.allSettled(subs.map((s) => s.stop()));
    for (const r of results) {
      if (r.status === 'rejected') {
        this.log.warn('manifest projector: leaving a consumer group failed', { error: r.reason });
      }
    }
  }

  private counterFields(): Record<string, unknown> {
    const c = this.counters;
    return {
      events_folded: c.eventsFolded,
      events_skipped: c.eventsSkipped,
      writes: c.writes,
      write_conflicts: c.writeConflicts,
      errors: c.errors,
    };
  }

  /** One handler batch: parse, fold and write; resolves only once the write is durable. */
  private async handle(topic: string, batch: ConsumedEvent[]): Promise<void> {
    const skips: Skip[] = [];
    // Parsing is deterministic: whatever it throws, the event will never fold. Skip it.
    const events = toManifestEvents(topic, batch, (consumed, err) => {
      skips.push({
        topic: consumed.topic,
        partition: consumed.partition,
        offset: consumed.offset,
        key: consumed.key,
        error: describeError(err),
      });
    });
    if (events.length > 0) await this.fold(events);
    // Counted once the batch is done, so a batch retried after a failed write is not counted twice.
    this.counters.eventsFolded += events.length;
    this.counters.eventsSkipped += skips.length;
    for (const skip of skips) this.reportSkip(skip);
  }

  private fold(events: ManifestEvent[]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ events, resolve, reject });
      this.drain();
    });
  }

  /** Writes everything pending in one compare-and-swap update, again until nothing is pending. */
  private drain(): void {
    if (this.draining) return;
    this.draining = (async () => {
      while (this.pending.length > 0) {
        const wait = this.lastWriteStarted + this.minWriteIntervalMs - performance.now();
        if (wait > 0 && !this.stopping.signal.aborted)
          await sleep(wait, this.stopping.signal).catch(() => undefined);
        this.lastWriteStarted = performance.now();
        const work = this.pending.splice(0);
        try {
          const result = await this.writer.apply(work.flatMap((w) => w.events));
          if (result.written) {
            this.counters.writes++;
            this.counters.lastWriteAt = new Date();
          }
          if (this.failing > 0) {
            this.log.info('global manifest writes recovered', {
              failures: this.failing,
              version: result.manifest.version,
            });
            this.failing = 0;
          }
          for (const w of work) w.resolve();
        } catch (err) {
          this.failing++;
          for (const w of work) w.reject(err);
        }
      }
    })().finally(() => {
      this.draining = undefined;
      if (this.pending.length > 0) this.drain();
    });
  }

  private reportError(topic: string, err: unknown): void {
    this.counters.errors++;
    this.counters.lastError = describeError(err);
    this.counters.lastErrorAt = new Date();
    const { log, suppressed } = this.errorLog.take(Date.now());
    if (!log) return;
    const corrupt = isWalArchiverError(err, ErrorCodes.CORRUPT);
    const fields: Record<string, unknown> = {
      topic: this.bus.topicName(topic),
      group: this.groupOf(topic),
      error: err,
      errors: this.counters.errors,
    };
    if (suppressed > 0) fields.suppressed = suppressed;
    const msg = corrupt
      ? 'global manifest projection is blocked by corrupt data; retrying'
      : 'global manifest projection failed; retrying';
    if (corrupt) this.log.error(msg, fields);
    else this.log.warn(msg, fields);
  }

  private reportSkip(skip: Skip): void {
    const { log, suppressed } = this.skipLog.take(Date.now());
    if (!log) return;
    const fields: Record<string, unknown> = {
      topic: skip.topic,
      bus_partition: skip.partition,
      offset: skip.offset,
      key: skip.key,
      error: skip.error,
      skipped: this.counters.eventsSkipped,
    };
    if (suppressed > 0) fields.suppressed = suppressed;
    this.log.warn('skipped a malformed event', fields);
  }
}
