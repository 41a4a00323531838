import { readFile } from 'node:fs/promises';
import { writeKvEntry } from './test-entries.js';
import { join } from 'node:path';
import { spoolSegment, type SegmentEntry } from '../../src/archive/segment-writer.js';
import { segmentKey } from '../../src/manifest/keys.js';
import { updatePartitionManifest, type SegmentRecord } from '../../src/manifest/partition-manifest.js';
import type { ObjectStore } from '../../src/store/object-store.js';

/**
 * Builds a partition's archive as the archiver writes it: WAL entries on
 * disk, packed into segments, created in the store with their metadata and
 * recorded in the partition manifest. For verify's tests.
 */
export class SegmentArchive {
  /** The next LSN to archive. */
  next = 1;
  readonly keys: string[] = [];

  constructor(
    readonly store: ObjectStore,
    readonly work: string,
    readonly partition: string,
  ) {}

  /** Archives `count` more segments of `perSegment` entries each; returns their keys. */
  async append(count: number, perSegment = 2): Promise<string[]> {
    const wal = join(this.work, `wal-${this.partition}`, 'partitions', this.partition);
    const records: SegmentRecord[] = [];
    for (let i = 0; i < count; i++) {
      const first = this.next;
      const last = first + perSegment - 1;
      const entries: SegmentEntry[] = [];
      for (let lsn = first; lsn <= last; lsn++) {
        entries.push(await writeKvEntry(wal, lsn, String(lsn % 10).repeat(40)));
      }
      const seg = await spoolSegment(entries, join(this.work, 'spool'));
      const key = segmentKey(this.partition, first, last);
      await this.store.create(key, await readFile(seg.path), {
        metadata: {
          sha256: seg.sha256,
          'first-lsn': String(first),
          'last-lsn': String(last),
          partition: this.partition,
        },
      });
      records.push({
        key,
        first_lsn: first,
        last_lsn: last,
        entries: perSegment,
        bytes: seg.bytes,
        raw_bytes: seg.rawBytes,
        sha256: seg.sha256,
        first_committed_at: new Date(1_000 + first).toISOString(),
        last_committed_at: new Date(1_000 + last).toISOString(),
        archived_at: new Date(10_000).toISOString(),
        term: 1,
        node: 1,
      });
      this.keys.push(key);
      this.next = last + 1;
    }
    await updatePartitionManifest(this.store, this.partition, { node: 1, term: 1 }, { segments: records });
    return records.map((r) => r.key);
  }
}
