import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import type { CreateOptions, Retention } from './object-store.js';

/** The longest key (in UTF-8 bytes) any store accepts; S3 allows 1024 including the prefix. */
export const MAX_KEY_BYTES = 900;

const METADATA_KEY = /^[a-z0-9][a-z0-9-]*$/;
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

function invalid(url: string, what: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `object store ${url}: ${what}`, {
    retryable: false,
  });
}

/**
 * Checks a key against the rules every store shares: `/`-separated, no empty,
 * `.` or `..` segment, no segment starting with `.` (the folder store keeps its
 * own files there), no control characters.
 */
export function validateKey(key: string, url: string): void {
  if (typeof key !== 'string' || key === '') throw invalid(url, 'object key is empty');
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) {
    throw invalid(url, `object key is longer than ${MAX_KEY_BYTES} bytes: "${key.slice(0, 40)}…"`);
  }
  if (CONTROL.test(key)) throw invalid(url, `object key ${JSON.stringify(key)} contains a control character`);
  for (const segment of key.split('/')) {
    if (segment === '')
      throw invalid(url, `object key "${key}" has an empty segment (leading, trailing or double "/")`);
    if (segment.startsWith('.')) throw invalid(url, `object key "${key}" has a segment starting with "."`);
  }
}

/** A list prefix: empty, or a key prefix whose complete segments follow the key rules. */
export function validatePrefix(prefix: string, url: string): void {
  if (typeof prefix !== 'string') throw invalid(url, 'list prefix is not a string');
  if (prefix === '') return;
  if (CONTROL.test(prefix))
    throw invalid(url, `list prefix ${JSON.stringify(prefix)} contains a control character`);
  const segments = prefix.split('/');
  segments.forEach((segment, i) => {
    const last = i === segments.length - 1;
    if (segment === '' && !last) throw invalid(url, `list prefix "${prefix}" has an empty segment`);
    if (segment.startsWith('.'))
      throw invalid(url, `list prefix "${prefix}" has a segment starting with "."`);
  });
}

/** Checks user metadata and retention of a create or replace. */
export function validateCreateOptions(options: CreateOptions | undefined, url: string): void {
  for (const [name, value] of Object.entries(options?.metadata ?? {})) {
    if (!METADATA_KEY.test(name)) throw invalid(url, `metadata key "${name}" is not lower-case [a-z0-9-]`);
    if (typeof value !== 'string' || !PRINTABLE_ASCII.test(value)) {
      throw invalid(url, `metadata value of "${name}" is not printable ASCII`);
    }
  }
  const retention = options?.retention;
  if (retention !== undefined) {
    if (retention.mode !== 'GOVERNANCE' && retention.mode !== 'COMPLIANCE') {
      throw invalid(url, `retention mode "${String(retention.mode)}" is not GOVERNANCE or COMPLIANCE`);
    }
    if (!(retention.retainUntil instanceof Date) || Number.isNaN(retention.retainUntil.getTime())) {
      throw invalid(url, 'retention retainUntil is not a valid date');
    }
  }
  if (options?.contentType !== undefined && !PRINTABLE_ASCII.test(options.contentType)) {
    throw invalid(url, 'content type is not printable ASCII');
  }
  if (options?.size !== undefined && (!Number.isSafeInteger(options.size) || options.size < 0)) {
    throw invalid(url, `size ${options.size} is not a non-negative integer`);
  }
}

/** Validates a byte range of a get. */
export function validateRange(offset: number | undefined, length: number | undefined, url: string): void {
  if (offset !== undefined && (!Number.isSafeInteger(offset) || offset < 0)) {
    throw invalid(url, `get offset ${offset} is not a non-negative integer`);
  }
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) {
    throw invalid(url, `get length ${length} is not a non-negative integer`);
  }
}

/** Whether a retention still forbids deleting or replacing at `now`. */
export function isRetained(retention: Retention | undefined, now: Date): boolean {
  return retention !== undefined && retention.retainUntil.getTime() > now.getTime();
}

/** Byte order of the UTF-8 encodings (what S3 lists in), not UTF-16 code-unit order. */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
