import { readdir } from 'node:fs/promises';
import { basename } from 'node:path';
import type { SegmentEntry } from '../../src/archive/segment-writer.js';
import { contentDigest, encodeEntryInfo } from '../../contract/wal/entry-info.js';
import { entryDir, writeEntry } from '../../contract/wal/entry.js';
import { encodeLogEntry, newLogEntry, operation, referenceChange } from '../../contract/wal/log-entry.js';

/**
 * Writes WAL entry `lsn` of a small key-value history into the partition
 * directory `wal` (LSN 1 creates `r.git`; each entry sets `k<lsn>`; with
 * `mainOid` it also moves refs/heads/main there), stamped at 1000 + lsn, and
 * returns it as a segment entry.
 */
export async function writeKvEntry(wal: string, lsn: number, mainOid?: string): Promise<SegmentEntry> {
  const manifest = newLogEntry({
    relativePath: 'r.git',
    operations: [
      ...(lsn === 1 ? [operation.createDirectory('r.git', 0o755)] : []),
      operation.setKey(`k${lsn}`, `v${lsn}`),
    ],
    ...(mainOid !== undefined
      ? { referenceTransactions: [{ changes: [referenceChange('refs/heads/main', mainOid)] }] }
      : {}),
  });
  const contentSha256 = contentDigest({ manifest: encodeLogEntry(manifest), files: [] });
  await writeEntry(wal, lsn, {
    manifest,
    raft: {
      term: 1,
      index: lsn,
      type: 0,
      data: encodeEntryInfo({ contentSha256, committedAt: 1000 + lsn, files: 0 }),
    },
  });
  const dir = entryDir(wal, lsn);
  return { lsn, name: basename(dir), dir, files: (await readdir(dir)).sort() };
}
