/**
 * The event bus: keyed JSON events on named topics.
 *
 * Topic names given to the interface are logical (`entries`, `archived`,
 * `backups`, `leadership`); the implementation prefixes them with the URL's
 * `topicPrefix` (default `wal`), giving `wal.entries` etc.
 *
 * Guarantees: events with the same key are delivered in the order they were
 * published; delivery is at least once (a consumer that restarts may see
 * events again after its last committed position, never skips one).
 *
 * Implementations: `kafka://host:port[,host:port]?topicPrefix=wal`
 * (kafka-bus.ts) and `file:///path` (folder-bus.ts). Both pass
 * test/integration/event-bus.conformance.ts.
 */
export interface EventBus {
  /** The bus URL with credentials masked: safe to print and log. */
  readonly url: string;

  /** The full topic name for a logical topic (`entries` → `wal.entries`). */
  topicName(topic: string): string;

  /**
   * Publishes events, durably: when the promise resolves every event is
   * stored. Order is preserved for events with the same key, within a call
   * and across calls from one publisher.
   */
  publish(topic: string, events: readonly PublishEvent[], options?: { signal?: AbortSignal }): Promise<void>;

  /**
   * Starts consuming a topic as a member of `group`. Members of one group
   * share the topic's partitions; each event goes to one member. The handler
   * gets batches in order per key; the position is committed after the
   * handler resolves, so a restarted consumer resumes after the last batch it
   * finished (at least once). A new group starts at the beginning when
   * `fromBeginning` is true, else at the end.
   */
  subscribe(options: SubscribeOptions): Promise<Subscription>;

  /**
   * Fails with UNAVAILABLE unless the bus answers now: a broker responds, or
   * the folder is there (or can be made) and is writable. Opening a bus does
   * not connect, so a command that needs the bus up checks with this first.
   */
  checkConnection(): Promise<void>;

  /** Flushes, then releases connections. */
  close(): Promise<void>;
}

export interface PublishEvent {
  /** Partition key: events with one key stay in order. We use the partition ID. */
  key: string;
  /** A JSON-serialisable object; it should carry a `schema` version field. */
  value: Record<string, unknown>;
}

export interface ConsumedEvent {
  topic: string;
  key: string;
  value: Record<string, unknown>;
  /** The bus partition the event was stored in. */
  partition: number;
  /** Position within the bus partition (decimal string, as Kafka offsets). */
  offset: string;
  /** When the bus stored it. */
  timestamp: Date;
}

export interface SubscribeOptions {
  topic: string;
  group: string;
  fromBeginning?: boolean;
  handler: (events: ConsumedEvent[]) => Promise<void>;
  /** Called when the handler or the bus fails; the subscription retries after it. */
  onError?: (err: unknown) => void;
}

export interface Subscription {
  /** Stops receiving; resolves once the handler in flight has finished and its position is committed. */
  stop(): Promise<void>;
}

/** Logical topic names (Contract 3). */
export const Topics = {
  ENTRIES: 'entries',
  ARCHIVED: 'archived',
  BACKUPS: 'backups',
  LEADERSHIP: 'leadership',
} as const;

export const DEFAULT_TOPIC_PREFIX = 'wal';
