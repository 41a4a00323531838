import { Readable } from 'node:stream';
import { ErrorCodes, WalArchiverError, throwIfAborted } from '../../contract/errors.js';
import * as keys from '../../src/store/keys.js';
import type * as api from '../../src/store/object-store.js';

interface Stored {
  data: Buffer;
  info: api.ObjectInfo;
}

async function toBuffer(body: api.Body, signal: AbortSignal | undefined): Promise<Buffer> {
  if (body instanceof Uint8Array) return Buffer.from(body);
  const chunks: Buffer[] = [];
  for await (const chunk of body) {
    throwIfAborted(signal);
    chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array));
  }
  return Buffer.concat(chunks);
}

function locked(url: string, key: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.OBJECT_LOCKED, `${url} ${key}: under retention`, {
    retryable: false,
  });
}

/**
 * An ObjectStore in memory, for unit tests: conditional create, CAS replace
 * on an ETag that changes with every write, byte-ordered listing, retention.
 * It passes the same conformance suite as the folder and S3 stores
 * (test/unit/test/helpers/memory-store.conformance.test.ts). `beforeReplace` and
 * `latency` let a test run code between the steps of an operation (to force races).
 */
export class MemoryStore implements api.ObjectStore {
  readonly url = 'memory://test';
  readonly objects = new Map<string, Stored>();
  private counter = 0;
  private closed = false;
  /** Counts of calls per method. */
  readonly calls = { list: 0, head: 0, get: 0, create: 0, replace: 0, delete: 0 };
  /** Runs before a replace is decided (it may change the store). */
  beforeReplace?: (key: string) => Promise<void> | void;
  /** Awaited at the start of every head, get and replace: lets concurrent callers interleave. */
  latency?: () => Promise<void>;

  private check(signal?: AbortSignal): void {
    if (this.closed)
      throw new WalArchiverError(ErrorCodes.UNAVAILABLE, 'memory store is closed', { retryable: false });
    throwIfAborted(signal);
  }

  private put(key: string, data: Buffer, options: api.CreateOptions | undefined): api.ObjectInfo {
    const info: api.ObjectInfo = {
      key,
      size: data.length,
      etag: `"m${++this.counter}"`,
      lastModified: new Date(),
      metadata: { ...(options?.metadata ?? {}) },
    };
    if (options?.retention) info.retention = { ...options.retention };
    this.objects.set(key, { data, info });
    return { ...info, metadata: { ...info.metadata } };
  }

  async *list(prefix: string, options: api.ListOptions = {}): AsyncIterable<api.ObjectInfo> {
    this.calls.list++;
    this.check(options.signal);
    keys.validatePrefix(prefix, this.url);
    const listed = [...this.objects.keys()]
      .filter(
        (k) =>
          k.startsWith(prefix) &&
          (options.startAfter === undefined || keys.compareKeys(k, options.startAfter) > 0),
      )
      .sort(keys.compareKeys);
    for (const key of listed) {
      const stored = this.objects.get(key);
      if (stored) yield { ...stored.info, metadata: {} };
    }
  }

  async head(key: string, options: api.CallOptions = {}): Promise<api.ObjectInfo | undefined> {
    this.calls.head++;
    await this.latency?.();
    this.check(options.signal);
    keys.validateKey(key, this.url);
    const stored = this.objects.get(key);
    return stored && { ...stored.info, metadata: { ...stored.info.metadata } };
  }

  async get(key: string, options: api.GetOptions = {}): Promise<Readable> {
    this.calls.get++;
    await this.latency?.();
    this.check(options.signal);
    keys.validateKey(key, this.url);
    keys.validateRange(options.offset, options.length, this.url);
    const stored = this.objects.get(key);
    if (!stored)
      throw new WalArchiverError(ErrorCodes.NOT_FOUND, `${this.url} ${key}: not found`, { retryable: false });
    const offset = options.offset ?? 0;
    const end = options.length === undefined ? stored.data.length : offset + options.length;
    return Readable.from([stored.data.subarray(offset, end)]);
  }

  async create(key: string, body: api.Body, options: api.CreateOptions = {}): Promise<api.ObjectInfo> {
    this.calls.create++;
    this.check(options.signal);
    keys.validateKey(key, this.url);
    keys.validateCreateOptions(options, this.url);
    const data = await toBuffer(body, options.signal);
    if (options.size !== undefined && options.size !== data.length) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `${this.url} ${key}: the body has ${data.length} bytes, not the ${options.size} announced`,
        { retryable: false },
      );
    }
    if (this.objects.has(key)) {
      throw new WalArchiverError(ErrorCodes.ALREADY_EXISTS, `${this.url} ${key}: already exists`, {
        retryable: false,
      });
    }
    return this.put(key, data, options);
  }

  async replace(key: string, body: Buffer, options: api.ReplaceOptions): Promise<api.ObjectInfo> {
    this.calls.replace++;
    await this.latency?.();
    this.check(options.signal);
    keys.validateKey(key, this.url);
    keys.validateCreateOptions(options, this.url);
    await this.beforeReplace?.(key);
    const current = this.objects.get(key);
    if ((current?.info.etag ?? undefined) !== options.ifMatch) {
      throw new WalArchiverError(
        ErrorCodes.PRECONDITION_FAILED,
        `${this.url} ${key}: changed since it was read`,
        {
          retryable: false,
        },
      );
    }
    if (keys.isRetained(current?.info.retention, new Date())) throw locked(this.url, key);
    return this.put(key, Buffer.from(body), options);
  }

  async delete(key: string, options: api.CallOptions = {}): Promise<void> {
    this.calls.delete++;
    this.check(options.signal);
    keys.validateKey(key, this.url);
    const current = this.objects.get(key);
    if (keys.isRetained(current?.info.retention, new Date())) throw locked(this.url, key);
    this.objects.delete(key);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** The stored bytes of a key, as text (test inspection). */
  text(key: string): string | undefined {
    return this.objects.get(key)?.data.toString('utf8');
  }
}
