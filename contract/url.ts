import { ErrorCodes, WalArchiverError } from './errors.js';

const SECRET_PARAMS = /^(secret|password|pass|token|key|secretaccesskey|sessiontoken|credentials?)$/i;

/**
 * The URL as it may be printed: user-info password and secret-looking query
 * parameters replaced by `***`. Works on malformed input too (best effort),
 * because it is used to build the error message for malformed input.
 */
export function maskUrl(raw: string): string {
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    return raw.replace(/\/\/([^:/@]+):([^@/]*)@/, '//$1:***@');
  }
  if (parsed.password) parsed.password = '***';
  for (const name of [...parsed.searchParams.keys()]) {
    if (SECRET_PARAMS.test(name)) parsed.searchParams.set(name, '***');
  }
  // URLSearchParams encodes '*' as %2A; keep it readable.
  return parsed.toString().replace(/%2A%2A%2A/g, '***');
}

/** Parse a service URL, with one clear error naming the (masked) URL when it is malformed. */
export function parseServiceUrl(raw: string, what: string): URL {
  if (typeof raw !== 'string' || raw.trim() === '') {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `${what} URL is empty`);
  }
  try {
    return new URL(raw);
  } catch (cause) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `${what} URL is malformed: ${maskUrl(raw)}`, {
      cause,
      retryable: false,
    });
  }
}

export function unsupportedScheme(raw: string, what: string, supported: string[]): WalArchiverError {
  const scheme = raw.split(':')[0] ?? '';
  return new WalArchiverError(
    ErrorCodes.UNSUPPORTED_SCHEME,
    `${what} URL has unsupported scheme "${scheme}:" (use ${supported.join(' or ')}): ${maskUrl(raw)}`,
    { retryable: false },
  );
}

/** Read a boolean query parameter: absent → fallback; "true"/"1"/"yes" → true; "false"/"0"/"no" → false. */
export function boolParam(url: URL, name: string, fallback: boolean, raw: string, what: string): boolean {
  const v = url.searchParams.get(name);
  if (v === null || v === '') return fallback;
  if (/^(true|1|yes)$/i.test(v)) return true;
  if (/^(false|0|no)$/i.test(v)) return false;
  throw new WalArchiverError(
    ErrorCodes.INVALID_ARGUMENT,
    `${what} URL parameter ${name}=${v} is not a boolean: ${maskUrl(raw)}`,
    { retryable: false },
  );
}
