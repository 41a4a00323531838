import { hostname } from 'node:os';
import { ErrorCodes, isWalArchiverError } from '../../contract/errors.js';
import { FieldReader } from '../../contract/events/schemas.js';
import { readDocument, updateDocument, type CasOptions, type StoredDocument } from '../manifest/cas.js';
import { verifiedKey } from '../manifest/keys.js';
import type { ObjectStore } from '../store/object-store.js';

/**
 * The verified point of one partition and timeline: how far `verify` got the
 * last time the partition was clean, kept in the archive
 * (`partitions/<id>/verified.json`, see `verifiedKey`) so that any host can
 * continue from it.
 *
 * It lists every object verified up to `verified_lsn` with the SHA-256 and
 * size it had: an incremental verify downloads only objects that are not in
 * it, or whose manifest record no longer matches it, or that go beyond
 * `verified_lsn`.
 *
 * Written with compare-and-swap. Every object a record lists was hashed by
 * the verifier that wrote it or carried from a record an earlier verifier
 * wrote, so whichever of two racing verifiers wins, the record never claims
 * more than was checked; the loser re-reads and keeps the other's record when
 * it reaches at least as far (a lost race costs at most a re-check next time).
 */

export const VERIFIED_SCHEMA = 1;

export interface VerifiedObject {
  key: string;
  sha256: string;
  bytes: number;
}

export interface VerifiedRecord {
  schema: typeof VERIFIED_SCHEMA;
  partition: string;
  timeline: number;
  /** The archived LSN the partition was verified through (coverage with no gap up to it). */
  verified_lsn: number;
  /** When the verify that wrote this finished the partition (ISO 8601). */
  verified_at: string;
  /** The host it ran on. */
  host: string;
  mode: 'full' | 'incremental';
  /** Every segment and base backup verified, with the SHA-256 and size it was verified at. */
  objects: VerifiedObject[];
}

/** What the archive says about a partition's verified point. */
export type VerifiedPoint =
  | { state: 'absent' }
  | { state: 'ok'; stored: StoredDocument<VerifiedRecord> }
  /** Present but unusable: treated as "nothing verified yet". */
  | { state: 'damaged'; etag: string; message: string };

/** Validates a verified record read from the archive; CORRUPT when it is not one for this partition and timeline. */
export function parseVerifiedRecord(value: unknown, partition: string, timeline = 1): VerifiedRecord {
  const r = new FieldReader(value, `partition ${partition} verified record`);
  r.schema(VERIFIED_SCHEMA);
  const named = r.partition();
  if (named !== partition)
    throw r.fail('partition', `names partition ${JSON.stringify(named)}, not ${partition}`);
  if (r.int('timeline', 1) !== timeline) throw r.fail('timeline', `is not ${timeline}`);
  return {
    schema: VERIFIED_SCHEMA,
    partition,
    timeline,
    verified_lsn: r.int('verified_lsn'),
    verified_at: r.time('verified_at'),
    host: r.string('host'),
    mode: r.oneOf('mode', ['full', 'incremental'] as const),
    objects: r.array('objects').map((o, i) => {
      const x = new FieldReader(o, `${r.what} object ${i}`);
      return { key: x.string('key'), sha256: x.sha256(), bytes: x.int('bytes') };
    }),
  };
}

/** Reads the verified point; a record that does not parse is reported as damaged, never thrown. */
export async function readVerifiedPoint(
  store: ObjectStore,
  partition: string,
  options: { timeline?: number; signal?: AbortSignal } = {},
): Promise<VerifiedPoint> {
  const timeline = options.timeline ?? 1;
  const key = verifiedKey(partition, timeline);
  const signal = options.signal ? { signal: options.signal } : {};
  try {
    const stored = await readDocument(store, key, (v) => parseVerifiedRecord(v, partition, timeline), signal);
    return stored ? { state: 'ok', stored } : { state: 'absent' };
  } catch (err) {
    if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
    const info = await store.head(key, signal);
    return info ? { state: 'damaged', etag: info.etag, message: err.message } : { state: 'absent' };
  }
}

/** The record a clean verify leaves. */
export function verifiedRecord(
  fields: Omit<VerifiedRecord, 'schema' | 'host' | 'verified_at'> & { host?: string; now?: Date },
): VerifiedRecord {
  const { host, now, ...rest } = fields;
  return {
    schema: VERIFIED_SCHEMA,
    ...rest,
    verified_at: (now ?? new Date()).toISOString(),
    host: host ?? hostname(),
  };
}

/**
 * Writes `next` over the point this verify started from (`known`), with
 * compare-and-swap. If another verifier wrote in between and reached at
 * least `next.verified_lsn`, its record is kept. Returns whether `next` was written.
 */
export async function writeVerifiedPoint(
  store: ObjectStore,
  next: VerifiedRecord,
  known: VerifiedPoint,
  options: CasOptions = {},
): Promise<boolean> {
  const { partition, timeline } = next;
  const startedFrom: VerifiedRecord | null | undefined =
    known.state === 'ok' ? known.stored.value : known.state === 'damaged' ? null : undefined;
  const result = await updateDocument<VerifiedRecord | null>(
    store,
    verifiedKey(partition, timeline),
    (v) => parseVerifiedRecord(v, partition, timeline),
    (current) =>
      current && current !== startedFrom && current.verified_lsn >= next.verified_lsn ? undefined : next,
    {
      ...options,
      ...(known.state === 'ok'
        ? { current: known.stored }
        : known.state === 'damaged'
          ? { current: { value: null, etag: known.etag } }
          : {}),
    },
  );
  return result.written;
}
