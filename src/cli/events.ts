import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { describeError } from '../../contract/errors.js';
import { Topics, type ConsumedEvent, type Subscription } from '../../contract/events/event-bus.js';
import { formatBytes } from '../manifest/format.js';
import { openBusFlag, parseCommandFlags } from './shared-flags.js';
import {
  parseTopicEvent,
  type TopicEvent,
  type WalArchivedEvent,
  type WalBackupEvent,
  type WalEntryEvent,
  type WalLeadershipEvent,
} from '../../contract/events/schemas.js';
import { UsageError, type ParsedFlags } from '../../contract/cli/flags.js';
import { EXIT_FAILURE, EXIT_OK, type Command, type CommandContext } from '../../contract/cli/runner.js';

/**
 * `wal-archiver events`: follows a topic and prints its events, one a line.
 *
 * It is the reference consumer of Contract 3: it joins a fresh consumer
 * group of its own per run (`wal-archiver-events-<host>-<time>-<random>`, one
 * group per topic), so it never takes events away from the sidecars' groups,
 * and it drops an `entries` event whose (partition, LSN) it has shown
 * already, the deduplication every consumer of an at-least-once bus needs.
 */

const NAME = 'wal-archiver events';

export const EVENT_TOPICS = [Topics.ENTRIES, Topics.ARCHIVED, Topics.BACKUPS, Topics.LEADERSHIP] as const;
export const TOPIC_CHOICES = [...EVENT_TOPICS, 'all'] as const;
/** Consumer group names of this command start with this, so leftover groups are easy to find. */
export const EVENTS_GROUP_PREFIX = 'wal-archiver-events';
/** Failures of the bus are reported at most this often (the bus retries on its own). */
const ERROR_REPORT_INTERVAL_MS = 10_000;

const flags = {
  events: {
    type: 'string',
    help: 'the event bus (kafka://host:port?topicPrefix=wal or file:///path)',
    value: 'URL',
    required: true,
    env: 'WAL_ARCHIVER_EVENTS',
  },
  topic: {
    type: 'string',
    help: `topic to follow: ${TOPIC_CHOICES.join(', ')}`,
    value: 'TOPIC',
    default: Topics.ENTRIES,
  },
  'from-beginning': {
    type: 'bool',
    help: 'start at the oldest event still on the topic (default: only events published from now on)',
    default: false,
  },
  partition: {
    type: 'string',
    help: 'show only the events of this partition',
    value: 'ID',
  },
  json: {
    type: 'bool',
    help: 'print one JSON object a line: {topic, key, bus_partition, offset, timestamp, value}',
    default: false,
  },
  count: {
    type: 'int',
    help: 'exit after printing N events (default: follow until interrupted)',
    value: 'N',
    min: 1,
  },
  duplicates: {
    type: 'bool',
    help: 'also print entries events redelivered by the bus (not deduplicated by partition and LSN)',
    default: false,
  },
} as const;

type Flags = ParsedFlags<typeof flags>;

const help = {
  usage:
    'wal-archiver events --events URL [--topic entries|archived|backups|leadership|all] [--from-beginning]\n' +
    '       [--partition ID] [--json] [--count N]',
  description:
    'Follows a topic of the event bus and prints each event on one line: the time, topic, partition,\n' +
    'LSN or LSN range and the fields that matter (refs of an entry, key and size of a segment or base\n' +
    'backup, leader and term). --json prints the events as JSON lines instead. Runs until interrupted,\n' +
    'or until --count events were printed.\n' +
    '\n' +
    'Each run joins a fresh consumer group of its own (named wal-archiver-events-<host>-<time>-<id>),\n' +
    "so it never takes events away from the sidecars' groups; without --from-beginning it starts at\n" +
    'the end of the topic.\n' +
    '\n' +
    'Delivery is at least once, in LSN order per partition: after a restart or a rebalance the bus may\n' +
    'deliver an event again. A consumer deduplicates by (partition, LSN): it remembers the highest LSN\n' +
    'it has handled per partition and drops an entries event at or below it. This command does so\n' +
    '(--duplicates shows every delivery). Events of the other topics are idempotent facts (a segment\n' +
    'or base backup key, a term) and are shown as delivered. An event that does not match its schema\n' +
    'is shown as malformed, with its bus partition and offset.',
};

/** Parses and checks the flags; exported for the unit tests. */
export function parseEventsFlags(argv: readonly string[], env: NodeJS.ProcessEnv): Flags {
  const f = parseCommandFlags(argv, flags, help, env);
  if (!(TOPIC_CHOICES as readonly string[]).includes(f.topic)) {
    throw new UsageError(`flag --topic: "${f.topic}" is not one of ${TOPIC_CHOICES.join(', ')}`);
  }
  return f;
}

/** A fresh consumer group name stem for one run. */
export function eventsGroup(): string {
  const host =
    os
      .hostname()
      .replace(/[^A-Za-z0-9._-]/g, '-')
      .slice(0, 40) || 'host';
  return `${EVENTS_GROUP_PREFIX}-${host}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
}

/** The logical topic of a full topic name (`wal.entries` → `entries`). */
export function logicalTopic(topic: string): string {
  return topic.slice(topic.lastIndexOf('.') + 1);
}

/** One event as the command sees it: parsed, or malformed with the reason. */
export type ShownEvent =
  | { consumed: ConsumedEvent; parsed: TopicEvent; error?: undefined }
  | { consumed: ConsumedEvent; parsed?: undefined; error: string };

export function classifyEvent(consumed: ConsumedEvent): ShownEvent {
  try {
    return { consumed, parsed: parseTopicEvent(logicalTopic(consumed.topic), consumed.value) };
  } catch (err) {
    return { consumed, error: describeError(err) };
  }
}

/** The partition an event belongs to: its value's, else (malformed) its key. */
export function partitionOf(e: ShownEvent): string {
  if (e.parsed) return e.parsed.value.partition;
  const p = e.consumed.value?.partition;
  return typeof p === 'string' ? p : e.consumed.key;
}

function shortOid(oid: string): string {
  return oid === '' ? '(symbolic)' : /^0+$/.test(oid) ? '(deleted)' : oid.slice(0, 12);
}

function entryLine(v: WalEntryEvent): string {
  const refs = v.refs
    .slice(0, 3)
    .map((r) => `${r.name}=${r.new_target !== undefined ? `→${r.new_target}` : shortOid(r.new_oid)}`);
  if (v.refs.length > 3) refs.push(`(+${v.refs.length - 3} more)`);
  const refText = refs.length > 0 ? ` refs ${refs.join(' ')}` : '';
  return `lsn ${v.lsn} term ${v.term} node ${v.node} ${formatBytes(v.bytes)}${refText}`;
}

function archivedLine(v: WalArchivedEvent): string {
  return (
    `lsn ${v.first_lsn}-${v.last_lsn} (${v.entries} ${v.entries === 1 ? 'entry' : 'entries'}) ` +
    `${formatBytes(v.bytes)} term ${v.term} node ${v.node} committed ${v.committed_lsn} key ${v.key}`
  );
}

function backupLine(v: WalBackupEvent): string {
  return (
    `lsn ${v.lsn} ${formatBytes(v.bytes)} trigger ${v.trigger} term ${v.term} node ${v.node} ` +
    `sha256 ${v.sha256.slice(0, 12)} key ${v.key}`
  );
}

function leadershipLine(v: WalLeadershipEvent): string {
  const leader = v.leader === null ? 'no leader' : `leader node ${v.leader}`;
  return `${leader} term ${v.term} (node ${v.node} is ${v.role})`;
}

/** When the event happened, by its own clock, else when the bus stored it. */
function eventTime(e: ShownEvent): string {
  const p = e.parsed;
  if (p) {
    switch (p.topic) {
      case Topics.ENTRIES:
        return p.value.committed_at;
      case Topics.ARCHIVED:
        return p.value.archived_at;
      case Topics.BACKUPS:
        return p.value.finished_at;
      case Topics.LEADERSHIP:
        return p.value.at;
    }
  }
  const t = e.consumed.timestamp;
  return Number.isNaN(t.getTime()) ? '-' : t.toISOString();
}

const TOPIC_WIDTH = Math.max(...EVENT_TOPICS.map((t) => t.length));

/** The human-readable line of one event (no newline). */
export function formatEventLine(e: ShownEvent): string {
  const topic = logicalTopic(e.consumed.topic).padEnd(TOPIC_WIDTH);
  const head = `${eventTime(e)} ${topic} partition ${partitionOf(e)}`;
  const p = e.parsed;
  if (!p) {
    return `${head} MALFORMED at bus partition ${e.consumed.partition} offset ${e.consumed.offset}: ${e.error}`;
  }
  switch (p.topic) {
    case Topics.ENTRIES:
      return `${head} ${entryLine(p.value)}`;
    case Topics.ARCHIVED:
      return `${head} ${archivedLine(p.value)}`;
    case Topics.BACKUPS:
      return `${head} ${backupLine(p.value)}`;
    case Topics.LEADERSHIP:
      return `${head} ${leadershipLine(p.value)}`;
  }
}

/** The JSON line of one event (no newline): the event as delivered, plus the reason when it is malformed. */
export function formatEventJson(e: ShownEvent): string {
  const out: Record<string, unknown> = {
    topic: e.consumed.topic,
    key: e.consumed.key,
    bus_partition: e.consumed.partition,
    offset: e.consumed.offset,
    timestamp: Number.isNaN(e.consumed.timestamp.getTime()) ? null : e.consumed.timestamp.toISOString(),
    value: e.consumed.value,
  };
  if (e.error !== undefined) out.malformed = e.error;
  return JSON.stringify(out);
}

/** The reference deduplication: per partition, the highest entries LSN handled so far. */
export class EntryDeduplicator {
  private readonly highest = new Map<string, number>();

  /** Whether to handle the event: false for an entries event at or below its partition's highest LSN. */
  accept(e: ShownEvent): boolean {
    if (e.parsed?.topic !== Topics.ENTRIES) return true;
    const { partition, lsn } = e.parsed.value;
    const seen = this.highest.get(partition);
    if (seen !== undefined && lsn <= seen) return false;
    this.highest.set(partition, lsn);
    return true;
  }
}

function write(stream: NodeJS.WritableStream, text: string): Promise<void> | undefined {
  if (stream.write(text)) return undefined;
  // Backpressure: hold the handler (and so the bus) until the reader catches up.
  return new Promise((resolve) => stream.once('drain', () => resolve()));
}

async function follow(f: Flags, ctx: CommandContext): Promise<number> {
  const bus = await openBusFlag('events', f.events);
  const topics = f.topic === 'all' ? [...EVENT_TOPICS] : [f.topic];
  const group = eventsGroup();
  const dedupe = new EntryDeduplicator();
  const limit = f.count;
  let printed = 0;
  let finished!: () => void;
  const done = new Promise<void>((resolve) => (finished = resolve));
  let lastErrorReport = -Infinity;
  let suppressedErrors = 0;
  const subscriptions: Subscription[] = [];

  const handler = async (batch: ConsumedEvent[]): Promise<void> => {
    let out = '';
    for (const consumed of batch) {
      if (limit !== undefined && printed >= limit) break;
      const e = classifyEvent(consumed);
      if (f.partition !== undefined && partitionOf(e) !== f.partition) continue;
      if (!f.duplicates && !dedupe.accept(e)) continue;
      out += `${f.json ? formatEventJson(e) : formatEventLine(e)}\n`;
      printed++;
    }
    if (out !== '') await write(ctx.stdout, out);
    if (limit !== undefined && printed >= limit) finished();
  };
  const onError = (err: unknown): void => {
    const now = Date.now();
    if (now - lastErrorReport < ERROR_REPORT_INTERVAL_MS) {
      suppressedErrors++;
      return;
    }
    const more = suppressedErrors > 0 ? ` (${suppressedErrors} more since the last report)` : '';
    lastErrorReport = now;
    suppressedErrors = 0;
    ctx.stderr.write(`${NAME}: ${describeError(err)}; retrying${more}\n`);
  };

  const onAbort = () => finished();
  if (ctx.signal.aborted) finished();
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  try {
    for (const topic of topics) {
      if (ctx.signal.aborted) break;
      subscriptions.push(
        await bus.subscribe({
          topic,
          group: `${group}.${topic}`,
          fromBeginning: f['from-beginning'],
          handler,
          onError,
        }),
      );
    }
    if (!ctx.signal.aborted) {
      const names = topics.map((t) => bus.topicName(t)).join(', ');
      ctx.stderr.write(
        `${NAME}: following ${names} on ${bus.url} ${f['from-beginning'] ? 'from the beginning' : 'from now on'} ` +
          `(consumer group ${group})${limit === undefined ? '; Ctrl-C stops' : ''}\n`,
      );
      await done;
    }
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    await Promise.allSettled(subscriptions.map((s) => s.stop()));
    await bus.close().catch(() => undefined);
  }
  if (limit !== undefined && printed < limit) {
    ctx.stderr.write(`${NAME}: stopped after ${printed} of ${limit} events\n`);
    return EXIT_FAILURE;
  }
  return EXIT_OK;
}

export const eventsCommand: Command = {
  summary: 'follow a topic of the event bus and print its events',
  async run(argv, ctx) {
    const f = parseEventsFlags(argv, ctx.env);
    return follow(f, ctx);
  },
};
