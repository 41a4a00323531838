import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { listPartitionObjects } from '../../../../src/backup/retention.js';
import { holdsArchive, listArchivedPartitions } from '../../../../src/manifest/archived-partitions.js';
import { rebuildFromObjects } from '../../../../src/manifest/global-manifest.js';
import {
  partitionManifestKey,
  partitionOfKey,
  tryParseBaseKey,
  tryParsePartitionManifestKey,
  tryParseSegmentKey,
  verifiedKey,
} from '../../../../src/manifest/keys.js';
import { loadPartitionArchive } from '../../../../src/restore/plan.js';
import {
  readVerifiedPoint,
  verifiedRecord,
  writeVerifiedPoint,
} from '../../../../src/restore/verified-record.js';
import { validateKey } from '../../../../src/store/keys.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { openObjectStore } from '../../../../src/store/open.js';
import { SegmentArchive } from '../../../helpers/verify-archive.js';

/** The verified record: its key, that nothing else reads it, and its compare-and-swap. */

let work: string;
let store: ObjectStore;

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'verify-record-'));
  store = await openObjectStore(`file://${join(work, 'archive')}`);
});
afterEach(async () => {
  await store.close();
  await rm(work, { recursive: true, force: true });
});

const record = (verified_lsn: number, host: string) =>
  verifiedRecord({ partition: '1', timeline: 1, verified_lsn, mode: 'full', objects: [], host });

describe('the verified record key', () => {
  it('is partitions/<id>/verified.json on timeline 1, under timelines/<N>/ on others', () => {
    expect(verifiedKey('1')).toBe('partitions/1/verified.json');
    expect(verifiedKey('a.b', 1)).toBe('partitions/a.b/verified.json');
    expect(verifiedKey('7', 3)).toBe('partitions/7/timelines/3/verified.json');
    expect(() => verifiedKey('7', 0)).toThrow(/timeline 0 is not an integer from 1/);
    expect(() => verifiedKey('../x')).toThrow(/invalid partition ID/);
  });

  it('is a valid object key that no key parser takes for a segment, a backup or a manifest', () => {
    for (const key of [verifiedKey('1'), verifiedKey('1', 2)]) {
      expect(() => validateKey(key, 'file:///x')).not.toThrow();
      expect(tryParseSegmentKey(key)).toBeUndefined();
      expect(tryParseBaseKey(key)).toBeUndefined();
      expect(tryParsePartitionManifestKey(key)).toBeUndefined();
      expect(partitionOfKey(key)).toBe('1');
    }
  });

  it('is ignored by the partition listing, the rebuild, retention and restore planning', async () => {
    const archive = new SegmentArchive(store, work, '1');
    await archive.append(3);
    const before = await rebuildFromObjects(store, { now: () => new Date(0) });
    await writeVerifiedPoint(store, record(6, 'h'), { state: 'absent' });
    // A partition that holds nothing but a record (its archive gone) is no archived partition.
    await store.create(verifiedKey('2'), Buffer.from('{}'));

    const listed = await listArchivedPartitions(store);
    expect(listed.get('1')!.others.map((o) => o.key)).toEqual([verifiedKey('1')]);
    expect(listed.get('1')!.segments).toHaveLength(3);
    expect(holdsArchive(listed.get('2')!)).toBe(false);
    const after = await rebuildFromObjects(store, { now: () => new Date(0) });
    expect(after.manifest).toEqual(before.manifest);
    expect(Object.keys(after.manifest.partitions)).toEqual(['1']);
    expect(await listPartitionObjects(store, '1')).toEqual(archive.keys);
    // Restore plans from the listing when the manifest is gone: the record is no object of it.
    await store.delete(partitionManifestKey('1'));
    const planned = await loadPartitionArchive(store, '1');
    expect(planned.source).toBe('objects');
    expect(planned.segments.map((s) => s.key)).toEqual(archive.keys);
    expect(planned.backups).toEqual([]);
  });
});

describe('writing the verified point', () => {
  it('keeps the record of a racing verifier that got at least as far, and replaces one that did not', async () => {
    await writeVerifiedPoint(store, record(10, 'first'), { state: 'absent' });
    const startedFrom = await readVerifiedPoint(store, '1');
    expect(startedFrom.state).toBe('ok');

    // Two verifiers started from the same point; one (to LSN 20) writes first.
    expect(await writeVerifiedPoint(store, record(20, 'a'), startedFrom)).toBe(true);
    // The other lost the race; it got only to LSN 15: the record stays A's.
    expect(await writeVerifiedPoint(store, record(15, 'b'), startedFrom)).toBe(false);
    let now = await readVerifiedPoint(store, '1');
    expect(now.state === 'ok' && now.stored.value).toMatchObject({ verified_lsn: 20, host: 'a' });

    // One that got further wins the re-read and writes.
    expect(await writeVerifiedPoint(store, record(30, 'c'), startedFrom)).toBe(true);
    now = await readVerifiedPoint(store, '1');
    expect(now.state === 'ok' && now.stored.value).toMatchObject({ verified_lsn: 30, host: 'c' });

    // Re-verifying the same point (no race) refreshes the time.
    expect(await writeVerifiedPoint(store, record(30, 'd'), now)).toBe(true);
  });

  it('reports a damaged record as damaged, and replaces it', async () => {
    await store.create(verifiedKey('1'), Buffer.from('not json'));
    const damaged = await readVerifiedPoint(store, '1');
    expect(damaged).toMatchObject({ state: 'damaged', message: expect.stringMatching(/not valid JSON/) });
    await store.replace(verifiedKey('1'), Buffer.from('{"schema": 1, "partition": "2"}'), {
      ifMatch: (damaged as { etag: string }).etag,
    });
    const wrong = await readVerifiedPoint(store, '1');
    expect(wrong).toMatchObject({ state: 'damaged', message: expect.stringMatching(/partition "2"/) });
    expect(await writeVerifiedPoint(store, record(4, 'h'), wrong)).toBe(true);
    expect((await readVerifiedPoint(store, '1')).state).toBe('ok');
  });
});
