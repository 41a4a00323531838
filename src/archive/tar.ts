import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';

/**
 * The ustar framing segments are written in: one header block per member,
 * each member padded to whole blocks, two zero blocks at the end.
 */

const BLOCK = 512;
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);
const ZERO_BLOCK = Buffer.alloc(BLOCK);

function octal(value: number, digits: number): string {
  const s = value.toString(8);
  if (s.length > digits) return '7'.repeat(digits) + ' ';
  return s.padStart(digits, '0') + ' ';
}

/**
 * One ustar header block, byte for byte as tar-stream writes it (owner 0,
 * mtime 0, no user or group names), so segments stay identical to those
 * written before. Names here are short (`<LSN>/<file>`), never needing a
 * prefix or PAX record.
 */
export function tarHeader(name: string, type: 'file' | 'directory', mode: number, size: number): Buffer {
  if (Buffer.byteLength(name) !== name.length || name.length > 100) {
    throw new WalArchiverError(ErrorCodes.INTERNAL, `tar name "${name}" is not short ASCII`);
  }
  const buf = Buffer.alloc(BLOCK);
  buf.write(name, 0, 'latin1');
  buf.write(octal(mode & 0o7777, 6), 100, 'latin1');
  buf.write(octal(0, 6), 108, 'latin1');
  buf.write(octal(0, 6), 116, 'latin1');
  if (size.toString(8).length > 11) {
    buf[124] = 0x80;
    let n = size;
    for (let i = 11; i > 0; i--) {
      buf[124 + i] = n & 0xff;
      n = Math.floor(n / 0x100);
    }
  } else {
    buf.write(octal(size, 11), 124, 'latin1');
  }
  buf.write(octal(0, 11), 136, 'latin1');
  buf[156] = type === 'directory' ? 0x35 : 0x30;
  buf.write('ustar\u000000', 257, 'latin1');
  buf.write(octal(0, 6), 329, 'latin1');
  buf.write(octal(0, 6), 337, 'latin1');
  let sum = 8 * 32;
  for (let i = 0; i < 148; i++) sum += buf[i]!;
  for (let i = 156; i < BLOCK; i++) sum += buf[i]!;
  buf.write(octal(sum, 6), 148, 'latin1');
  return buf;
}

export function padding(size: number): Buffer | undefined {
  const rest = size % BLOCK;
  return rest === 0 ? undefined : ZERO_BLOCK.subarray(0, BLOCK - rest);
}
