import { describe, expect, it } from 'vitest';
import { holdsArchive, listArchivedPartitions } from '../../../../src/manifest/archived-partitions.js';
import { baseBackupKey, partitionManifestKey, segmentKey } from '../../../../src/manifest/keys.js';
import { MemoryStore } from '../../../helpers/memory-store.js';

describe('listArchivedPartitions', () => {
  it('groups every object under partitions/<id>/ by partition and kind, in partition order', async () => {
    const store = new MemoryStore();
    const body = Buffer.from('x');
    await store.create(segmentKey('10', 1, 5), body);
    await store.create(segmentKey('10', 6, 9), body);
    await store.create(partitionManifestKey('10'), body);
    await store.create(baseBackupKey('2', 4), body);
    await store.create('partitions/b/notes.txt', body);
    await store.create('partitions/-bad/x', body);
    await store.create('manifest.json', body);

    const listed = await listArchivedPartitions(store);
    expect([...listed.keys()]).toEqual(['2', '10', 'b']);
    const ten = listed.get('10')!;
    expect(ten.manifest?.key).toBe(partitionManifestKey('10'));
    expect(ten.segments.map((o) => o.key)).toEqual([segmentKey('10', 1, 5), segmentKey('10', 6, 9)]);
    expect(listed.get('2')!.backups.map((o) => o.key)).toEqual([baseBackupKey('2', 4)]);
    expect(listed.get('b')!.others.map((o) => o.key)).toEqual(['partitions/b/notes.txt']);
    expect([...listed].filter(([, p]) => holdsArchive(p)).map(([id]) => id)).toEqual(['2', '10']);
  });
});
