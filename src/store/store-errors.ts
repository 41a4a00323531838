import { ErrorCodes, WalArchiverError, type ErrorCode } from '../../contract/errors.js';

/**
 * The errors every object store raises about a call: `object store <url>: <op> "<key>": <what>`,
 * with the URL, key and operation in the details. Retryable by default only when UNAVAILABLE.
 */
export function storeError(
  url: string,
  code: ErrorCode,
  op: string,
  key: string | undefined,
  what: string,
  retryable?: boolean,
): WalArchiverError {
  const where = key === undefined ? op : `${op} "${key}"`;
  return new WalArchiverError(code, `object store ${url}: ${where}: ${what}`, {
    retryable: retryable ?? code === ErrorCodes.UNAVAILABLE,
    details: { url, key, op },
  });
}

export function notFoundError(url: string, op: string, key: string): WalArchiverError {
  return storeError(url, ErrorCodes.NOT_FOUND, op, key, 'object does not exist', false);
}

/** A replace with `ifMatch` found no object (it never existed, or was deleted meanwhile). */
export function goneError(url: string, op: string, key: string): WalArchiverError {
  return storeError(url, ErrorCodes.PRECONDITION_FAILED, op, key, 'object does not exist (any more)', false);
}

/** A replace with `ifMatch` found the object changed since it was read. */
export function changedError(url: string, op: string, key: string): WalArchiverError {
  return storeError(url, ErrorCodes.PRECONDITION_FAILED, op, key, 'object changed since it was read', false);
}

/** The object is under retention (its until-date as an ISO string or a Date). */
export function lockedError(
  url: string,
  op: string,
  key: string,
  retention: { mode: string; retainUntil: string | Date } | undefined,
): WalArchiverError {
  const until = retention?.retainUntil;
  const untilText = until === undefined ? '?' : typeof until === 'string' ? until : until.toISOString();
  return storeError(
    url,
    ErrorCodes.OBJECT_LOCKED,
    op,
    key,
    `object is under ${retention?.mode ?? ''} retention until ${untilText}`,
    false,
  );
}
