/**
 * One error type for the whole project, with a fixed list of codes.
 *
 * - `code` says what went wrong in a way a program can branch on.
 * - `retryable` says whether trying the same thing again may succeed; a retry
 *   loop retries only when nothing in the cause chain says otherwise.
 * - `message` is one line a person can read; it never includes credentials.
 *
 * Corruption is its own class of error and is never retryable: it is reported,
 * never "fixed" silently.
 */

import { setMaxListeners } from 'node:events';

export const ErrorCodes = {
  /** A flag, URL or configuration value is malformed. */
  INVALID_ARGUMENT: 'INVALID_ARGUMENT',
  /** A URL names a scheme no implementation handles. */
  UNSUPPORTED_SCHEME: 'UNSUPPORTED_SCHEME',
  /** The object, key, topic or file does not exist. */
  NOT_FOUND: 'NOT_FOUND',
  /** A conditional create lost: the object exists already. */
  ALREADY_EXISTS: 'ALREADY_EXISTS',
  /** A conditional replace lost: the object changed since it was read. */
  PRECONDITION_FAILED: 'PRECONDITION_FAILED',
  /** The object is under retention (object lock / WORM) and cannot be deleted or replaced. */
  OBJECT_LOCKED: 'OBJECT_LOCKED',
  /** The bucket (or the folder of a folder store) does not exist. */
  BUCKET_NOT_FOUND: 'BUCKET_NOT_FOUND',
  /** Credentials were refused. */
  ACCESS_DENIED: 'ACCESS_DENIED',
  /** A service could not be reached, or timed out. */
  UNAVAILABLE: 'UNAVAILABLE',
  /** Data read back does not match what was written (checksum, framing, protobuf). */
  CORRUPT: 'CORRUPT',
  /** The operation was cancelled through an AbortSignal. */
  ABORTED: 'ABORTED',
  /** The node is not the leader of the partition (writes go to the leader). */
  NOT_LEADER: 'NOT_LEADER',
  /** A write lost a fencing check: a higher term wrote first. */
  FENCED: 'FENCED',
  /** Anything else: a bug or an error from below with no better classification. */
  INTERNAL: 'INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

const RETRYABLE_BY_DEFAULT: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCodes.UNAVAILABLE,
  ErrorCodes.INTERNAL,
]);

export interface WalArchiverErrorOptions {
  cause?: unknown;
  retryable?: boolean;
  /** Structured context for logs: partition, lsn, key, url … */
  details?: Record<string, unknown>;
}

export class WalArchiverError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: WalArchiverErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WalArchiverError';
    this.code = code;
    this.retryable = options.retryable ?? RETRYABLE_BY_DEFAULT.has(code);
    this.details = options.details ?? {};
  }
}

export function isWalArchiverError(err: unknown, code?: ErrorCode): err is WalArchiverError {
  return err instanceof WalArchiverError && (code === undefined || err.code === code);
}

/**
 * Whether an error may succeed on retry: the first WalArchiverError in the
 * cause chain decides; an abort never is; anything unknown is assumed
 * transient (network errors from libraries rarely say so themselves).
 */
export function isRetryable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 10; depth++) {
    if (e instanceof WalArchiverError) return e.retryable;
    if (e instanceof Error && e.name === 'AbortError') return false;
    e = e instanceof Error ? e.cause : undefined;
  }
  return true;
}

/** One line for a person: the message, plus the innermost cause's message when it adds something. */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  let line = err.message.split('\n')[0] ?? '';
  let inner: unknown = err.cause;
  let depth = 0;
  while (inner instanceof Error && inner.cause instanceof Error && depth < 10) {
    inner = inner.cause;
    depth++;
  }
  if (inner instanceof Error) {
    const innerLine = inner.message.split('\n')[0] ?? '';
    if (innerLine && !line.includes(innerLine)) line = `${line}: ${innerLine}`;
  }
  return line;
}

export function abortError(signal?: AbortSignal): WalArchiverError {
  return new WalArchiverError(ErrorCodes.ABORTED, 'operation aborted', {
    cause: signal?.reason,
    retryable: false,
  });
}

export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw abortError(signal);
}

/**
 * An AbortController that aborts when `parent` does (with its reason), for a
 * long job whose many requests all listen on one signal (no listener limit on
 * it). `release` stops following `parent`; call it when the job ends.
 */
export function followAbort(parent?: AbortSignal): { controller: AbortController; release: () => void } {
  const controller = new AbortController();
  setMaxListeners(0, controller.signal);
  const onAbort = () => controller.abort(parent?.reason);
  if (parent?.aborted) onAbort();
  parent?.addEventListener('abort', onAbort, { once: true });
  return { controller, release: () => parent?.removeEventListener('abort', onAbort) };
}
