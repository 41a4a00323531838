import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { CompressStream } from 'zstd-napi';
import { ErrorCodes, WalArchiverError } from '../errors.js';

/**
 * A segment: whole WAL entry directories, as a tar (`<LSN>/MANIFEST`,
 * `<LSN>/RAFT`, `<LSN>/1` …), zstd-compressed. `zstd -d | tar -x` gives the
 * entries back byte for byte.
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

const FIXED_MTIME = new Date(0);

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

async function addEntry(
  pack: tar.Pack,
  entry: SegmentEntry,
  inspect: SegmentInspector | undefined,
): Promise<number> {
  let raw = 0;
  await new Promise<void>((resolve, reject) =>
    pack.entry({ name: `${entry.name}/`, type: 'directory', mode: 0o755, mtime: FIXED_MTIME }, (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  for (const name of entry.files) {
    const path = join(entry.dir, name);
    const info = await stat(path);
    raw += info.size;
    const sink = pack.entry({
      name: `${entry.name}/${name}`,
      size: info.size,
      mode: info.mode & 0o777,
      mtime: FIXED_MTIME,
      uid: 0,
      gid: 0,
    });
    inspect?.beginFile(entry, name, info.size);
    const source = createReadStream(path);
    if (inspect) source.on('data', (chunk) => inspect.file(entry, name, chunk as Buffer));
    try {
      await pipeline(source, sink);
    } catch (cause) {
      // tar-stream fails when a file is shorter or longer than its stat said:
      // the entry changed under us, which committed entries never do.
      throw new WalArchiverError(ErrorCodes.CORRUPT, `entry ${entry.lsn}: cannot pack ${name}`, {
        cause,
        details: { lsn: entry.lsn, file: name },
      });
    }
  }
  inspect?.entryDone(entry);
  return raw;
}

/** Packs `entries` (ascending, contiguous LSNs) into a compressed segment file in `spoolDir`. */
export async function spoolSegment(
  entries: readonly SegmentEntry[],
  spoolDir: string,
  options: SpoolOptions = {},
): Promise<SpooledSegment> {
  if (entries.length === 0)
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'a segment needs at least one entry');
  for (let i = 1; i < entries.length; i++) {
    if (entries[i]!.lsn !== entries[i - 1]!.lsn + 1) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `segment entries must be contiguous: ${entries[i - 1]!.lsn} then ${entries[i]!.lsn}`,
      );
    }
  }
  await mkdir(spoolDir, { recursive: true });
  const path = join(spoolDir, `segment-${entries[0]!.lsn}-${randomBytes(6).toString('hex')}.tar.zst`);
  const pack = tar.pack();
  const digest = new HashingStream();
  const compress = new CompressStream({
    compressionLevel: options.level ?? DEFAULT_ZSTD_LEVEL,
    checksumFlag: true,
  });
  let rawBytes = 0;
  const producer = (async () => {
    try {
      for (const entry of entries) {
        if (options.signal?.aborted) throw options.signal.reason;
        rawBytes += await addEntry(pack, entry, options.inspect);
      }
      pack.finalize();
    } catch (err) {
      pack.destroy(err as Error);
      throw err;
    }
  })();
  try {
    await Promise.all([
      producer,
      pipeline(pack, compress, digest, createWriteStream(path, { flags: 'wx' }), { signal: options.signal }),
    ]);
  } catch (err) {
    await rm(path, { force: true });
    throw err;
  }
  return {
    path,
    firstLsn: entries[0]!.lsn,
    lastLsn: entries[entries.length - 1]!.lsn,
    entries: entries.length,
    bytes: digest.bytes,
    rawBytes,
    sha256: digest.hash.digest('hex'),
  };
}
