import type { Readable } from 'node:stream';

/**
 * The object store: the one interface the archive is written through.
 *
 * Keys are relative to the store's prefix (the URL's path), use `/` as the
 * separator, and never contain empty, `.` or `..` segments. Objects are
 * immutable except through `replace` (compare-and-swap, used for manifests).
 *
 * Implementations: `s3://bucket/prefix?…` (s3-store.ts) and `file:///path`
 * (folder-store.ts). Both pass test/integration/object-store.conformance.ts.
 * Anything larger (planning a restore, listing a partition's segments) is a
 * free function over this interface, never a method of it.
 */
export interface ObjectStore {
  /** The store's URL with credentials masked: safe to print and log. */
  readonly url: string;

  /** Objects whose key starts with `prefix`, in ascending key order (byte order of the UTF-8 key). */
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo>;

  /** Size, ETag and metadata of one object; `undefined` when it does not exist. */
  head(key: string, options?: CallOptions): Promise<ObjectInfo | undefined>;

  /**
   * The object's bytes, or a byte range of them. Throws `NOT_FOUND` when the
   * object does not exist. The stream errors (never ends early) if the
   * transfer is cut.
   */
  get(key: string, options?: GetOptions): Promise<Readable>;

  /**
   * Conditional create: writes the object only if no object has the key.
   * Exactly one of several racing creators succeeds; the others get
   * `ALREADY_EXISTS`. Data and metadata appear together or not at all.
   * Large streamed bodies are uploaded in parts with bounded memory.
   */
  create(key: string, body: Body, options?: CreateOptions): Promise<ObjectInfo>;

  /**
   * Compare-and-swap: replaces the object only if its current ETag equals
   * `ifMatch` (or, with `ifMatch: undefined`, only if it does not exist yet).
   * Throws `PRECONDITION_FAILED` when another writer got there first.
   */
  replace(key: string, body: Buffer, options: ReplaceOptions): Promise<ObjectInfo>;

  /** Deletes the object. Deleting a missing object succeeds. Throws `OBJECT_LOCKED` under retention. */
  delete(key: string, options?: CallOptions): Promise<void>;

  /** Releases connections; later calls fail. */
  close(): Promise<void>;
}

export type Body = Buffer | Uint8Array | Readable;

export interface CallOptions {
  signal?: AbortSignal;
}

export interface ListOptions extends CallOptions {
  /** Only keys strictly greater than this one. */
  startAfter?: string;
}

export interface GetOptions extends CallOptions {
  /** First byte to return (default 0). */
  offset?: number;
  /** Number of bytes to return (default: to the end). */
  length?: number;
}

export interface CreateOptions extends CallOptions {
  /** User metadata: lower-case keys of [a-z0-9-], ASCII values. */
  metadata?: Record<string, string>;
  contentType?: string;
  /** Object lock retention to apply at creation (WORM). */
  retention?: Retention;
  /**
   * The body's length in bytes, when the caller knows it (a spooled file). A
   * store may then send a stream in one request instead of buffering parts; a
   * body of another length fails the call.
   */
  size?: number;
}

export interface ReplaceOptions extends CreateOptions {
  /** The ETag the current object must have; `undefined` means "must not exist yet". */
  ifMatch: string | undefined;
}

export interface Retention {
  mode: 'GOVERNANCE' | 'COMPLIANCE';
  retainUntil: Date;
}

export interface ObjectInfo {
  key: string;
  size: number;
  /** Opaque version tag; changes whenever the object's content changes. */
  etag: string;
  lastModified: Date;
  /** User metadata. `list` may leave it empty; `head` and `create` fill it. */
  metadata: Record<string, string>;
  /** Retention in force, when the store reports it (head only). */
  retention?: Retention;
}

/** Metadata keys used on every archive object. */
export const MetadataKeys = {
  SHA256: 'sha256',
  FIRST_LSN: 'first-lsn',
  LAST_LSN: 'last-lsn',
  PARTITION: 'partition',
  /** A segment's greatest entry commit time (ISO 8601); absent on segments written before it was recorded. */
  MAX_COMMITTED_AT: 'max-committed-at',
} as const;
