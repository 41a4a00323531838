import { Topics, type EventBus, type PublishEvent } from '../../contract/events/event-bus.js';
import type { SegmentRecord } from '../manifest/partition-manifest.js';
import {
  walArchivedEvent,
  type WalArchivedEvent,
  type WalBackupEvent,
  type WalEntryEvent,
} from '../../contract/events/schemas.js';

/** Values published in one call, at most. */
export const EVENT_BATCH = 500;

type OutboxTopic = typeof Topics.ARCHIVED | typeof Topics.BACKUPS;

/**
 * The `wal.archived` and `wal.backups` events of a partition waiting for the
 * event bus, in the order they happened; the entry publisher sends them
 * before entry events, at least once (a value leaves only once published).
 */
export class EventOutbox {
  private readonly queues: { [T in OutboxTopic]: Array<WalArchivedEvent | WalBackupEvent> } = {
    [Topics.ARCHIVED]: [],
    [Topics.BACKUPS]: [],
  };

  constructor(private readonly partition: string) {}

  /** A segment was recorded in the manifest (`committedLsn`: the commit LSN then, for lag). */
  archived(record: SegmentRecord, committedLsn: number, timeline = 1): void {
    this.queues[Topics.ARCHIVED].push(
      walArchivedEvent({
        partition: this.partition,
        first_lsn: record.first_lsn,
        last_lsn: record.last_lsn,
        key: record.key,
        bytes: record.bytes,
        raw_bytes: record.raw_bytes,
        entries: record.entries,
        sha256: record.sha256,
        term: record.term,
        node: record.node,
        committed_lsn: committedLsn,
        first_committed_at: record.first_committed_at,
        last_committed_at: record.last_committed_at,
        archived_at: record.archived_at,
        timeline,
      }),
    );
  }

  /** A base backup was recorded in the manifest. */
  backup(event: WalBackupEvent): void {
    this.queues[Topics.BACKUPS].push(event);
  }

  /** Events waiting. */
  get length(): number {
    return this.queues[Topics.ARCHIVED].length + this.queues[Topics.BACKUPS].length;
  }

  /** Publishes a batch of each topic's waiting events; false when there were none. */
  async flush(bus: EventBus, signal: AbortSignal): Promise<boolean> {
    let moved = false;
    for (const topic of [Topics.ARCHIVED, Topics.BACKUPS] as const) {
      const queue = this.queues[topic];
      if (queue.length === 0) continue;
      const batch = queue.slice(0, EVENT_BATCH);
      await bus.publish(topic, keyed(this.partition, batch), { signal });
      queue.splice(0, batch.length);
      moved = true;
    }
    return moved;
  }
}

/** Bus values keyed by the partition (the bus takes plain records; the event types are interfaces). */
export function keyed(
  partition: string,
  values: ReadonlyArray<WalEntryEvent | WalArchivedEvent | WalBackupEvent>,
): PublishEvent[] {
  return values.map((value) => ({ key: partition, value: { ...value } }));
}
