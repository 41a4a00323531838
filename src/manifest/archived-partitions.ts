/**
 * The one listing of the partitions an archive holds: every object under
 * `partitions/<id>/`, grouped by partition and sorted by what it is.
 * Restore-all, verify, the rebuild of the global manifest and retention
 * `--all` all start from it.
 */

import type { CallOptions, ObjectInfo, ObjectStore } from '../store/object-store.js';
import { comparePartitionIds, type PartitionId } from '../../contract/partition-id.js';
import {
  PARTITIONS_PREFIX,
  partitionOfKey,
  tryParseBaseKey,
  tryParsePartitionManifestKey,
  tryParseSegmentKey,
} from './keys.js';

/** One partition's objects in the archive, in key (so LSN) order. */
export interface ArchivedPartition {
  manifest?: ObjectInfo;
  segments: ObjectInfo[];
  backups: ObjectInfo[];
  /** Objects under the partition's prefix that are none of the above. */
  others: ObjectInfo[];
}

/** Whether the partition has a manifest, a segment or a base backup (not only stray objects). */
export function holdsArchive(p: ArchivedPartition): boolean {
  return p.manifest !== undefined || p.segments.length > 0 || p.backups.length > 0;
}

/** Every partition with an object under `partitions/<id>/`, in partition order. */
export async function listArchivedPartitions(
  store: ObjectStore,
  options: CallOptions = {},
): Promise<Map<PartitionId, ArchivedPartition>> {
  const listed = new Map<PartitionId, ArchivedPartition>();
  for await (const obj of store.list(PARTITIONS_PREFIX, options.signal ? { signal: options.signal } : {})) {
    const id = partitionOfKey(obj.key);
    if (id === undefined) continue;
    let p = listed.get(id);
    if (!p) listed.set(id, (p = { segments: [], backups: [], others: [] }));
    if (tryParsePartitionManifestKey(obj.key) !== undefined) p.manifest = obj;
    else if (tryParseSegmentKey(obj.key)) p.segments.push(obj);
    else if (tryParseBaseKey(obj.key)) p.backups.push(obj);
    else p.others.push(obj);
  }
  return new Map([...listed].sort(([a], [b]) => comparePartitionIds(a, b)));
}
