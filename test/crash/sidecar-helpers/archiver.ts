import { silentLogger } from '../../../contract/log.js';
import { createArchiverMetrics } from '../../../src/pipeline/metrics.js';
import { DEFAULT_ARCHIVER_CONFIG, PartitionArchiver } from '../../../src/pipeline/partition-archiver.js';
import { Semaphore } from '../../../src/semaphore.js';
import type { ObjectStore } from '../../../src/store/object-store.js';
import { readArchiverPosition } from '../../../contract/wal/entry.js';
import { CrashWatcher, NODE, PARTITION, TERM, waitUntil, type Rig } from './fixtures.js';

/** One partition's archiver with its loops on, against the real data dir and the folder store (no node API needed). */
export function newArchiver(rig: Rig, store: ObjectStore, term = TERM): PartitionArchiver {
  return new PartitionArchiver({
    partition: PARTITION,
    partitionDir: rig.pdir,
    node: NODE,
    term,
    store,
    spoolDir: rig.spoolDir,
    uploads: new Semaphore(2),
    // Two entries a segment, so a few entries make several segments recorded in order.
    config: {
      ...DEFAULT_ARCHIVER_CONFIG,
      segmentMaxEntries: 2,
      segmentMaxAgeMs: 1,
      idlePollMs: 20,
      maxInflight: 2,
    },
    metrics: createArchiverMetrics(),
    logger: silentLogger,
  });
}

export interface ArchiveOutcome {
  archived: number;
  position: number | undefined;
  state: string;
  error: string | undefined;
  timedOut: boolean;
}

/**
 * Runs an archiver until `archiver/position` reaches `through` (everything
 * archived and recorded), it stops on an error, or `watcher` saw the crash;
 * then stops it, so nothing of it runs on.
 */
export async function archiveThrough(
  rig: Rig,
  store: ObjectStore,
  through: number,
  watcher?: CrashWatcher,
  timeoutMs = 20_000,
): Promise<ArchiveOutcome> {
  const archiver = newArchiver(rig, store);
  archiver.start();
  let position: number | undefined;
  const done = await waitUntil(async () => {
    if (watcher?.crashed) return true;
    if (archiver.state === 'failed' || archiver.state === 'fenced') return true;
    position = await readArchiverPosition(rig.pdir).catch(() => undefined);
    return archiver.archivedLsn >= through && position !== undefined && position >= through;
  }, timeoutMs);
  await archiver.stop();
  return {
    archived: archiver.archivedLsn,
    position,
    state: archiver.state,
    error: archiver.error,
    timedOut: !done,
  };
}
