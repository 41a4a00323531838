import { describe, expect, it } from 'vitest';

import { WalArchiverError, isWalArchiverError } from '../../../contract/errors.js';
import { ProtoReader, ProtoWriter, WireType, varintSize } from '../../../contract/wal/protobuf.js';

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

/** Runs fn and returns the WalArchiverError it throws (failing the test if it throws anything else or nothing). */
function corruptionOf(fn: () => unknown): WalArchiverError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(WalArchiverError);
  expect((caught as WalArchiverError).code).toBe('CORRUPT');
  expect((caught as WalArchiverError).retryable).toBe(false);
  return caught as WalArchiverError;
}

/** Reads a whole message, skipping every field: what a decoder of an unknown message does. */
function skipAll(buf: Uint8Array): number {
  const r = new ProtoReader(buf, 'test');
  let fields = 0;
  while (!r.done()) {
    r.skip(r.readTag());
    fields++;
  }
  return fields;
}

describe('varints', () => {
  it('encodes the textbook examples', () => {
    expect(new ProtoWriter().varint(0).finish()).toEqual(hex('00'));
    expect(new ProtoWriter().varint(1).finish()).toEqual(hex('01'));
    expect(new ProtoWriter().varint(127).finish()).toEqual(hex('7f'));
    expect(new ProtoWriter().varint(128).finish()).toEqual(hex('8001'));
    expect(new ProtoWriter().varint(150).finish()).toEqual(hex('9601'));
    expect(new ProtoWriter().varint(300).finish()).toEqual(hex('ac02'));
    expect(new ProtoWriter().varint(2 ** 32).finish()).toEqual(hex('8080808010'));
    expect(new ProtoWriter().varint(2 ** 53 - 1).finish()).toEqual(hex('ffffffffffffff0f'));
  });

  it('round-trips values around every 7-bit boundary up to 2^53-1', () => {
    const values: number[] = [0, 1, 2 ** 53 - 1, 2 ** 53 - 2];
    for (let bits = 7; bits <= 52; bits += 7) values.push(2 ** bits - 1, 2 ** bits, 2 ** bits + 1);
    for (const v of values) {
      const buf = new ProtoWriter().varint(v).finish();
      expect(buf.length).toBe(varintSize(v));
      const r = new ProtoReader(buf);
      expect(r.readVarint()).toBe(v);
      expect(r.done()).toBe(true);
    }
  });

  it('reads any 64-bit varint as a bigint', () => {
    expect(new ProtoReader(hex('ffffffffffffffffff01')).readVarintBig()).toBe(2n ** 64n - 1n);
    expect(new ProtoReader(hex('80808080808080808001')).readVarintBig()).toBe(2n ** 63n);
  });

  it('accepts non-minimal encodings up to 10 bytes', () => {
    expect(new ProtoReader(hex('8180808000')).readVarint()).toBe(1);
  });

  it('rejects a modelled varint above 2^53-1', () => {
    const e = corruptionOf(() => new ProtoReader(hex('8080808080808010')).readVarint());
    expect(e.message).toMatch(/exceeds 2\^53-1 at byte 0/);
  });

  it('rejects varints longer than 10 bytes or overflowing 64 bits', () => {
    expect(corruptionOf(() => new ProtoReader(hex('ffffffffffffffffff02')).readVarintBig()).message).toMatch(
      /overflows 64 bits/,
    );
    expect(
      corruptionOf(() => new ProtoReader(hex('8080808080808080808000')).readVarintBig()).message,
    ).toMatch(/overflows 64 bits|longer than 10 bytes/);
  });

  it('rejects a truncated varint, naming its offset', () => {
    const r = new ProtoReader(hex('08 96'), 'Thing');
    expect(r.readTag().field).toBe(1);
    const e = corruptionOf(() => r.readVarint());
    expect(e.message).toBe('corrupt Thing: truncated varint at byte 1');
  });

  it('refuses to write values a varint field cannot hold', () => {
    for (const v of [-1, 1.5, 2 ** 53, Number.NaN]) {
      expect(() => new ProtoWriter().uint(1, v), String(v)).toThrow(/0 to 2\^53-1/);
    }
    expect(() => new ProtoWriter().uint32(1, 2 ** 32)).toThrow(/uint32/);
  });
});

describe('tags and wire types', () => {
  it('decodes field number and wire type', () => {
    const r = new ProtoReader(hex('08 01 12 00 1d 00000000 21 0000000000000000 a2 06 00'));
    const seen: Array<[number, number]> = [];
    while (!r.done()) {
      const t = r.readTag();
      seen.push([t.field, t.wireType]);
      r.skip(t);
    }
    expect(seen).toEqual([
      [1, WireType.VARINT],
      [2, WireType.LEN],
      [3, WireType.I32],
      [4, WireType.I64],
      [100, WireType.LEN],
    ]);
  });

  it('rejects wire types 6 and 7, field number 0 and field numbers past 2^29-1', () => {
    expect(corruptionOf(() => skipAll(hex('0e'))).message).toMatch(/bad wire type 6 .* at byte 0/);
    expect(corruptionOf(() => skipAll(hex('08 01 0f'))).message).toMatch(/bad wire type 7 .* at byte 2/);
    expect(corruptionOf(() => skipAll(hex('00 00'))).message).toMatch(/field number 0/);
    expect(corruptionOf(() => skipAll(hex('f8ffffff10 00'))).message).toMatch(/field number.* out of range/);
  });

  it('skips groups, nested groups included, and rejects unmatched group ends', () => {
    // field 1 group { field 2 varint 5, field 3 group { } }, then field 4 varint 1
    expect(skipAll(hex('0b 10 05 1b 1c 0c 20 01'))).toBe(2);
    expect(corruptionOf(() => skipAll(hex('0c'))).message).toMatch(/unexpected group end/);
    expect(corruptionOf(() => skipAll(hex('0b 10 05'))).message).toMatch(/truncated group/);
    expect(corruptionOf(() => skipAll(hex('0b 14'))).message).toMatch(/group end for field 2 inside group 1/);
  });

  it('rejects truncated fixed-width values', () => {
    expect(corruptionOf(() => skipAll(hex('1d 000000'))).message).toMatch(
      /truncated fixed32 value at byte 1/,
    );
    expect(corruptionOf(() => skipAll(hex('21 00000000000000'))).message).toMatch(
      /truncated fixed64 value at byte 1/,
    );
  });
});

describe('length-delimited fields', () => {
  it('rejects a length beyond the buffer, naming the offset of the length', () => {
    const e = corruptionOf(() => skipAll(hex('08 01 12 05 616263')));
    expect(e.message).toBe('corrupt test: length 5 exceeds the 3 bytes left at byte 3');
    expect(e.details).toMatchObject({ offset: 3 });
  });

  it('keeps offsets absolute inside nested messages', () => {
    // field 1 = { field 2 = { field 3 varint, truncated } }
    const buf = hex('0a 04 12 02 18 80');
    const outer = new ProtoReader(buf, 'Outer');
    outer.readTag();
    const mid = outer.readMessage('Mid');
    mid.readTag();
    const inner = mid.readMessage('Inner');
    inner.readTag();
    expect(corruptionOf(() => inner.readVarint()).message).toBe('corrupt Inner: truncated varint at byte 5');
  });

  it('a nested message cannot read past its own length', () => {
    // field 1 = { 2 bytes }, but the inner field claims 3 bytes; the outer buffer has more.
    const buf = hex('0a 02 12 03 616263');
    const outer = new ProtoReader(buf, 'Outer');
    outer.readTag();
    const inner = outer.readMessage('Inner');
    inner.readTag();
    expect(corruptionOf(() => inner.readBytes()).message).toMatch(
      /length 3 exceeds the 0 bytes left at byte 3/,
    );
  });

  it('rejects invalid UTF-8 in string fields', () => {
    const r = new ProtoReader(hex('0a 02 c328'), 'S');
    r.readTag();
    expect(corruptionOf(() => r.readString()).message).toMatch(/invalid UTF-8 .* at byte 1/);
  });

  it('writes and reads strings, bytes, nested messages and packed varints', () => {
    const buf = new ProtoWriter()
      .string(1, 'héllo')
      .bytes(2, Buffer.from([0, 255]))
      .message(3, (m) => m.uint(1, 300).bool(2, true))
      .packedVarints(4, [1, 300, 2 ** 40])
      .finish();
    const r = new ProtoReader(buf);
    expect(r.readTag().field).toBe(1);
    expect(r.readString()).toBe('héllo');
    expect(r.readTag().field).toBe(2);
    expect(r.readBytes()).toEqual(Buffer.from([0, 255]));
    expect(r.readTag().field).toBe(3);
    const m = r.readMessage('M');
    m.readTag();
    expect(m.readVarint()).toBe(300);
    m.readTag();
    expect(m.readBool()).toBe(true);
    expect(m.done()).toBe(true);
    const t = r.readTag();
    const values: number[] = [];
    r.readRepeatedVarint(t.wireType, values, t.offset);
    expect(values).toEqual([1, 300, 2 ** 40]);
    expect(r.done()).toBe(true);
  });

  it('returns the raw bytes of a skipped field, tag included', () => {
    const buf = hex('08 01 92 01 02 abcd 10 02');
    const r = new ProtoReader(buf);
    r.skip(r.readTag());
    const t = r.readTag();
    expect(t.field).toBe(18);
    expect(Buffer.from(r.skipRaw(t))).toEqual(hex('92 01 02 abcd'));
  });
});

describe('robustness', () => {
  it('every truncation of a valid message ends in CORRUPT or a shorter valid message, never another error', () => {
    const full = new ProtoWriter()
      .uint(1, 2 ** 50)
      .string(2, 'refs/heads/main')
      .message(3, (m) => m.bytes(1, Buffer.alloc(200, 7)).uint(2, 1))
      .tag(4, WireType.I32)
      .raw(hex('01020304'))
      .tag(5, WireType.I64)
      .raw(hex('0102030405060708'))
      .finish();
    const boundaries = new Set<number>();
    {
      const r = new ProtoReader(full);
      while (!r.done()) {
        r.skip(r.readTag());
        boundaries.add(r.offset);
      }
    }
    for (let len = 0; len < full.length; len++) {
      const prefix = full.subarray(0, len);
      if (len === 0 || boundaries.has(len)) {
        expect(() => skipAll(prefix)).not.toThrow();
      } else {
        corruptionOf(() => skipAll(prefix));
      }
    }
  });

  it('random bytes never raise anything but CORRUPT', () => {
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    for (let i = 0; i < 3000; i++) {
      const buf = Buffer.alloc(1 + (rand() % 40));
      for (let j = 0; j < buf.length; j++) buf[j] = rand() % 256;
      try {
        skipAll(buf);
      } catch (err) {
        expect(isWalArchiverError(err, 'CORRUPT'), String(err)).toBe(true);
      }
    }
  });
});
