/**
 * Log sequence numbers (LSNs) and the names derived from them.
 *
 * - An entry directory is named by its LSN in base 36, lower case, zero-padded
 *   to 13 characters (`0000000000001` is LSN 1), so that a sorted listing is
 *   log order. 13 base-36 digits hold any 64-bit value; this code keeps LSNs
 *   as `number` and therefore accepts 1 … 2^53-1 only.
 * - Files staged in an entry are named by a base-36 counter starting at 1
 *   (`1`, `2`, … `9`, `a`, … `z`, `10`, …), without padding.
 */

import { ErrorCodes, WalArchiverError } from '../errors.js';

/** The largest LSN this code handles: the largest integer a `number` holds exactly. */
export const MAX_LSN = Number.MAX_SAFE_INTEGER;
/** Length of an entry directory name. */
export const LSN_NAME_LENGTH = 13;

const DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz';
const LSN_NAME_PATTERN = /^[0-9a-z]{13}$/;
const STAGED_NAME_PATTERN = /^[1-9a-z][0-9a-z]*$/;

function toBase36(value: number): string {
  // Division by hand: exact for every safe integer, whatever Number#toString does.
  let out = '';
  let v = value;
  do {
    out = DIGITS[v % 36] + out;
    v = Math.floor(v / 36);
  } while (v > 0);
  return out;
}

/** Value of a string of base-36 digits, or undefined past MAX_LSN. The caller checks the characters. */
function fromBase36(digits: string): number | undefined {
  let value = 0;
  for (const ch of digits) {
    value = value * 36 + DIGITS.indexOf(ch);
    if (value > MAX_LSN) return undefined;
  }
  return value;
}

/** Whether `value` is a valid LSN: an integer from 1 to MAX_LSN. */
export function isValidLsn(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 1;
}

/** Throws INVALID_ARGUMENT unless `value` is a valid LSN. */
export function assertLsn(value: unknown, what = 'LSN'): asserts value is number {
  if (!isValidLsn(value)) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `${what} must be an integer from 1 to ${MAX_LSN}, got ${String(value)}`,
      { details: { lsn: value } },
    );
  }
}

/** The entry directory name of an LSN: `formatLsn(1) === '0000000000001'`. */
export function formatLsn(lsn: number): string {
  assertLsn(lsn);
  return toBase36(lsn).padStart(LSN_NAME_LENGTH, '0');
}

/**
 * The LSN an entry directory name stands for, or undefined when the name is
 * not one: wrong length, upper case, a character outside [0-9a-z], zero, or a
 * value above MAX_LSN.
 */
export function tryParseLsn(name: string): number | undefined {
  if (!LSN_NAME_PATTERN.test(name)) return undefined;
  const value = fromBase36(name);
  return value === undefined || value === 0 ? undefined : value;
}

/** Like tryParseLsn, but throws INVALID_ARGUMENT naming the problem. */
export function parseLsn(name: string): number {
  const value = tryParseLsn(name);
  if (value !== undefined) return value;
  let why: string;
  if (name.length !== LSN_NAME_LENGTH) why = `must be ${LSN_NAME_LENGTH} characters long`;
  else if (!LSN_NAME_PATTERN.test(name)) why = 'may only contain 0-9 and a-z';
  else if (/^0+$/.test(name)) why = 'LSN 0 is not a log position';
  else why = `LSN exceeds ${MAX_LSN}`;
  throw new WalArchiverError(
    ErrorCodes.INVALID_ARGUMENT,
    `invalid LSN directory name ${JSON.stringify(name)}: ${why}`,
    {
      details: { name },
    },
  );
}

/** Name of the n-th file staged in an entry (n from 1): `stagedFileName(10) === 'a'`. */
export function stagedFileName(n: number): string {
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `staged file number must be a positive integer, got ${n}`,
    );
  }
  return toBase36(n);
}

/** The number a staged file name stands for, or undefined if it is not one (no leading zero, lower case). */
export function parseStagedFileName(name: string): number | undefined {
  if (!STAGED_NAME_PATTERN.test(name)) return undefined;
  return fromBase36(name);
}

/** The staged file names in order: `1`, `2`, … `9`, `a`, … `z`, `10`, … */
export function* stagedFileNames(): Generator<string, never, void> {
  for (let n = 1; ; n++) yield stagedFileName(n);
}
