import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DecompressStream } from 'zstd-napi';
import { extractSegmentTar } from '../archive/segment-reader.js';
import * as dfs from '../../contract/fs/durable-fs.js';
import { decodeEntryInfo } from '../../contract/wal/entry-info.js';
import { ErrorCodes, isWalArchiverError, WalArchiverError } from '../../contract/errors.js';
import { verifyEntry } from '../restore/restore.js';
import { MetadataKeys, type ObjectStore } from '../store/object-store.js';
import { decodeRaftEntry } from '../../contract/wal/raftpb.js';
import { HashingStream } from '../archive/hashing-stream.js';

/**
 * A segment key that exists already with other bytes than this sidecar packed
 * (another zstd level or library version after a crash, two sidecars in a
 * rolling upgrade) holds the same committed entries if each of its entries
 * passes the check restore and verify make (its content hashes to the digest
 * in its RAFT record) and that digest and term are those of the WAL's entry at
 * the same LSN, for exactly the key's LSN range. Then the existing object is
 * adopted: recorded with its own SHA-256 and size.
 */

/** What the WAL says of one entry of the segment. */
export interface WalEntryDigest {
  lsn: number;
  term: number;
  /** The content digest in the entry's RAFT record; undefined for an entry without data. */
  contentSha256: Buffer | undefined;
}

export interface AdoptedSegment {
  sha256: string;
  bytes: number;
}

/** Segment members up to this size are checked in memory; larger ones go to a scratch folder. */
const INLINE_MAX = 1024 * 1024;

function mismatch(
  partition: string,
  key: string,
  lsn: number,
  why: string,
  cause?: unknown,
): WalArchiverError {
  return new WalArchiverError(
    ErrorCodes.CORRUPT,
    `partition ${partition}: segment ${key} exists with other content than the committed entries: LSN ${lsn} ${why}`,
    { retryable: false, ...(cause === undefined ? {} : { cause }), details: { key, lsn } },
  );
}

/**
 * Downloads the existing object at `key` and checks it against `wal` (the
 * segment's entries in LSN order); returns its SHA-256 and size when it holds
 * the same entries, or throws CORRUPT naming the key and the first LSN that
 * differs. Download failures are transient and come back as they are.
 */
export async function checkExistingSegment(o: {
  store: ObjectStore;
  partition: string;
  key: string;
  wal: readonly WalEntryDigest[];
  scratchParent: string;
  signal?: AbortSignal;
}): Promise<AdoptedSegment> {
  const first = o.wal[0]?.lsn ?? 0;
  const info = await o.store.head(o.key, o.signal ? { signal: o.signal } : {});
  if (!info) {
    throw new WalArchiverError(
      ErrorCodes.UNAVAILABLE,
      `segment ${o.key} exists but cannot be found; retrying`,
      {
        retryable: true,
        details: { key: o.key, lsn: first },
      },
    );
  }
  const scratch = join(o.scratchParent, `adopt-${randomBytes(6).toString('hex')}`);
  try {
    const body = await o.store.get(o.key, o.signal ? { signal: o.signal } : {});
    const hash = new HashingStream();
    const decompress = new DecompressStream();
    body.on('error', (err) => decompress.destroy(err));
    hash.on('error', (err) => decompress.destroy(err));
    let entries;
    try {
      entries = await extractSegmentTar(o.key, body.pipe(hash).pipe(decompress), scratch, {
        inlineMax: INLINE_MAX,
      });
    } catch (err) {
      if (isWalArchiverError(err, ErrorCodes.CORRUPT))
        throw mismatch(o.partition, o.key, first, 'cannot be read back', err);
      if (isWalArchiverError(err)) throw err;
      throw mismatch(o.partition, o.key, first, 'cannot be decompressed or unpacked', err);
    }
    const sha256 = hash.hash.digest('hex');
    const claimed = info.metadata[MetadataKeys.SHA256];
    if (claimed && claimed !== sha256) {
      throw mismatch(
        o.partition,
        o.key,
        first,
        `does not match its own SHA-256 (metadata ${claimed}, read ${sha256})`,
      );
    }
    for (let i = 0; i < Math.max(entries.length, o.wal.length); i++) {
      const want = o.wal[i];
      const got = entries[i];
      if (!want || !got || got.lsn !== want.lsn) {
        const lsn = want?.lsn ?? got?.lsn ?? first;
        throw mismatch(
          o.partition,
          o.key,
          lsn,
          got ? `holds LSN ${got.lsn} where ${lsn} belongs` : 'is missing',
        );
      }
      // Its own content against its own RAFT record, exactly as restore and verify check it.
      try {
        await verifyEntry(o.partition, o.key, got);
      } catch (err) {
        if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
        throw mismatch(o.partition, o.key, got.lsn, 'does not match the digest in its own RAFT record', err);
      }
      const raftBytes = got.inline.get('RAFT')?.data ?? (await readFile(join(got.dir, 'RAFT')));
      const raft = decodeRaftEntry(raftBytes);
      const digest = raft.data && raft.data.length > 0 ? decodeEntryInfo(raft.data).contentSha256 : undefined;
      if (raft.term !== want.term)
        throw mismatch(o.partition, o.key, got.lsn, `has term ${raft.term}, the WAL ${want.term}`);
      const same =
        digest === undefined || want.contentSha256 === undefined
          ? digest === want.contentSha256
          : digest.equals(want.contentSha256);
      if (!same) throw mismatch(o.partition, o.key, got.lsn, 'differs from the WAL entry (content digest)');
    }
    return { sha256, bytes: hash.bytes };
  } finally {
    await dfs.rm(scratch, { recursive: true, force: true });
  }
}
