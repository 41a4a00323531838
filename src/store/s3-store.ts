import {
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import type { HeadObjectCommandOutput, PutObjectCommandInput } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Readable, Transform, pipeline } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { ErrorCodes, WalArchiverError, throwIfAborted } from '../../contract/errors.js';
import type { ErrorCode } from '../../contract/errors.js';
import { Backoff, sleep } from '../../contract/retry.js';
import { boolParam, maskUrl, parseServiceUrl } from '../../contract/url.js';
import { isRetained, validateCreateOptions, validateKey, validatePrefix, validateRange } from './keys.js';
import { goneError, lockedError, notFoundError, storeError } from './store-errors.js';
import type { Body, ObjectInfo, ObjectStore, Retention } from './object-store.js';
import type { CallOptions, CreateOptions, GetOptions, ListOptions, ReplaceOptions } from './object-store.js';

const SILENT_LOGGER = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };

/** Part size of multipart uploads: memory per upload is about partSize × (queueSize + 1). */
export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
export const DEFAULT_QUEUE_SIZE = 2;
/** Streams of known length up to this size are sent in one PutObject (S3 allows 5 GiB). */
export const DEFAULT_SINGLE_PUT_MAX_BYTES = 256 * 1024 * 1024;
/** Attempts per request (the SDK's own retry, with backoff); longer retries belong to the caller's loop. */
export const DEFAULT_MAX_ATTEMPTS = 3;
export const DEFAULT_CONNECTION_TIMEOUT_MS = 3_000;
/** A socket idle this long is abandoned (and the request retried). */
export const DEFAULT_SOCKET_TIMEOUT_MS = 30_000;
/** Attempts of a conditional PUT answered 409 ConditionalRequestConflict (a concurrent conditional write in flight). */
const CONFLICT_ATTEMPTS = 6;
const CONFLICT_BACKOFF_MS = 50;

const URL_PARAMS = new Set(['endpoint', 'region', 'forcePathStyle']);
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'UND_ERR_SOCKET',
]);
const CREDENTIAL_ERRORS = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AccessDenied',
  'ExpiredToken',
  'InvalidToken',
  'TokenRefreshRequired',
  'AuthorizationHeaderMalformed',
  'CredentialsProviderError',
]);
const TRANSIENT_ERRORS = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
  'XMinioServerNotInitialized',
  'NetworkingError',
]);

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3StoreOptions {
  /** Explicit credentials; by default the standard AWS chain (environment, config files, instance role). */
  credentials?: S3Credentials;
  partSize?: number;
  queueSize?: number;
  maxAttempts?: number;
  connectionTimeoutMs?: number;
  socketTimeoutMs?: number;
  /** Check with HeadBucket that the bucket exists and the credentials work (default true). */
  verifyBucket?: boolean;
  /** The clock retention is checked against. */
  now?: () => Date;
}

interface S3Location {
  bucket: string;
  prefix: string;
  endpoint: string | undefined;
  region: string;
  forcePathStyle: boolean;
}

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
  cause?: unknown;
}

function sdkError(err: unknown): SdkError {
  return typeof err === 'object' && err !== null ? (err as SdkError) : {};
}

function statusOf(err: unknown): number | undefined {
  return sdkError(err).$metadata?.httpStatusCode;
}

function unquote(etag: string | undefined): string {
  return (etag ?? '').replace(/^(W\/)?"(.*)"$/, '$2');
}

function oneLine(text: string): string {
  return (text.split('\n')[0] ?? '').trim();
}

function invalidUrl(url: string, what: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `object store ${url}: ${what}`, {
    retryable: false,
  });
}

/** Parses `s3://bucket/prefix?endpoint=…&region=…&forcePathStyle=true`. */
export function parseS3Url(raw: string): S3Location {
  const parsed = parseServiceUrl(raw, 'object store');
  const url = maskUrl(raw);
  if (parsed.protocol !== 's3:') throw invalidUrl(url, 'not an s3: URL');
  if (parsed.username !== '' || parsed.password !== '') {
    throw invalidUrl(url, 'credentials do not belong in the URL (use the AWS environment or config files)');
  }
  const bucket = parsed.hostname;
  if (bucket === '') throw invalidUrl(url, 'no bucket (use s3://bucket/prefix)');
  if (!BUCKET_NAME.test(bucket)) throw invalidUrl(url, `"${bucket}" is not a valid bucket name`);
  if (parsed.port !== '')
    throw invalidUrl(url, 'a port belongs in the endpoint parameter, not after the bucket');
  for (const name of parsed.searchParams.keys()) {
    if (!URL_PARAMS.has(name)) {
      throw invalidUrl(url, `unknown parameter "${name}" (known: ${[...URL_PARAMS].join(', ')})`);
    }
  }
  let prefix: string;
  try {
    prefix = decodeURIComponent(parsed.pathname).replace(/^\/+/, '');
  } catch {
    throw invalidUrl(url, 'the prefix is not valid percent-encoding');
  }
  if (prefix !== '') {
    const bare = prefix.replace(/\/+$/, '');
    try {
      validateKey(bare, url);
    } catch (err) {
      throw invalidUrl(url, `bad prefix: ${(err as Error).message.replace(`object store ${url}: `, '')}`);
    }
    prefix = `${bare}/`;
  }
  const endpoint = parsed.searchParams.get('endpoint') ?? undefined;
  if (endpoint !== undefined) {
    let ep: URL;
    try {
      ep = new URL(endpoint);
    } catch {
      throw invalidUrl(url, `endpoint "${endpoint}" is not a URL`);
    }
    if (ep.protocol !== 'http:' && ep.protocol !== 'https:') {
      throw invalidUrl(url, `endpoint "${endpoint}" is not http: or https:`);
    }
  }
  const region =
    parsed.searchParams.get('region') ||
    process.env.AWS_REGION ||
    process.env.AWS_DEFAULT_REGION ||
    'us-east-1';
  const forcePathStyle = boolParam(parsed, 'forcePathStyle', endpoint !== undefined, raw, 'object store');
  return { bucket, prefix, endpoint, region, forcePathStyle };
}

/** Fails the stream if it ends before `expected` bytes went through (a cut transfer). */
class LengthCheck extends Transform {
  private seen = 0;
  constructor(
    private readonly expected: number | undefined,
    private readonly describe: (seen: number) => Error,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length;
    callback(null, chunk);
  }
  override _flush(callback: TransformCallback): void {
    if (this.expected !== undefined && this.seen !== this.expected) callback(this.describe(this.seen));
    else callback();
  }
}

class Counter extends Transform {
  bytes = 0;
  /** Fails before passing on a chunk that would take the count past `limit`. */
  constructor(private readonly limit = Infinity) {
    super();
  }
  override _transform(chunk: Buffer | string, _enc: BufferEncoding, callback: TransformCallback): void {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (this.bytes + buf.length > this.limit) {
      callback(new Error(`the body is longer than the ${this.limit} bytes announced`));
      return;
    }
    this.bytes += buf.length;
    callback(null, buf);
  }
  /** A body shorter than announced must fail too, or the request would wait for bytes that never come. */
  override _flush(callback: TransformCallback): void {
    if (this.limit !== Infinity && this.bytes !== this.limit) {
      callback(new Error(`the body has ${this.bytes} bytes, not the ${this.limit} announced`));
      return;
    }
    callback();
  }
}

/**
 * An `s3://bucket/prefix` object store on any S3 API (AWS S3, MinIO).
 *
 * - create: PutObject / multipart upload with `If-None-Match: *` (on the
 *   single PUT, or on CompleteMultipartUpload), so exactly one racing creator
 *   wins and a loser's parts are never visible.
 * - replace: PutObject with `If-Match: <etag>` (or `If-None-Match: *`).
 * - retention: Object Lock mode and retain-until date at create; on a bucket
 *   with object lock, delete and replace check the current version's retention
 *   first (a PUT or an unversioned DELETE would otherwise just stack a new
 *   version or a delete marker on top of a locked one), and delete removes
 *   every version of the key so no older version comes back.
 */
export class S3Store implements ObjectStore {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly singlePutMaxBytes = DEFAULT_SINGLE_PUT_MAX_BYTES;
  private readonly now: () => Date;
  private lockEnabled: Promise<boolean> | undefined;
  private closed = false;

  private constructor(rawUrl: string, location: S3Location, options: S3StoreOptions) {
    this.url = maskUrl(rawUrl);
    this.bucket = location.bucket;
    this.prefix = location.prefix;
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    this.now = options.now ?? (() => new Date());
    if (!Number.isSafeInteger(this.partSize) || this.partSize < 5 * 1024 * 1024) {
      throw invalidUrl(this.url, `part size ${this.partSize} is below the S3 minimum of 5 MiB`);
    }
    if (!Number.isSafeInteger(this.queueSize) || this.queueSize < 1) {
      throw invalidUrl(this.url, `queue size ${this.queueSize} is not a positive integer`);
    }
    const nonAws = location.endpoint !== undefined;
    this.client = new S3Client({
      region: location.region,
      ...(location.endpoint !== undefined ? { endpoint: location.endpoint } : {}),
      forcePathStyle: location.forcePathStyle,
      ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
      maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
      // Failures reach the caller as errors; without a logger the SDK writes some to the console.
      logger: SILENT_LOGGER,
      requestHandler: {
        connectionTimeout: options.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
        socketTimeout: options.socketTimeoutMs ?? DEFAULT_SOCKET_TIMEOUT_MS,
        httpAgent: { keepAlive: true, maxSockets: 32 },
        httpsAgent: { keepAlive: true, maxSockets: 32 },
      },
      ...(nonAws
        ? { requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' }
        : {}),
    });
  }

  static async open(rawUrl: string, options: S3StoreOptions = {}): Promise<S3Store> {
    const store = new S3Store(rawUrl, parseS3Url(rawUrl), options);
    if (options.verifyBucket ?? true) {
      try {
        await store.client.send(new HeadBucketCommand({ Bucket: store.bucket }));
      } catch (err) {
        store.client.destroy();
        throw store.bucketError(err);
      }
    }
    return store;
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ObjectInfo> {
    this.checkOpen();
    validatePrefix(prefix, this.url);
    let token: string | undefined;
    let first = true;
    while (first || token !== undefined) {
      throwIfAborted(options.signal);
      const command = new ListObjectsV2Command({
        Bucket: this.bucket,
        Prefix: this.prefix + prefix,
        ...(token !== undefined ? { ContinuationToken: token } : {}),
        ...(first && options.startAfter !== undefined
          ? { StartAfter: this.prefix + options.startAfter }
          : {}),
      });
      const out = await this.call('list', prefix, options.signal, () =>
        this.client.send(command, { abortSignal: options.signal }),
      );
      first = false;
      for (const o of out.Contents ?? []) {
        if (o.Key === undefined) continue;
        yield {
          key: o.Key.slice(this.prefix.length),
          size: o.Size ?? 0,
          etag: unquote(o.ETag),
          lastModified: o.LastModified ?? new Date(0),
          metadata: {},
        };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    }
  }

  async head(key: string, options: CallOptions = {}): Promise<ObjectInfo | undefined> {
    this.checkOpen();
    validateKey(key, this.url);
    const out = await this.headRaw(key, 'head', options.signal);
    return out === undefined ? undefined : this.infoOf(key, out);
  }

  async get(key: string, options: GetOptions = {}): Promise<Readable> {
    this.checkOpen();
    validateKey(key, this.url);
    validateRange(options.offset, options.length, this.url);
    const start = options.offset ?? 0;
    if (options.length === 0) {
      if ((await this.headRaw(key, 'get', options.signal)) === undefined)
        throw notFoundError(this.url, 'get', key);
      return Readable.from([]);
    }
    const range =
      options.offset === undefined && options.length === undefined
        ? undefined
        : `bytes=${start}-${options.length === undefined ? '' : start + options.length - 1}`;
    let out;
    try {
      out = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.prefix + key,
          ...(range ? { Range: range } : {}),
        }),
        { abortSignal: options.signal },
      );
    } catch (err) {
      if (statusOf(err) === 416 || sdkError(err).name === 'InvalidRange') {
        // The range starts at or past the end: an empty read of an existing object.
        if ((await this.headRaw(key, 'get', options.signal)) === undefined)
          throw notFoundError(this.url, 'get', key);
        return Readable.from([]);
      }
      throw this.fail('get', key, err);
    }
    const body = out.Body;
    if (!(body instanceof Readable)) {
      throw storeError(this.url, ErrorCodes.INTERNAL, 'get', key, 'the response body is not a stream', false);
    }
    const expected = out.ContentLength;
    const checked = new LengthCheck(expected, (seen) =>
      storeError(
        this.url,
        ErrorCodes.UNAVAILABLE,
        'get',
        key,
        `transfer cut after ${seen} of ${expected} bytes`,
      ),
    );
    pipeline(body, checked, () => undefined);
    return checked;
  }

  async create(key: string, body: Body, options: CreateOptions = {}): Promise<ObjectInfo> {
    this.checkOpen();
    validateKey(key, this.url);
    validateCreateOptions(options, this.url);
    throwIfAborted(options.signal);
    const params = { ...this.putParams(key, options), IfNoneMatch: '*' };
    let etag: string | undefined;
    let size: number;
    try {
      if (body instanceof Uint8Array && body.length <= this.partSize) {
        const out = await this.retryConflicts('create', key, options.signal, true, () =>
          this.client.send(new PutObjectCommand({ ...params, Body: body, ContentLength: body.length }), {
            abortSignal: options.signal,
          }),
        );
        etag = out.ETag;
        size = body.length;
      } else if (
        !(body instanceof Uint8Array) &&
        options.size !== undefined &&
        options.size <= this.singlePutMaxBytes
      ) {
        // A stream of known length (a spooled segment): one request, streamed,
        // no part buffers. The length is checked on the way so a body that is
        // shorter or longer than announced fails instead of being stored.
        const announced = options.size;
        const counter = new Counter(announced);
        // The SDK does not end a request whose body stream failed; abort it.
        const broken = new AbortController();
        counter.once('error', () => broken.abort());
        pipeline(body, counter, () => undefined);
        try {
          const out = await this.client.send(
            new PutObjectCommand({ ...params, Body: counter, ContentLength: announced }),
            {
              abortSignal: options.signal ? AbortSignal.any([options.signal, broken.signal]) : broken.signal,
            },
          );
          etag = out.ETag;
        } catch (err) {
          const broken = counter.errored;
          counter.destroy();
          if (broken && /announced/.test(broken.message))
            throw storeError(this.url, ErrorCodes.INVALID_ARGUMENT, 'create', key, broken.message, false);
          throw err;
        }
        size = announced;
      } else {
        const counter = new Counter();
        const source = body instanceof Uint8Array ? Readable.from([Buffer.from(body)]) : body;
        pipeline(source, counter, () => undefined);
        const upload = new Upload({
          client: this.client,
          params: { ...params, Body: counter },
          partSize: this.partSize,
          queueSize: this.queueSize,
          leavePartsOnError: false,
        });
        const onAbort = () => void upload.abort();
        options.signal?.addEventListener('abort', onAbort, { once: true });
        try {
          const out = await upload.done();
          etag = out.ETag;
        } catch (err) {
          counter.destroy();
          throw err;
        } finally {
          options.signal?.removeEventListener('abort', onAbort);
        }
        size = counter.bytes;
      }
    } catch (err) {
      if (err instanceof WalArchiverError) throw err;
      if (this.isConditionFailure(err)) {
        throw storeError(this.url, ErrorCodes.ALREADY_EXISTS, 'create', key, 'object already exists', false);
      }
      // A streamed body cannot be sent again from here: the caller's loop retries.
      if (this.isConditionalConflict(err)) throw this.conflictError('create', key);
      throw this.fail('create', key, err, options.signal);
    }
    return this.createdInfo(key, etag, size, options);
  }

  async replace(key: string, body: Buffer, options: ReplaceOptions): Promise<ObjectInfo> {
    this.checkOpen();
    validateKey(key, this.url);
    validateCreateOptions(options, this.url);
    throwIfAborted(options.signal);
    if (options.ifMatch !== undefined && (await this.isLockEnabled(options.signal))) {
      const current = await this.headRaw(key, 'replace', options.signal);
      if (current === undefined) {
        throw goneError(this.url, 'replace', key);
      }
      const retention = this.retentionOf(current);
      if (isRetained(retention, this.now())) throw lockedError(this.url, 'replace', key, retention);
    }
    const condition =
      options.ifMatch === undefined ? { IfNoneMatch: '*' } : { IfMatch: `"${options.ifMatch}"` };
    try {
      const out = await this.retryConflicts('replace', key, options.signal, true, () =>
        this.client.send(
          new PutObjectCommand({
            ...this.putParams(key, options),
            ...condition,
            Body: body,
            ContentLength: body.length,
          }),
          { abortSignal: options.signal },
        ),
      );
      return this.createdInfo(key, out.ETag, body.length, options);
    } catch (err) {
      if (err instanceof WalArchiverError) throw err;
      const name = sdkError(err).name;
      if (this.isConditionFailure(err) || name === 'NoSuchKey' || statusOf(err) === 404) {
        const why =
          options.ifMatch === undefined ? 'object exists already' : 'object changed since it was read';
        throw storeError(this.url, ErrorCodes.PRECONDITION_FAILED, 'replace', key, why, false);
      }
      throw this.fail('replace', key, err, options.signal);
    }
  }

  async delete(key: string, options: CallOptions = {}): Promise<void> {
    this.checkOpen();
    validateKey(key, this.url);
    const current = await this.headRaw(key, 'delete', options.signal);
    if (current === undefined) return;
    const retention = this.retentionOf(current);
    if (isRetained(retention, this.now())) throw lockedError(this.url, 'delete', key, retention);
    if (current.VersionId === undefined || current.VersionId === 'null') {
      const command = new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key });
      await this.call('delete', key, options.signal, () =>
        this.client.send(command, { abortSignal: options.signal }),
      );
      return;
    }
    await this.deleteAllVersions(key, current.VersionId, options.signal);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
  }

  /**
   * On a versioned bucket a DELETE without a version id only hides the object
   * behind a delete marker, and deleting just the current version would bring
   * the previous one back. So: remove the older versions and delete markers
   * first, the current version last; a version under retention stops it with
   * OBJECT_LOCKED before the current version is touched.
   */
  private async deleteAllVersions(key: string, currentVersion: string, signal?: AbortSignal): Promise<void> {
    const full = this.prefix + key;
    const older: string[] = [];
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    let done = false;
    while (!done) {
      const command = new ListObjectVersionsCommand({
        Bucket: this.bucket,
        Prefix: full,
        ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
        ...(versionMarker !== undefined ? { VersionIdMarker: versionMarker } : {}),
      });
      const out = await this.call('delete', key, signal, () =>
        this.client.send(command, { abortSignal: signal }),
      );
      const entries = [...(out.Versions ?? []), ...(out.DeleteMarkers ?? [])];
      for (const v of entries) {
        if (v.Key === full && v.VersionId !== undefined && v.VersionId !== currentVersion)
          older.push(v.VersionId);
      }
      // Keys are listed in order and `full` is the smallest key with this prefix.
      const beyond = entries.some((v) => v.Key !== undefined && v.Key !== full);
      done = beyond || !out.IsTruncated;
      keyMarker = out.NextKeyMarker;
      versionMarker = out.NextVersionIdMarker;
    }
    for (const versionId of [...older, currentVersion]) {
      try {
        await this.client.send(
          new DeleteObjectCommand({ Bucket: this.bucket, Key: full, VersionId: versionId }),
          {
            abortSignal: signal,
          },
        );
      } catch (err) {
        const e = sdkError(err);
        if (e.name === 'NoSuchVersion' || statusOf(err) === 404) continue;
        const text = `${e.name ?? ''} ${e.message ?? ''}`;
        if (/WORM|lock|retention|protected/i.test(text) || e.name === 'AccessDenied') {
          throw storeError(
            this.url,
            ErrorCodes.OBJECT_LOCKED,
            'delete',
            key,
            `a version of the object is under retention (${oneLine(e.message ?? '')})`,
            false,
          );
        }
        throw this.fail('delete', key, err, signal);
      }
    }
  }

  private putParams(key: string, options: CreateOptions): PutObjectCommandInput {
    return {
      Bucket: this.bucket,
      Key: this.prefix + key,
      ...(options.metadata !== undefined ? { Metadata: { ...options.metadata } } : {}),
      ...(options.contentType !== undefined ? { ContentType: options.contentType } : {}),
      ...(options.retention !== undefined
        ? {
            ObjectLockMode: options.retention.mode,
            ObjectLockRetainUntilDate: options.retention.retainUntil,
            // S3 requires a checksum on writes that set object lock.
            ChecksumAlgorithm: 'CRC32' as const,
          }
        : {}),
    };
  }

  private createdInfo(
    key: string,
    etag: string | undefined,
    size: number,
    options: CreateOptions,
  ): ObjectInfo {
    return {
      key,
      size,
      etag: unquote(etag),
      lastModified: this.now(),
      metadata: { ...(options.metadata ?? {}) },
      ...(options.retention !== undefined
        ? { retention: { mode: options.retention.mode, retainUntil: options.retention.retainUntil } }
        : {}),
    };
  }

  private async headRaw(
    key: string,
    op: string,
    signal?: AbortSignal,
  ): Promise<HeadObjectCommandOutput | undefined> {
    try {
      return await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }), {
        abortSignal: signal,
      });
    } catch (err) {
      const e = sdkError(err);
      if (e.name === 'NotFound' || e.name === 'NoSuchKey' || statusOf(err) === 404) return undefined;
      // HEAD responses have no body, so a 403 says nothing more precise.
      if (statusOf(err) === 403) {
        throw storeError(
          this.url,
          ErrorCodes.ACCESS_DENIED,
          op,
          key,
          'access denied (credentials refused or not allowed)',
          false,
        );
      }
      throw this.fail(op, key, err, signal);
    }
  }

  private infoOf(key: string, out: HeadObjectCommandOutput): ObjectInfo {
    const retention = this.retentionOf(out);
    return {
      key,
      size: out.ContentLength ?? 0,
      etag: unquote(out.ETag),
      lastModified: out.LastModified ?? new Date(0),
      metadata: { ...(out.Metadata ?? {}) },
      ...(retention !== undefined ? { retention } : {}),
    };
  }

  private retentionOf(out: HeadObjectCommandOutput): Retention | undefined {
    const mode = out.ObjectLockMode;
    const until = out.ObjectLockRetainUntilDate;
    if ((mode !== 'GOVERNANCE' && mode !== 'COMPLIANCE') || until === undefined) return undefined;
    return { mode, retainUntil: new Date(until) };
  }

  private isLockEnabled(signal?: AbortSignal): Promise<boolean> {
    this.lockEnabled ??= this.client
      .send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }), { abortSignal: signal })
      .then((out) => out.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled')
      .catch((err: unknown) => {
        const name = sdkError(err).name ?? '';
        if (/ObjectLockConfigurationNotFound/.test(name) || statusOf(err) === 404) return false;
        // Not allowed to ask, or a transient failure: assume it may be, and ask again next time.
        this.lockEnabled = undefined;
        return true;
      });
    return this.lockEnabled;
  }

  /** 412: the condition was checked and failed (the key exists, or its ETag differs). */
  private isConditionFailure(err: unknown): boolean {
    return sdkError(err).name === 'PreconditionFailed' || statusOf(err) === 412;
  }

  /**
   * 409 ConditionalRequestConflict: AWS had another conditional write to the
   * same key in flight and decided nothing about this one. Says neither
   * "exists" nor "changed": the request is tried again.
   */
  private isConditionalConflict(err: unknown): boolean {
    const e = sdkError(err);
    return (
      e.name === 'ConditionalRequestConflict' ||
      (statusOf(err) === 409 && /conditional/i.test(`${e.name ?? ''} ${e.code ?? ''} ${e.message ?? ''}`))
    );
  }

  /**
   * Runs a conditional PUT whose body can be sent again, retrying a 409
   * ConditionalRequestConflict with backoff; when conflicts outlast the
   * attempts, fails UNAVAILABLE (retryable), for the caller's own loop.
   */
  private async retryConflicts<T>(
    op: string,
    key: string,
    signal: AbortSignal | undefined,
    replayable: boolean,
    run: () => Promise<T>,
  ): Promise<T> {
    const backoff = new Backoff({ initialMs: CONFLICT_BACKOFF_MS, maxMs: 2_000 });
    for (let attempt = 1; ; attempt++) {
      try {
        return await run();
      } catch (err) {
        if (!this.isConditionalConflict(err)) throw err;
        if (attempt >= CONFLICT_ATTEMPTS || !replayable) throw this.conflictError(op, key);
        await sleep(backoff.next(), signal);
      }
    }
  }

  private conflictError(op: string, key: string): WalArchiverError {
    return storeError(
      this.url,
      ErrorCodes.UNAVAILABLE,
      op,
      key,
      'ConditionalRequestConflict: another conditional write to this key was in flight; try again',
      true,
    );
  }

  /** Runs one request, mapping its failure to a WalArchiverError. */
  private async call<T>(
    op: string,
    key: string,
    signal: AbortSignal | undefined,
    run: () => Promise<T>,
  ): Promise<T> {
    this.checkOpen();
    try {
      return await run();
    } catch (err) {
      throw this.fail(op, key, err, signal);
    }
  }

  // ---- errors ----

  private checkOpen(): void {
    if (this.closed) {
      throw new WalArchiverError(ErrorCodes.INTERNAL, `object store ${this.url}: used after close()`, {
        retryable: false,
      });
    }
  }

  private bucketError(err: unknown): WalArchiverError {
    const status = statusOf(err);
    const name = sdkError(err).name;
    if (status === 404 || name === 'NoSuchBucket' || name === 'NotFound') {
      return this.withCause(
        storeError(
          this.url,
          ErrorCodes.BUCKET_NOT_FOUND,
          'open',
          undefined,
          `bucket "${this.bucket}" does not exist`,
          false,
        ),
        err,
      );
    }
    if (status === 403) {
      return this.withCause(
        storeError(
          this.url,
          ErrorCodes.ACCESS_DENIED,
          'open',
          undefined,
          `access to bucket "${this.bucket}" denied (credentials refused or not allowed)`,
          false,
        ),
        err,
      );
    }
    if (status === 301 || status === 400) {
      return this.withCause(
        storeError(
          this.url,
          ErrorCodes.INVALID_ARGUMENT,
          'open',
          undefined,
          `bucket "${this.bucket}" answered ${status} (wrong region or endpoint?)`,
          false,
        ),
        err,
      );
    }
    return this.fail('open', undefined, err);
  }

  private withCause(error: WalArchiverError, cause: unknown): WalArchiverError {
    return new WalArchiverError(error.code, error.message, {
      cause,
      retryable: error.retryable,
      details: error.details,
    });
  }

  private fail(op: string, key: string | undefined, err: unknown, signal?: AbortSignal): WalArchiverError {
    if (err instanceof WalArchiverError) return err;
    const e = sdkError(err);
    const name = e.name ?? '';
    const status = statusOf(err);
    const causeCode = sdkError(e.cause).code;
    const code = e.code ?? causeCode ?? '';
    const message = oneLine(e.message ?? String(err));
    const make = (c: ErrorCode, what: string, retryable: boolean) => {
      const where = key === undefined ? op : `${op} "${key}"`;
      return new WalArchiverError(c, `object store ${this.url}: ${where}: ${what}`, {
        cause: err,
        retryable,
        details: { url: this.url, key, op, s3Error: name, status },
      });
    };
    if (signal?.aborted || name === 'AbortError') return make(ErrorCodes.ABORTED, 'aborted', false);
    if (name === 'NoSuchBucket')
      return make(ErrorCodes.BUCKET_NOT_FOUND, `bucket "${this.bucket}" does not exist`, false);
    if (CREDENTIAL_ERRORS.has(name) || status === 403) {
      return make(ErrorCodes.ACCESS_DENIED, `access denied (${name || status}): ${message}`, false);
    }
    if (name === 'NoSuchKey' || (status === 404 && name === 'NotFound')) {
      return make(ErrorCodes.NOT_FOUND, 'object does not exist', false);
    }
    if (
      NETWORK_CODES.has(code) ||
      TRANSIENT_ERRORS.has(name) ||
      (status !== undefined && (status >= 500 || status === 429))
    ) {
      return make(ErrorCodes.UNAVAILABLE, `cannot reach the S3 endpoint: ${message || name}`, true);
    }
    return make(ErrorCodes.INTERNAL, `${name ? `${name}: ` : ''}${message}`, true);
  }
}
