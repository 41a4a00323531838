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
  ScalarType,
  toBinary,
  type DescField,
  type DescMessage,
  type Message,
} from '@bufbuild/protobuf';
import { isUtf8 } from 'node:buffer';

import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { FeatureSet_FieldPresence } from '@bufbuild/protobuf/wkt';

import { ErrorCodes, WalArchiverError } from '../errors.js';

const MAX_FIELD_NUMBER = 2 ** 29 - 1;
const MAX_VARINT_BYTES = 10;
const MAX_GROUP_DEPTH = 64;
const MAX_MESSAGE_DEPTH = 100;
/** A 64-bit varint whose high 32 bits reach this is above 2^53-1. */
const HI_OVER_2_53 = 2 ** 21;

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

// ---------------------------------------------------------------- field plans

/** The range a varint field's value must lie in (and, on encode, the model's number). */
const enum Range {
  Any,
  /** An enum: 0 to 2^31-1. */
  Enum,
  /** A uint32: 0 to 2^32-1. */
  Uint32,
  /** A 64-bit integer: 0 to 2^53-1, a bigint in the generated message. */
  Long,
}

/** How a generated value becomes the model's. */
const enum Convert {
  /** Kept as it is (strings, booleans, 32-bit numbers). */
  Same,
  /** A `Buffer` copy of the bytes. */
  Bytes,
  /** A bigint as a number. */
  Number,
  /** A nested message, through its own plan. */
  Message,
}

/**
 * Everything the wire check, the model and the encoder need to know about one
 * field, worked out once per message type (see planOf) so that no value asks
 * the descriptor again.
 */
interface FieldPlan {
  field: DescField;
  /** The generated property. */
  local: string;
  /** The model's property: the generated one with a lower-case first letter. */
  model: string;
  list: boolean;
  /** The wire type of one value (one element of a repeated field). */
  wireType: WireType;
  /** A repeated scalar or enum field, which may also come as a packed run. */
  packable: boolean;
  /** The plan of a message field's (or each element's) type. */
  message: MessagePlan | undefined;
  /** A string field whose bytes must be valid UTF-8. */
  utf8: boolean;
  range: Range;
  convert: Convert;
  /** A bytes field with explicit presence: absent from the model when unset. */
  optionalBytes: boolean;
}

/** The flattened oneof of a message that only holds a oneof of messages. */
interface OneofPlan {
  /** The generated property holding `{ case, value }`. */
  local: string;
  /** The model's property for the message's own unknown fields. */
  unknownKey: string;
  /** The oneof's message cases by generated name. */
  cases: Map<string, FieldPlan>;
  name: string;
}

interface MessagePlan {
  desc: DescMessage;
  fields: FieldPlan[];
  byNumber: Map<number, FieldPlan>;
  oneof: OneofPlan | undefined;
}

const plans = new WeakMap<DescMessage, MessagePlan>();

function planOf(desc: DescMessage): MessagePlan {
  let plan = plans.get(desc);
  if (plan === undefined) {
    // Registered before its fields are planned, so a recursive type finds itself.
    plan = { desc, fields: [], byNumber: new Map(), oneof: undefined };
    plans.set(desc, plan);
    for (const field of desc.fields) {
      const fp = fieldPlan(field);
      plan.fields.push(fp);
      plan.byNumber.set(field.number, fp);
    }
    const oneof = desc.oneofs[0];
    if (oneof !== undefined) {
      const cases = new Map<string, FieldPlan>();
      for (const field of oneof.fields) {
        const fp = plan.byNumber.get(field.number);
        if (fp?.message !== undefined) cases.set(field.localName, fp);
      }
      plan.oneof = {
        local: oneof.localName,
        unknownKey: `${oneof.localName}UnknownFields`,
        cases,
        name: oneof.name,
      };
    }
  }
  return plan;
}

/** What a field holds: a message, a scalar or an enum (for a repeated field, each element). */
interface ValueKind {
  message: DescMessage | undefined;
  scalar: ScalarType | undefined;
  isEnum: boolean;
  /** A message field written as a group. */
  delimited: boolean;
  /** A 64-bit field the generated code holds as a string rather than a bigint. */
  longAsString: boolean;
  utf8Validation: boolean;
}

function valueKindOf(field: DescField): ValueKind {
  const kind: ValueKind = {
    message: undefined,
    scalar: undefined,
    isEnum: false,
    delimited: false,
    longAsString: false,
    utf8Validation: false,
  };
  // A repeated field's values are of its element kind; a singular field's of its own.
  const element = field.fieldKind === 'list' ? field.listKind : field.fieldKind;
  if (element === 'message') {
    const f = field as DescField & { message: DescMessage; delimitedEncoding: boolean };
    return { ...kind, message: f.message, delimited: f.delimitedEncoding };
  }
  if (element === 'scalar') {
    const f = field as DescField & { scalar: ScalarType; longAsString: boolean; utf8Validation: boolean };
    return { ...kind, scalar: f.scalar, longAsString: f.longAsString, utf8Validation: f.utf8Validation };
  }
  return element === 'enum' ? { ...kind, isEnum: true } : kind;
}

function fieldPlan(field: DescField): FieldPlan {
  const list = field.fieldKind === 'list';
  const value = valueKindOf(field);
  const { message, scalar } = value;
  const long = scalar !== undefined && isLong(scalar);
  let range = Range.Any;
  if (value.isEnum) range = Range.Enum;
  else if (scalar === ScalarType.UINT32) range = Range.Uint32;
  else if (long) range = Range.Long;
  let convert = Convert.Same;
  if (message !== undefined) convert = Convert.Message;
  else if (scalar === ScalarType.BYTES) convert = Convert.Bytes;
  else if (long && !value.longAsString) convert = Convert.Number;
  const wireType = wireTypeOf(value);
  return {
    field,
    local: field.localName,
    model: field.localName.charAt(0).toLowerCase() + field.localName.slice(1),
    list,
    wireType,
    packable: list && wireType !== WireType.LengthDelimited,
    message: message === undefined ? undefined : planOf(message),
    utf8: scalar === ScalarType.STRING && value.utf8Validation,
    range,
    convert,
    optionalBytes:
      field.fieldKind === 'scalar' &&
      field.scalar === ScalarType.BYTES &&
      field.presence !== FeatureSet_FieldPresence.IMPLICIT,
  };
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

/** The wire type of one value of a field (one element of a repeated field). */
function wireTypeOf({ message, scalar, isEnum, delimited }: ValueKind): WireType {
  if (message !== undefined) return delimited ? WireType.StartGroup : WireType.LengthDelimited;
  if (isEnum) return WireType.Varint;
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

// ---------------------------------------------------------------- wire check

/**
 * Where the check is, for naming the message in an error. Names are only
 * worked out when an error is thrown (see nameOf).
 */
interface Scope {
  parent: Scope | undefined;
  message: DescMessage;
  /** The field that holds this message in its parent; undefined at the root. */
  field: FieldPlan | undefined;
  /** The root's name, as the caller gave it. */
  rootName: string;
  root: DescMessage;
}

/** `LogEntry.Operation.CreateDirectory` for a message nested in the root's type, `<parent>.<field>` otherwise. */
function nameOf(scope: Scope): string {
  if (scope.parent === undefined || scope.field === undefined) return scope.rootName;
  const rootType = scope.root.typeName;
  if (scope.message.typeName.startsWith(`${rootType}.`)) {
    return scope.rootName + scope.message.typeName.slice(rootType.length);
  }
  return `${nameOf(scope.parent)}.${scope.field.field.name}`;
}

function corrupt(scope: Scope, offset: number, problem: string): WalArchiverError {
  return protoCorrupt(nameOf(scope), offset, problem);
}

/**
 * Checks a message's bytes against its schema; see the top of this file for
 * what it rejects. A tag is passed around as its varint (`field number * 8 +
 * wire type`, below 2^32 once checked) and a varint as its low 32 bits with
 * the high 32 in `hi`, so that checking allocates nothing per value.
 */
class WireCheck {
  private pos = 0;
  /** The high 32 bits of the varint read last. */
  private hi = 0;

  constructor(private readonly buf: Uint8Array) {}

  run(root: MessagePlan, rootName: string): void {
    const scope: Scope = {
      parent: undefined,
      message: root.desc,
      field: undefined,
      rootName,
      root: root.desc,
    };
    this.message(root, this.buf.length, scope, 0);
  }

  /** Reads a varint; returns its low 32 bits (unsigned) and leaves the high 32 in `this.hi`. */
  private varint(end: number, scope: Scope): number {
    const buf = this.buf;
    const start = this.pos;
    let pos = start;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      if (pos >= end) throw corrupt(scope, start, 'truncated varint');
      const b = buf[pos++]!;
      const bits = b & 0x7f;
      if (i < 4) {
        lo |= bits << (7 * i);
      } else if (i === 4) {
        lo |= (bits & 0x0f) << 28;
        hi = bits >>> 4;
      } else {
        if (i === 9 && b > 1) throw corrupt(scope, start, 'varint overflows 64 bits');
        hi |= bits << (7 * i - 32);
      }
      if (b < 0x80) {
        this.pos = pos;
        this.hi = hi >>> 0;
        return lo >>> 0;
      }
    }
    throw corrupt(scope, start, 'varint longer than 10 bytes');
  }

  /** Reads a tag and returns it as its varint (field number * 8 + wire type). */
  private tag(end: number, scope: Scope): number {
    const offset = this.pos;
    const key = this.varint(end, scope);
    if (this.hi !== 0) throw corrupt(scope, offset, 'field number out of range');
    const wireType = key & 7;
    const no = key >>> 3;
    if (wireType > 5) throw corrupt(scope, offset, `bad wire type ${wireType} (field ${no})`);
    if (no === 0) throw corrupt(scope, offset, 'field number 0');
    if (no > MAX_FIELD_NUMBER) throw corrupt(scope, offset, `field number ${no} out of range`);
    return key;
  }

  /** Reads a length prefix; returns the payload's end, checked against the message's end. */
  private length(end: number, scope: Scope): number {
    const offset = this.pos;
    const len = this.varint(end, scope);
    const remaining = end - this.pos;
    if (this.hi !== 0 || len > remaining) {
      const shown = this.hi === 0 ? String(len) : 'over 2^32';
      throw corrupt(scope, offset, `length ${shown} exceeds the ${remaining} bytes left`);
    }
    return this.pos + len;
  }

  private fixed(bytes: number, end: number, scope: Scope): void {
    if (end - this.pos < bytes) throw corrupt(scope, this.pos, `truncated fixed${bytes * 8} value`);
    this.pos += bytes;
  }

  private message(plan: MessagePlan, end: number, scope: Scope, depth: number): void {
    if (depth > MAX_MESSAGE_DEPTH) throw corrupt(scope, this.pos, 'messages nested too deeply');
    while (this.pos < end) {
      const tagOffset = this.pos;
      const key = this.tag(end, scope);
      const field = plan.byNumber.get(key >>> 3);
      if (field === undefined) this.skip(key, tagOffset, end, scope, 0);
      else this.field(field, key & 7, tagOffset, end, scope, depth);
    }
  }

  private field(
    field: FieldPlan,
    wireType: number,
    tagOffset: number,
    end: number,
    scope: Scope,
    depth: number,
  ): void {
    if (field.packable && wireType === WireType.LengthDelimited) {
      // A packed run of a repeated scalar field.
      const runEnd = this.length(end, scope);
      while (this.pos < runEnd) this.value(field, tagOffset, runEnd, scope, depth);
      return;
    }
    if (wireType !== field.wireType) {
      const { name, number } = field.field;
      throw corrupt(
        scope,
        tagOffset,
        `wire type ${wireType} for field ${name} (${number}), expected ${field.wireType}`,
      );
    }
    this.value(field, tagOffset, end, scope, depth);
  }

  /** Checks one value of `field`, of the field's wire type. */
  private value(field: FieldPlan, tagOffset: number, end: number, scope: Scope, depth: number): void {
    const offset = this.pos;
    switch (field.wireType) {
      case WireType.Varint: {
        const lo = this.varint(end, scope);
        const problem = rangeProblem(field.range, lo, this.hi);
        if (problem !== undefined) throw corrupt(scope, offset, problem);
        return;
      }
      case WireType.LengthDelimited: {
        const payloadEnd = this.length(end, scope);
        if (field.message !== undefined) {
          const child: Scope = {
            parent: scope,
            message: field.message.desc,
            field,
            rootName: scope.rootName,
            root: scope.root,
          };
          this.message(field.message, payloadEnd, child, depth + 1);
        } else {
          if (field.utf8 && !isUtf8(this.buf.subarray(this.pos, payloadEnd))) {
            throw corrupt(scope, offset, 'invalid UTF-8 in string field');
          }
          this.pos = payloadEnd;
        }
        return;
      }
      default:
        // Fixed-width values need no check beyond their length; a group is checked as skipped.
        this.skip(field.field.number * 8 + field.wireType, tagOffset, end, scope, 0);
    }
  }

  /** Skips one value whose tag `key` (field number and wire type) began at `tagOffset`. */
  private skip(key: number, tagOffset: number, end: number, scope: Scope, depth: number): void {
    const no = key >>> 3;
    switch (key & 7) {
      case WireType.Varint:
        this.varint(end, scope);
        return;
      case WireType.Bit64:
        this.fixed(8, end, scope);
        return;
      case WireType.Bit32:
        this.fixed(4, end, scope);
        return;
      case WireType.LengthDelimited:
        this.pos = this.length(end, scope);
        return;
      case WireType.StartGroup:
        if (depth >= MAX_GROUP_DEPTH) throw corrupt(scope, tagOffset, 'groups nested too deeply');
        for (;;) {
          if (this.pos >= end) throw corrupt(scope, tagOffset, `truncated group (field ${no})`);
          const innerOffset = this.pos;
          const inner = this.tag(end, scope);
          const innerNo = inner >>> 3;
          if ((inner & 7) === WireType.EndGroup) {
            if (innerNo !== no) {
              throw corrupt(scope, innerOffset, `group end for field ${innerNo} inside group ${no}`);
            }
            return;
          }
          this.skip(inner, innerOffset, end, scope, depth + 1);
        }
      default:
        throw corrupt(scope, tagOffset, `unexpected group end (field ${no})`);
    }
  }
}

/** Why a varint (low and high 32 bits) is out of a field's range, if it is. */
function rangeProblem(range: Range, lo: number, hi: number): string | undefined {
  switch (range) {
    case Range.Enum:
      return hi !== 0 || lo > 0x7fffffff ? 'enum value exceeds 2^31-1' : undefined;
    case Range.Uint32:
      return hi !== 0 ? 'uint32 value exceeds 2^32-1' : undefined;
    case Range.Long:
      return hi >= HI_OVER_2_53 ? 'varint value exceeds 2^53-1' : undefined;
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------- model <-> message

type Fields = Record<string, unknown>;
type UnknownField = NonNullable<Message['$unknown']>[number];

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

function valueToModel(field: FieldPlan, value: unknown): unknown {
  switch (field.convert) {
    case Convert.Message:
      return toModel(field.message!, value as Message, {});
    case Convert.Bytes:
      return Buffer.from(value as Uint8Array);
    case Convert.Number:
      return Number(value as bigint);
    default:
      return value;
  }
}

/** Adds the model of `message` to `out` (a new object, or the flattened oneof holding it) and returns it. */
function toModel(plan: MessagePlan, message: Message, out: Fields): Fields {
  const msg = message as unknown as Fields;
  const unknown = message.$unknown;
  const oneof = plan.oneof;
  if (oneof !== undefined) {
    const chosen = msg[oneof.local] as { case?: string; value?: Message };
    const field = chosen.case === undefined ? undefined : oneof.cases.get(chosen.case);
    out.kind = 'unknown';
    if (field !== undefined && chosen.value !== undefined) {
      out.kind = field.local;
      toModel(field.message!, chosen.value, out);
    }
    if (unknown !== undefined && unknown.length > 0) out[oneof.unknownKey] = unknownToBuffer(unknown);
    return out;
  }
  for (const field of plan.fields) {
    const value = msg[field.local];
    if (field.list) {
      const values = value as unknown[];
      const models = new Array<unknown>(values.length);
      for (let i = 0; i < values.length; i++) models[i] = valueToModel(field, values[i]);
      out[field.model] = models;
    } else if (value !== undefined && !(field.optionalBytes && !Object.hasOwn(msg, field.local))) {
      // An unset field with explicit presence reads its default from the prototype.
      out[field.model] = valueToModel(field, value);
    }
  }
  if (unknown !== undefined && unknown.length > 0) out.unknownFields = unknownToBuffer(unknown);
  return out;
}

function valueFromModel(field: FieldPlan, value: unknown, what: string): unknown {
  switch (field.range) {
    case Range.Enum:
      return checkedNumber(field, value, 0x7fffffff, '2^31-1', what);
    case Range.Uint32:
      return checkedNumber(field, value, 0xffffffff, '2^32-1', what);
    case Range.Long:
      return BigInt(checkedNumber(field, value, Number.MAX_SAFE_INTEGER, '2^53-1', what));
    default:
      return field.message === undefined ? value : fromModel(field.message, value as Fields, what);
  }
}

function checkedNumber(field: FieldPlan, value: unknown, max: number, range: string, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > max) {
    throw invalid(
      what,
      `field ${field.field.name} must be an integer from 0 to ${range}, got ${String(value)}`,
    );
  }
  return value;
}

function fromModel(plan: MessagePlan, model: Fields, what: string): Message {
  const message = create(plan.desc);
  const msg = message as unknown as Fields;
  const oneof = plan.oneof;
  if (oneof !== undefined) {
    const kind = model.kind;
    const field = typeof kind === 'string' ? oneof.cases.get(kind) : undefined;
    if (field !== undefined) {
      msg[oneof.local] = { case: field.local, value: fromModel(field.message!, model, what) };
    } else if (kind !== 'unknown') {
      throw invalid(what, `unknown ${oneof.name} kind ${String(kind)}`);
    }
    const raw = model[oneof.unknownKey];
    if (raw instanceof Uint8Array) message.$unknown = bufferToUnknown(raw);
    return message;
  }
  for (const field of plan.fields) {
    const value = model[field.model];
    if (value === undefined) continue;
    if (field.list) {
      const values = value as unknown[];
      const out = new Array<unknown>(values.length);
      for (let i = 0; i < values.length; i++) out[i] = valueFromModel(field, values[i], what);
      msg[field.local] = out;
    } else {
      msg[field.local] = valueFromModel(field, value, what);
    }
  }
  if (model.unknownFields instanceof Uint8Array) message.$unknown = bufferToUnknown(model.unknownFields);
  return message;
}

const KEEP_UNKNOWN = { readUnknownFields: true };
const DROP_UNKNOWN = { readUnknownFields: false };

/**
 * Decodes `bytes` as a `desc` message into the project's model. `what` names
 * the message in errors; `keepUnknown` keeps unknown fields (to write them
 * back) rather than dropping them.
 */
export function decodeModel<T>(desc: DescMessage, bytes: Uint8Array, what: string, keepUnknown: boolean): T {
  const plan = planOf(desc);
  new WireCheck(bytes).run(plan, what);
  let message: Message;
  try {
    message = fromBinary(desc, bytes, keepUnknown ? KEEP_UNKNOWN : DROP_UNKNOWN);
  } catch (err) {
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `corrupt ${what}: ${err instanceof Error ? err.message : String(err)}`,
      { retryable: false, cause: err, details: { message: what } },
    );
  }
  return toModel(plan, message, {}) as T;
}

/** Encodes the project's model of a `desc` message; a value a field cannot hold is INVALID_ARGUMENT. */
export function encodeModel(desc: DescMessage, model: object, what: string = desc.name): Buffer {
  try {
    const bytes = toBinary(desc, fromModel(planOf(desc), model as Fields, what));
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
