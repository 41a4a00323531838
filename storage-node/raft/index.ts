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
  LOG_COMPACTED,
  LOG_UNAVAILABLE,
  type RaftStorage,
} from './storage.js';
export {
  NONE,
  type Entry,
  type EntryType,
  type HardState,
  type Message,
  type MessageType,
  type PeerProgress,
  type ProgressState,
  type Ready,
  type Role,
  type SnapshotMeta,
  type SoftState,
  type Status,
} from './types.js';
