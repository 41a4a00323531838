import type { Readable } from 'node:stream';
import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import type { Logger } from '../../contract/log.js';

/**
 * The storage node as the sidecar sees it, as `ObjectStore` and `EventBus`
 * are the archive and the bus: the leadership stream that says which
 * partitions to archive, a partition's status, and the consistent snapshot a
 * base backup is taken from. `HttpStorageNode` (./http-node.ts) speaks the
 * node's HTTP API; tests may give another.
 */
export interface StorageNode {
  /** Where the node is, for messages and logs. */
  readonly url: string;
  /** The node's view of one partition. NOT_FOUND when it has no such partition; UNAVAILABLE (retryable) when unreachable. */
  partitionStatus(partition: string, signal?: AbortSignal): Promise<PartitionView>;
  /**
   * A tar of the partition's applied state. The caller reads `body` to its end
   * or calls `cancel()`. NOT_FOUND when there is nothing applied to back up.
   */
  snapshot(partition: string, signal?: AbortSignal): Promise<NodeSnapshot>;
  /**
   * Follows leadership until `signal` aborts: first the state of every
   * partition, then every change; reconnects with backoff, and after a
   * reconnect the whole state comes again, so nothing is missed.
   */
  followLeadership(options: LeadershipFollowOptions): Promise<void>;
}

export interface PartitionView {
  node: number;
  role: string;
  term: number;
  leader: number;
  leaderUrl?: string;
  applied: number;
}

export interface NodeSnapshot {
  /** The applied LSN the snapshot is consistent at. */
  lsn: number;
  /** At least the greatest commit time of the entries up to `lsn`, when the node knows one. */
  maxCommittedAt?: string;
  body: Readable;
  cancel(): Promise<void>;
}

export interface LeadershipState {
  partition: string;
  node: number;
  leader: number;
  term: number;
  role: string;
}

export interface LeadershipFollowOptions {
  logger: Logger;
  onChange: (state: LeadershipState) => void;
  /** The connection dropped: treat every partition as unknown until the next state. */
  onDisconnect?: () => void;
  signal: AbortSignal;
}

/**
 * Throws NOT_LEADER (naming the leader's URL when the node knows it) unless
 * `node` leads `partition`, in `term` when one is given.
 */
export async function assertLeader(
  node: StorageNode,
  partition: string,
  term: number | undefined,
  signal?: AbortSignal,
): Promise<PartitionView> {
  const s = await node.partitionStatus(partition, signal);
  if (s.role !== 'leader' || (term !== undefined && s.term !== term)) {
    const leader =
      s.role === 'leader'
        ? `it leads in term ${s.term}, not ${term}`
        : s.leaderUrl
          ? `the leader is node ${s.leader} at ${s.leaderUrl}`
          : s.leader
            ? `the leader is node ${s.leader}`
            : 'no leader is known right now';
    throw new WalArchiverError(
      ErrorCodes.NOT_LEADER,
      `storage node ${node.url} is not the leader of partition ${partition} (${leader})`,
      { retryable: false, details: { partition, leader: s.leader, leaderUrl: s.leaderUrl, term: s.term } },
    );
  }
  return s;
}
