/** In-memory EventBus fakes for the manifest projector's tests. */
import type {
  ConsumedEvent,
  EventBus,
  PublishEvent,
  SubscribeOptions,
  Subscription,
} from '../../../../contract/events/event-bus.js';

/** An in-memory EventBus: enough of one for a replay. */
export class ArrayBus implements EventBus {
  readonly url = 'memory://bus';
  readonly topics = new Map<string, ConsumedEvent[]>();
  topicName(topic: string): string {
    return `wal.${topic}`;
  }
  async publish(topic: string, events: readonly PublishEvent[]): Promise<void> {
    const list = this.topics.get(topic) ?? [];
    for (const e of events) {
      list.push({
        topic: this.topicName(topic),
        key: e.key,
        value: e.value,
        partition: 0,
        offset: String(list.length),
        timestamp: new Date(),
      });
    }
    this.topics.set(topic, list);
  }
  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    let stopped = false;
    const events = this.topics.get(options.topic) ?? [];
    const run = (async () => {
      for (let i = 0; i < events.length && !stopped; i += 2) {
        await new Promise((r) => setTimeout(r, 5));
        await options.handler(events.slice(i, i + 2));
      }
    })();
    return {
      stop: async () => {
        stopped = true;
        await run;
      },
    };
  }
  async checkConnection(): Promise<void> {}
  async close(): Promise<void> {}
}

/** A bus whose test hands each topic's handler a batch when it says so (as Kafka delivers fetches). */
export class HandBus implements EventBus {
  readonly url = 'memory://hand';
  private readonly handlers = new Map<string, SubscribeOptions['handler']>();
  private offset = 0;
  topicName(topic: string): string {
    return `wal.${topic}`;
  }
  async publish(_topic: string, _events: readonly PublishEvent[]): Promise<void> {}
  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    this.handlers.set(options.topic, options.handler);
    return { stop: async () => void this.handlers.delete(options.topic) };
  }
  deliver(topic: string, values: Array<Record<string, unknown>>): Promise<void> {
    const batch: ConsumedEvent[] = values.map((value) => ({
      topic: this.topicName(topic),
      key: String(value.partition),
      value,
      partition: 0,
      offset: String(this.offset++),
      timestamp: new Date(),
    }));
    return this.handlers.get(topic)!(batch);
  }
  async checkConnection(): Promise<void> {}
  async close(): Promise<void> {}
}
