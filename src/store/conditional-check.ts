import { randomBytes } from 'node:crypto';
import { ErrorCodes, WalArchiverError, isRetryable, isWalArchiverError } from '../../contract/errors.js';
import { Backoff, sleep } from '../../contract/retry.js';
import type { CallOptions, ObjectStore } from './object-store.js';

/**
 * Where the start-up probe of conditional writes puts its object: a folder of
 * its own beside `partitions/`, one random key per probe, removed when done.
 * (Keys may not start with "." — the folder store keeps its own files there.)
 */
export const PROBE_PREFIX = 'wal-archiver-probe/';

/** Attempts of the probe when the store fails in a way that may pass (unreachable, timed out). */
const PROBE_ATTEMPTS = 4;

/**
 * Proves that the store honours conditional writes before anything is written
 * through it: term fencing and the manifests' compare-and-swap rely on
 * `If-None-Match: *` and `If-Match`, and a server that ignores them turns both
 * into last-writer-wins without a single error. Creates one probe key twice
 * (the second must be ALREADY_EXISTS), replaces it with an ETag it never had
 * (must be PRECONDITION_FAILED), and deletes it. A store that does not honour
 * them fails with one line naming its URL (exit 1, not retryable); a store that
 * cannot be reached fails as any other call would.
 */
export async function verifyConditionalWrites(store: ObjectStore, options: CallOptions = {}): Promise<void> {
  const backoff = new Backoff({ initialMs: 200, maxMs: 2_000 });
  for (let attempt = 1; ; attempt++) {
    try {
      return await probeOnce(store, options);
    } catch (err) {
      // A store that is briefly unavailable is asked again (with a new key); a refusal is final.
      if (attempt >= PROBE_ATTEMPTS || !isRetryable(err) || options.signal?.aborted) throw err;
      await sleep(backoff.next(), options.signal);
    }
  }
}

async function probeOnce(store: ObjectStore, options: CallOptions): Promise<void> {
  const key = `${PROBE_PREFIX}${Date.now().toString(36)}-${randomBytes(8).toString('hex')}`;
  const signal = options.signal;
  const refuse = (what: string) =>
    new WalArchiverError(
      ErrorCodes.INTERNAL,
      `object store ${store.url} does not honour conditional writes (${what}); ` +
        'term fencing and manifest compare-and-swap need them: refusing to run',
      { retryable: false, details: { url: store.url, key } },
    );
  const first = await store.create(key, Buffer.from('probe 1\n'), signal ? { signal } : {});
  try {
    try {
      await store.create(key, Buffer.from('probe 2\n'), signal ? { signal } : {});
      throw refuse(`If-None-Match: a second create of ${key} succeeded`);
    } catch (err) {
      if (!isWalArchiverError(err, ErrorCodes.ALREADY_EXISTS)) throw err;
    }
    const wrong =
      first.etag === '0123456789abcdef0123456789abcdef'
        ? 'fedcba9876543210'
        : '0123456789abcdef0123456789abcdef';
    try {
      await store.replace(key, Buffer.from('probe 3\n'), { ifMatch: wrong, ...(signal ? { signal } : {}) });
      throw refuse(`If-Match: a replace of ${key} with a wrong ETag succeeded`);
    } catch (err) {
      if (!isWalArchiverError(err, ErrorCodes.PRECONDITION_FAILED)) throw err;
    }
  } finally {
    await store.delete(key).catch(() => undefined);
  }
}
