import type { PeerProgress, ProgressState } from './types.js';

/**
 * A bounded FIFO of the last indexes of append messages sent but not yet
 * acknowledged; when full, the leader stops sending to that follower.
 */
export class Inflights {
  private readonly buf: number[] = [];

  constructor(private readonly capacity: number) {}

  get count(): number {
    return this.buf.length;
  }

  full(): boolean {
    return this.buf.length >= this.capacity;
  }

  add(lastIndex: number): void {
    this.buf.push(lastIndex);
  }

  /** Frees every message whose last index is <= `index`. */
  freeLE(index: number): void {
    let n = 0;
    while (n < this.buf.length && this.buf[n]! <= index) n++;
    if (n > 0) this.buf.splice(0, n);
  }

  reset(): void {
    this.buf.length = 0;
  }
}

/**
 * The leader's view of one follower (etcd-io/raft's Progress):
 *
 * - probe: one append in flight at a time, `next` walks back until the logs match;
 * - replicate: appends are pipelined (up to the inflight limit), `next` runs ahead of `match`;
 * - snapshot: a snapshot is on its way; nothing else is sent until it is reported.
 */
export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  /** The snapshot index being sent, while in state snapshot. */
  pendingSnapshot = 0;
  /** Heard from within the current check-quorum period. */
  recentActive = false;
  /** Probe state: an append is in flight, wait for an answer or a heartbeat response. */
  probeSent = false;
  /** Replicate state: heartbeat responses seen in a row while `match` stood still behind the log. */
  stalledHeartbeats = 0;
  private lastHeartbeatMatch = 0;
  readonly inflights: Inflights;

  constructor(next: number, maxInflight: number) {
    this.next = next;
    this.inflights = new Inflights(maxInflight);
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.state = state;
    this.stalledHeartbeats = 0;
    this.inflights.reset();
  }

  becomeProbe(): void {
    if (this.state === 'snapshot') {
      const pending = this.pendingSnapshot;
      this.resetState('probe');
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState('probe');
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.resetState('replicate');
    this.next = this.match + 1;
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.resetState('snapshot');
    this.pendingSnapshot = snapshotIndex;
  }

  /** Records an acknowledgement up to `index`; true if `match` moved. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.match < index) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, index + 1);
    return updated;
  }

  /**
   * A rejected append at `rejected`; `matchHint` is where the follower suggests
   * to look. Returns false for a stale rejection (nothing changed).
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  /**
   * The follower reports its log ends at `lastIndex`, below the `match` it
   * acknowledged (its storage was replaced or lost): what it had is gone, so
   * probe from where its log ends. The commit index does not move back.
   */
  lostLog(lastIndex: number): void {
    this.match = Math.min(this.match, lastIndex);
    this.lastHeartbeatMatch = this.match;
    this.resetState('probe');
    this.next = lastIndex + 1;
  }

  /** Bookkeeping after an append carrying entries up to `lastIndex` (`count` of them) was sent. */
  sentEntries(lastIndex: number, count: number): void {
    if (this.state === 'replicate') {
      if (count > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex);
      }
    } else if (this.state === 'probe') {
      this.probeSent = true;
    }
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflights.full();
      case 'snapshot':
        return true;
    }
  }

  /**
   * A heartbeat response arrived. Returns true when an append sent in
   * replicate state looks lost (the follower's match has not moved across
   * several heartbeats while the log is ahead): the caller falls back to probing.
   */
  onHeartbeatResponse(lastIndex: number, stallLimit: number): boolean {
    this.probeSent = false;
    if (this.state !== 'replicate') return false;
    if (this.match >= lastIndex || this.match !== this.lastHeartbeatMatch) {
      this.lastHeartbeatMatch = this.match;
      this.stalledHeartbeats = 0;
      return false;
    }
    this.stalledHeartbeats++;
    return this.stalledHeartbeats >= stallLimit;
  }

  snapshotView(): PeerProgress {
    return {
      match: this.match,
      next: this.next,
      state: this.state,
      recentActive: this.recentActive,
      pendingSnapshot: this.pendingSnapshot,
      inflight: this.inflights.count,
    };
  }
}
