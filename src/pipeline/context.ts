import type { Logger } from '../../contract/log.js';
import { reportLag } from './metrics.js';
import type { ArchiverState, PartitionArchiverOptions } from './options.js';

/** The two loops of a partition: archiving (read → segment → upload → record) and publishing entry events. */
export type LoopName = 'archive' | 'publish';

/**
 * What the stages of one partition's archiver share: its options, its
 * logger and clock, one abort signal, its progress (the LSNs it reports),
 * and the wake-ups between its two loops. Each stage keeps the rest of its
 * state to itself.
 */
export class PartitionContext {
  readonly partition: string;
  readonly term: number;
  readonly node: number;
  readonly log: Logger;
  readonly now: () => number;
  /** Metric labels of this partition. */
  readonly labels: { partition: string };
  readonly resumed: Promise<void>;

  /**
   * The archive timeline this partition is written to (src/timeline), and
   * the LSN it branched at (0 on timeline 1): known once resuming began.
   */
  timeline = 1;
  branchLsn = 0;
  state: ArchiverState = 'starting';
  error: string | undefined;
  archivedLsn = 0;
  committedLsn = 0;
  publishedLsn = 0;
  /** The highest LSN the archive loop has read, and when it last read further. */
  readThrough = 0;
  readProgressAt = 0;
  /** The latest commit stamp seen (for entries without one). */
  lastCommitTime = 0;
  /** When the oldest entry not yet archived was committed (0: none pending). */
  oldestPendingTime = 0;

  private readonly abort = new AbortController();
  private resolveResumed!: () => void;
  private readonly waiters = new Map<LoopName, () => void>();
  private readonly woken = new Set<LoopName>();

  constructor(readonly o: PartitionArchiverOptions) {
    this.partition = o.partition;
    this.term = o.term;
    this.node = o.node;
    this.log = o.logger.child({ partition: o.partition, term: o.term });
    this.now = o.now ?? Date.now;
    this.labels = { partition: o.partition };
    this.resumed = new Promise((resolve) => (this.resolveResumed = resolve));
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  get aborted(): boolean {
    return this.abort.signal.aborted;
  }

  /** Stops every stage: loops end at their next step, requests in flight are aborted. */
  stop(): void {
    this.abort.abort();
  }

  /** The position to resume from is known: the partition reports `archiving`. */
  markArchiving(): void {
    this.state = 'archiving';
    this.resolveResumed();
  }

  /** Sets the lag gauges from the progress. */
  updateLag(): void {
    reportLag(
      this.o.metrics,
      this.labels,
      this.committedLsn,
      this.archivedLsn,
      this.oldestPendingTime,
      this.now(),
    );
  }

  /**
   * Wakes a loop; a wake-up while it is busy is remembered, so the next
   * `wait` returns at once (a change noticed mid-iteration is never lost).
   */
  wake(which: LoopName): void {
    const waiter = this.waiters.get(which);
    if (waiter) waiter();
    else this.woken.add(which);
  }

  wait(which: LoopName, ms: number): Promise<void> {
    if (this.woken.delete(which) || this.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(which);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.set(which, done);
    });
  }
}

/** `ms` ± 25 %, so thousands of idle partitions do not all look at their hard state in the same instant. */
export function jitter(ms: number): number {
  return ms * (0.75 + Math.random() / 2);
}
