import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DecompressStream } from 'zstd-napi';
import { HashingStream } from '../archive/hashing-stream.js';
import { describeError } from '../../contract/errors.js';
import type { BackupRecord } from '../manifest/partition-manifest.js';
import { MetadataKeys, type ObjectStore } from '../store/object-store.js';
import { parseLsnHeader } from '../node/http-node.js';
import { TarCheck } from './tar-check.js';

export interface BaseBackupCheck {
  ok: boolean;
  key: string;
  lsn: number | undefined;
  bytes: number;
  /** SHA-256 of the bytes read. */
  sha256: string;
  problems: string[];
}

/**
 * Reads a base backup object whole and checks it: its bytes against the
 * SHA-256 in its metadata (and in `expected`, the manifest record, when
 * given), its LSN metadata against its key; with `deep`, also that it
 * decompresses to a complete tar. Streams, so memory stays bounded.
 */
export async function verifyBaseBackup(
  store: ObjectStore,
  key: string,
  options: {
    expected?: Pick<BackupRecord, 'sha256' | 'bytes' | 'lsn'>;
    deep?: boolean;
    signal?: AbortSignal;
  } = {},
): Promise<BaseBackupCheck> {
  const problems: string[] = [];
  const info = await store.head(key, { signal: options.signal });
  if (info === undefined) {
    return { ok: false, key, lsn: undefined, bytes: 0, sha256: '', problems: ['object does not exist'] };
  }
  const meta = info.metadata;
  const metaSha = meta[MetadataKeys.SHA256];
  const lsn = parseLsnHeader(meta[MetadataKeys.LAST_LSN] ?? null);
  const keyLsn = key.match(/\/base\/([0-9a-z]+)\.tar\.zst$/)?.[1];
  if (metaSha === undefined) problems.push('no sha256 in its metadata');
  if (lsn === undefined || meta[MetadataKeys.FIRST_LSN] !== meta[MetadataKeys.LAST_LSN]) {
    problems.push('no single LSN in its metadata');
  } else if (keyLsn !== undefined && parseInt(keyLsn, 36) !== lsn) {
    problems.push(`metadata LSN ${lsn} is not the LSN of its key`);
  }
  const hash = new HashingStream();
  const discard = () =>
    new Writable({
      write(_chunk, _enc, done) {
        done();
      },
    });
  try {
    const body = await store.get(key, { signal: options.signal });
    if (options.deep) {
      await pipeline(body, hash, new DecompressStream(), new TarCheck(`base backup ${key}`), discard(), {
        signal: options.signal,
      });
    } else {
      await pipeline(body, hash, discard(), { signal: options.signal });
    }
  } catch (err) {
    if (options.signal?.aborted) throw err;
    problems.push(`cannot be read${options.deep ? ' as a zstd-compressed tar' : ''}: ${describeError(err)}`);
  }
  const sha256 = hash.hash.digest('hex');
  if (metaSha !== undefined && metaSha !== sha256)
    problems.push(`content SHA-256 ${sha256} is not ${metaSha} (metadata)`);
  if (hash.bytes !== info.size) problems.push(`read ${hash.bytes} bytes of ${info.size}`);
  const exp = options.expected;
  if (exp) {
    if (exp.sha256 !== sha256) problems.push(`content SHA-256 ${sha256} is not ${exp.sha256} (manifest)`);
    if (exp.bytes !== hash.bytes) problems.push(`size ${hash.bytes} is not ${exp.bytes} (manifest)`);
    if (lsn !== undefined && exp.lsn !== lsn)
      problems.push(`metadata LSN ${lsn} is not ${exp.lsn} (manifest)`);
  }
  return { ok: problems.length === 0, key, lsn, bytes: hash.bytes, sha256, problems };
}
