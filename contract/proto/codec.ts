/**
 * Reading and writing the generated WAL messages (./gen, from the .proto files
 * beside this one) under the project's rules, on top of protobuf-es:
 *
 * - Decoding is strict. protobuf-es reads a known field whatever its wire
 *   type and lets a nested message's last field run past the message's end,
 *   so the bytes are first checked against the schema: a truncated varint,
 *   tag or length-delimited field, a length beyond the end of its message, a
 *   varint longer than 10 bytes or overflowing 64 bits, wire types 6 and 7,
 *   field number 0, an unmatched group end, a wrong wire type for a known
 *   field, invalid UTF-8 in a string field, a 64-bit integer above 2^53-1, a
 *   uint32 above 2^32-1 or an enum above 2^31-1 are all WalArchiverError
 *   CORRUPT, naming the message and the byte offset (from the start of the
 *   buffer). Unknown fields are skipped whatever their value.
 * - The project's models are plain objects: bytes are `Buffer`s (copies, so
 *   they outlive the input), 64-bit integers are `number`s (every one this
 *   project models stays below 2^53: LSNs, terms, node IDs, timestamps),
 *   field names are the generated ones with a lower-case first letter, the
 *   unknown fields of a message (when kept) are its raw bytes in
 *   `unknownFields`, and a message that only holds a oneof of messages is
 *   flattened: `{ kind: <case>, ...<case's fields> }` (`kind: 'unknown'` when
 *   no case this schema knows is set), its own unknown fields in
 *   `<oneof>UnknownFields`. A bytes field with explicit presence is absent
 *   from the model when unset; every other field is always there.
 * - Encoding writes fields in field-number order, unknown fields last, as the
 *   Go runtime does; a number a field cannot hold is INVALID_ARGUMENT.
 */

import {
  create,
  fromBinary,
  isFieldSet,
  ScalarType,
  toBinary,
  type DescField,
  type DescMessage,
  type Message,
} from '@bufbuild/protobuf';
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { FeatureSet_FieldPresence } from '@bufbuild/protobuf/wkt';

import { ErrorCodes, WalArchiverError } from '../errors.js';

const MAX_FIELD_NUMBER = 2 ** 29 - 1;
const MAX_VARINT_BYTES = 10;
const MAX_GROUP_DEPTH = 64;
const MAX_MESSAGE_DEPTH = 100;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A CORRUPT error for bad protobuf input. */
export function protoCorrupt(what: string, offset: number, problem: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `corrupt ${what}: ${problem} at byte ${offset}`, {
    retryable: false,
    details: { message: what, offset },
  });
}

function invalid(what: string, problem: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `cannot encode ${what}: ${problem}`);
}

function isLong(scalar: ScalarType): boolean {
  return (
    scalar === ScalarType.UINT64 ||
    scalar === ScalarType.INT64 ||
    scalar === ScalarType.FIXED64 ||
    scalar === ScalarType.SFIXED64 ||
    scalar === ScalarType.SINT64
  );
}

/** The message type of a message field (or of each element of a repeated one). */
function messageOf(field: DescField): DescMessage | undefined {
  if (field.fieldKind === 'message') return field.message;
  if (field.fieldKind === 'list' && field.listKind === 'message') return field.message;
  return undefined;
}

/** The scalar type of a scalar field (or of each element of a repeated one). */
function scalarOf(field: DescField): ScalarType | undefined {
  if (field.fieldKind === 'scalar') return field.scalar;
  if (field.fieldKind === 'list' && field.listKind === 'scalar') return field.scalar;
  return undefined;
}

function isEnumField(field: DescField): boolean {
  return field.fieldKind === 'enum' || (field.fieldKind === 'list' && field.listKind === 'enum');
}

/** The wire type of one value of a field (one element of a repeated field). */
function wireTypeOf(field: DescField): WireType {
  if (field.fieldKind === 'message' || (field.fieldKind === 'list' && field.listKind === 'message')) {
    return field.delimitedEncoding ? WireType.StartGroup : WireType.LengthDelimited;
  }
  if (isEnumField(field)) return WireType.Varint;
  const scalar = scalarOf(field);
  if (scalar === undefined) return WireType.LengthDelimited; // a map entry
  switch (scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return WireType.LengthDelimited;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WireType.Bit64;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WireType.Bit32;
    default:
      return WireType.Varint;
  }
}

const fieldMaps = new WeakMap<DescMessage, Map<number, DescField>>();

function fieldsByNumber(desc: DescMessage): Map<number, DescField> {
  let map = fieldMaps.get(desc);
  if (map === undefined) {
    map = new Map(desc.fields.map((f) => [f.number, f]));
    fieldMaps.set(desc, map);
  }
  return map;
}

interface Tag {
  no: number;
  wireType: number;
  offset: number;
}

/** Checks a message's bytes against its schema; see the top of this file for what it rejects. */
class WireCheck {
  private pos = 0;

  constructor(
    private readonly buf: Uint8Array,
    private readonly root: DescMessage,
    private readonly rootName: string,
  ) {}

  run(): void {
    this.message(this.root, this.buf.length, this.rootName, 0);
  }

  /** Reads a varint as its low and high 32 bits. */
  private varint(end: number, what: string): { lo: number; hi: number } {
    const start = this.pos;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      if (this.pos >= end) throw protoCorrupt(what, start, 'truncated varint');
      const b = this.buf[this.pos++]!;
      const bits = b & 0x7f;
      if (i < 4) {
        lo += bits * 2 ** (7 * i);
      } else if (i === 4) {
        lo += (bits & 0x0f) * 2 ** 28;
        hi += bits >>> 4;
      } else {
        if (i === 9 && b > 1) throw protoCorrupt(what, start, 'varint overflows 64 bits');
        hi += bits * 2 ** (7 * i - 32);
      }
      if (b < 0x80) return { lo, hi };
    }
    throw protoCorrupt(what, start, 'varint longer than 10 bytes');
  }

  private tag(end: number, what: string): Tag {
    const offset = this.pos;
    const { lo, hi } = this.varint(end, what);
    if (hi !== 0) throw protoCorrupt(what, offset, 'field number out of range');
    const wireType = lo & 7;
    const no = Math.floor(lo / 8);
    if (wireType > 5) throw protoCorrupt(what, offset, `bad wire type ${wireType} (field ${no})`);
    if (no === 0) throw protoCorrupt(what, offset, 'field number 0');
    if (no > MAX_FIELD_NUMBER) throw protoCorrupt(what, offset, `field number ${no} out of range`);
    return { no, wireType, offset };
  }

  /** Reads a length prefix; returns the payload's end, checked against the message's end. */
  private length(end: number, what: string): number {
    const offset = this.pos;
    const { lo, hi } = this.varint(end, what);
    const remaining = end - this.pos;
    if (hi !== 0 || lo > remaining) {
      const len = hi === 0 ? String(lo) : 'over 2^32';
      throw protoCorrupt(what, offset, `length ${len} exceeds the ${remaining} bytes left`);
    }
    return this.pos + lo;
  }

  private fixed(bytes: number, end: number, what: string): void {
    if (end - this.pos < bytes) throw protoCorrupt(what, this.pos, `truncated fixed${bytes * 8} value`);
    this.pos += bytes;
  }

  private message(desc: DescMessage, end: number, what: string, depth: number): void {
    if (depth > MAX_MESSAGE_DEPTH) throw protoCorrupt(what, this.pos, 'messages nested too deeply');
    const fields = fieldsByNumber(desc);
    while (this.pos < end) {
      const tag = this.tag(end, what);
      const field = fields.get(tag.no);
      if (field === undefined) this.skip(tag, end, what, 0);
      else this.field(field, tag, end, what, depth);
    }
  }

  private field(field: DescField, tag: Tag, end: number, what: string, depth: number): void {
    const wireType = wireTypeOf(field);
    if (
      field.fieldKind === 'list' &&
      tag.wireType === WireType.LengthDelimited &&
      wireType !== WireType.LengthDelimited
    ) {
      // A packed run of a repeated scalar field.
      const runEnd = this.length(end, what);
      while (this.pos < runEnd) this.value(field, wireType, tag, runEnd, what, depth);
      return;
    }
    if (tag.wireType !== wireType) {
      throw protoCorrupt(
        what,
        tag.offset,
        `wire type ${tag.wireType} for field ${field.name} (${tag.no}), expected ${wireType}`,
      );
    }
    this.value(field, wireType, tag, end, what, depth);
  }

  private value(
    field: DescField,
    wireType: WireType,
    tag: Tag,
    end: number,
    what: string,
    depth: number,
  ): void {
    const offset = this.pos;
    switch (wireType) {
      case WireType.Varint: {
        const problem = varintProblem(field, this.varint(end, what));
        if (problem !== undefined) throw protoCorrupt(what, offset, problem);
        return;
      }
      case WireType.LengthDelimited: {
        const payloadEnd = this.length(end, what);
        const message = messageOf(field);
        if (message !== undefined) {
          this.message(message, payloadEnd, this.childName(message, field, what), depth + 1);
        } else {
          if (scalarOf(field) === ScalarType.STRING && field.utf8Validation) {
            try {
              utf8.decode(this.buf.subarray(this.pos, payloadEnd));
            } catch {
              throw protoCorrupt(what, offset, 'invalid UTF-8 in string field');
            }
          }
          this.pos = payloadEnd;
        }
        return;
      }
      default:
        // Fixed-width values need no check beyond their length; a group is checked as skipped.
        this.skip({ ...tag, wireType }, end, what, 0);
    }
  }

  /** `LogEntry.Operation.CreateDirectory` for a message nested in the root's type, `<parent>.<field>` otherwise. */
  private childName(message: DescMessage, field: DescField, what: string): string {
    const rootType = this.root.typeName;
    if (message.typeName.startsWith(`${rootType}.`)) {
      return this.rootName + message.typeName.slice(rootType.length);
    }
    return `${what}.${field.name}`;
  }

  private skip(tag: Tag, end: number, what: string, depth: number): void {
    switch (tag.wireType) {
      case WireType.Varint:
        this.varint(end, what);
        return;
      case WireType.Bit64:
        this.fixed(8, end, what);
        return;
      case WireType.Bit32:
        this.fixed(4, end, what);
        return;
      case WireType.LengthDelimited:
        this.pos = this.length(end, what);
        return;
      case WireType.StartGroup:
        if (depth >= MAX_GROUP_DEPTH) throw protoCorrupt(what, tag.offset, 'groups nested too deeply');
        for (;;) {
          if (this.pos >= end) throw protoCorrupt(what, tag.offset, `truncated group (field ${tag.no})`);
          const inner = this.tag(end, what);
          if (inner.wireType === WireType.EndGroup) {
            if (inner.no !== tag.no) {
              throw protoCorrupt(
                what,
                inner.offset,
                `group end for field ${inner.no} inside group ${tag.no}`,
              );
            }
            return;
          }
          this.skip(inner, end, what, depth + 1);
        }
      default:
        throw protoCorrupt(what, tag.offset, `unexpected group end (field ${tag.no})`);
    }
  }
}

/** Why a varint cannot be the value of `field`, if it cannot. */
function varintProblem(field: DescField, { lo, hi }: { lo: number; hi: number }): string | undefined {
  if (isEnumField(field)) return hi !== 0 || lo > 0x7fffffff ? 'enum value exceeds 2^31-1' : undefined;
  const scalar = scalarOf(field);
  if (scalar === ScalarType.UINT32) return hi !== 0 ? 'uint32 value exceeds 2^32-1' : undefined;
  if (scalar !== undefined && isLong(scalar) && hi >= 2 ** 21) return 'varint value exceeds 2^53-1';
  return undefined;
}

// ---------------------------------------------------------------- model <-> message

type Fields = Record<string, unknown>;
type UnknownField = NonNullable<Message['$unknown']>[number];

/** How one field maps to the model, worked out once per message type. */
interface FieldPlan {
  field: DescField;
  /** The generated property. */
  local: string;
  /** The model's property: the generated one with a lower-case first letter. */
  model: string;
  list: boolean;
  message: DescMessage | undefined;
  /** A bytes field with explicit presence: absent from the model when unset. */
  optionalBytes: boolean;
}

const plans = new WeakMap<DescMessage, FieldPlan[]>();

function planOf(desc: DescMessage): FieldPlan[] {
  let plan = plans.get(desc);
  if (plan === undefined) {
    plan = desc.fields.map((field) => ({
      field,
      local: field.localName,
      model: field.localName.charAt(0).toLowerCase() + field.localName.slice(1),
      list: field.fieldKind === 'list',
      message: messageOf(field),
      optionalBytes:
        field.fieldKind === 'scalar' &&
        field.scalar === ScalarType.BYTES &&
        field.presence !== FeatureSet_FieldPresence.IMPLICIT,
    }));
    plans.set(desc, plan);
  }
  return plan;
}

function unknownToBuffer(unknown: readonly UnknownField[]): Buffer {
  const w = new BinaryWriter();
  for (const u of unknown) w.tag(u.no, u.wireType).raw(u.data);
  return Buffer.from(w.finish());
}

function bufferToUnknown(raw: Uint8Array): UnknownField[] {
  const r = new BinaryReader(raw);
  const out: UnknownField[] = [];
  while (r.pos < r.len) {
    const [no, wireType] = r.tag();
    out.push({ no, wireType, data: r.skip(wireType, no) });
  }
  return out;
}

function valueToModel(plan: FieldPlan, value: unknown): unknown {
  if (plan.message !== undefined) return toModel(plan.message, value as Message);
  if (value instanceof Uint8Array) return Buffer.from(value);
  if (typeof value === 'bigint') return Number(value);
  return value;
}

function toModel(desc: DescMessage, message: Message): Fields {
  const msg = message as unknown as Fields;
  const out: Fields = {};
  const oneof = desc.oneofs[0];
  if (oneof !== undefined) {
    const chosen = msg[oneof.localName] as { case?: string; value?: Message };
    const field = oneof.fields.find((f) => f.localName === chosen.case);
    Object.assign(out, { kind: 'unknown' });
    if (field?.message !== undefined && chosen.value !== undefined) {
      Object.assign(out, { kind: field.localName }, toModel(field.message, chosen.value));
    }
    if (message.$unknown?.length) out[`${oneof.localName}UnknownFields`] = unknownToBuffer(message.$unknown);
    return out;
  }
  for (const plan of planOf(desc)) {
    const value = msg[plan.local];
    if (plan.list) {
      out[plan.model] = (value as unknown[]).map((v) => valueToModel(plan, v));
    } else if (value !== undefined && !(plan.optionalBytes && !isFieldSet(message, plan.field))) {
      out[plan.model] = valueToModel(plan, value);
    }
  }
  if (message.$unknown?.length) out.unknownFields = unknownToBuffer(message.$unknown);
  return out;
}

function scalarFromModel(field: DescField, value: unknown, what: string): unknown {
  const scalar = scalarOf(field);
  const number = (max: number, range: string) => {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > max) {
      throw invalid(what, `field ${field.name} must be an integer from 0 to ${range}, got ${String(value)}`);
    }
    return value;
  };
  if (isEnumField(field)) return number(0x7fffffff, '2^31-1');
  if (scalar === ScalarType.UINT32) return number(0xffffffff, '2^32-1');
  if (scalar !== undefined && isLong(scalar)) return BigInt(number(Number.MAX_SAFE_INTEGER, '2^53-1'));
  const message = messageOf(field);
  return message === undefined ? value : fromModel(message, value as Fields, what);
}

function fromModel(desc: DescMessage, model: Fields, what: string): Message {
  const message = create(desc);
  const msg = message as unknown as Fields;
  const oneof = desc.oneofs[0];
  if (oneof !== undefined) {
    const kind = model.kind;
    const field = oneof.fields.find((f) => f.localName === kind);
    if (field?.message !== undefined) {
      msg[oneof.localName] = { case: field.localName, value: fromModel(field.message, model, what) };
    } else if (kind !== 'unknown') {
      throw invalid(what, `unknown ${oneof.name} kind ${String(kind)}`);
    }
    const raw = model[`${oneof.localName}UnknownFields`];
    if (raw instanceof Uint8Array) message.$unknown = bufferToUnknown(raw);
    return message;
  }
  for (const { field, local, model: name, list } of planOf(desc)) {
    const value = model[name];
    if (value === undefined) continue;
    msg[local] = list
      ? (value as unknown[]).map((v) => scalarFromModel(field, v, what))
      : scalarFromModel(field, value, what);
  }
  if (model.unknownFields instanceof Uint8Array) message.$unknown = bufferToUnknown(model.unknownFields);
  return message;
}

/**
 * Decodes `bytes` as a `desc` message into the project's model. `what` names
 * the message in errors; `keepUnknown` keeps unknown fields (to write them
 * back) rather than dropping them.
 */
export function decodeModel<T>(desc: DescMessage, bytes: Uint8Array, what: string, keepUnknown: boolean): T {
  new WireCheck(bytes, desc, what).run();
  let message: Message;
  try {
    message = fromBinary(desc, bytes, { readUnknownFields: keepUnknown });
  } catch (err) {
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `corrupt ${what}: ${err instanceof Error ? err.message : String(err)}`,
      { retryable: false, cause: err, details: { message: what } },
    );
  }
  return toModel(desc, message) as T;
}

/** Encodes the project's model of a `desc` message; a value a field cannot hold is INVALID_ARGUMENT. */
export function encodeModel(desc: DescMessage, model: object, what: string = desc.name): Buffer {
  try {
    const bytes = toBinary(desc, fromModel(desc, model as Fields, what));
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  } catch (err) {
    if (err instanceof WalArchiverError) throw err;
    throw invalid(what, err instanceof Error ? err.message : String(err));
  }
}

/** The encoder and decoder of one message's model; `what` names it in errors unless the caller says otherwise. */
export function modelCodec<T extends object>(
  desc: DescMessage,
  what: string,
  keepUnknown: boolean,
): { encode(model: T): Buffer; decode(bytes: Uint8Array, name?: string): T } {
  return {
    encode: (model) => encodeModel(desc, model, what),
    decode: (bytes, name = what) => decodeModel<T>(desc, bytes, name, keepUnknown),
  };
}
