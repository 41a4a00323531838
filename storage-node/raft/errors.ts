/**
 * The Raft core's own errors, as etcd's raft has ErrCompacted and
 * ErrUnavailable: the core depends on nothing outside this folder, and the
 * node translates these at its edge (a proposal on a follower becomes the
 * node's NOT_LEADER answer).
 */

export const RaftErrorKinds = {
  /** The entry was compacted into a snapshot (etcd: ErrCompacted). */
  COMPACTED: 'compacted',
  /** The entry is beyond the end of the log (etcd: ErrUnavailable). */
  UNAVAILABLE: 'unavailable',
  /** A proposal or transfer on a node that is not the leader, or one handing off (etcd: ErrProposalDropped). */
  NOT_LEADER: 'not-leader',
  /** A configuration value or argument the core cannot accept. */
  INVALID: 'invalid',
  /** A state the protocol promises never to reach: a bug or lost storage. */
  INVARIANT: 'invariant',
} as const;
export type RaftErrorKind = (typeof RaftErrorKinds)[keyof typeof RaftErrorKinds];

export class RaftError extends Error {
  override readonly name = 'RaftError';

  constructor(
    readonly kind: RaftErrorKind,
    message: string,
    readonly details: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
  }
}

export function isRaftError(err: unknown, kind?: RaftErrorKind): err is RaftError {
  return err instanceof RaftError && (kind === undefined || err.kind === kind);
}
