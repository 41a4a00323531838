import { decodeEntryInfo } from '../../contract/wal/entry-info.js';
import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { listReferenceChanges } from '../../contract/wal/log-entry.js';
import { formatLsn } from '../../contract/wal/lsn.js';
import {
  MANIFEST_FILE,
  RAFT_FILE,
  readEntry,
  readEntryContentSync,
  readHardState,
  type EntryFileContent,
  type WalEntry,
} from '../../contract/wal/entry.js';

/**
 * Reading a partition's *committed* WAL entries (Contract 1): an entry is
 * committed when its LSN is at or below `raft/hard_state`'s Commit. The node
 * writes entries before the hard state that commits them, and never changes a
 * committed entry, so reading the hard state first and then entries at or
 * below its Commit only ever sees committed, final bytes.
 */

export interface CommittedEntry {
  lsn: number;
  term: number;
  /** Leader's timestamp (Unix ms) from the entry's RAFT data; 0 for an entry with no data. */
  committedAt: number;
  /** SHA-256 of the entry's content, from its RAFT data; undefined for an entry with no data. */
  contentSha256: Buffer | undefined;
  /** Entry directory and its files in tar order: MANIFEST, staged files, RAFT. */
  dir: string;
  name: string;
  files: string[];
  bytes: number;
  refs: Array<{ name: string; new_oid: string; new_target?: string }>;
}

/** The partition's commit LSN (0 when it has no hard state yet). */
export async function readCommitLsn(partitionDir: string): Promise<number> {
  return (await readHardState(partitionDir))?.commit ?? 0;
}

/**
 * Reads one committed entry. Refuses an LSN above `commit` (never read an
 * uncommitted entry, whatever the caller believes). A missing entry below the
 * commit LSN (pruned before it was archived) is NOT_FOUND; anything wrong in
 * the entry is CORRUPT naming the partition and LSN.
 */
export async function readCommittedEntry(
  partitionDir: string,
  lsn: number,
  commit: number,
): Promise<CommittedEntry> {
  refuseUncommitted(lsn, commit);
  return describe(lsn, await readEntry(partitionDir, lsn));
}

/**
 * `readCommittedEntry` plus every file of the entry, read once for packing:
 * files up to `inlineMax` bytes come back in memory, larger ones by path.
 */
export function readCommittedEntryContent(
  partitionDir: string,
  lsn: number,
  commit: number,
  inlineMax: number,
): CommittedEntry & { content: EntryFileContent[] } {
  refuseUncommitted(lsn, commit);
  const e = readEntryContentSync(partitionDir, lsn, inlineMax);
  return { ...describe(lsn, e), content: e.content };
}

function refuseUncommitted(lsn: number, commit: number): void {
  if (lsn > commit) {
    throw new WalArchiverError(
      ErrorCodes.INTERNAL,
      `refusing to read LSN ${lsn} above the commit LSN ${commit}`,
      {
        retryable: false,
      },
    );
  }
}

function describe(lsn: number, e: WalEntry): CommittedEntry {
  let committedAt = 0;
  let contentSha256: Buffer | undefined;
  if (e.raft.data && e.raft.data.length > 0) {
    try {
      const info = decodeEntryInfo(e.raft.data, `partition entry ${lsn} RAFT data`);
      committedAt = info.committedAt;
      contentSha256 = info.contentSha256;
    } catch (cause) {
      throw new WalArchiverError(ErrorCodes.CORRUPT, `LSN ${lsn}: RAFT data is not an entry description`, {
        cause,
        retryable: false,
        details: { lsn },
      });
    }
  }
  return {
    lsn,
    term: e.raft.term,
    committedAt,
    contentSha256,
    dir: e.dir,
    name: formatLsn(lsn),
    files: [MANIFEST_FILE, ...e.files.map((f) => f.name), RAFT_FILE],
    bytes: e.totalBytes,
    refs: listReferenceChanges(e.manifest).map((r) => ({
      name: r.name,
      new_oid: r.newOid,
      ...(r.newTarget ? { new_target: r.newTarget } : {}),
    })),
  };
}
