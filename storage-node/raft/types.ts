/**
 * Data types of the Raft core. Indexes and terms are plain numbers: a
 * partition would need 2^53 entries before they lose precision.
 *
 * Field names follow etcd-io/raft's raftpb so a driver can map them onto the
 * on-disk protobufs of Contract 1 (raftpb.Entry, raftpb.HardState) one to one.
 */

/** `normal` carries a client write; `empty` is the entry a new leader appends to commit its term. */
export type EntryType = 'normal' | 'empty';

export interface Entry {
  readonly term: number;
  readonly index: number;
  readonly type: EntryType;
  readonly data: Uint8Array;
}

/** What must be on disk before any message of the same Ready is sent. */
export interface HardState {
  readonly term: number;
  /** The node voted for in `term`, 0 for none. */
  readonly vote: number;
  readonly commit: number;
}

export type Role = 'follower' | 'pre-candidate' | 'candidate' | 'leader';

/** Volatile state, reported when it changes; leadership changes come out of here. */
export interface SoftState {
  /** The known leader, 0 for none. */
  readonly leader: number;
  readonly role: Role;
}

/** Describes a snapshot; the snapshot's contents are the driver's business. */
export interface SnapshotMeta {
  /** Last log index the snapshot covers. */
  readonly index: number;
  /** Term of the entry at `index`. */
  readonly term: number;
  readonly voters: readonly number[];
}

export type MessageType =
  | 'append'
  | 'append-response'
  | 'heartbeat'
  | 'heartbeat-response'
  | 'pre-vote'
  | 'pre-vote-response'
  | 'vote'
  | 'vote-response'
  | 'snapshot'
  | 'timeout-now';

/**
 * One message between nodes. Every field is always present so that encoding is
 * trivial; fields a type does not use are 0, false or empty.
 *
 * - append: `index`/`logTerm` name the entry preceding `entries`; `commit` is the leader's commit.
 * - append-response: `index` is the last index the follower now matches; on `reject`,
 *   `index` echoes the rejected probe and `rejectHint`/`logTerm` point at where to retry.
 * - heartbeat: `commit` is min(the follower's match, the leader's commit).
 * - heartbeat-response: `reject` says the heartbeat's commit is beyond the follower's
 *   log (it lost entries it had acknowledged); `rejectHint` is its last index.
 * - (pre-)vote: `index`/`logTerm` describe the candidate's last entry; `transfer` marks a
 *   campaign asked for by the leader (leader transfer), which voters honour even inside a lease.
 * - snapshot: `snapshot` describes what the driver must ship alongside (data is out of band).
 *   A driver that has taken a newer snapshot since may ship that one instead and set
 *   `snapshot` to its description: any snapshot of committed state will do.
 */
export interface Message {
  readonly type: MessageType;
  readonly from: number;
  readonly to: number;
  readonly term: number;
  readonly logTerm: number;
  readonly index: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
  readonly reject: boolean;
  readonly rejectHint: number;
  readonly transfer: boolean;
  readonly snapshot?: SnapshotMeta;
}

/**
 * Work handed to the driver. Process it in this order, then call `advance(ready)`:
 *
 * 1. persist, in this order or atomically: `snapshot` (if present: install it
 *    and drop the log it covers), `entries` (if the first entry's index is at or
 *    below the last stored index, truncate the stored log from that index
 *    first), then `hardState` (if present; its commit may cover the new entries);
 * 2. send `messages` — only after step 1 is durable;
 * 3. apply `committedEntries`, in order.
 */
export interface Ready {
  readonly softState?: SoftState;
  readonly hardState?: HardState;
  readonly entries: readonly Entry[];
  readonly snapshot?: SnapshotMeta;
  readonly committedEntries: readonly Entry[];
  readonly messages: readonly Message[];
}

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

export interface PeerProgress {
  readonly match: number;
  readonly next: number;
  readonly state: ProgressState;
  readonly recentActive: boolean;
  readonly pendingSnapshot: number;
  readonly inflight: number;
}

export interface Status {
  readonly id: number;
  readonly term: number;
  readonly vote: number;
  readonly role: Role;
  readonly leader: number;
  readonly commit: number;
  readonly applied: number;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly voters: readonly number[];
  /** Leader only: how far each voter (itself included) is known to be. */
  readonly progress?: Readonly<Record<number, PeerProgress>>;
  /** Leader only: the node leadership is being handed to, 0 for none. */
  readonly leadTransferee: number;
}

/** 0 means "no node" wherever a node id is expected. */
export const NONE = 0;
