import { RaftError, RaftErrorKinds, isRaftError } from './errors.js';
import type { Entry, HardState, SnapshotMeta } from './types.js';

/**
 * The read-only view of the persisted log that the Raft core needs. The driver
 * implements it on top of its WAL; it only ever changes through what the driver
 * persists from a Ready (and through compaction, which the driver decides).
 *
 * Index layout: the log holds entries `firstIndex() .. lastIndex()`; the entry
 * just below, `firstIndex() - 1`, is the last one covered by the latest
 * snapshot, and its term must stay readable through `term()`.
 */
export interface RaftStorage {
  /** Hard state and voters as last persisted. */
  initialState(): { hardState: HardState; voters: readonly number[] };
  firstIndex(): number;
  lastIndex(): number;
  /**
   * Term of the entry at `index`, for `firstIndex() - 1 <= index <= lastIndex()`.
   * Throws `logCompactedError` below that range and `logUnavailableError` above it.
   */
  term(index: number): number;
  /**
   * Entries `[lo, hi)`, at least one if `lo < hi`, then as many as fit in
   * `maxBytes` of entry data (no limit when absent). Throws `logCompactedError`
   * if `lo < firstIndex()` and `logUnavailableError` if `hi > lastIndex() + 1`.
   */
  entries(lo: number, hi: number, maxBytes?: number): Entry[];
  /** The latest snapshot; index 0 when there is none. */
  snapshotMeta(): SnapshotMeta;
}

export function logCompactedError(index: number): RaftError {
  return new RaftError(RaftErrorKinds.COMPACTED, `raft log entry ${index} is compacted`, { index });
}

export function logUnavailableError(index: number): RaftError {
  return new RaftError(RaftErrorKinds.UNAVAILABLE, `raft log entry ${index} is not in the log`, { index });
}

/** True for the two errors above, which mean "not there" rather than "something broke". */
export function isLogGapError(err: unknown): boolean {
  return isRaftError(err, RaftErrorKinds.COMPACTED) || isRaftError(err, RaftErrorKinds.UNAVAILABLE);
}

export function invariantError(message: string, details: Record<string, unknown> = {}): RaftError {
  return new RaftError(RaftErrorKinds.INVARIANT, `raft invariant violated: ${message}`, details);
}

export function entryBytes(entry: Entry): number {
  return entry.data.byteLength;
}

/** Cuts `entries` after the first entry once their data passes `maxBytes`. */
export function limitSize(entries: Entry[], maxBytes: number | undefined): Entry[] {
  if (maxBytes === undefined || entries.length <= 1) return entries;
  let size = entryBytes(entries[0]!);
  let n = 1;
  for (; n < entries.length; n++) {
    size += entryBytes(entries[n]!);
    if (size > maxBytes) break;
  }
  return n === entries.length ? entries : entries.slice(0, n);
}

/**
 * An in-memory RaftStorage: what the tests persist into, and the reference for
 * how a driver's storage must behave.
 */
export class MemoryStorage implements RaftStorage {
  private hardState: HardState = { term: 0, vote: 0, commit: 0 };
  private snapshot: SnapshotMeta;
  /** ents[0] is a placeholder for the entry the snapshot covers last (index and term only). */
  private ents: Entry[];

  constructor(voters: readonly number[] = []) {
    this.snapshot = { index: 0, term: 0, voters: [...voters] };
    this.ents = [{ index: 0, term: 0, type: 'empty', data: new Uint8Array(0) }];
  }

  initialState(): { hardState: HardState; voters: readonly number[] } {
    return { hardState: this.hardState, voters: this.snapshot.voters };
  }

  firstIndex(): number {
    return this.ents[0]!.index + 1;
  }

  lastIndex(): number {
    return this.ents[this.ents.length - 1]!.index;
  }

  term(index: number): number {
    const offset = this.ents[0]!.index;
    if (index < offset) throw logCompactedError(index);
    if (index > this.lastIndex()) throw logUnavailableError(index);
    return this.ents[index - offset]!.term;
  }

  entries(lo: number, hi: number, maxBytes?: number): Entry[] {
    const offset = this.ents[0]!.index;
    if (lo <= offset) throw logCompactedError(lo);
    if (hi > this.lastIndex() + 1) throw logUnavailableError(hi - 1);
    if (lo >= hi) return [];
    return limitSize(this.ents.slice(lo - offset, hi - offset), maxBytes);
  }

  snapshotMeta(): SnapshotMeta {
    return this.snapshot;
  }

  getHardState(): HardState {
    return this.hardState;
  }

  setHardState(hardState: HardState): void {
    this.hardState = { term: hardState.term, vote: hardState.vote, commit: hardState.commit };
  }

  /**
   * Appends entries, first dropping any stored entries at or after the first
   * new index (a Ready's entries may replace a conflicting suffix). Entries at
   * or below the snapshot are skipped: they are already covered.
   */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = this.firstIndex();
    const lastNew = entries[entries.length - 1]!.index;
    if (lastNew < first) return;
    const toAppend = entries[0]!.index < first ? entries.slice(first - entries[0]!.index) : entries;
    const start = toAppend[0]!.index;
    if (start > this.lastIndex() + 1) {
      throw invariantError(`append leaves a gap: last stored ${this.lastIndex()}, first new ${start}`);
    }
    for (let i = 1; i < toAppend.length; i++) {
      if (toAppend[i]!.index !== start + i) throw invariantError('appended entries are not contiguous');
    }
    const commit = this.hardState.commit;
    for (let i = start; i <= Math.min(commit, this.lastIndex(), lastNew); i++) {
      if (this.term(i) !== toAppend[i - start]!.term) {
        throw invariantError(`append would replace committed entry ${i} (commit ${commit})`);
      }
    }
    this.ents.length = start - this.ents[0]!.index;
    for (const e of toAppend) this.ents.push(e);
  }

  /** Drops entries from `index` on. Refuses to drop committed entries. */
  truncate(index: number): void {
    if (index <= this.hardState.commit) {
      throw invariantError(
        `truncate at ${index} would drop committed entries (commit ${this.hardState.commit})`,
      );
    }
    if (index > this.lastIndex()) return;
    if (index < this.firstIndex()) throw logCompactedError(index);
    this.ents.length = index - this.ents[0]!.index;
  }

  /** Records a snapshot of the applied state at `index` (the caller has the data). */
  createSnapshot(index: number, voters: readonly number[] = this.snapshot.voters): SnapshotMeta {
    if (index <= this.snapshot.index) return this.snapshot;
    if (index > this.lastIndex()) throw logUnavailableError(index);
    if (index > this.hardState.commit) {
      throw invariantError(`snapshot at ${index} beyond commit ${this.hardState.commit}`);
    }
    this.snapshot = { index, term: this.term(index), voters: [...voters] };
    return this.snapshot;
  }

  /** Discards entries up to and including `index`; a snapshot must cover them. */
  compact(index: number): void {
    const offset = this.ents[0]!.index;
    if (index <= offset) return;
    if (index > this.snapshot.index) {
      throw invariantError(`compact to ${index} past the snapshot at ${this.snapshot.index}`);
    }
    const term = this.term(index);
    this.ents = [
      { index, term, type: 'empty', data: new Uint8Array(0) },
      ...this.ents.slice(index - offset + 1),
    ];
  }

  /** Replaces the whole log with a snapshot received from the leader. */
  applySnapshot(meta: SnapshotMeta): void {
    if (meta.index <= this.snapshot.index) {
      throw invariantError(`snapshot ${meta.index} is not newer than ${this.snapshot.index}`);
    }
    this.snapshot = { index: meta.index, term: meta.term, voters: [...meta.voters] };
    this.ents = [{ index: meta.index, term: meta.term, type: 'empty', data: new Uint8Array(0) }];
  }
}
