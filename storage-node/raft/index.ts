/**
 * The Raft core of storage-node (etcd-io/raft style). A driver owns one
 * RaftNode per partition and runs this loop:
 *
 *   on timer:    node.tick()
 *   on message:  node.step(msg)
 *   on write:    node.propose(data)            (throws NOT_LEADER on followers)
 *   then:        while (node.hasReady()) {
 *                  const rd = node.ready();
 *                  persist rd.snapshot, rd.entries, rd.hardState;   (durably, in that order)
 *                  send rd.messages;                                (snapshot messages: ship the data, then reportSnapshot)
 *                  apply rd.committedEntries;
 *                  node.advance(rd);
 *                }
 *
 * Leadership changes come out of rd.softState.
 */
export {
  RaftNode,
  DEFAULT_ELECTION_TICK,
  DEFAULT_HEARTBEAT_TICK,
  DEFAULT_MAX_INFLIGHT,
  DEFAULT_MAX_MSG_ENTRIES,
  REPLICATE_STALL_HEARTBEATS,
  type RaftConfig,
  type ProposeResult,
} from './node.js';
export {
  MemoryStorage,
  isLogGapError,
  logCompactedError,
  logUnavailableError,
  type RaftStorage,
} from './storage.js';
export { RaftError, RaftErrorKinds, isRaftError, type RaftErrorKind } from './errors.js';
export * from './types.js';
