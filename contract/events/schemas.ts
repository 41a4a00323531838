/**
 * The event values of Contract 3, `schema: 1`: their TypeScript types and
 * validating parsers.
 *
 * JSON field names are snake_case. Parsers return a normalised copy holding
 * only the known fields (timestamps as `Date#toISOString()`, so comparing two
 * of them as strings compares the times) and throw a non-retryable `CORRUPT`
 * error naming the field for anything malformed: a consumer skips and counts
 * such an event, it never crashes on one.
 */

import { ErrorCodes, WalArchiverError } from '../errors.js';
import { isPartitionId } from '../partition-id.js';
import { Topics } from './event-bus.js';

/** The schema version every event value carries. */
export const EVENT_SCHEMA_VERSION = 1;

/** A ref change carried by a committed entry. */
export interface RefChange {
  name: string;
  /** The new object ID in hex, SHA-1 or SHA-256 (the zero OID for a deletion; empty for a symbolic ref). */
  new_oid: string;
  /** For a symbolic ref: the ref it now points to. */
  new_target?: string;
}

/** `wal.entries`: one committed WAL entry. */
export interface WalEntryEvent {
  schema: 1;
  partition: string;
  lsn: number;
  term: number;
  node: number;
  bytes: number;
  refs: RefChange[];
  committed_at: string;
}

/** `wal.archived`: one uploaded segment. */
export interface WalArchivedEvent {
  schema: 1;
  partition: string;
  first_lsn: number;
  last_lsn: number;
  key: string;
  /** Size of the compressed object. */
  bytes: number;
  /** Size of the entry files before packing and compression. */
  raw_bytes: number;
  entries: number;
  sha256: string;
  term: number;
  node: number;
  /** The partition's commit LSN when the segment was archived (for lag). */
  committed_lsn: number;
  first_committed_at: string;
  last_committed_at: string;
  archived_at: string;
  /** The archive timeline the segment belongs to; absent: timeline 1. */
  timeline?: number;
}

export const BACKUP_TRIGGERS = ['size', 'age', 'entries', 'manual', 'first', 'restore'] as const;
export type BackupTrigger = (typeof BACKUP_TRIGGERS)[number];

/** `wal.backups`: one uploaded base backup. */
export interface WalBackupEvent {
  schema: 1;
  partition: string;
  lsn: number;
  key: string;
  bytes: number;
  sha256: string;
  trigger: BackupTrigger;
  term: number;
  node: number;
  started_at: string;
  finished_at: string;
  /** The archive timeline the backup belongs to; absent: timeline 1. */
  timeline?: number;
}

/** `timeline` as events carry it: only for timelines after the first. */
function timelineField(timeline: number | undefined): { timeline?: number } {
  return timeline !== undefined && timeline !== 1 ? { timeline } : {};
}

/** A Raft member's role, as the Raft core names it (`storage-node/raft/types.ts`
 * `Role`). The storage node's status and leadership events use this type, so
 * what it publishes is what `parseWalLeadershipEvent` accepts.
 */
export const RAFT_ROLES = ['leader', 'follower', 'candidate', 'pre-candidate'] as const;
export type RaftRole = (typeof RAFT_ROLES)[number];

/** `wal.leadership`: a node's view of a partition's leadership changed. */
export interface WalLeadershipEvent {
  schema: 1;
  partition: string;
  /** The node that published the event. */
  node: number;
  /** The leader's node ID, or null when there is none (0 on the wire is read as null). */
  leader: number | null;
  term: number;
  role: RaftRole;
  at: string;
}

/**
 * The builders: the one place each topic's value is made, so what is
 * published has the type its parser returns, `schema` set, and its fields in
 * one order (the JSON on the wire), whatever object the fields came from.
 */

/** A `wal.entries` value. */
export function walEntryEvent(f: Omit<WalEntryEvent, 'schema'>): WalEntryEvent {
  return {
    schema: EVENT_SCHEMA_VERSION,
    partition: f.partition,
    lsn: f.lsn,
    term: f.term,
    node: f.node,
    bytes: f.bytes,
    refs: f.refs,
    committed_at: f.committed_at,
  };
}

/** A `wal.archived` value. */
export function walArchivedEvent(f: Omit<WalArchivedEvent, 'schema'>): WalArchivedEvent {
  return {
    schema: EVENT_SCHEMA_VERSION,
    partition: f.partition,
    first_lsn: f.first_lsn,
    last_lsn: f.last_lsn,
    key: f.key,
    bytes: f.bytes,
    raw_bytes: f.raw_bytes,
    entries: f.entries,
    sha256: f.sha256,
    term: f.term,
    node: f.node,
    committed_lsn: f.committed_lsn,
    first_committed_at: f.first_committed_at,
    last_committed_at: f.last_committed_at,
    archived_at: f.archived_at,
    ...timelineField(f.timeline),
  };
}

/** A `wal.backups` value. */
export function walBackupEvent(f: Omit<WalBackupEvent, 'schema'>): WalBackupEvent {
  return {
    schema: EVENT_SCHEMA_VERSION,
    partition: f.partition,
    lsn: f.lsn,
    key: f.key,
    bytes: f.bytes,
    sha256: f.sha256,
    trigger: f.trigger,
    term: f.term,
    node: f.node,
    started_at: f.started_at,
    finished_at: f.finished_at,
    ...timelineField(f.timeline),
  };
}

/** A parsed event together with its logical topic. */
export type TopicEvent =
  | { topic: typeof Topics.ENTRIES; value: WalEntryEvent }
  | { topic: typeof Topics.ARCHIVED; value: WalArchivedEvent }
  | { topic: typeof Topics.BACKUPS; value: WalBackupEvent }
  | { topic: typeof Topics.LEADERSHIP; value: WalLeadershipEvent };

const SHA256_HEX = /^[0-9a-f]{64}$/;
const OBJECT_ID = /^(?:[0-9a-f]{40}|[0-9a-f]{64})?$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;

/** The error every parser throws: CORRUPT, never retryable. */
export function corrupt(
  what: string,
  problem: string,
  details: Record<string, unknown> = {},
): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `${what}: ${problem}`, { retryable: false, details });
}

/** Normalises an ISO-8601 time with a zone to `toISOString()` form, or undefined if it is not one. */
export function normaliseTime(value: unknown): string | undefined {
  if (typeof value !== 'string' || !ISO_TIME.test(value)) return undefined;
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) return undefined;
  return new Date(ms).toISOString();
}

/**
 * Reads the fields of one JSON object, throwing CORRUPT (naming the field)
 * for a missing or malformed one. Shared by the event and manifest parsers.
 */
export class FieldReader {
  readonly obj: Record<string, unknown>;

  constructor(
    value: unknown,
    readonly what: string,
  ) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw corrupt(what, 'is not a JSON object');
    }
    this.obj = value as Record<string, unknown>;
  }

  fail(field: string, problem: string): WalArchiverError {
    const shown = JSON.stringify(this.obj[field]);
    return corrupt(
      this.what,
      `field "${field}" ${problem} (got ${shown === undefined ? 'nothing' : shown.slice(0, 80)})`,
      {
        field,
      },
    );
  }

  has(field: string): boolean {
    return this.obj[field] !== undefined && this.obj[field] !== null;
  }

  schema(version: number): void {
    const v = this.obj.schema;
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw this.fail('schema', 'must be an integer');
    if (v !== version) throw this.fail('schema', `is not a supported version (${version})`);
  }

  string(field: string): string {
    const v = this.obj[field];
    if (typeof v !== 'string' || v === '') throw this.fail(field, 'must be a non-empty string');
    return v;
  }

  /** An integer ≥ min (default 0). */
  int(field: string, min = 0): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      throw this.fail(field, `must be an integer ≥ ${min}`);
    }
    return v;
  }

  lsn(field: string): number {
    return this.int(field, 1);
  }

  term(field: string): number {
    return this.int(field, 0);
  }

  node(field: string): number {
    return this.int(field, 1);
  }

  partition(field = 'partition'): string {
    const v = this.obj[field];
    if (!isPartitionId(v)) throw this.fail(field, 'is not a partition ID ([A-Za-z0-9._-], 1-64 characters)');
    return v;
  }

  sha256(field = 'sha256'): string {
    const v = this.obj[field];
    if (typeof v !== 'string' || !SHA256_HEX.test(v))
      throw this.fail(field, 'must be 64 lower-case hex digits');
    return v;
  }

  time(field: string): string {
    const t = normaliseTime(this.obj[field]);
    if (t === undefined) throw this.fail(field, 'must be an ISO-8601 time with a zone');
    return t;
  }

  optionalTime(field: string): string | null {
    return this.has(field) ? this.time(field) : null;
  }

  oneOf<T extends string>(field: string, values: readonly T[]): T {
    const v = this.obj[field];
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
      throw this.fail(field, `must be one of ${values.join(', ')}`);
    }
    return v as T;
  }

  array(field: string): unknown[] {
    const v = this.obj[field];
    if (!Array.isArray(v)) throw this.fail(field, 'must be an array');
    return v;
  }

  object(field: string): unknown {
    const v = this.obj[field];
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw this.fail(field, 'must be an object');
    return v;
  }
}

function checkRange(r: FieldReader, first: number, last: number): void {
  if (first > last) throw r.fail('last_lsn', `is below first_lsn ${first}`);
}

function checkOrder(r: FieldReader, earlier: string, later: string, a: string, b: string): void {
  if (a > b) throw r.fail(later, `is before ${earlier}`);
}

/** The fields every event starts with. */
interface EventHead {
  schema: 1;
  partition: string;
}

/**
 * The parser of one event type: checks the schema version, reads the fields
 * every event starts with, then the event's own fields with `read`.
 */
function eventParser<T extends EventHead>(
  what: string,
  read: (r: FieldReader) => Omit<T, keyof EventHead>,
): (value: unknown) => T {
  return (value) => {
    const r = new FieldReader(value, what);
    r.schema(EVENT_SCHEMA_VERSION);
    return { schema: 1, partition: r.partition(), ...read(r) } as T;
  };
}

function parseRefChange(value: unknown, index: number): RefChange {
  const r = new FieldReader(value, `wal.entries ref change ${index}`);
  const oid = r.obj.new_oid;
  if (typeof oid !== 'string' || !OBJECT_ID.test(oid))
    throw r.fail('new_oid', 'must be a hex object ID or empty');
  const out: RefChange = { name: r.string('name'), new_oid: oid };
  if (r.has('new_target')) out.new_target = r.string('new_target');
  return out;
}

/** Parses a `wal.entries` value. */
export const parseWalEntryEvent = eventParser<WalEntryEvent>('wal.entries event', (r) => ({
  lsn: r.lsn('lsn'),
  term: r.term('term'),
  node: r.node('node'),
  bytes: r.int('bytes'),
  refs: r.array('refs').map(parseRefChange),
  committed_at: r.time('committed_at'),
}));

/** Parses a `wal.archived` value. */
export const parseWalArchivedEvent = eventParser<WalArchivedEvent>('wal.archived event', (r) => {
  const event = {
    first_lsn: r.lsn('first_lsn'),
    last_lsn: r.lsn('last_lsn'),
    key: r.string('key'),
    bytes: r.int('bytes'),
    raw_bytes: r.int('raw_bytes'),
    entries: r.int('entries', 1),
    sha256: r.sha256(),
    term: r.term('term'),
    node: r.node('node'),
    committed_lsn: r.int('committed_lsn'),
    first_committed_at: r.time('first_committed_at'),
    last_committed_at: r.time('last_committed_at'),
    archived_at: r.time('archived_at'),
    ...timelineField(r.has('timeline') ? r.int('timeline', 1) : undefined),
  };
  checkRange(r, event.first_lsn, event.last_lsn);
  if (event.entries > event.last_lsn - event.first_lsn + 1) {
    throw r.fail('entries', 'is more than the LSN range holds');
  }
  if (event.committed_lsn < event.last_lsn)
    throw r.fail('committed_lsn', `is below last_lsn ${event.last_lsn}`);
  // No order between first_committed_at and last_committed_at: archives written before stamps were
  // monotonic across leaders may hold a segment whose last entry is stamped before its first.
  return event;
});

/** Parses a `wal.backups` value. */
export const parseWalBackupEvent = eventParser<WalBackupEvent>('wal.backups event', (r) => {
  const event = {
    lsn: r.lsn('lsn'),
    key: r.string('key'),
    bytes: r.int('bytes'),
    sha256: r.sha256(),
    trigger: r.oneOf('trigger', BACKUP_TRIGGERS),
    term: r.term('term'),
    node: r.node('node'),
    started_at: r.time('started_at'),
    finished_at: r.time('finished_at'),
    ...timelineField(r.has('timeline') ? r.int('timeline', 1) : undefined),
  };
  checkOrder(r, 'started_at', 'finished_at', event.started_at, event.finished_at);
  return event;
});

/** Parses a `wal.leadership` value. A leader of 0 or null means "no leader" and comes back as null. */
export function parseWalLeadershipEvent(value: unknown): WalLeadershipEvent {
  const r = new FieldReader(value, 'wal.leadership event');
  r.schema(EVENT_SCHEMA_VERSION);
  const rawLeader = r.obj.leader;
  let leader: number | null;
  if (rawLeader === null || rawLeader === 0) leader = null;
  else leader = r.node('leader');
  const event: WalLeadershipEvent = {
    schema: 1,
    partition: r.partition(),
    node: r.node('node'),
    leader,
    term: r.term('term'),
    role: r.oneOf('role', RAFT_ROLES),
    at: r.time('at'),
  };
  if (event.role === 'leader' && event.leader !== event.node) {
    throw r.fail('leader', `must be the publishing node ${event.node} when role is leader`);
  }
  return event;
}

/**
 * Parses an event value by its logical topic (`entries`, `archived`,
 * `backups`, `leadership`; a full name such as `wal.archived` works too).
 * Throws INVALID_ARGUMENT for an unknown topic, CORRUPT for a malformed value.
 */
export function parseTopicEvent(topic: string, value: unknown): TopicEvent {
  const logical = topic.slice(topic.lastIndexOf('.') + 1);
  switch (logical) {
    case Topics.ENTRIES:
      return { topic: Topics.ENTRIES, value: parseWalEntryEvent(value) };
    case Topics.ARCHIVED:
      return { topic: Topics.ARCHIVED, value: parseWalArchivedEvent(value) };
    case Topics.BACKUPS:
      return { topic: Topics.BACKUPS, value: parseWalBackupEvent(value) };
    case Topics.LEADERSHIP:
      return { topic: Topics.LEADERSHIP, value: parseWalLeadershipEvent(value) };
    default:
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `unknown event topic "${topic}"`, {
        retryable: false,
      });
  }
}
