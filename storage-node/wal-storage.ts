import { readdirSync, readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as dfs from '../contract/fs/durable-fs.js';
import {
  decodePayload,
  encodeEntryInfo,
  encodePayload,
  contentDigest,
  decodeEntryInfo,
} from '../contract/wal/entry-info.js';
import { ErrorCodes, WalArchiverError } from '../contract/errors.js';
import { ensureDir, fsError, fsyncDir, isNotFound, pathExists } from '../contract/fs/fs-atomic.js';
import { decodeLogEntry } from '../contract/wal/log-entry.js';
import { formatLsn, parseStagedFileName, tryParseLsn } from '../contract/wal/lsn.js';
import { decodeRaftEntry, EntryType as PbEntryType, type RaftEntry } from '../contract/wal/raftpb.js';
import {
  cleanStaging,
  entryDir,
  listEntryLsns,
  pruneThrough,
  readConfState,
  removeEntry,
  readHardState,
  truncateFrom,
  walDir,
  writeVoters,
  writeEntry,
  writeHardState,
  MANIFEST_FILE,
  RAFT_FILE,
} from '../contract/wal/entry.js';
import { writeSnapshotMeta } from '../contract/wal/entry.js';
import { limitSize } from './raft/storage.js';

export { writeSnapshotMeta };
import {
  logCompactedError,
  logUnavailableError,
  type Entry,
  type HardState,
  type RaftStorage,
  type SnapshotMeta,
} from './raft/index.js';

/**
 * The Raft log of one partition, kept in the partition's WAL (Contract 1):
 * entry `i` is the directory `wal/<i>/` with MANIFEST, staged files and RAFT.
 *
 * The Raft core reads through the synchronous RaftStorage view; terms of the
 * whole log are kept in memory, entry data is read from disk on demand (with
 * a small cache of recent payloads, which is what replication mostly needs).
 *
 * `raft/snapshot` records the snapshot the log starts after: its index, term
 * and voters (JSON). The state it describes is `snapshot/` (a hard-linked copy
 * of `state/` taken when the log was compacted) or, on a replica booted from a
 * restore, `state/` itself.
 */

const SNAPSHOT_META_FILE = join('raft', 'snapshot');
const PAYLOAD_CACHE_BYTES = 64 * 1024 * 1024;

export interface StoredEntry {
  entry: Entry;
  raft: RaftEntry;
}

function corrupt(
  partition: string,
  lsn: number | undefined,
  message: string,
  cause?: unknown,
): WalArchiverError {
  const where = lsn === undefined ? `partition ${partition}` : `partition ${partition}, LSN ${lsn}`;
  return new WalArchiverError(ErrorCodes.CORRUPT, `${where}: ${message}`, {
    cause,
    retryable: false,
    details: { partition, lsn },
  });
}

/** The Raft-core entry for a RAFT record and the entry's payload. */
function toCoreEntry(raft: RaftEntry, payload: Uint8Array): Entry {
  const empty = raft.data === undefined || raft.data.length === 0;
  return {
    term: raft.term,
    index: raft.index,
    type: empty ? 'empty' : 'normal',
    data: empty ? new Uint8Array(0) : payload,
  };
}

export class WalStorage implements RaftStorage {
  private hard: HardState = { term: 0, vote: 0, commit: 0 };
  private snap: SnapshotMeta = { index: 0, term: 0, voters: [] };
  /** terms[i] is the term of entry snap.index + 1 + i. */
  private terms: number[] = [];
  private cache = new Map<number, Entry>();
  private cacheBytes = 0;
  /**
   * The lowest LSN whose entry is on disk, 0 when none is. Below the log
   * start after a snapshot install: the shipped entries stay until archived.
   */
  private oldest = 0;
  /** The highest commit stamp of any entry this log holds or held since it was opened (0: none). */
  private stamp = 0;
  /**
   * Whether `stamp` bounds every entry this log ever held, compacted ones
   * included: false once a snapshot arrived without the stamps of what it
   * covers, or when `raft/snapshot` predates stamps.
   */
  private stampsWhole = true;

  private constructor(
    readonly dir: string,
    readonly partition: string,
  ) {}

  /** Opens a partition's log, checking that it is gap-free and consistent with its hard state. */
  static async open(dir: string, partition: string, voters: readonly number[]): Promise<WalStorage> {
    const s = new WalStorage(dir, partition);
    await cleanStaging(dir);
    s.hard = (await readHardState(dir)) ?? { term: 0, vote: 0, commit: 0 };
    const conf = await readConfState(dir);
    const storedVoters = conf?.voters ?? [];
    if (storedVoters.length === 0) await writeVoters(dir, voters);
    s.snap = await readSnapshotMeta(dir, storedVoters.length > 0 ? storedVoters : [...voters]);
    const recorded = readSnapshotStamp(dir);
    s.stamp = recorded.stamp;
    // Entries at or below the snapshot index stay until they are compacted
    // away: they are committed, and the sidecar may not have archived them yet.
    const onDisk = await listEntryLsns(dir);
    s.oldest = onDisk[0] ?? 0;
    s.stampsWhole = s.snap.index === 0 || recorded.whole || s.oldest === 1;
    let expected = s.snap.index + 1;
    for (const lsn of onDisk) {
      const raft = s.readRaft(lsn);
      s.noteStamp(raft);
      if (lsn <= s.snap.index) continue;
      if (lsn !== expected)
        throw corrupt(partition, expected, `WAL has a gap: entry ${expected} is missing, next is ${lsn}`);
      s.terms.push(raft.term);
      expected++;
    }
    if (s.hard.commit > s.lastIndex()) {
      throw corrupt(
        partition,
        undefined,
        `hard state commit ${s.hard.commit} is beyond the last WAL entry ${s.lastIndex()}`,
      );
    }
    return s;
  }

  /** Raises the highest stamp from an entry's RAFT record (entries without data carry none). */
  private noteStamp(raft: RaftEntry): void {
    if (raft.data === undefined || raft.data.length === 0) return;
    let at: number;
    try {
      at = decodeEntryInfo(raft.data).committedAt;
    } catch (err) {
      throw corrupt(this.partition, raft.index, `RAFT data: ${(err as Error).message}`, err);
    }
    if (at > this.stamp) this.stamp = at;
  }

  /**
   * The highest commit stamp of every entry in this log (on disk at open, and
   * appended since): a leader stamps no lower, so stamps never go backwards
   * in a partition, whoever leads and whatever its clock says.
   */
  get highestStamp(): number {
    return this.stamp;
  }

  /** Whether `highestStamp` bounds every entry this log ever held (see `stampsWhole`). */
  get highestStampCoversAll(): boolean {
    return this.stampsWhole;
  }

  // ---- RaftStorage ---------------------------------------------------------

  initialState(): { hardState: HardState; voters: readonly number[] } {
    return { hardState: this.hard, voters: this.snap.voters };
  }

  firstIndex(): number {
    return this.snap.index + 1;
  }

  lastIndex(): number {
    return this.snap.index + this.terms.length;
  }

  term(index: number): number {
    if (index === this.snap.index) return this.snap.term;
    if (index < this.snap.index) throw logCompactedError(index);
    if (index > this.lastIndex()) throw logUnavailableError(index);
    return this.terms[index - this.snap.index - 1]!;
  }

  entries(lo: number, hi: number, maxBytes?: number): Entry[] {
    if (lo <= this.snap.index) throw logCompactedError(lo);
    if (hi > this.lastIndex() + 1) throw logUnavailableError(hi - 1);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.entry(i);
      out.push(e);
      bytes += e.data.byteLength;
      if (maxBytes !== undefined && bytes > maxBytes) break;
    }
    return limitSize(out, maxBytes);
  }

  /**
   * The snapshot a lagging follower is sent. The replica points this at its
   * applied state (it streams `state/` as of `applied`), which is at or after
   * where the log starts; until then it is where the log starts.
   */
  snapshotSource: (() => SnapshotMeta) | undefined;

  snapshotMeta(): SnapshotMeta {
    return this.snapshotSource ? this.snapshotSource() : this.snap;
  }

  /** The lowest LSN still in the WAL on disk (0 when it is empty); see `oldest`. */
  get oldestLsn(): number {
    return this.oldest;
  }

  /** Where the log starts: the last index compacted away (or installed from a snapshot) and its term. */
  get logStart(): SnapshotMeta {
    return this.snap;
  }

  // ---- reading -------------------------------------------------------------

  get hardState(): HardState {
    return this.hard;
  }

  private readRaft(lsn: number): RaftEntry {
    const file = join(entryDir(this.dir, lsn), RAFT_FILE);
    let raw: Buffer;
    try {
      raw = readFileSync(file);
    } catch (err) {
      if (isNotFound(err)) throw corrupt(this.partition, lsn, 'RAFT is missing', err);
      throw err;
    }
    let raft: RaftEntry;
    try {
      raft = decodeRaftEntry(raw);
    } catch (err) {
      throw corrupt(this.partition, lsn, `RAFT: ${(err as Error).message}`, err);
    }
    if (raft.index !== lsn) throw corrupt(this.partition, lsn, `RAFT says index ${raft.index}`);
    return raft;
  }

  /** The entry at `index` as the Raft core sees it, checked against the digest in its RAFT record. */
  entry(index: number): Entry {
    const cached = this.cache.get(index);
    if (cached) return cached;
    const raft = this.readRaft(index);
    if (raft.data === undefined || raft.data.length === 0) return toCoreEntry(raft, new Uint8Array(0));
    const dir = entryDir(this.dir, index);
    const manifest = readFileSync(join(dir, MANIFEST_FILE));
    const names = readdirSync(dir)
      .filter((n) => n !== MANIFEST_FILE && n !== RAFT_FILE)
      .sort((a, b) => (parseStagedFileName(a) ?? 0) - (parseStagedFileName(b) ?? 0));
    const content = { manifest, files: names.map((name) => ({ name, data: readFileSync(join(dir, name)) })) };
    let info;
    try {
      info = decodeEntryInfo(raft.data);
    } catch (err) {
      throw corrupt(this.partition, index, `RAFT data: ${(err as Error).message}`, err);
    }
    if (!contentDigest(content).equals(info.contentSha256)) {
      throw corrupt(this.partition, index, 'entry content does not match the digest in its RAFT record');
    }
    return toCoreEntry(raft, encodePayload(content, info.committedAt));
  }

  private remember(e: Entry): void {
    if (e.data.byteLength > PAYLOAD_CACHE_BYTES / 4) return;
    this.cache.set(e.index, e);
    this.cacheBytes += e.data.byteLength;
    for (const [i, old] of this.cache) {
      if (this.cacheBytes <= PAYLOAD_CACHE_BYTES) break;
      this.cache.delete(i);
      this.cacheBytes -= old.data.byteLength;
    }
  }

  private forgetFrom(index: number): void {
    for (const [i, e] of this.cache) {
      if (i >= index) {
        this.cache.delete(i);
        this.cacheBytes -= e.data.byteLength;
      }
    }
  }

  // ---- writing (driver only, in Ready order) ---------------------------------

  /**
   * Appends entries, replacing any uncommitted suffix they conflict with.
   * Entries are durable when this returns; the hard state is written after,
   * so `hard_state.Commit` never names an entry that is not yet on disk.
   */
  async append(entries: readonly Entry[]): Promise<void> {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    if (first <= this.snap.index)
      throw corrupt(this.partition, first, `append at or below the snapshot index ${this.snap.index}`);
    if (first > this.lastIndex() + 1)
      throw corrupt(this.partition, first, `append leaves a gap after ${this.lastIndex()}`);
    if (first <= this.lastIndex()) {
      await truncateFrom(this.dir, first, this.hard.commit);
      this.terms.length = first - this.snap.index - 1;
      this.forgetFrom(first);
    }
    for (const e of entries) {
      await this.writeOne(e);
      this.terms.push(e.term);
      this.remember(e);
      if (this.oldest === 0 || this.oldest > e.index) this.oldest = e.index;
    }
  }

  private async writeOne(e: Entry): Promise<void> {
    if (e.type === 'empty' || e.data.byteLength === 0) {
      await writeEntry(this.dir, e.index, {
        manifest: decodeLogEntry(Buffer.alloc(0)),
        raft: { term: e.term, index: e.index, type: PbEntryType.Normal },
      });
      return;
    }
    const payload = decodePayload(e.data, `entry ${e.index} payload`);
    const manifest = decodeLogEntry(payload.manifest, `entry ${e.index} MANIFEST`);
    const info = encodeEntryInfo({
      contentSha256: contentDigest(payload),
      committedAt: payload.committedAt,
      files: payload.files.length,
    });
    if (payload.committedAt > this.stamp) this.stamp = payload.committedAt;
    const written = await writeEntry(this.dir, e.index, {
      manifest,
      raft: { term: e.term, index: e.index, type: PbEntryType.Normal, data: info },
      files: payload.files.map((f) => ({ name: f.name, data: f.data })),
    });
    // The MANIFEST is re-encoded from its decoded form; it must be the proposer's bytes exactly.
    const onDisk = readFileSync(join(written.dir, MANIFEST_FILE));
    if (!onDisk.equals(payload.manifest)) {
      throw corrupt(this.partition, e.index, 'MANIFEST does not re-encode to the proposed bytes');
    }
  }

  async setHardState(hs: HardState): Promise<void> {
    await writeHardState(this.dir, hs);
    this.hard = hs;
  }

  /** Drops entries through `index` (applied, archived, no longer needed); the log then starts after it. */
  async compact(index: number, snapshotVoters: readonly number[]): Promise<void> {
    if (index <= this.snap.index) return;
    if (index > this.lastIndex())
      throw corrupt(this.partition, index, `compaction beyond the last entry ${this.lastIndex()}`);
    const meta = { index, term: this.term(index), voters: [...snapshotVoters] };
    // The highest stamp goes with it, so pruning every entry does not forget it.
    await writeSnapshotMeta(this.dir, meta, this.stamp, this.stampsWhole);
    this.terms = this.terms.slice(index - this.snap.index);
    this.snap = meta;
    this.forgetFrom(0);
    await pruneThrough(this.dir, index);
    this.oldest = this.lastIndex() > index ? index + 1 : 0;
  }

  /**
   * After installing a snapshot's state: the Raft log now starts after the
   * snapshot. Every local entry goes (some may be uncommitted leftovers), and
   * the committed entries the leader shipped with the snapshot (`shippedDir`,
   * `<LSN>/…` directories at or below the snapshot index) take their place,
   * so entries not yet archived are still on this node if it becomes leader.
   *
   * The steps on disk are idempotent but several: a replica runs them inside
   * the snapshot install protocol (snapshot-install.ts), whose intent record
   * finishes them after a crash. Then it calls `adoptSnapshot` alone.
   */
  async resetToSnapshot(meta: SnapshotMeta, shippedDir?: string): Promise<void> {
    await writeSnapshotMeta(this.dir, meta);
    const shipped = shippedDir ? await shippedEntryLsns(shippedDir, meta.index) : [];
    await resetWalToSnapshot(this.dir, meta.index, shippedDir, shipped);
    await this.adoptSnapshot(meta);
  }

  /** Takes on a snapshot whose files are in place (`raft/snapshot`, `wal/`): the log starts after it. */
  async adoptSnapshot(meta: SnapshotMeta): Promise<void> {
    // The entries it covers came without their stamps.
    if (meta.index > 0) this.stampsWhole = false;
    this.snap = { index: meta.index, term: meta.term, voters: [...meta.voters] };
    this.terms = [];
    this.forgetFrom(0);
    const onDisk = await listEntryLsns(this.dir);
    for (const lsn of onDisk) this.noteStamp(this.readRaft(lsn));
    this.oldest = onDisk[0] ?? 0;
  }
}

/** LSNs (ascending, at or below `index`) of the entry folders in a shipped WAL folder. */
export async function shippedEntryLsns(shippedDir: string, index: number): Promise<number[]> {
  try {
    return (await readdir(shippedDir))
      .map((n) => tryParseLsn(n))
      .filter((l): l is number => l !== undefined && l <= index)
      .sort((a, b) => a - b);
  } catch (err) {
    if (isNotFound(err)) return [];
    throw fsError(err, 'list', shippedDir);
  }
}

/**
 * Makes `wal/` hold exactly the shipped entries `shippedLsns` (moved in from
 * `shippedDir`). Idempotent, so it can run again after a crash: a shipped LSN
 * whose copy is no longer in `shippedDir` has been moved in already and is
 * kept; every other entry on disk is removed before any shipped one moves in
 * at its LSN.
 */
export async function resetWalToSnapshot(
  dir: string,
  index: number,
  shippedDir: string | undefined,
  shippedLsns: readonly number[],
): Promise<void> {
  const shipped = new Set(shippedLsns.filter((l) => l <= index));
  const pending = async (lsn: number) =>
    shippedDir !== undefined && (await pathExists(join(shippedDir, formatLsn(lsn))));
  for (const lsn of (await listEntryLsns(dir)).reverse()) {
    if (shipped.has(lsn) && !(await pending(lsn))) continue;
    await removeEntry(dir, lsn);
  }
  if (shippedDir === undefined || shipped.size === 0) return;
  await ensureDir(walDir(dir));
  let moved = false;
  for (const lsn of [...shipped].sort((a, b) => a - b)) {
    if (!(await pending(lsn))) continue;
    try {
      await dfs.rename(join(shippedDir, formatLsn(lsn)), entryDir(dir, lsn));
    } catch (err) {
      throw fsError(err, 'move shipped entry to', entryDir(dir, lsn));
    }
    moved = true;
  }
  if (moved) await fsyncDir(walDir(dir));
}

export async function readSnapshotMeta(dir: string, voters: readonly number[]): Promise<SnapshotMeta> {
  let raw: string;
  try {
    raw = readFileSync(join(dir, SNAPSHOT_META_FILE), 'utf8');
  } catch (err) {
    if (isNotFound(err)) return { index: 0, term: 0, voters: [...voters] };
    throw err;
  }
  try {
    const parsed = JSON.parse(raw) as { index: unknown; term: unknown; voters: unknown };
    if (
      !Number.isSafeInteger(parsed.index) ||
      !Number.isSafeInteger(parsed.term) ||
      !Array.isArray(parsed.voters)
    ) {
      throw new Error('expected {index, term, voters}');
    }
    return { index: parsed.index as number, term: parsed.term as number, voters: parsed.voters as number[] };
  } catch (err) {
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `${join(dir, SNAPSHOT_META_FILE)}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
}

/**
 * The highest commit stamp `raft/snapshot` records (0 when none: it predates
 * stamps, or there is no file), and whether it bounds every entry it covers.
 */
export function readSnapshotStamp(dir: string): { stamp: number; whole: boolean } {
  try {
    const parsed = JSON.parse(readFileSync(join(dir, SNAPSHOT_META_FILE), 'utf8')) as {
      stamp?: unknown;
      stamps?: unknown;
    };
    const stamp =
      Number.isSafeInteger(parsed.stamp) && (parsed.stamp as number) > 0 ? (parsed.stamp as number) : 0;
    return { stamp, whole: stamp > 0 && parsed.stamps !== 'partial' };
  } catch {
    // Missing or unreadable: readSnapshotMeta has already said what is wrong with it.
    return { stamp: 0, whole: false };
  }
}
