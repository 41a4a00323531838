import {
  Kafka,
  logLevel as KafkaLogLevel,
  Partitioners,
  type Admin,
  type Consumer,
  type EachBatchPayload,
  type LogEntry,
  type Producer,
} from 'kafkajs';
import { ErrorCodes, WalArchiverError, isWalArchiverError, throwIfAborted } from '../errors.js';
import { maskUrl } from '../url.js';
import { sleep } from '../retry.js';
import { applyKafkajsIdleFix } from './kafkajs-idle-fix.js';

applyKafkajsIdleFix();
import type { ConsumedEvent, EventBus, PublishEvent, SubscribeOptions, Subscription } from './event-bus.js';
import type { Logger, LogLevel } from '../log.js';
import { defaultBusLogger } from './log.js';
import { busParams, checkParams, invalid, type BusOptions, type PublishOptions } from './params.js';
import { busTuning, checkCall, checkSubscribe, encodeEvents, fullTopicName } from './params.js';

/**
 * The Kafka event bus: `kafka://host:port[,host:port]?topicPrefix=wal[&partitions=4][&replicationFactor=1][&clientId=…]`.
 *
 * - Opening does not connect: the archiver starts while Kafka is down, and
 *   publish fails with a retryable UNAVAILABLE after a bounded time, so the
 *   caller can queue and try again.
 * - The producer is idempotent (acks all, one request in flight), so kafkajs's
 *   own retries never duplicate or reorder a key's events.
 * - Topics are created when first used (admin, waiting for leaders) with the
 *   URL's partition count; existing topics are used as they are.
 * - A subscription is a kafkajs consumer in the group, with `eachBatch`; the
 *   offsets of a batch are committed after the handler resolved. A failing
 *   handler is retried (with heartbeats) and never skipped; a failing broker
 *   is reported to onError and the consumer is rebuilt with backoff.
 * - kafkajs's logs go to the bus logger. Everything kafkajs reports as an
 *   error also reaches the caller (a thrown error or onError), so it is logged
 *   as a warning: by default the bus is silent.
 */

/** The Kafka bus's tuning, with its defaults (each can be set in KafkaBusOptions). */
export const KAFKA_TUNING = {
  /** Per-connection timeout. */
  connectionTimeoutMs: 3_000,
  /** Per-request timeout. */
  requestTimeoutMs: 5_000,
  /** The longest one publish call may take before failing with UNAVAILABLE. */
  publishTimeoutMs: 12_000,
  /** Consumer group session timeout. */
  sessionTimeoutMs: 10_000,
};
export type KafkaBusOptions = BusOptions<typeof KAFKA_TUNING>;

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10_000;

const KAFKA_PARAMS = ['topicPrefix', 'partitions', 'replicationFactor', 'clientId'] as const;

export interface KafkaBusConfig {
  brokers: string[];
  topicPrefix: string;
  partitions: number;
  replicationFactor: number;
  clientId: string;
}

/** Parses a Kafka bus URL; exported for the URL unit tests. */
export function parseKafkaUrl(raw: string): KafkaBusConfig {
  if (typeof raw !== 'string' || raw.trim() === '') throw invalid('event bus URL is empty');
  const m = /^kafka:\/\/([^/?#]*)(\/?)(\?[^#]*)?$/i.exec(raw);
  if (!m)
    throw invalid('event bus URL is malformed (expected kafka://host:port[,host:port]?topicPrefix=…)', raw);
  const authority = m[1] ?? '';
  if (authority.includes('@')) throw invalid('event bus URL must not carry credentials', raw);
  const brokers = authority.split(',').map((b) => b.trim());
  if (authority === '' || brokers.some((b) => b === '')) throw invalid('event bus URL names no broker', raw);
  for (const b of brokers) {
    const hp = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$/.exec(b);
    const port = hp ? Number(hp[2]) : 0;
    if (!hp || port < 1 || port > 65535)
      throw invalid(`event bus URL has a bad broker address "${b}" (use host:port)`, raw);
  }
  const url = new URL(`kafka://placeholder${m[3] ?? ''}`);
  checkParams(url, KAFKA_PARAMS, raw);
  const rf = url.searchParams.get('replicationFactor');
  if (rf !== null && (!/^[0-9]+$/.test(rf) || Number(rf) < 1 || Number(rf) > 32)) {
    throw invalid(`event bus URL parameter replicationFactor=${rf} must be an integer from 1 to 32`, raw);
  }
  const clientId = url.searchParams.get('clientId') ?? 'wal-archiver';
  if (!/^[A-Za-z0-9._-]{1,100}$/.test(clientId)) {
    throw invalid(
      `event bus URL parameter clientId=${clientId} must be 1-100 characters of [A-Za-z0-9._-]`,
      raw,
    );
  }
  return {
    brokers,
    ...busParams(url, raw),
    replicationFactor: rf === null ? 1 : Number(rf),
    clientId,
  };
}

const KAFKA_TO_LEVEL: Record<number, Exclude<LogLevel, 'silent'>> = {
  [KafkaLogLevel.ERROR]: 'warn',
  [KafkaLogLevel.WARN]: 'warn',
  [KafkaLogLevel.INFO]: 'debug',
  [KafkaLogLevel.DEBUG]: 'debug',
};

function errorMessage(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
}

/**
 * Connects a kafkajs client. When that fails, `forget` drops the cached
 * promise (so the next call starts afresh), the client is disconnected and the
 * error thrown.
 */
async function connectOrForget<T extends { connect(): Promise<void>; disconnect(): Promise<void> }>(
  client: T,
  forget: () => void,
): Promise<T> {
  try {
    await client.connect();
  } catch (err) {
    forget();
    await client.disconnect().catch(() => undefined);
    throw err;
  }
  return client;
}

export class KafkaEventBus implements EventBus {
  readonly url: string;
  readonly config: KafkaBusConfig;
  private readonly kafka: Kafka;
  private readonly log: Logger;
  private readonly publishTimeoutMs: number;
  private readonly sessionTimeoutMs: number;
  private producer?: Promise<Producer>;
  private admin?: Promise<Admin>;
  private readonly topics = new Map<string, Promise<void>>();
  private readonly subscriptions = new Set<KafkaSubscription>();
  private publishQueue: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(raw: string, options: KafkaBusOptions = {}) {
    this.config = parseKafkaUrl(raw);
    this.url = maskUrl(raw);
    this.log = options.logger ?? defaultBusLogger();
    const tuning = busTuning(KAFKA_TUNING, options);
    this.publishTimeoutMs = tuning.publishTimeoutMs;
    this.sessionTimeoutMs = tuning.sessionTimeoutMs;
    const log = this.log;
    this.kafka = new Kafka({
      clientId: this.config.clientId,
      brokers: this.config.brokers,
      connectionTimeout: tuning.connectionTimeoutMs,
      requestTimeout: tuning.requestTimeoutMs,
      retry: { retries: 3, initialRetryTime: 300, maxRetryTime: 2_000 },
      logLevel: KafkaLogLevel.INFO,
      logCreator:
        () =>
        ({ level, log: entry }: LogEntry) => {
          const {
            message,
            timestamp: _t,
            logger: _l,
            ...fields
          } = entry as LogEntry['log'] & { logger?: unknown };
          log[KAFKA_TO_LEVEL[level] ?? 'debug'](`kafkajs: ${message}`, fields);
        },
    });
  }

  topicName(topic: string): string {
    return fullTopicName(this.config.topicPrefix, topic);
  }

  /** Fails with UNAVAILABLE unless a broker answers (for the CLI's start-up check). */
  async checkConnection(): Promise<void> {
    await this.withTimeout('connect to', async () => {
      const admin = await this.getAdmin();
      await admin.listTopics();
    });
  }

  private unavailable(action: string, cause: unknown): WalArchiverError {
    if (isWalArchiverError(cause)) return cause;
    return new WalArchiverError(
      ErrorCodes.UNAVAILABLE,
      `event bus ${this.url}: cannot ${action} Kafka: ${errorMessage(cause)}`,
      { cause, details: { url: this.url } },
    );
  }

  /** Runs `fn`, failing with UNAVAILABLE once the publish timeout passes (the work left behind is abandoned). */
  private async withTimeout<T>(action: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const work = fn();
    work.catch(() => undefined);
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`no answer within ${Math.round(this.publishTimeoutMs / 1000)} s`)),
        this.publishTimeoutMs,
      );
    });
    const aborted = new Promise<never>((_, reject) => {
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
    aborted.catch(() => undefined);
    try {
      return await Promise.race([work, timeout, aborted]);
    } catch (cause) {
      throwIfAborted(signal);
      throw this.unavailable(action, cause);
    } finally {
      clearTimeout(timer);
    }
  }

  private getAdmin(): Promise<Admin> {
    this.admin ??= connectOrForget(
      this.kafka.admin({ retry: { retries: 3, initialRetryTime: 300, maxRetryTime: 2_000 } }),
      () => (this.admin = undefined),
    );
    return this.admin;
  }

  private getProducer(): Promise<Producer> {
    this.producer ??= connectOrForget(
      this.kafka.producer({
        idempotent: true,
        maxInFlightRequests: 1,
        allowAutoTopicCreation: false,
        createPartitioner: Partitioners.DefaultPartitioner,
        retry: { retries: 3, initialRetryTime: 300, maxRetryTime: 2_000 },
      }),
      () => (this.producer = undefined),
    );
    return this.producer;
  }

  /** Drops the producer after a failure, so the next publish reconnects from scratch. */
  private async resetProducer(): Promise<void> {
    const p = this.producer;
    this.producer = undefined;
    if (p) await p.then((producer) => producer.disconnect()).catch(() => undefined);
  }

  /** Creates the topic if it does not exist (once per bus and topic, retried after a failure). */
  ensureTopic(name: string): Promise<void> {
    let p = this.topics.get(name);
    if (!p) {
      p = (async () => {
        const admin = await this.getAdmin();
        const existing = await admin.listTopics();
        if (existing.includes(name)) return;
        try {
          await admin.createTopics({
            waitForLeaders: true,
            topics: [
              {
                topic: name,
                numPartitions: this.config.partitions,
                replicationFactor: this.config.replicationFactor,
              },
            ],
          });
        } catch (err) {
          // A concurrent creator won: the topic exists, which is all we need.
          const nested = (err as { errors?: { type?: string }[] }).errors ?? [];
          const all = [err as { type?: string }, ...nested];
          if (!all.some((e) => e?.type === 'TOPIC_ALREADY_EXISTS')) throw err;
        }
      })();
      this.topics.set(name, p);
      p.catch(() => this.topics.delete(name));
    }
    return p;
  }

  async publish(topic: string, events: readonly PublishEvent[], options: PublishOptions = {}): Promise<void> {
    checkCall(this.closed, this.url, options.signal);
    const name = this.topicName(topic);
    const messages = encodeEvents(events);
    if (messages.length === 0) return;
    // One send at a time: calls from this publisher stay in order per key.
    const run = this.publishQueue.then(() =>
      this.withTimeout(
        'publish to',
        async () => {
          try {
            await this.ensureTopic(name);
            const producer = await this.getProducer();
            await producer.send({ topic: name, acks: -1, messages });
          } catch (err) {
            await this.resetProducer();
            throw err;
          }
        },
        options.signal,
      ).catch(async (err: unknown) => {
        // A send abandoned by the timeout may still be in flight: start the next one on a fresh producer.
        await this.resetProducer();
        throw err;
      }),
    );
    this.publishQueue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    checkCall(this.closed, this.url);
    const group = checkSubscribe(options);
    const sub = new KafkaSubscription(this, this.kafka, this.topicName(options.topic), group, options, {
      log: this.log,
      sessionTimeoutMs: this.sessionTimeoutMs,
      unavailable: (action, cause) => this.unavailable(action, cause),
    });
    this.subscriptions.add(sub);
    sub.done.finally(() => this.subscriptions.delete(sub)).catch(() => undefined);
    await sub.start();
    return sub;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.subscriptions].map((s) => s.stop()));
    await this.publishQueue;
    const producer = this.producer;
    const admin = this.admin;
    this.producer = undefined;
    this.admin = undefined;
    await producer?.then((p) => p.disconnect()).catch(() => undefined);
    await admin?.then((a) => a.disconnect()).catch(() => undefined);
  }
}

interface SubscriptionContext {
  log: Logger;
  sessionTimeoutMs: number;
  unavailable: (action: string, cause: unknown) => WalArchiverError;
}

class KafkaSubscription implements Subscription {
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  private consumer?: Consumer;
  private stopping = false;
  private readonly stopController = new AbortController();
  private stopPromise?: Promise<void>;
  private loop?: Promise<void>;

  constructor(
    private readonly bus: KafkaEventBus,
    private readonly kafka: Kafka,
    private readonly topic: string,
    private readonly group: string,
    private readonly options: SubscribeOptions,
    private readonly ctx: SubscriptionContext,
  ) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  /** Resolves once the consumer joined its group, or after the first failure (retrying goes on in the background). */
  async start(): Promise<void> {
    let firstResult!: () => void;
    const first = new Promise<void>((resolve) => (firstResult = resolve));
    this.loop = this.supervise(firstResult).finally(() => this.resolveDone());
    await first;
  }

  stop(): Promise<void> {
    this.stopPromise ??= (async () => {
      this.stopping = true;
      this.stopController.abort();
      await this.loop;
    })();
    return this.stopPromise;
  }

  private report(err: unknown): void {
    this.ctx.log.debug('event subscription failed; retrying', {
      topic: this.topic,
      group: this.group,
      error: errorMessage(err),
    });
    try {
      this.options.onError?.(err);
    } catch {
      // An onError that throws must not stop the subscription.
    }
  }

  /** Builds a consumer, runs it until it crashes for good, reports, backs off, and builds another. */
  private async supervise(firstResult: () => void): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      const crashed = new Promise<unknown>((resolve) => {
        this.runConsumer(resolve, () => {
          failures = 0;
          firstResult();
        }).catch(resolve);
      });
      const stopped = new Promise<void>((resolve) =>
        this.stopController.signal.addEventListener('abort', () => resolve(), { once: true }),
      );
      const outcome = await Promise.race([crashed, stopped.then(() => 'stopped' as const)]);
      const consumer = this.consumer;
      this.consumer = undefined;
      await consumer?.disconnect().catch(() => undefined);
      if (outcome === 'stopped' || this.stopping) break;
      failures++;
      this.report(this.ctx.unavailable('consume from', outcome));
      firstResult();
      await sleep(
        Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(failures - 1, 10)),
        this.stopController.signal,
      ).catch(() => undefined); // stopping: the loop sees it
    }
    firstResult();
  }

  private async runConsumer(crash: (err: unknown) => void, joined: () => void): Promise<void> {
    await this.bus.ensureTopic(this.topic);
    const consumer = this.kafka.consumer({
      groupId: this.group,
      sessionTimeout: this.ctx.sessionTimeoutMs,
      rebalanceTimeout: Math.max(this.ctx.sessionTimeoutMs, 30_000),
      heartbeatInterval: Math.max(500, Math.floor(this.ctx.sessionTimeoutMs / 5)),
      allowAutoTopicCreation: false,
      maxWaitTimeInMs: 500,
      retry: { retries: 5, initialRetryTime: 300, maxRetryTime: 5_000, restartOnFailure: async () => false },
    });
    this.consumer = consumer;
    consumer.on(consumer.events.GROUP_JOIN, () => joined());
    consumer.on(consumer.events.CRASH, (e) => crash(e.payload.error));
    if (this.stopping) return;
    await consumer.connect();
    await consumer.subscribe({ topics: [this.topic], fromBeginning: this.options.fromBeginning ?? false });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 1,
      eachBatch: (payload) => this.eachBatch(consumer, payload),
    });
  }

  private async eachBatch(consumer: Consumer, payload: EachBatchPayload): Promise<void> {
    const { batch, heartbeat, isRunning, isStale } = payload;
    if (batch.messages.length === 0) return;
    const events: ConsumedEvent[] = [];
    for (const m of batch.messages) {
      let value: Record<string, unknown>;
      try {
        value = JSON.parse(m.value?.toString('utf8') ?? 'null') as Record<string, unknown>;
      } catch {
        value = null as unknown as Record<string, unknown>;
      }
      if (value === null || typeof value !== 'object') {
        // Not one of our events: report it and leave the position where it is (never skip silently).
        throw new WalArchiverError(
          ErrorCodes.CORRUPT,
          `event at ${batch.topic}[${batch.partition}] offset ${m.offset} is not a JSON object`,
          { retryable: false, details: { topic: batch.topic, partition: batch.partition, offset: m.offset } },
        );
      }
      events.push({
        topic: batch.topic,
        key: m.key?.toString('utf8') ?? '',
        value,
        partition: batch.partition,
        offset: m.offset,
        timestamp: new Date(Number(m.timestamp)),
      });
    }
    for (let failures = 0; ; failures++) {
      if (this.stopping || !isRunning() || isStale()) return;
      try {
        await this.options.handler(events);
        break;
      } catch (err) {
        this.report(err);
        const until = Date.now() + Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(failures, 10));
        while (Date.now() < until && !this.stopping) {
          await heartbeat();
          await sleep(Math.min(500, until - Date.now()), this.stopController.signal).catch(() => undefined);
        }
      }
    }
    const last = batch.messages[batch.messages.length - 1]!;
    const next = (BigInt(last.offset) + 1n).toString();
    payload.resolveOffset(last.offset);
    await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: next }]);
  }
}
