import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import binding from 'zstd-napi/binding.js';
import * as dfs from '../../contract/fs/durable-fs.js';
import { ErrorCodes, isWalArchiverError, WalArchiverError } from '../../contract/errors.js';
import { END_OF_ARCHIVE, padding, tarHeader } from './tar.js';

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

/** Output buffer per compression call (about ZSTD_CStreamOutSize). */
const OUT_SIZE = 128 * 1024 + 512;
/** Idle compression contexts kept for reuse, per level. */
const POOL_MAX = 16;
const contextPool = new Map<number, binding.CCtx[]>();

/**
 * A native zstd compression context, reused across segments: creating one
 * costs a couple of MiB that are only returned when the garbage collector
 * finalises it, which with thousands of small segments meant hundreds of MiB.
 * The calls are those `CompressStream` makes (checksummed frames, input fed
 * in pieces, ended once), and zstd's output does not depend on how the input
 * was split, so segments are the same bytes as before.
 */
function takeContext(level: number): binding.CCtx {
  const pooled = contextPool.get(level)?.pop();
  if (pooled) return pooled;
  const cctx = new binding.CCtx();
  cctx.setParameter(binding.CParameter.compressionLevel, level);
  cctx.setParameter(binding.CParameter.checksumFlag, 1);
  return cctx;
}

function returnContext(level: number, cctx: binding.CCtx): void {
  cctx.reset(binding.ResetDirective.sessionOnly);
  const pool = contextPool.get(level) ?? [];
  contextPool.set(level, pool);
  if (pool.length < POOL_MAX) pool.push(cctx);
}

/**
 * Builds one segment incrementally: entries are appended as they are read
 * (each WAL entry is read once, straight into the open segment), then the
 * segment is sealed into a spooled file with its size and SHA-256. Memory is
 * bounded by the compressor's window and a small chunk buffer whatever the
 * entry sizes; a segment still below one chunk holds no compression context
 * and no file, so thousands of quiet partitions cost little.
 */
export class SegmentWriter {
  readonly path: string;
  readonly firstLsn: number;
  lastLsn = 0;
  entries = 0;
  rawBytes = 0;
  private cctx: binding.CCtx | undefined;
  private file: dfs.DurableFileHandle | undefined;
  private readonly hash = createHash('sha256');
  private bytes = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private closed = false;
  private broken = false;

  private constructor(
    path: string,
    firstLsn: number,
    private readonly level: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.path = path;
    this.firstLsn = firstLsn;
  }

  static async open(
    spoolDir: string,
    firstLsn: number,
    options: { level?: number; signal?: AbortSignal } = {},
  ): Promise<SegmentWriter> {
    try {
      await dfs.mkdir(spoolDir, { recursive: true });
    } catch (cause) {
      throw spoolError(cause, 'create the spool folder', spoolDir);
    }
    const path = join(spoolDir, `segment-${firstLsn}-${randomBytes(6).toString('hex')}.tar.zst`);
    return new SegmentWriter(path, firstLsn, options.level ?? DEFAULT_ZSTD_LEVEL, options.signal);
  }

  /** Appends one whole entry (its LSN must follow the last). Files are checked as they go by `inspect`. */
  async append(
    entry: SegmentEntry,
    files: readonly SegmentFile[],
    inspect?: SegmentInspector,
  ): Promise<void> {
    if (this.closed || this.broken)
      throw new WalArchiverError(ErrorCodes.INTERNAL, 'segment already sealed or failed');
    const expected = this.entries === 0 ? this.firstLsn : this.lastLsn + 1;
    if (entry.lsn !== expected) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `segment entries must be contiguous: ${expected} expected, ${entry.lsn} given`,
      );
    }
    // Anything going wrong from here leaves a partial entry in the tar: the segment can only be discarded.
    this.broken = true;
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
      if (this.pendingBytes >= CHUNK) await this.flush(binding.EndDirective.continue);
    }
    inspect?.entryDone(entry);
    this.broken = false;
    this.entries++;
    this.lastLsn = entry.lsn;
  }

  private async streamFile(entry: SegmentEntry, f: SegmentFile, inspect?: SegmentInspector): Promise<void> {
    let seen = 0;
    // Only a failed read of the entry's file is about the WAL (CORRUPT); a failed write to the
    // spool is raised by `flush` as a transient spool error and passes through unchanged.
    try {
      for await (const chunk of createReadStream(f.path!, { highWaterMark: READ_PIECE })) {
        const buf = chunk as Buffer;
        seen += buf.length;
        if (seen > f.size) break;
        inspect?.file(entry, f.name, buf);
        this.push(buf);
        if (this.pendingBytes >= CHUNK) await this.flush(binding.EndDirective.continue);
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

  /** Compresses what is pending into the spool file (`end` finishes the frame). */
  private async flush(op: binding.EndDirective): Promise<void> {
    if (this.signal?.aborted) throw this.signal.reason;
    let input = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    this.cctx ??= takeContext(this.level);
    if (!this.file) {
      try {
        this.file = await dfs.open(this.path, 'wx');
      } catch (cause) {
        throw spoolError(cause, 'create spool file', this.path);
      }
    }
    const finishing = op !== binding.EndDirective.continue;
    for (;;) {
      const out = Buffer.allocUnsafe(OUT_SIZE);
      const [remaining, produced, consumed] = this.cctx.compressStream2(out, input, op);
      input = input.subarray(consumed);
      if (produced > 0) {
        const bytes = out.subarray(0, produced);
        this.hash.update(bytes);
        this.bytes += produced;
        try {
          await writeAll(this.file, bytes);
        } catch (cause) {
          throw spoolError(cause, 'write spool file', this.path);
        }
      }
      if (input.length === 0 && (!finishing || remaining === 0)) return;
    }
  }

  /** Finishes the tar and the compressed file; the spooled segment is then complete on disk. */
  async seal(): Promise<SpooledSegment> {
    if (this.entries === 0 || this.broken)
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'a segment needs at least one whole entry');
    this.closed = true;
    try {
      this.push(END_OF_ARCHIVE);
      await this.flush(binding.EndDirective.end);
      await this.file!.close().catch((cause: unknown) => {
        throw spoolError(cause, 'close spool file', this.path);
      });
      this.file = undefined;
      returnContext(this.level, this.cctx!);
      this.cctx = undefined;
    } catch (err) {
      await this.discard();
      throw err;
    }
    return {
      path: this.path,
      firstLsn: this.firstLsn,
      lastLsn: this.lastLsn,
      entries: this.entries,
      bytes: this.bytes,
      rawBytes: this.rawBytes,
      sha256: this.hash.digest('hex'),
    };
  }

  /** Abandons the segment and removes its file. */
  async discard(): Promise<void> {
    this.closed = true;
    this.pending = [];
    this.pendingBytes = 0;
    // A context in the middle of a frame is reset before reuse.
    if (this.cctx) returnContext(this.level, this.cctx);
    this.cctx = undefined;
    await this.file?.close().catch(() => undefined);
    this.file = undefined;
    await dfs.rm(this.path, { force: true });
  }
}

/**
 * A failed write to the local spool (ENOSPC, EIO on the spool disk …): it says
 * nothing about the WAL, so it is transient, retried with the partition's
 * backoff, and counted as `kind="spool"`.
 */
export function spoolError(cause: unknown, action: string, target: string): WalArchiverError {
  if (isWalArchiverError(cause)) return cause;
  const errno = (cause as { code?: unknown } | null)?.code;
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new WalArchiverError(ErrorCodes.UNAVAILABLE, `${action} ${target}: ${reason}`, {
    cause,
    retryable: true,
    details: { kind: 'spool', path: target, ...(typeof errno === 'string' ? { errno } : {}) },
  });
}

/** Whether an error is a failed write to the local spool. */
export function isSpoolError(err: unknown): boolean {
  return isWalArchiverError(err) && err.details.kind === 'spool';
}

async function writeAll(file: dfs.DurableFileHandle, bytes: Buffer): Promise<void> {
  for (let off = 0; off < bytes.length;) {
    const { bytesWritten } = await file.write(bytes, off, bytes.length - off);
    off += bytesWritten;
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
