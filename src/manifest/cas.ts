/**
 * Read-modify-write of one JSON document in the object store with
 * compare-and-swap: read (head for the ETag, then get), apply a pure update,
 * `replace(key, body, { ifMatch: etag })`; when another writer got there
 * first (PRECONDITION_FAILED, or ALREADY_EXISTS for a first write), read
 * again and re-apply, a bounded number of times with a short jittered
 * backoff so racing writers spread out.
 *
 * The ETag is taken before the body: if the object changes in between, the
 * replace fails on the old ETag and the loop re-reads, so an update is never
 * computed from a body older than the ETag it is conditional on.
 */

import type { Readable } from 'node:stream';
import { ErrorCodes, WalArchiverError, isWalArchiverError, throwIfAborted } from '../../contract/errors.js';
import { Backoff, sleep } from '../../contract/retry.js';
import type { ObjectStore } from '../store/object-store.js';

/** Attempts of a conditional update before giving up. */
export const DEFAULT_CAS_ATTEMPTS = 25;
export const DEFAULT_CAS_BACKOFF = { initialMs: 10, maxMs: 1_000, factor: 2 } as const;
/** Largest manifest document read back, as a guard against reading a wrong object whole. */
export const MAX_DOCUMENT_BYTES = 256 * 1024 * 1024;

export interface CasOptions {
  attempts?: number;
  signal?: AbortSignal;
  /** Backoff between attempts (tests make it deterministic through `random`). */
  backoff?: { initialMs?: number; maxMs?: number; factor?: number; random?: () => number };
  /** Called after each lost race, before the re-read. */
  onConflict?: (attempt: number) => void;
}

export interface UpdateOptions<T> extends CasOptions {
  /**
   * The document as this writer last read or wrote it: the first attempt
   * writes against its etag instead of reading the document again. If it is
   * stale the write loses the compare-and-swap and the next attempt reads.
   */
  current?: StoredDocument<T> | undefined;
}

export interface StoredDocument<T> {
  value: T;
  etag: string;
}

export interface UpdateResult<T> {
  /** The document as stored after the call (undefined only if it never existed and the update made none). */
  value: T | undefined;
  etag: string | undefined;
  /** Whether this call wrote a new version. */
  written: boolean;
  /** Attempts made (1 without a conflict). */
  attempts: number;
}

export async function readAll(stream: Readable, limit = MAX_DOCUMENT_BYTES): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
    size += buf.length;
    if (size > limit) {
      stream.destroy();
      throw new WalArchiverError(ErrorCodes.CORRUPT, `document is larger than ${limit} bytes`, {
        retryable: false,
      });
    }
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}

/** Decodes a document body as JSON; CORRUPT when it is not. */
export function decodeJson(body: Buffer, what: string): unknown {
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch (cause) {
    throw new WalArchiverError(ErrorCodes.CORRUPT, `${what} is not valid JSON`, { cause, retryable: false });
  }
}

/** Pretty JSON with a trailing newline: what every manifest is stored as. */
export function encodeJson(value: unknown): Buffer {
  return Buffer.from(`${JSON.stringify(value, null, 2)}\n`, 'utf8');
}

/**
 * Reads a JSON document and its ETag; undefined when it does not exist.
 * `parse` validates it (and throws CORRUPT for a malformed one).
 */
export async function readDocument<T>(
  store: ObjectStore,
  key: string,
  parse: (value: unknown) => T,
  options: { signal?: AbortSignal } = {},
): Promise<StoredDocument<T> | undefined> {
  for (let attempt = 1; ; attempt++) {
    throwIfAborted(options.signal);
    const info = await store.head(key, { signal: options.signal });
    if (!info) return undefined;
    let body: Buffer;
    try {
      body = await readAll(await store.get(key, { signal: options.signal }));
    } catch (err) {
      // Deleted between head and get: look again (a few times), then report it.
      if (isWalArchiverError(err, ErrorCodes.NOT_FOUND) && attempt < 3) continue;
      throw err;
    }
    return { value: parse(decodeJson(body, `${store.url} ${key}`)), etag: info.etag };
  }
}

function isConflict(err: unknown): boolean {
  return (
    isWalArchiverError(err, ErrorCodes.PRECONDITION_FAILED) ||
    isWalArchiverError(err, ErrorCodes.ALREADY_EXISTS)
  );
}

/**
 * Applies `update` to the stored document with compare-and-swap. `update`
 * must be pure: it is called again with the newer document after a lost
 * race. It returns the new document, or undefined for "no change" (nothing
 * is written). Errors it throws (FENCED, CORRUPT …) end the call at once.
 */
export async function updateDocument<T>(
  store: ObjectStore,
  key: string,
  parse: (value: unknown) => T,
  update: (current: T | undefined) => T | undefined,
  options: UpdateOptions<T> = {},
): Promise<UpdateResult<T>> {
  const attempts = options.attempts ?? DEFAULT_CAS_ATTEMPTS;
  const backoff = new Backoff({ ...DEFAULT_CAS_BACKOFF, ...options.backoff });
  let known = options.current;
  for (let attempt = 1; ; attempt++) {
    throwIfAborted(options.signal);
    const cached = known;
    known = undefined;
    const current = cached ?? (await readDocument(store, key, parse, { signal: options.signal }));
    const next = update(current?.value);
    if (next === undefined) {
      return { value: current?.value, etag: current?.etag, written: false, attempts: attempt };
    }
    try {
      const info = await store.replace(key, encodeJson(next), {
        ifMatch: current?.etag,
        contentType: 'application/json',
        signal: options.signal,
      });
      return { value: next, etag: info.etag, written: true, attempts: attempt };
    } catch (err) {
      if (!isConflict(err)) throw err;
      // A stale cached copy is not a race with another writer: read and try again at once.
      if (cached) {
        attempt--;
        continue;
      }
      if (attempt >= attempts) {
        throw new WalArchiverError(
          ErrorCodes.PRECONDITION_FAILED,
          `${store.url} ${key}: gave up after ${attempt} conflicting concurrent updates`,
          { cause: err, retryable: true, details: { key, attempts: attempt } },
        );
      }
      options.onConflict?.(attempt);
      await sleep(backoff.next(), options.signal);
    }
  }
}
