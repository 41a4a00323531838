import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { DecompressStream } from 'zstd-napi';
import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { HashingStream } from './hashing-stream.js';
import { MetadataKeys, type ObjectStore } from '../store/object-store.js';
import { parseStagedFileName, tryParseLsn } from '../../contract/wal/lsn.js';

/**
 * Reading segments back: download, verify the SHA-256, decompress and
 * extract the entry directories. Extraction accepts nothing but what a
 * segment may hold — `<LSN>/` directories with `MANIFEST`, `RAFT` and staged
 * files — so a malicious or damaged object can never write outside the
 * target, create links or devices, or smuggle other files in.
 */

export interface ExtractedEntry {
  lsn: number;
  /** Where files not kept in memory were written (created only when one was). */
  dir: string;
  files: string[];
  /** Files kept in memory (up to `inlineMax` bytes each), with their tar modes. */
  inline: Map<string, { data: Buffer; mode: number }>;
}

export interface ExtractOptions {
  /** Files up to this size stay in memory instead of being written to `targetDir` (default: none). */
  inlineMax?: number;
}

function refuse(key: string, name: string, why: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `segment ${key}: refusing "${name}": ${why}`, {
    retryable: false,
    details: { key, entry: name },
  });
}

/** Validates a member name of a segment tar: `<LSN>/` or `<LSN>/<MANIFEST|RAFT|staged name>`. */
function member(key: string, name: string): { lsn: number; file?: string } {
  const parts = name.replace(/\/$/, '').split('/');
  const lsn = parts[0] === undefined ? undefined : tryParseLsn(parts[0]);
  if (lsn === undefined || parts.length > 2) throw refuse(key, name, 'not an entry directory or file');
  const file = parts[1];
  if (
    file !== undefined &&
    file !== 'MANIFEST' &&
    file !== 'RAFT' &&
    parseStagedFileName(file) === undefined
  ) {
    throw refuse(key, name, 'not a WAL entry file');
  }
  return file === undefined ? { lsn } : { lsn, file };
}

/**
 * Extracts a (decompressed) segment tar into `targetDir`, returning its
 * entries in LSN order. Member files are created exclusively: a name given
 * twice is refused rather than overwritten.
 */
export async function extractSegmentTar(
  key: string,
  tarStream: Readable,
  targetDir: string,
  options: ExtractOptions = {},
): Promise<ExtractedEntry[]> {
  const inlineMax = options.inlineMax ?? -1;
  const extract = tar.extract();
  const entries = new Map<number, ExtractedEntry>();
  const made = new Set<number>();
  const consume = (async () => {
    for await (const m of extract) {
      const h = m.header;
      const { lsn, file } = member(key, h.name);
      let entry = entries.get(lsn);
      if (!entry) {
        entry = { lsn, dir: join(targetDir, h.name.split('/')[0]!), files: [], inline: new Map() };
        entries.set(lsn, entry);
      }
      if (h.type === 'directory' && file === undefined) {
        m.resume();
        continue;
      }
      if ((h.type !== 'file' && h.type !== 'contiguous-file') || file === undefined) {
        m.resume();
        throw refuse(key, h.name, `${h.type ?? 'unknown'} entries are not allowed`);
      }
      if (entry.files.includes(file)) {
        m.resume();
        throw refuse(key, h.name, 'given twice');
      }
      const size = h.size ?? 0;
      if (size <= inlineMax) {
        const chunks: Buffer[] = [];
        for await (const c of m) chunks.push(c as Buffer);
        const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
        if (data.length !== size) throw refuse(key, h.name, 'shorter than its header says');
        entry.inline.set(file, { data, mode: (h.mode ?? 0o644) & 0o777 });
        entry.files.push(file);
        continue;
      }
      if (!made.has(lsn)) {
        await mkdir(entry.dir, { recursive: true });
        made.add(lsn);
      }
      await pipeline(
        m,
        createWriteStream(join(entry.dir, file), { flags: 'wx', mode: (h.mode ?? 0o644) & 0o777 }),
      ).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw refuse(key, h.name, 'given twice');
        throw err;
      });
      entry.files.push(file);
    }
  })();
  try {
    await Promise.all([pipeline(tarStream, extract), consume]);
  } catch (err) {
    extract.destroy();
    throw err;
  }
  return [...entries.values()].sort((a, b) => a.lsn - b.lsn);
}

/**
 * Downloads a segment, checks its SHA-256 against `expectedSha256` (or the
 * object's metadata), and extracts it. A checksum mismatch is CORRUPT naming
 * the object; nothing extracted from a bad object is returned.
 */
export async function fetchSegment(
  store: ObjectStore,
  key: string,
  targetDir: string,
  options: { expectedSha256?: string; signal?: AbortSignal } & ExtractOptions = {},
): Promise<ExtractedEntry[]> {
  let expected = options.expectedSha256;
  if (!expected) {
    const info = await store.head(key, options);
    if (!info)
      throw new WalArchiverError(ErrorCodes.NOT_FOUND, `segment ${key} is missing from the object store`, {
        details: { key },
      });
    expected = info.metadata[MetadataKeys.SHA256];
  }
  const body = await store.get(key, options);
  const hash = new HashingStream();
  const decompress = new DecompressStream();
  const tarStream = body.pipe(hash).pipe(decompress);
  body.on('error', (err) => decompress.destroy(err));
  hash.on('error', (err) => decompress.destroy(err));
  let entries: ExtractedEntry[];
  try {
    entries = await extractSegmentTar(key, tarStream, targetDir, {
      ...(options.inlineMax !== undefined ? { inlineMax: options.inlineMax } : {}),
    });
  } catch (err) {
    const actual = hash.hash.copy().digest('hex');
    if (expected && actual !== expected) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `segment ${key}: checksum mismatch (expected ${expected}, read ${actual})`,
        {
          cause: err,
          retryable: false,
          details: { key },
        },
      );
    }
    if (err instanceof WalArchiverError) throw err;
    throw new WalArchiverError(ErrorCodes.CORRUPT, `segment ${key}: cannot be decompressed or unpacked`, {
      cause: err,
      retryable: false,
      details: { key },
    });
  }
  const actual = hash.hash.digest('hex');
  if (expected && actual !== expected) {
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `segment ${key}: checksum mismatch (expected ${expected}, read ${actual})`,
      {
        retryable: false,
        details: { key },
      },
    );
  }
  return entries;
}
