import { isLogGapError, invariantError, limitSize, type RaftStorage } from './storage.js';
import type { Entry, SnapshotMeta } from './types.js';

/**
 * The node's view of its log: what the driver has persisted (storage) plus what
 * it has not persisted yet (the unstable tail, and possibly a snapshot received
 * from the leader). Unstable entries win over stored ones at the same index:
 * they replace a conflicting suffix the driver still has on disk.
 */
export class RaftLog {
  /** Highest index known to be committed by a quorum. */
  committed: number;
  /** Highest index the driver has applied. */
  applied: number;

  private unstableSnapshot: SnapshotMeta | undefined;
  private unstableEntries: Entry[] = [];
  /** Index of unstableEntries[0]. */
  private unstableOffset: number;

  constructor(
    private readonly storage: RaftStorage,
    committed: number,
    applied: number,
  ) {
    this.unstableOffset = storage.lastIndex() + 1;
    this.committed = committed;
    this.applied = applied;
  }

  firstIndex(): number {
    return this.unstableSnapshot ? this.unstableSnapshot.index + 1 : this.storage.firstIndex();
  }

  lastIndex(): number {
    if (this.unstableEntries.length > 0) return this.unstableOffset + this.unstableEntries.length - 1;
    if (this.unstableSnapshot) return this.unstableSnapshot.index;
    return this.storage.lastIndex();
  }

  /** Term at `index`, or undefined if the entry is compacted or beyond the log. */
  term(index: number): number | undefined {
    if (index < this.firstIndex() - 1 || index > this.lastIndex()) return undefined;
    if (this.unstableSnapshot && index === this.unstableSnapshot.index) return this.unstableSnapshot.term;
    if (index >= this.unstableOffset && this.unstableEntries.length > 0) {
      return this.unstableEntries[index - this.unstableOffset]!.term;
    }
    if (this.unstableSnapshot) return undefined;
    try {
      return this.storage.term(index);
    } catch (err) {
      if (isLogGapError(err)) return undefined;
      throw err;
    }
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    if (t === undefined) throw invariantError(`term of the last index ${this.lastIndex()} is unknown`);
    return t;
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Whether a log ending at (lastTerm, lastIndex) is at least as up-to-date as this one (§5.4.1). */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /**
   * Entries `[lo, hi)`; undefined if `lo` is compacted. Cut to `maxBytes`
   * (at least one entry).
   */
  slice(lo: number, hi: number, maxBytes?: number): Entry[] | undefined {
    if (lo < this.firstIndex()) return undefined;
    hi = Math.min(hi, this.lastIndex() + 1);
    if (lo >= hi) return [];
    const out: Entry[] = [];
    if (lo < this.unstableOffset) {
      let stored: Entry[];
      try {
        stored = this.storage.entries(lo, Math.min(hi, this.unstableOffset), maxBytes);
      } catch (err) {
        if (isLogGapError(err)) return undefined;
        throw err;
      }
      out.push(...stored);
      if (stored.length < Math.min(hi, this.unstableOffset) - lo) return stored;
    }
    if (hi > this.unstableOffset) {
      const from = Math.max(lo, this.unstableOffset) - this.unstableOffset;
      out.push(...this.unstableEntries.slice(from, hi - this.unstableOffset));
    }
    return limitSize(out, maxBytes);
  }

  /** Appends entries that follow the last index or replace an uncommitted suffix. */
  append(entries: readonly Entry[]): number {
    if (entries.length === 0) return this.lastIndex();
    const after = entries[0]!.index;
    if (after <= this.committed) {
      throw invariantError(`append at ${after} would overwrite committed entries (commit ${this.committed})`);
    }
    if (after > this.lastIndex() + 1) {
      throw invariantError(`append at ${after} leaves a gap after ${this.lastIndex()}`);
    }
    const tail = this.unstableOffset + this.unstableEntries.length;
    if (after === tail) {
      this.unstableEntries.push(...entries);
    } else if (after <= this.unstableOffset) {
      this.unstableOffset = after;
      this.unstableEntries = [...entries];
    } else {
      this.unstableEntries = this.unstableEntries.slice(0, after - this.unstableOffset).concat(entries);
    }
    return this.lastIndex();
  }

  /**
   * The log matching check of AppendEntries: if our entry at `index` has term
   * `logTerm`, append `entries` (dropping a conflicting uncommitted suffix),
   * advance commit to min(`commit`, last new index) and return the last new
   * index; otherwise return undefined.
   */
  maybeAppend(index: number, logTerm: number, commit: number, entries: readonly Entry[]): number | undefined {
    if (!this.matchTerm(index, logTerm)) return undefined;
    const lastNew = index + entries.length;
    const conflict = this.findConflict(entries);
    if (conflict !== 0) {
      if (conflict <= this.committed) {
        throw invariantError(`entry ${conflict} conflicts with a committed entry (commit ${this.committed})`);
      }
      this.append(entries.slice(conflict - entries[0]!.index));
    }
    this.commitTo(Math.min(commit, lastNew));
    return lastNew;
  }

  /** First entry whose index is new or whose term differs from ours; 0 if all match. */
  findConflict(entries: readonly Entry[]): number {
    for (const e of entries) {
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * Largest index <= `index` whose term is <= `term` (or the oldest index we
   * still know a term for). Used to skip a whole term per round trip when a
   * follower's log diverges.
   */
  findConflictByTerm(index: number, term: number): number {
    const floor = this.firstIndex() - 1;
    let i = Math.min(index, this.lastIndex());
    for (; i > floor; i--) {
      const t = this.term(i);
      if (t === undefined || t <= term) return i;
    }
    return Math.max(i, 0);
  }

  commitTo(index: number): void {
    if (index <= this.committed) return;
    if (index > this.lastIndex()) {
      throw invariantError(`commit ${index} is beyond the last index ${this.lastIndex()}; is the log lost?`);
    }
    this.committed = index;
  }

  appliedTo(index: number): void {
    if (index === 0) return;
    if (index > this.committed || index < this.applied) {
      throw invariantError(`applied ${index} outside [${this.applied}, ${this.committed}]`);
    }
    this.applied = index;
  }

  /** The committed entries not yet applied (none while a snapshot waits to be installed). */
  nextCommittedEntries(maxBytes?: number): Entry[] {
    if (this.unstableSnapshot) return [];
    const lo = Math.max(this.applied + 1, this.firstIndex());
    if (lo > this.committed) return [];
    const ents = this.slice(lo, this.committed + 1, maxBytes);
    if (ents === undefined) throw invariantError(`committed entries from ${lo} are compacted`);
    return ents;
  }

  hasNextCommittedEntries(): boolean {
    return !this.unstableSnapshot && this.committed > this.applied;
  }

  unstable(): { entries: Entry[]; snapshot: SnapshotMeta | undefined } {
    return { entries: this.unstableEntries.slice(), snapshot: this.unstableSnapshot };
  }

  hasUnstable(): boolean {
    return this.unstableEntries.length > 0 || this.unstableSnapshot !== undefined;
  }

  /** The driver has persisted entries up to `index`; ignored if that entry has been replaced since. */
  stableTo(index: number, term: number): void {
    if (index < this.unstableOffset || this.unstableEntries.length === 0) return;
    const e = this.unstableEntries[index - this.unstableOffset];
    if (e === undefined || e.term !== term) return;
    this.unstableEntries = this.unstableEntries.slice(index + 1 - this.unstableOffset);
    this.unstableOffset = index + 1;
  }

  /** The driver has installed the snapshot at `index`. */
  stableSnapshotTo(index: number): void {
    if (this.unstableSnapshot && this.unstableSnapshot.index === index) this.unstableSnapshot = undefined;
  }

  /** The snapshot to send a follower that needs compacted entries. */
  snapshotMeta(): SnapshotMeta {
    return this.unstableSnapshot ?? this.storage.snapshotMeta();
  }

  /** Replaces the log with a snapshot received from the leader. */
  restore(snapshot: SnapshotMeta): void {
    this.committed = snapshot.index;
    this.unstableSnapshot = snapshot;
    this.unstableEntries = [];
    this.unstableOffset = snapshot.index + 1;
  }
}
