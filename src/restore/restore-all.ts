import { lstat, readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { chmod, copyFile, mkdir, rm } from '../../contract/fs/durable-fs.js';
import { ErrorCodes, WalArchiverError, followAbort, isWalArchiverError } from '../../contract/errors.js';
import { comparePartitionIds } from '../../contract/partition-id.js';
import { readGlobalManifest } from '../manifest/global-manifest.js';
import { holdsArchive, listArchivedPartitions } from '../manifest/archived-partitions.js';
import { Semaphore } from '../semaphore.js';
import type { ObjectStore } from '../store/object-store.js';
import { PARTITIONS_DIR } from '../../contract/wal/entry.js';
import { BEFORE_ARCHIVE } from './plan.js';
import { listTimelines } from '../timeline/history.js';
import { RESTORED_STATE_DIR, linkRestoredState } from '../timeline/restored.js';
import {
  DEFAULT_RESTORE_CONCURRENCY,
  PARTIAL_SUFFIX,
  checkTarget,
  prepareBuildDir,
  publishBuildDir,
  restorePartition,
  type RestoreProgress,
  type RestoreResult,
} from './restore.js';

/**
 * `restore --all`: every partition of the archive, to one time (or each to
 * its latest archived LSN), into the data directories of a new N-node
 * cluster — "restore first, then form the cluster":
 *
 *   <target>/node-<i>/partitions/<id>/{state/, applied_lsn, raft/…}   for i = 1 … N
 *
 * Every node gets every partition, all at the same LSN with voters 1 … N, so
 * when the nodes start (`storage-node run --id i --data-dir <target>/node-i
 * --peers 1=…,…,N=…`) each partition's Raft group forms from identical
 * replicas, elects a leader and goes on from the restored LSN.
 *
 * Partitions are the union of the global manifest's and those the object
 * listing holds (`partitions/<id>/…`: a manifest, a segment or a base
 * backup), so a partition whose events never reached the global manifest is
 * restored too; each is reported with where it was found. With a time, a partition whose first entry was
 * committed after it did not exist then: it is skipped and reported. The
 * whole layout is built in `<target>.partial` and renamed into place once
 * every partition is complete.
 */

export const DEFAULT_NODES = 3;

export interface RestoreAllOptions {
  store: ObjectStore;
  target: { kind: 'time'; time: Date } | { kind: 'latest' };
  targetDir: string;
  nodes: number;
  force?: boolean;
  /** `--timeline N`: that timeline's history, for every partition that has it (others: their default). */
  timeline?: number;
  /** Marks every replica as the start of a new timeline with this restore (see restorePartition). */
  branch?: { restoreId: string; reason: string; at?: Date };
  /** Partitions restored at once, and segment downloads in flight across them (default 4). */
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (p: RestoreProgress) => void;
  /** Lines worth telling the operator (manifest source, skipped partitions). */
  onNote?: (line: string) => void;
}

/** Where a partition was found: the global manifest, the object listing, or both. */
export type PartitionSource = 'global manifest and objects' | 'global manifest only' | 'objects only';

export interface RestoreAllResult {
  targetDir: string;
  nodes: number;
  partitions: RestoreResult[];
  skipped: Array<{ partition: string; reason: string }>;
  /** Where each partition listed was found. */
  sources: Record<string, PartitionSource>;
  /** A summary of the sources, e.g. "global manifest and objects". */
  source: string;
}

/**
 * The partitions the archive holds: the union of the global manifest's (when
 * it is there and valid) and the object listing's, each with its source.
 */
export async function archivedPartitions(
  store: ObjectStore,
  options: { signal?: AbortSignal; onNote?: (line: string) => void } = {},
): Promise<{ partitions: string[]; sources: Record<string, PartitionSource>; source: string }> {
  const inManifest = new Set<string>();
  let manifest = false;
  try {
    const stored = await readGlobalManifest(store, options);
    if (stored) {
      manifest = true;
      for (const id of Object.keys(stored.value.partitions)) inManifest.add(id);
    } else options.onNote?.('the global manifest is missing; listing the partitions from the objects');
  } catch (err) {
    if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
    options.onNote?.(
      `the global manifest is damaged (${err.message}); listing the partitions from the objects`,
    );
  }
  const inObjects = new Set<string>();
  for (const [id, p] of await listArchivedPartitions(store, options.signal ? { signal: options.signal } : {}))
    if (holdsArchive(p)) inObjects.add(id);
  const sources: Record<string, PartitionSource> = {};
  for (const id of [...new Set([...inManifest, ...inObjects])].sort(comparePartitionIds)) {
    sources[id] = !inObjects.has(id)
      ? 'global manifest only'
      : inManifest.has(id)
        ? 'global manifest and objects'
        : 'objects only';
    if (manifest && sources[id] !== 'global manifest and objects')
      options.onNote?.(`partition ${id}: found in the ${sources[id]}`);
  }
  const partitions = Object.keys(sources);
  return {
    partitions,
    sources,
    source: manifest ? 'global manifest and objects' : 'objects',
  };
}

/** Copies a tree, keeping file and directory modes (the copy is byte-identical under treeDigest). */
export async function copyTree(
  from: string,
  to: string,
  skip: readonly string[] = [],
  rel = '',
): Promise<void> {
  await mkdir(to, { recursive: true });
  for (const d of await readdir(from, { withFileTypes: true })) {
    const src = join(from, d.name);
    const dst = join(to, d.name);
    const path = rel ? join(rel, d.name) : d.name;
    if (skip.includes(path)) continue;
    if (d.isDirectory()) await copyTree(src, dst, skip, path);
    else if (d.isFile()) await copyFile(src, dst);
    else continue;
    await chmod(dst, (await lstat(src)).mode & 0o7777);
  }
}

function nodeDir(root: string, node: number): string {
  return join(root, `node-${node}`);
}

export async function restoreAll(o: RestoreAllOptions): Promise<RestoreAllResult> {
  if (!Number.isInteger(o.nodes) || o.nodes < 1) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `--nodes must be at least 1 (got ${o.nodes})`, {
      retryable: false,
    });
  }
  const targetDir = resolve(o.targetDir);
  await checkTarget(targetDir, o.force ?? false);
  const { partitions, sources, source } = await archivedPartitions(o.store, {
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.onNote ? { onNote: o.onNote } : {}),
  });
  if (partitions.length === 0) {
    throw new WalArchiverError(ErrorCodes.NOT_FOUND, `the archive at ${o.store.url} holds no partition`, {
      retryable: false,
    });
  }
  const build = `${targetDir}${PARTIAL_SUFFIX}`;
  await prepareBuildDir(build, { all: true, target: o.target, nodes: o.nodes });
  const voters = Array.from({ length: o.nodes }, (_, i) => i + 1);
  const concurrency = Math.max(1, o.concurrency ?? DEFAULT_RESTORE_CONCURRENCY);
  const downloads = new Semaphore(concurrency);
  // Every request of a long restore listens on this signal.
  const { controller, release } = followAbort(o.signal);
  const results: RestoreResult[] = [];
  const skipped: RestoreAllResult['skipped'] = [];
  try {
    let next = 0;
    const settled = await Promise.allSettled(
      Array.from({ length: Math.min(concurrency, partitions.length) }, async () => {
        for (let i = next++; i < partitions.length && !controller.signal.aborted; i = next++) {
          const partition = partitions[i]!;
          const first = join(nodeDir(build, 1), PARTITIONS_DIR, partition);
          try {
            results.push(
              await restorePartition({
                store: o.store,
                partition,
                target: o.target,
                targetDir: first,
                voters,
                ...(o.timeline !== undefined &&
                (await hasTimeline(o.store, partition, o.timeline, controller.signal))
                  ? { timeline: o.timeline }
                  : {}),
                ...(o.branch ? { branch: o.branch } : {}),
                atomic: false,
                concurrency,
                downloads,
                signal: controller.signal,
                ...(o.onProgress ? { onProgress: o.onProgress } : {}),
              }),
            );
          } catch (err) {
            if (
              o.target.kind === 'time' &&
              isWalArchiverError(err) &&
              err.details.reason === BEFORE_ARCHIVE
            ) {
              skipped.push({ partition, reason: err.message });
              o.onNote?.(`skipped: ${err.message}`);
              continue;
            }
            controller.abort(err);
            throw err;
          }
          for (let n = 2; n <= o.nodes; n++) {
            const copy = join(nodeDir(build, n), PARTITIONS_DIR, partition);
            // The restored state is links into state/: each replica links its own rather than copying it twice.
            await copyTree(first, copy, [RESTORED_STATE_DIR]);
            if (o.branch) await linkRestoredState(copy);
          }
        }
      }),
    );
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (controller.signal.aborted) throw controller.signal.reason;
    if (results.length === 0) {
      throw new WalArchiverError(
        ErrorCodes.NOT_FOUND,
        `no partition has an entry at or before the target (${skipped.length} skipped)`,
        { retryable: false },
      );
    }
    for (let n = 1; n <= o.nodes; n++)
      await mkdir(join(nodeDir(build, n), PARTITIONS_DIR), { recursive: true });
    await publishBuildDir(build, targetDir);
  } catch (err) {
    await rm(build, { recursive: true, force: true });
    throw err;
  } finally {
    release();
  }
  results.sort((a, b) => comparePartitionIds(a.partition, b.partition));
  for (const r of results) r.targetDir = join(targetDir, 'node-1', PARTITIONS_DIR, r.partition);
  return { targetDir, nodes: o.nodes, partitions: results, skipped, sources, source };
}

async function hasTimeline(
  store: ObjectStore,
  partition: string,
  timeline: number,
  signal: AbortSignal,
): Promise<boolean> {
  return (await listTimelines(store, partition, signal)).some((t) => t.timeline === timeline);
}
