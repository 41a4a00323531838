export * from './lsn.js';
export * from './log-entry.js';
export * from './raftpb.js';
export * from './entry.js';
