import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CompressStream } from 'zstd-napi';
import { ErrorCodes, isWalArchiverError, WalArchiverError } from '../errors.js';

/**
 * A segment: whole WAL entry directories, as a tar (`<LSN>/MANIFEST`,
 * `<LSN>/RAFT`, `<LSN>/1` …), zstd-compressed. `zstd -d | tar -x` gives the
 * entries back byte for byte.
 *
 * The tar is written here directly (ustar headers, see `tarHeader`): a
 * general tar library's per-file stream objects cost more than the small
 * entries they carry.
 *
 * Segments are spooled to a local file first: the SHA-256 and size must be in
 * the object's metadata when the upload starts, an upload can be retried
 * without reading the WAL again, and memory stays bounded whatever the entry
 * sizes. The tar is deterministic (fixed owner and mtime) so two sidecars
 * packing the same committed entries produce the same bytes.
 */

export const DEFAULT_ZSTD_LEVEL = 3;

export interface SegmentEntry {
  lsn: number;
  /** The entry's directory name (the LSN in base 36, 13 characters). */
  name: string;
  /** Absolute path of the entry directory. */
  dir: string;
  /** File names inside the directory, in the order they go into the tar. */
  files: readonly string[];
}

export interface SpooledSegment {
  path: string;
  firstLsn: number;
  lastLsn: number;
  entries: number;
  /** Size of the compressed object. */
  bytes: number;
  /** Size of the entry files before packing and compression. */
  rawBytes: number;
  /** SHA-256 of the compressed object, hex. */
  sha256: string;
}

export interface SpoolOptions {
  level?: number;
  signal?: AbortSignal;
  /**
   * Sees every file's bytes as they are packed; it may throw (e.g. a content
   * digest that does not match) to abandon the segment.
   */
  inspect?: SegmentInspector;
}

export interface SegmentInspector {
  beginFile(entry: SegmentEntry, name: string, size: number): void;
  file(entry: SegmentEntry, name: string, chunk: Buffer): void;
  entryDone(entry: SegmentEntry): void;
}

/** Counts and hashes what flows through, unchanged. */
export class HashingStream extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }
}

// ---------------------------------------------------------------- tar

const BLOCK = 512;
const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);
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

function padding(size: number): Buffer | undefined {
  const rest = size % BLOCK;
  return rest === 0 ? undefined : ZERO_BLOCK.subarray(0, BLOCK - rest);
}

// ---------------------------------------------------------------- writer

/** A file of an entry, in tar order: its bytes in memory, or a path to stream (large files). */
export interface SegmentFile {
  name: string;
  mode: number;
  size: number;
  data?: Buffer;
  path?: string;
}

/** Bytes are handed to the compressor in chunks of about this size (fewer native calls). */
const CHUNK = 256 * 1024;
/** Large files are read in pieces of this size. */
const READ_PIECE = 1024 * 1024;

/**
 * Builds one segment incrementally: entries are appended as they are read
 * (each WAL entry is read once, straight into the open segment), then the
 * segment is sealed into a spooled file with its size and SHA-256. Memory is
 * bounded by the compressor's window and a small chunk buffer whatever the
 * entry sizes.
 */
export class SegmentWriter {
  readonly path: string;
  readonly firstLsn: number;
  lastLsn = 0;
  entries = 0;
  rawBytes = 0;
  private readonly compress: CompressStream;
  private readonly digest = new HashingStream();
  private readonly written: Promise<void>;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private failed: unknown;
  private closed = false;

  private constructor(
    path: string,
    firstLsn: number,
    level: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.path = path;
    this.firstLsn = firstLsn;
    this.compress = new CompressStream({ compressionLevel: level, checksumFlag: true });
    this.written = pipeline(this.compress, this.digest, createWriteStream(path, { flags: 'wx' }), {
      ...(signal ? { signal } : {}),
    });
    this.written.catch((err: unknown) => (this.failed ??= err));
  }

  static async open(
    spoolDir: string,
    firstLsn: number,
    options: { level?: number; signal?: AbortSignal } = {},
  ): Promise<SegmentWriter> {
    await mkdir(spoolDir, { recursive: true });
    const path = join(spoolDir, `segment-${firstLsn}-${randomBytes(6).toString('hex')}.tar.zst`);
    return new SegmentWriter(path, firstLsn, options.level ?? DEFAULT_ZSTD_LEVEL, options.signal);
  }

  /** Appends one whole entry (its LSN must follow the last). Files are checked as they go by `inspect`. */
  async append(
    entry: SegmentEntry,
    files: readonly SegmentFile[],
    inspect?: SegmentInspector,
  ): Promise<void> {
    if (this.closed) throw new WalArchiverError(ErrorCodes.INTERNAL, 'segment already sealed');
    const expected = this.entries === 0 ? this.firstLsn : this.lastLsn + 1;
    if (entry.lsn !== expected) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `segment entries must be contiguous: ${expected} expected, ${entry.lsn} given`,
      );
    }
    this.push(tarHeader(`${entry.name}/`, 'directory', 0o755, 0));
    for (const f of files) {
      this.push(tarHeader(`${entry.name}/${f.name}`, 'file', f.mode & 0o777, f.size));
      inspect?.beginFile(entry, f.name, f.size);
      if (f.data) {
        if (f.data.length !== f.size) throw changed(entry, f.name);
        inspect?.file(entry, f.name, f.data);
        this.push(f.data);
      } else {
        await this.streamFile(entry, f, inspect);
      }
      const pad = padding(f.size);
      if (pad) this.push(pad);
      this.rawBytes += f.size;
      await this.flushIfFull();
    }
    inspect?.entryDone(entry);
    this.entries++;
    this.lastLsn = entry.lsn;
  }

  private async streamFile(entry: SegmentEntry, f: SegmentFile, inspect?: SegmentInspector): Promise<void> {
    let seen = 0;
    try {
      for await (const chunk of createReadStream(f.path!, { highWaterMark: READ_PIECE })) {
        const buf = chunk as Buffer;
        seen += buf.length;
        if (seen > f.size) break;
        inspect?.file(entry, f.name, buf);
        this.push(buf);
        await this.flushIfFull();
      }
    } catch (cause) {
      if (isWalArchiverError(cause)) throw cause;
      throw new WalArchiverError(ErrorCodes.CORRUPT, `entry ${entry.lsn}: cannot pack ${f.name}`, {
        cause,
        details: { lsn: entry.lsn, file: f.name },
      });
    }
    // A committed entry never changes: a size other than the one read before means damage.
    if (seen !== f.size) throw changed(entry, f.name);
  }

  private push(buf: Buffer): void {
    this.pending.push(buf);
    this.pendingBytes += buf.length;
  }

  private async flushIfFull(): Promise<void> {
    if (this.pendingBytes >= CHUNK) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.signal?.aborted) throw this.signal.reason;
    if (this.pendingBytes === 0) return;
    const chunk =
      this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    if (!this.compress.write(chunk)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => (this.compress.off('error', onError), resolve());
        const onError = (err: Error) => (this.compress.off('drain', onDrain), reject(err));
        this.compress.once('drain', onDrain);
        this.compress.once('error', onError);
      });
    }
  }

  /** Finishes the tar and the compressed file; the spooled segment is then complete on disk. */
  async seal(): Promise<SpooledSegment> {
    if (this.entries === 0)
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'a segment needs at least one entry');
    this.closed = true;
    try {
      this.push(END_OF_ARCHIVE);
      await this.flush();
      this.compress.end();
      await this.written;
    } catch (err) {
      await this.discard();
      throw err;
    }
    return {
      path: this.path,
      firstLsn: this.firstLsn,
      lastLsn: this.lastLsn,
      entries: this.entries,
      bytes: this.digest.bytes,
      rawBytes: this.rawBytes,
      sha256: this.digest.hash.digest('hex'),
    };
  }

  /** Abandons the segment and removes its file. */
  async discard(): Promise<void> {
    this.closed = true;
    this.pending = [];
    this.compress.destroy();
    await this.written.catch(() => undefined);
    await rm(this.path, { force: true });
  }
}

function changed(entry: SegmentEntry, name: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `entry ${entry.lsn}: ${name} changed size while packed`, {
    details: { lsn: entry.lsn, file: name },
  });
}

/** Files of an entry directory on disk, for `spoolSegment`. */
async function filesOf(entry: SegmentEntry): Promise<SegmentFile[]> {
  const out: SegmentFile[] = [];
  for (const name of entry.files) {
    const path = join(entry.dir, name);
    let info;
    try {
      info = await stat(path);
    } catch (cause) {
      throw new WalArchiverError(ErrorCodes.CORRUPT, `entry ${entry.lsn}: cannot pack ${name}`, {
        cause,
        details: { lsn: entry.lsn, file: name },
      });
    }
    out.push({ name, mode: info.mode, size: info.size, path });
  }
  return out;
}

/** Packs `entries` (ascending, contiguous LSNs) from their directories into a compressed segment file in `spoolDir`. */
export async function spoolSegment(
  entries: readonly SegmentEntry[],
  spoolDir: string,
  options: SpoolOptions = {},
): Promise<SpooledSegment> {
  if (entries.length === 0)
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'a segment needs at least one entry');
  const writer = await SegmentWriter.open(spoolDir, entries[0]!.lsn, {
    ...(options.level !== undefined ? { level: options.level } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  try {
    for (const entry of entries) await writer.append(entry, await filesOf(entry), options.inspect);
  } catch (err) {
    await writer.discard();
    throw err;
  }
  return writer.seal();
}
