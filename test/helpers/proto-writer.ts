import { BinaryWriter } from '@bufbuild/protobuf/wire';

/**
 * Builds protobuf bytes field by field, in call order: for tests that need
 * input the generated encoders would never write (unknown fields, fields out
 * of order, wrong wire types, repeated message fields). A thin layer over
 * protobuf-es's BinaryWriter.
 */
export class ProtoWriter {
  private readonly w = new BinaryWriter();

  /** A field tag. */
  tag(field: number, wireType: number): this {
    this.w.tag(field, wireType);
    return this;
  }

  /** A varint field, written even when zero. */
  uint(field: number, value: number): this {
    this.w.tag(field, 0).uint64(value);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.w.tag(field, 2).bytes(value);
    return this;
  }

  string(field: number, value: string): this {
    this.w.tag(field, 2).string(value);
    return this;
  }

  /** A nested message built by `build`. */
  message(field: number, build: (w: ProtoWriter) => void): this {
    const inner = new ProtoWriter();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  /** Raw bytes, e.g. a value after `tag()`. */
  raw(bytes: Uint8Array): this {
    this.w.raw(bytes);
    return this;
  }

  finish(): Buffer {
    return Buffer.from(this.w.finish());
  }
}
