// Hostile and unusual protobuf input, through the decoders the WAL uses (the
// generated messages behind contract/wal/raftpb.ts, log-entry.ts and
// entry-info.ts, checked by contract/proto/codec.ts): everything malformed
// is CORRUPT, naming the message and the byte offset.
import { describe, expect, it } from 'vitest';

import { WalArchiverError, isWalArchiverError } from '../../../../contract/errors.js';
import { decodeEntryInfo, encodeEntryInfo } from '../../../../contract/wal/entry-info.js';
import {
  decodeLogEntry,
  encodeLogEntry,
  newLogEntry,
  operation,
} from '../../../../contract/wal/log-entry.js';
import {
  decodeConfState,
  decodeHardState,
  decodeRaftEntry,
  encodeHardState,
} from '../../../../contract/wal/raftpb.js';
import { ProtoWriter } from '../../../helpers/proto-writer.js';

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

/** Runs fn and returns the WalArchiverError it throws (failing the test if it throws anything else or nothing). */
function errorOf(fn: () => unknown, code = 'CORRUPT'): WalArchiverError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(WalArchiverError);
  expect((caught as WalArchiverError).code).toBe(code);
  expect((caught as WalArchiverError).retryable).toBe(false);
  return caught as WalArchiverError;
}

const corruptionOf = (fn: () => unknown) => errorOf(fn);

/** A HardState whose only set field is `term` (field 1), the simplest home for a modelled varint. */
const term = (varint: string) => hex(`08 ${varint}`);

describe('varints', () => {
  it('encodes the textbook examples', () => {
    const encoded = (v: number) => encodeHardState({ term: v, vote: 0, commit: 0 }).subarray(1, -4);
    expect(encoded(0)).toEqual(hex('00'));
    expect(encoded(1)).toEqual(hex('01'));
    expect(encoded(127)).toEqual(hex('7f'));
    expect(encoded(128)).toEqual(hex('8001'));
    expect(encoded(150)).toEqual(hex('9601'));
    expect(encoded(300)).toEqual(hex('ac02'));
    expect(encoded(2 ** 32)).toEqual(hex('8080808010'));
    expect(encoded(2 ** 53 - 1)).toEqual(hex('ffffffffffffff0f'));
  });

  it('round-trips values around every 7-bit boundary up to 2^53-1', () => {
    const values: number[] = [0, 1, 2 ** 53 - 1, 2 ** 53 - 2];
    for (let bits = 7; bits <= 52; bits += 7) values.push(2 ** bits - 1, 2 ** bits, 2 ** bits + 1);
    for (const v of values) {
      const hs = { term: v, vote: v, commit: v };
      expect(decodeHardState(encodeHardState(hs))).toEqual(hs);
    }
  });

  it('skips an unknown varint of any 64-bit value', () => {
    expect(decodeHardState(hex('0801 48 ffffffffffffffffff01 48 80808080808080808001'))).toEqual({
      term: 1,
      vote: 0,
      commit: 0,
    });
  });

  it('accepts non-minimal encodings up to 10 bytes', () => {
    expect(decodeHardState(term('8180808000')).term).toBe(1);
  });

  it('rejects a modelled varint above 2^53-1', () => {
    const e = corruptionOf(() => decodeHardState(term('8080808080808010')));
    expect(e.message).toMatch(/exceeds 2\^53-1 at byte 1/);
  });

  it('rejects a uint32 above 2^32-1 and an enum above 2^31-1', () => {
    const mode = new ProtoWriter().message(10, (op) => op.message(3, (d) => d.uint(2, 2 ** 32))).finish();
    expect(corruptionOf(() => decodeLogEntry(mode)).message).toMatch(/uint32 value exceeds 2\^32-1/);
    expect(corruptionOf(() => decodeRaftEntry(hex('08 8080808008'))).message).toMatch(/enum value exceeds/);
  });

  it('rejects varints longer than 10 bytes or overflowing 64 bits', () => {
    expect(corruptionOf(() => decodeHardState(term('ffffffffffffffffff02'))).message).toMatch(
      /overflows 64 bits/,
    );
    expect(corruptionOf(() => decodeHardState(term('8080808080808080808000'))).message).toMatch(
      /overflows 64 bits|longer than 10 bytes/,
    );
  });

  it('rejects a truncated varint, naming its offset', () => {
    const e = corruptionOf(() => decodeHardState(hex('08 96'), 'Thing'));
    expect(e.message).toBe('corrupt Thing: truncated varint at byte 1');
  });

  it('refuses to write values a varint field cannot hold', () => {
    for (const v of [-1, 1.5, 2 ** 53, Number.NaN]) {
      const e = errorOf(() => encodeHardState({ term: 0, vote: v, commit: 0 }), 'INVALID_ARGUMENT');
      expect(e.message, String(v)).toMatch(/0 to 2\^53-1/);
    }
    const info = { contentSha256: Buffer.alloc(32), committedAt: 1, files: 2 ** 32 };
    expect(errorOf(() => encodeEntryInfo(info), 'INVALID_ARGUMENT').message).toMatch(/files .* 2\^32-1/);
    const dir = newLogEntry({ operations: [operation.createDirectory('d', 2 ** 32)] });
    expect(errorOf(() => encodeLogEntry(dir), 'INVALID_ARGUMENT').message).toMatch(/mode .* 2\^32-1/);
  });
});

describe('tags and wire types', () => {
  it('skips unknown fields of every wire type', () => {
    // term = 1, then unknown fields 4 (LEN), 5 (I32), 6 (I64) and 100 (LEN)
    const buf = hex('08 01 22 00 2d 00000000 31 0000000000000000 a2 06 00');
    expect(decodeHardState(buf)).toEqual({ term: 1, vote: 0, commit: 0 });
  });

  it('rejects wire types 6 and 7, field number 0 and field numbers past 2^29-1', () => {
    expect(corruptionOf(() => decodeHardState(hex('0e'))).message).toMatch(/bad wire type 6 .* at byte 0/);
    expect(corruptionOf(() => decodeHardState(hex('08 01 0f'))).message).toMatch(
      /bad wire type 7 .* at byte 2/,
    );
    expect(corruptionOf(() => decodeHardState(hex('00 00'))).message).toMatch(/field number 0/);
    expect(corruptionOf(() => decodeHardState(hex('f8ffffff10 00'))).message).toMatch(
      /field number.* out of range/,
    );
  });

  it('rejects a wrong wire type for a known field', () => {
    expect(corruptionOf(() => decodeHardState(hex('0a0100'))).message).toBe(
      'corrupt raftpb.HardState: wire type 2 for field term (1), expected 0 at byte 0',
    );
  });

  it('skips groups, nested groups included, and rejects unmatched group ends', () => {
    // unknown field 5 group { field 2 varint 5, field 3 group { } }, then unknown field 6 varint 1
    expect(decodeHardState(hex('2b 10 05 1b 1c 2c 30 01'))).toEqual({ term: 0, vote: 0, commit: 0 });
    expect(corruptionOf(() => decodeHardState(hex('2c'))).message).toMatch(/unexpected group end/);
    expect(corruptionOf(() => decodeHardState(hex('2b 10 05'))).message).toMatch(/truncated group/);
    expect(corruptionOf(() => decodeHardState(hex('2b 14'))).message).toMatch(
      /group end for field 2 inside group 5/,
    );
  });

  it('rejects truncated fixed-width values', () => {
    expect(corruptionOf(() => decodeHardState(hex('2d 000000'))).message).toMatch(
      /truncated fixed32 value at byte 1/,
    );
    expect(corruptionOf(() => decodeHardState(hex('31 00000000000000'))).message).toMatch(
      /truncated fixed64 value at byte 1/,
    );
  });
});

describe('length-delimited fields', () => {
  it('rejects a length beyond the buffer, naming the offset of the length', () => {
    const e = corruptionOf(() => decodeHardState(hex('08 01 22 05 616263'), 'test'));
    expect(e.message).toBe('corrupt test: length 5 exceeds the 3 bytes left at byte 3');
    expect(e.details).toMatchObject({ offset: 3 });
  });

  it('keeps offsets absolute inside nested messages', () => {
    // operations = { create_directory = { mode = truncated varint } }
    expect(corruptionOf(() => decodeLogEntry(hex('52 04 1a 02 10 80'))).message).toBe(
      'corrupt LogEntry.Operation.CreateDirectory: truncated varint at byte 5',
    );
  });

  it('a nested message cannot read past its own length', () => {
    // operations = { 2 bytes }, but its remove_directory_entry claims 3 bytes; the outer buffer has more.
    expect(corruptionOf(() => decodeLogEntry(hex('52 02 12 03 616263'))).message).toMatch(
      /length 3 exceeds the 0 bytes left at byte 3/,
    );
  });

  it('rejects invalid UTF-8 in string fields', () => {
    expect(corruptionOf(() => decodeLogEntry(hex('0a 02 c328'), 'S')).message).toMatch(
      /invalid UTF-8 .* at byte 1/,
    );
  });

  it('keeps the raw bytes of unknown fields, tags included', () => {
    // relative_path = "r", unknown field 18 (LEN) = abcd, unknown field 12 varint 2
    const decoded = decodeLogEntry(hex('0a 01 72 92 01 02 abcd 60 02'));
    expect(decoded.relativePath).toBe('r');
    expect(decoded.unknownFields).toEqual(hex('92 01 02 abcd 60 02'));
  });
});

describe('robustness', () => {
  it('every truncation of a valid message ends in CORRUPT or a shorter valid message, never another error', () => {
    const parts = [
      new ProtoWriter().message(11, (m) => m.uint(1, 2 ** 50)),
      new ProtoWriter().string(1, 'refs/heads/main'),
      new ProtoWriter().message(10, (op) => op.message(4, (s) => s.bytes(1, Buffer.alloc(200, 7)))),
      new ProtoWriter().tag(4, 5).raw(hex('01020304')),
      new ProtoWriter().tag(5, 1).raw(hex('0102030405060708')),
    ].map((w) => w.finish());
    const full = Buffer.concat(parts);
    const ends = parts.map((_, i) => Buffer.concat(parts.slice(0, i + 1)).length);
    for (let len = 0; len < full.length; len++) {
      const decode = () => decodeLogEntry(full.subarray(0, len));
      // A prefix ending on a field boundary is a valid entry and decodes; any other is CORRUPT.
      if (len === 0 || ends.includes(len)) decode();
      else corruptionOf(decode);
    }
  });

  it('random bytes never raise anything but CORRUPT', () => {
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    const decoders = [decodeLogEntry, decodeRaftEntry, decodeHardState, decodeConfState, decodeEntryInfo];
    for (let i = 0; i < 3000; i++) {
      const buf = Buffer.alloc(1 + (rand() % 40));
      for (let j = 0; j < buf.length; j++) buf[j] = rand() % 256;
      for (const decode of decoders) {
        try {
          decode(buf);
        } catch (err) {
          expect(isWalArchiverError(err, 'CORRUPT'), String(err)).toBe(true);
        }
      }
    }
  });
});
