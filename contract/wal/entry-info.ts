import { createHash, type Hash } from 'node:crypto';
import { decodeModel, encodeModel, protoCorrupt } from '../proto/codec.js';
import { EntryInfoSchema } from '../proto/gen/walarchiver/entry_info_pb.js';
import { ErrorCodes, WalArchiverError } from '../errors.js';

/**
 * What the storage node puts in the `Data` of every entry's RAFT file, and
 * how an entry travels between nodes.
 *
 * `EntryInfo` (protobuf, in raftpb.Entry.Data; schema in
 * contract/proto/walarchiver/entry_info.proto, every field always written):
 *   content_sha256  1  bytes   digest of the entry's content (below)
 *   committed_at    2  uint64  Unix milliseconds stamped by the leader that proposed it
 *   files           3  uint32  number of staged files
 *
 * The content digest covers MANIFEST then every staged file, in staged-name
 * order, each as `name NUL u64-length bytes`. Every replica writes the same
 * RAFT file for an index, so any reader (the sidecar, restore, verify) can
 * check an entry's bytes without trusting the node that wrote them, and map a
 * time to an LSN with the leader's timestamps. An entry with no Data (the
 * empty entry a new leader appends) has no content to check.
 *
 * The payload — the bytes Raft replicates for a normal entry — packs the same
 * content: `u32 manifest length, manifest, u32 file count, then per file:
 * u16 name length, name, u32 size, bytes`, followed by `u64 committed_at`.
 */

export interface EntryInfo {
  contentSha256: Buffer;
  committedAt: number;
  files: number;
}

export function encodeEntryInfo(info: EntryInfo): Buffer {
  return encodeModel(EntryInfoSchema, info, 'EntryInfo');
}

export function decodeEntryInfo(buf: Uint8Array, what = 'EntryInfo'): EntryInfo {
  const info = decodeModel<Partial<EntryInfo>>(EntryInfoSchema, buf, what, false);
  if (info.contentSha256?.length !== 32) throw protoCorrupt(what, 0, 'content_sha256 is not 32 bytes');
  return { contentSha256: info.contentSha256, committedAt: info.committedAt ?? 0, files: info.files ?? 0 };
}

/** Streaming digest of an entry's content; feed MANIFEST first, then the staged files in order. */
export class ContentDigest {
  private readonly hash: Hash = createHash('sha256');
  private expected = 0;
  private seen = 0;

  beginFile(name: string, size: number): void {
    this.finishFile();
    const nameBytes = Buffer.from(name, 'utf8');
    const header = Buffer.alloc(nameBytes.length + 9);
    nameBytes.copy(header);
    header.writeBigUInt64BE(BigInt(size), nameBytes.length + 1);
    this.hash.update(header);
    this.expected = size;
    this.seen = 0;
  }

  update(chunk: Uint8Array): void {
    this.seen += chunk.length;
    this.hash.update(chunk);
  }

  private finishFile(): void {
    if (this.seen !== this.expected) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `file changed size while read (${this.seen} of ${this.expected})`,
      );
    }
  }

  digest(): Buffer {
    this.finishFile();
    return this.hash.digest();
  }
}

export interface EntryContent {
  manifest: Buffer;
  /** Staged files in staged-name order (`1`, `2`, … `a` …). */
  files: Array<{ name: string; data: Buffer }>;
}

export function contentDigest(content: EntryContent): Buffer {
  const d = new ContentDigest();
  d.beginFile('MANIFEST', content.manifest.length);
  d.update(content.manifest);
  for (const f of content.files) {
    d.beginFile(f.name, f.data.length);
    d.update(f.data);
  }
  return d.digest();
}

export function encodePayload(content: EntryContent, committedAt: number): Buffer {
  let size = 4 + content.manifest.length + 4 + 8;
  for (const f of content.files) size += 2 + Buffer.byteLength(f.name) + 4 + f.data.length;
  const out = Buffer.allocUnsafe(size);
  let at = out.writeUInt32BE(content.manifest.length, 0);
  at += content.manifest.copy(out, at);
  at = out.writeUInt32BE(content.files.length, at);
  for (const f of content.files) {
    at = out.writeUInt16BE(Buffer.byteLength(f.name), at);
    at += out.write(f.name, at, 'utf8');
    at = out.writeUInt32BE(f.data.length, at);
    at += f.data.copy(out, at);
  }
  out.writeBigUInt64BE(BigInt(committedAt), at);
  return out;
}

export function decodePayload(
  buf: Uint8Array,
  what = 'entry payload',
): EntryContent & { committedAt: number } {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  let at = 0;
  const need = (n: number) => {
    if (at + n > b.length)
      throw new WalArchiverError(ErrorCodes.CORRUPT, `corrupt ${what}: truncated at byte ${at}`);
  };
  need(4);
  const mlen = b.readUInt32BE(at);
  at += 4;
  need(mlen);
  const manifest = Buffer.from(b.subarray(at, at + mlen));
  at += mlen;
  need(4);
  const count = b.readUInt32BE(at);
  at += 4;
  const files: EntryContent['files'] = [];
  for (let i = 0; i < count; i++) {
    need(2);
    const nlen = b.readUInt16BE(at);
    at += 2;
    need(nlen + 4);
    const name = b.toString('utf8', at, at + nlen);
    at += nlen;
    const size = b.readUInt32BE(at);
    at += 4;
    need(size);
    files.push({ name, data: Buffer.from(b.subarray(at, at + size)) });
    at += size;
  }
  need(8);
  const committedAt = Number(b.readBigUInt64BE(at));
  at += 8;
  if (at !== b.length)
    throw new WalArchiverError(ErrorCodes.CORRUPT, `corrupt ${what}: ${b.length - at} trailing bytes`);
  return { manifest, files, committedAt };
}
