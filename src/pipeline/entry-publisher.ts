import { stat } from 'node:fs/promises';
import { ErrorCodes, isRetryable, isWalArchiverError, WalArchiverError } from '../../contract/errors.js';
import { Topics, type EventBus } from '../../contract/events/event-bus.js';
import { Backoff, sleep } from '../../contract/retry.js';
import { walEntryEvent, type WalEntryEvent } from '../../contract/events/schemas.js';
import { readCommitLsn, readCommittedEntry, type CommittedEntry } from '../tail/committed.js';
import { entryDir, listEntryLsns } from '../../contract/wal/entry.js';
import type { Committer } from './committer.js';
import { jitter, type PartitionContext } from './context.js';
import { EVENT_BATCH, keyed, type EventOutbox } from './event-outbox.js';

/** What a `wal.entries` event needs of an entry, kept from the archive loop's read. */
interface EntryEventSource {
  term: number;
  bytes: number;
  committedAt: number;
  refs: CommittedEntry['refs'];
}

/** Entry events remembered from the archive loop's reads for the publisher (beyond, it reads the WAL). */
const EVENT_CACHE_MAX = 2 * EVENT_BATCH;
/** The publisher reads the WAL itself when the archive loop has not read further for this long. */
const PUBLISH_READ_STALL_MS = 1_000;
/** The publisher's safety-net poll, in idle polls (the archive loop and notifications wake it). */
const PUBLISHER_IDLE_FACTOR = 5;

/**
 * The publishing loop of a partition: the outbox's `wal.archived` and
 * `wal.backups` events, then `wal.entries` in LSN order behind its own
 * cursor (`publishedLsn`), so a bus that is down never holds archiving back;
 * the node keeps the WAL until entries are both archived and published.
 */
export class EntryPublisher {
  /** Events of entries the archive loop has read and the publisher has not yet published. */
  private readonly cache = new Map<number, EntryEventSource>();
  /** The commit LSN the publisher last saw, and since when it has seen entries the archive loop has not read. */
  private commit = 0;
  private behindSince: number | undefined;

  constructor(
    private readonly ctx: PartitionContext,
    private readonly bus: EventBus,
    private readonly committer: Committer,
    private readonly outbox: EventOutbox,
  ) {}

  /** Keeps what the event of an entry the archive loop read needs, so the WAL is read once. */
  keep(e: CommittedEntry): void {
    if (e.lsn > this.ctx.publishedLsn && this.cache.size < EVENT_CACHE_MAX) {
      this.cache.set(e.lsn, { term: e.term, bytes: e.bytes, committedAt: e.committedAt, refs: e.refs });
    }
  }

  async run(): Promise<void> {
    const c = this.ctx;
    await Promise.race([
      c.resumed,
      new Promise((r) => c.signal.addEventListener('abort', r, { once: true })),
    ]);
    const backoff = new Backoff({ initialMs: 250, maxMs: 15_000 });
    let failures = 0;
    while (!c.aborted) {
      try {
        const moved = await this.publishOnce();
        backoff.reset();
        failures = 0;
        // Recording the cursor saves a new leader some republishing; a failure only defers it.
        await this.committer.recordPublishedIfIdle().catch((err: unknown) => {
          if (isWalArchiverError(err, ErrorCodes.FENCED)) throw err;
          c.log.debug('could not record the published cursor yet', { error: err });
        });
        // Entries committed but not yet read by the archive loop: look again once it may have stalled.
        // Otherwise the archive loop and commit notifications wake it: the safety-net poll can be rare.
        if (!moved)
          await c.wait(
            'publish',
            c.publishedLsn < this.commit
              ? PUBLISH_READ_STALL_MS
              : jitter(c.o.config.idlePollMs * PUBLISHER_IDLE_FACTOR),
          );
      } catch (err) {
        if (c.aborted) break;
        if (!isRetryable(err)) {
          // A corrupt entry is reported by the archive loop; events wait until it is resolved.
          c.log.error('publishing entry events stopped', { error: err });
          return;
        }
        failures++;
        c.o.metrics.retries.inc({ partition: c.partition, operation: 'publish' });
        if (failures === 1 || failures % 10 === 0)
          c.log.warn('event bus unavailable; will publish when it is back', { error: err, failures });
        await sleep(backoff.next(), c.signal).catch(() => undefined);
      }
    }
  }

  /** Publishes what is pending; false when there was nothing to do. */
  private async publishOnce(): Promise<boolean> {
    const c = this.ctx;
    let moved = await this.outbox.flush(this.bus, c.signal);
    const commit = await readCommitLsn(c.o.partitionDir);
    this.commit = commit;
    const limit = this.publishLimit(commit);
    if (c.publishedLsn < limit) {
      const from = await this.firstPublishable(c.publishedLsn + 1);
      const to = Math.min(limit, from + EVENT_BATCH - 1);
      const values: WalEntryEvent[] = [];
      for (let lsn = from; lsn <= to; lsn++) {
        const e = this.cache.get(lsn) ?? (await this.readForEvent(lsn, commit));
        values.push(
          walEntryEvent({
            partition: c.partition,
            lsn,
            term: e.term,
            node: c.node,
            bytes: e.bytes,
            refs: e.refs,
            committed_at: new Date(e.committedAt || c.lastCommitTime || c.now()).toISOString(),
          }),
        );
      }
      await this.bus.publish(Topics.ENTRIES, keyed(c.partition, values), { signal: c.signal });
      for (let lsn = from; lsn <= to; lsn++) this.cache.delete(lsn);
      c.publishedLsn = to;
      c.o.metrics.publishedLsn.set(c.labels, to);
      await this.committer.writePosition();
      moved = true;
    }
    c.o.metrics.eventsPending.set(c.labels, this.outbox.length + Math.max(0, commit - c.publishedLsn));
    return moved;
  }

  /**
   * How far entry events may go now: as far as the archive loop has read
   * (its reads are shared, so each entry is read once), or to the commit LSN
   * when the archive loop has not read further for a while (the object store
   * is slow or down) and events must not wait for it.
   */
  private publishLimit(commit: number): number {
    const c = this.ctx;
    if (c.readThrough >= commit) {
      this.behindSince = undefined;
      return commit;
    }
    this.behindSince ??= c.now();
    const since = Math.max(c.readProgressAt, this.behindSince);
    if (c.state !== 'archiving' || c.now() - since >= PUBLISH_READ_STALL_MS) return commit;
    return c.readThrough;
  }

  /**
   * The first LSN to publish: `from`, unless the node pruned it. A node prunes
   * only through a sidecar's min(archived, published): entries gone from the
   * WAL were published by an earlier leader's sidecar, whose cursor had not
   * reached the manifest yet. Only when no cursor was ever recorded (events
   * configured after archiving began) were they never published.
   */
  private async firstPublishable(from: number): Promise<number> {
    const c = this.ctx;
    if (this.cache.has(from)) return from;
    const present = await stat(entryDir(c.o.partitionDir, from)).then(
      () => true,
      () => false,
    );
    if (present) return from;
    const lsns = await listEntryLsns(c.o.partitionDir);
    const first = lsns[0];
    if (first === undefined || first <= from) return from;
    if (this.committer.recordedPublished === 0) {
      c.log.warn('entry events for LSNs pruned before events were configured cannot be published', {
        from,
        to: first - 1,
      });
      c.o.metrics.errors.inc({ partition: c.partition, kind: 'events_skipped' });
    } else {
      c.log.info(
        'entry events already published by an earlier leader\u2019s sidecar; continuing after them',
        {
          from,
          to: first - 1,
        },
      );
    }
    for (const lsn of this.cache.keys()) if (lsn < first) this.cache.delete(lsn);
    return first;
  }

  private async readForEvent(lsn: number, commit: number): Promise<EntryEventSource> {
    return readCommittedEntry(this.ctx.o.partitionDir, lsn, commit).catch((err: unknown) => {
      if (!isWalArchiverError(err, ErrorCodes.NOT_FOUND)) throw err;
      throw new WalArchiverError(
        ErrorCodes.UNAVAILABLE,
        `LSN ${lsn} left the WAL while publishing; retrying`,
        {
          cause: err,
          retryable: true,
        },
      );
    });
  }
}
