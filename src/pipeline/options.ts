import type { BackupOptions } from '../backup/trigger.js';
import type { EventBus } from '../../contract/events/event-bus.js';
import type { Logger } from '../../contract/log.js';
import type { ObjectStore } from '../store/object-store.js';
import type { ArchiverMetrics } from './metrics.js';
import type { Semaphore } from '../semaphore.js';

/** The limits of a partition's archiving: when a segment is sealed, how many upload at once. */
export interface ArchiverConfig {
  segmentMaxBytes: number;
  segmentMaxEntries: number;
  segmentMaxAgeMs: number;
  maxInflight: number;
  zstdLevel: number;
  /** How often to look at the hard state when no change notification came (a safety net, not the mechanism). */
  idlePollMs: number;
}

export const DEFAULT_ARCHIVER_CONFIG: ArchiverConfig = {
  segmentMaxBytes: 16 * 1024 * 1024,
  segmentMaxEntries: 10_000,
  segmentMaxAgeMs: 500,
  maxInflight: 2,
  zstdLevel: 3,
  idlePollMs: 60_000,
};

/** What one partition's archiver is given: its limits, its services, and where it works. */
export interface PartitionArchiverOptions {
  backup?: BackupOptions;
  partition: string;
  partitionDir: string;
  node: number;
  term: number;
  store: ObjectStore;
  events?: EventBus;
  spoolDir: string;
  uploads: Semaphore;
  /** Bounds how many partitions read and claim their manifests at once (start-up with many partitions). */
  resumes?: Semaphore;
  config: ArchiverConfig;
  metrics: ArchiverMetrics;
  logger: Logger;
  now?: () => number;
}

export type ArchiverState = 'starting' | 'archiving' | 'fenced' | 'failed' | 'stopped';
