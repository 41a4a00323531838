/**
 * A small protobuf wire-format reader and writer, enough for the messages in
 * a WAL entry (Gitaly's LogEntry, etcd's raftpb).
 *
 * Integers are `number`: every varint this project models is a uint64 that
 * stays below 2^53 (LSNs, terms, node IDs, file modes). Reading a modelled
 * varint above 2^53-1 is CORRUPT; unknown fields are skipped whatever their
 * value.
 *
 * Decoding is strict. A truncated varint, tag or length-delimited field, a
 * length beyond the end of the message, a varint longer than 10 bytes, wire
 * types 6 and 7, field number 0, an unmatched group end, or an invalid UTF-8
 * string are all WalArchiverError CORRUPT, with the byte offset (from the
 * start of the outermost buffer) and the message being read.
 */

import { ErrorCodes, WalArchiverError } from '../errors.js';

export const WireType = {
  VARINT: 0,
  I64: 1,
  LEN: 2,
  SGROUP: 3,
  EGROUP: 4,
  I32: 5,
} as const;
export type WireType = (typeof WireType)[keyof typeof WireType];

/** The largest field number protobuf allows. */
export const MAX_FIELD_NUMBER = 2 ** 29 - 1;
const MAX_VARINT_BYTES = 10;
const MAX_GROUP_DEPTH = 64;

export interface Tag {
  field: number;
  wireType: WireType;
  /** Offset of the tag's first byte in the outermost buffer. */
  offset: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A CORRUPT error for bad protobuf input. */
export function protoCorrupt(what: string, offset: number, problem: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `corrupt ${what}: ${problem} at byte ${offset}`, {
    retryable: false,
    details: { message: what, offset },
  });
}

/**
 * Reads one message. `what` names the message in error messages; `base` is
 * the offset of `buf[0]` in the outermost buffer, so that nested readers
 * report offsets a person can find with a hex dump.
 */
export class ProtoReader {
  private pos: number;
  private readonly end: number;

  constructor(
    private readonly buf: Uint8Array,
    readonly what = 'protobuf message',
    private readonly base = 0,
    start = 0,
    end = buf.length,
  ) {
    this.pos = start;
    this.end = end;
  }

  /** Offset of the next byte in the outermost buffer. */
  get offset(): number {
    return this.base + this.pos;
  }

  /** Whether the whole message has been read. */
  done(): boolean {
    return this.pos >= this.end;
  }

  /** A CORRUPT error at the current position (or at `offset`). */
  corrupt(problem: string, offset = this.offset): WalArchiverError {
    return protoCorrupt(this.what, offset, problem);
  }

  /** Reads a varint as a 64-bit pattern split into `lo` (low 32 bits) and `hi`; validates length and overflow. */
  private readVarintParts(): { lo: number; hi: number } {
    const start = this.pos;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      if (this.pos >= this.end) throw this.corrupt('truncated varint', this.base + start);
      const b = this.buf[this.pos++]!;
      const bits = b & 0x7f;
      if (i < 4) {
        lo += bits * 2 ** (7 * i);
      } else if (i === 4) {
        lo += (bits & 0x0f) * 2 ** 28;
        hi += bits >>> 4;
      } else {
        if (i === 9 && b > 1) throw this.corrupt('varint overflows 64 bits', this.base + start);
        hi += bits * 2 ** (7 * i - 32);
      }
      if (b < 0x80) return { lo, hi };
    }
    throw this.corrupt('varint longer than 10 bytes', this.base + start);
  }

  /** Reads a varint that must be at most 2^53-1 (a modelled uint64/uint32/enum/bool). */
  readVarint(): number {
    const start = this.offset;
    const { lo, hi } = this.readVarintParts();
    if (hi >= 2 ** 21) throw this.corrupt('varint value exceeds 2^53-1', start);
    return hi * 2 ** 32 + lo;
  }

  /** Reads a varint as a bigint (any 64-bit value). */
  readVarintBig(): bigint {
    const { lo, hi } = this.readVarintParts();
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** Reads a uint32 field: a varint that must fit in 32 bits. */
  readUint32(): number {
    const start = this.offset;
    const v = this.readVarint();
    if (v > 0xffffffff) throw this.corrupt('uint32 value exceeds 2^32-1', start);
    return v;
  }

  readBool(): boolean {
    const { lo, hi } = this.readVarintParts();
    return lo !== 0 || hi !== 0;
  }

  /** Reads a field tag; throws on field number 0, out-of-range field numbers and wire types 6 and 7. */
  readTag(): Tag {
    const offset = this.offset;
    const { lo, hi } = this.readVarintParts();
    if (hi !== 0) throw this.corrupt('field number out of range', offset);
    const wireType = lo & 7;
    const field = Math.floor(lo / 8);
    if (wireType > 5) throw this.corrupt(`bad wire type ${wireType} (field ${field})`, offset);
    if (field === 0) throw this.corrupt('field number 0', offset);
    if (field > MAX_FIELD_NUMBER) throw this.corrupt(`field number ${field} out of range`, offset);
    return { field, wireType: wireType as WireType, offset };
  }

  /** Reads a length prefix and returns [start, end) of the payload within `buf`, checked against the message end. */
  private readLengthBounds(): [number, number] {
    const offset = this.offset;
    const { lo, hi } = this.readVarintParts();
    const remaining = this.end - this.pos;
    if (hi !== 0 || lo > remaining) {
      const len = hi === 0 ? String(lo) : 'over 2^32';
      throw this.corrupt(`length ${len} exceeds the ${remaining} bytes left`, offset);
    }
    const start = this.pos;
    this.pos += lo;
    return [start, this.pos];
  }

  /** Reads a length-delimited field as a new Buffer (a copy, so it outlives the input). */
  readBytes(): Buffer {
    const [start, end] = this.readLengthBounds();
    return Buffer.from(this.buf.subarray(start, end));
  }

  /** Reads a length-delimited field as UTF-8 text; invalid UTF-8 is CORRUPT. */
  readString(): string {
    const offset = this.offset;
    const [start, end] = this.readLengthBounds();
    try {
      return utf8.decode(this.buf.subarray(start, end));
    } catch {
      throw this.corrupt('invalid UTF-8 in string field', offset);
    }
  }

  /** Reads a length-delimited field as a reader over its payload (offsets stay absolute). */
  readMessage(what: string): ProtoReader {
    const [start, end] = this.readLengthBounds();
    return new ProtoReader(this.buf, what, this.base, start, end);
  }

  /**
   * Reads the values of a repeated varint field, packed or not: appends to
   * `into` either the one value (wire type 0) or every value of the packed run.
   */
  readRepeatedVarint(wireType: WireType, into: number[], offset: number): void {
    if (wireType === WireType.VARINT) {
      into.push(this.readVarint());
    } else if (wireType === WireType.LEN) {
      const packed = this.readMessage(this.what);
      while (!packed.done()) into.push(packed.readVarint());
    } else {
      throw this.corrupt(`wire type ${wireType} for a repeated varint field`, offset);
    }
  }

  /** Skips the value of a field whose tag was just read. */
  skip(tag: Tag, depth = 0): void {
    switch (tag.wireType) {
      case WireType.VARINT:
        this.readVarintParts();
        return;
      case WireType.I64:
        this.skipFixed(8);
        return;
      case WireType.I32:
        this.skipFixed(4);
        return;
      case WireType.LEN:
        this.readLengthBounds();
        return;
      case WireType.SGROUP: {
        if (depth >= MAX_GROUP_DEPTH) throw this.corrupt('groups nested too deeply', tag.offset);
        for (;;) {
          if (this.done()) throw this.corrupt(`truncated group (field ${tag.field})`, tag.offset);
          const inner = this.readTag();
          if (inner.wireType === WireType.EGROUP) {
            if (inner.field !== tag.field) {
              throw this.corrupt(
                `group end for field ${inner.field} inside group ${tag.field}`,
                inner.offset,
              );
            }
            return;
          }
          this.skip(inner, depth + 1);
        }
      }
      case WireType.EGROUP:
        throw this.corrupt(`unexpected group end (field ${tag.field})`, tag.offset);
    }
  }

  /** Skips a field and returns its raw bytes, tag included (to keep unknown fields). */
  skipRaw(tag: Tag): Uint8Array {
    const startPos = tag.offset - this.base;
    this.skip(tag);
    return this.buf.subarray(startPos, this.pos);
  }

  private skipFixed(n: number): void {
    if (this.end - this.pos < n) throw this.corrupt(`truncated fixed${n * 8} value`);
    this.pos += n;
  }

  /** Throws CORRUPT unless the wire type is the expected one for a known field. */
  expect(tag: Tag, wireType: WireType, fieldName: string): void {
    if (tag.wireType !== wireType) {
      throw this.corrupt(
        `wire type ${tag.wireType} for field ${fieldName} (${tag.field}), expected ${wireType}`,
        tag.offset,
      );
    }
  }
}

/** Number of bytes a varint takes. */
export function varintSize(value: number): number {
  let n = 1;
  let v = value;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function checkVarintValue(value: number, field: number | undefined): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    const where = field === undefined ? '' : ` for field ${field}`;
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `protobuf varint${where} must be an integer from 0 to 2^53-1, got ${value}`,
    );
  }
}

/**
 * Builds one message. Fields are written in call order; the caller writes
 * them in field-number order, as the reference encoders do.
 */
export class ProtoWriter {
  private readonly chunks: Uint8Array[] = [];
  private scratch: number[] = [];
  private length = 0;

  private flushScratch(): void {
    if (this.scratch.length > 0) {
      this.chunks.push(Uint8Array.from(this.scratch));
      this.length += this.scratch.length;
      this.scratch = [];
    }
  }

  /** Writes a bare varint. */
  varint(value: number): this {
    checkVarintValue(value, undefined);
    let v = value;
    while (v >= 0x80) {
      this.scratch.push((v % 128) | 0x80);
      v = Math.floor(v / 128);
    }
    this.scratch.push(v);
    return this;
  }

  /** Writes a field tag. */
  tag(field: number, wireType: WireType): this {
    if (!Number.isInteger(field) || field < 1 || field > MAX_FIELD_NUMBER) {
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `protobuf field number out of range: ${field}`);
    }
    return this.varint(field * 8 + wireType);
  }

  /** A varint field (uint64, uint32, enum), written even when zero. */
  uint(field: number, value: number): this {
    checkVarintValue(value, field);
    return this.tag(field, WireType.VARINT).varint(value);
  }

  /** A uint32 field, written even when zero. */
  uint32(field: number, value: number): this {
    checkVarintValue(value, field);
    if (value > 0xffffffff) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `uint32 field ${field} exceeds 2^32-1: ${value}`,
      );
    }
    return this.uint(field, value);
  }

  bool(field: number, value: boolean): this {
    return this.tag(field, WireType.VARINT).varint(value ? 1 : 0);
  }

  /** A length-delimited field with the given payload. */
  bytes(field: number, value: Uint8Array): this {
    this.tag(field, WireType.LEN).varint(value.length);
    this.raw(value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, Buffer.from(value, 'utf8'));
  }

  /** A nested message built by `build`. */
  message(field: number, build: (w: ProtoWriter) => void): this {
    const inner = new ProtoWriter();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  /** A packed repeated varint field (omitted when empty). */
  packedVarints(field: number, values: readonly number[]): this {
    if (values.length === 0) return this;
    const inner = new ProtoWriter();
    for (const v of values) inner.varint(v);
    return this.bytes(field, inner.finish());
  }

  /** Raw bytes, e.g. unknown fields kept from decoding. */
  raw(bytes: Uint8Array): this {
    if (bytes.length === 0) return this;
    this.flushScratch();
    this.chunks.push(bytes);
    this.length += bytes.length;
    return this;
  }

  finish(): Buffer {
    this.flushScratch();
    return Buffer.concat(this.chunks, this.length);
  }
}
