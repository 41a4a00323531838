import { describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../../../contract/errors.js';
import {
  GlobalManifestWriter,
  emptyGlobalManifest,
  entryFromPartitionManifest,
  foldEvent,
  foldEvents,
  mergePartitions,
  parseGlobalManifest,
  readGlobalManifest,
  rebuildFromEvents,
  rebuildFromObjects,
  type GlobalManifest,
  type ManifestEvent,
} from '../../../../src/manifest/global-manifest.js';
import {
  GLOBAL_MANIFEST_KEY,
  baseBackupKey,
  partitionManifestKey,
  segmentKey,
} from '../../../../src/manifest/keys.js';
import { updatePartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import { MemoryStore } from '../../../helpers/memory-store.js';
import { ArrayBus } from './buses.js';
import {
  T0,
  archivedEvent,
  at,
  backup,
  backupEvent,
  leadershipEvent,
  segment,
  segmentObject,
} from './fixtures.js';

const NOW = new Date(T0 + 3_600_000);
const empty = () => emptyGlobalManifest(NOW);
const A = (p: string, f: number, l: number, extra = {}): ManifestEvent => ({
  topic: 'archived',
  value: archivedEvent(p, f, l, extra),
});
const B = (p: string, lsn: number, extra = {}): ManifestEvent => ({
  topic: 'backups',
  value: backupEvent(p, lsn, extra),
});
const L = (p: string, term: number, leader: number | null, extra = {}): ManifestEvent => ({
  topic: 'leadership',
  value: leadershipEvent(p, term, leader, extra),
});

function permutations<T>(items: readonly T[]): T[][] {
  if (items.length <= 1) return [[...items]];
  return items.flatMap((x, i) =>
    permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((p) => [x, ...p]),
  );
}

describe('foldEvent', () => {
  it('projects segments, backups and leadership into one entry per partition', () => {
    const m = foldEvents(empty(), [
      L('1', 3, 2, { node: 2 }),
      A('1', 1, 10, { term: 3, node: 2, committed_lsn: 12 }),
      A('1', 11, 20, { term: 3, node: 2, committed_lsn: 25 }),
      B('1', 15, { term: 3, node: 2 }),
    ]);
    expect(m.partitions['1']).toEqual({
      leader: { node: 2, term: 3 },
      archived_lsn: 20,
      committed_lsn: 25,
      lag_entries: 5,
      lag_seconds: 1,
      last_archived_at: at(21),
      latest_backup: { key: baseBackupKey('1', 15), lsn: 15, taken_at: at(17), bytes: 5000 },
      backups_count: 1,
      segments_count: 2,
      archived_bytes: 2000,
    });
    expect(m.version).toBe(0);
  });

  it('is idempotent under redelivery', () => {
    const events = [A('1', 1, 10), A('1', 11, 20), B('1', 5), B('1', 15), L('1', 2, 1)];
    const once = foldEvents(empty(), events);
    expect(foldEvents(once, events)).toEqual(once);
    expect(foldEvents(empty(), [...events, ...events.slice(1), events[0] as ManifestEvent])).toEqual(once);
  });

  it('gives the same result for any interleaving of partitions', () => {
    const p1 = [A('1', 1, 10), B('1', 10)];
    const p2 = [L('2', 4, 3, { node: 3 }), A('2', 1, 5, { term: 4, node: 3 })];
    const p3 = [A('3', 1, 1)];
    const streams = [p1, p2, p3];
    const results = permutations([0, 1, 2]).map((order) => {
      // Concatenate whole streams in each order, and also round-robin them.
      const concatenated = order.flatMap((i) => streams[i] as ManifestEvent[]);
      return JSON.stringify(foldEvents(empty(), concatenated).partitions);
    });
    expect(new Set(results).size).toBe(1);
    const roundRobin = [p1[0], p2[0], p3[0], p1[1], p2[1]] as ManifestEvent[];
    expect(JSON.stringify(foldEvents(empty(), roundRobin).partitions)).toBe(results[0]);
    expect(Object.keys(JSON.parse(results[0] as string))).toEqual(['1', '2', '3']);
  });

  it('keeps the leader of the highest term, a known leader over an unknown one', () => {
    const events = [
      L('1', 5, null, { node: 3 }),
      L('1', 4, 1),
      L('1', 5, 2, { node: 2 }),
      A('1', 1, 2, { term: 3, node: 1 }),
    ];
    for (const order of permutations(events)) {
      expect(foldEvents(empty(), order).partitions['1']?.leader).toEqual({ node: 2, term: 5 });
    }
    expect(foldEvent(empty(), L('1', 7, null, { node: 3 })).partitions['1']?.leader).toEqual({
      node: null,
      term: 7,
    });
  });

  it('keeps the backup with the highest LSN', () => {
    for (const order of permutations([B('1', 30), B('1', 10), B('1', 20)])) {
      const e = foldEvents(empty(), order).partitions['1'];
      expect(e?.latest_backup?.lsn).toBe(30);
    }
  });

  it('never moves the archived or committed LSN back', () => {
    const m = foldEvents(empty(), [
      A('1', 11, 20, { committed_lsn: 30 }),
      A('1', 1, 10, { committed_lsn: 12 }),
    ]);
    expect(m.partitions['1']).toMatchObject({
      archived_lsn: 20,
      committed_lsn: 30,
      lag_entries: 10,
      segments_count: 1,
    });
  });

  it('does not modify its input', () => {
    const base = foldEvents(empty(), [A('1', 1, 10)]);
    const before = JSON.stringify(base);
    foldEvents(base, [A('1', 11, 20), B('1', 5), L('1', 9, 2, { node: 2 })]);
    expect(JSON.stringify(base)).toBe(before);
  });
});

describe('parseGlobalManifest', () => {
  const m: GlobalManifest = {
    ...foldEvents(empty(), [A('1', 1, 10), B('2', 5), L('3', 2, null, { node: 3 })]),
    version: 4,
  };

  it('round-trips through JSON', () => {
    expect(parseGlobalManifest(JSON.parse(JSON.stringify(m)))).toEqual(m);
  });

  it.each([
    ['version 0', { version: 0 }],
    ['no partitions', { partitions: null }],
    ['a bad partition ID', { partitions: { '../x': m.partitions['1'] } }],
    ['a bad entry', { partitions: { '1': { ...m.partitions['1'], archived_lsn: -1 } } }],
    ['a bad lag', { partitions: { '1': { ...m.partitions['1'], lag_seconds: 'x' } } }],
    ['schema 2', { schema: 2 }],
  ])('rejects %s as CORRUPT', (_name, patch) => {
    let code: string | undefined;
    try {
      parseGlobalManifest({ ...JSON.parse(JSON.stringify(m)), ...patch });
    } catch (err) {
      code = isWalArchiverError(err) ? err.code : 'other';
    }
    expect(code).toBe(ErrorCodes.CORRUPT);
  });
});

describe('merge and projections', () => {
  it('mergePartitions keeps the larger of each value', () => {
    const a = foldEvents(empty(), [A('1', 1, 10), B('1', 5)]);
    const b = foldEvents(empty(), [A('1', 1, 20, { term: 2, node: 2 }), A('2', 1, 1)]);
    const merged = mergePartitions(a, b.partitions);
    expect(merged.partitions['1']).toMatchObject({
      archived_lsn: 20,
      leader: { node: 2, term: 2 },
      latest_backup: { lsn: 5 },
    });
    expect(Object.keys(merged.partitions)).toEqual(['1', '2']);
    expect(mergePartitions(merged, a.partitions)).toEqual(merged);
  });

  it('entryFromPartitionManifest summarises a partition manifest', async () => {
    const store = new MemoryStore();
    const { manifest } = await updatePartitionManifest(
      store,
      '4',
      { node: 3, term: 2 },
      {
        segments: [segment('4', 1, 10), segment('4', 11, 20), segment('4', 30, 31)],
        backups: [backup('4', 10)],
      },
      { now: () => NOW },
    );
    expect(entryFromPartitionManifest(manifest)).toEqual({
      leader: { node: 3, term: 2 },
      archived_lsn: 20,
      committed_lsn: 20,
      lag_entries: 0,
      lag_seconds: 1,
      last_archived_at: at(32),
      latest_backup: { key: baseBackupKey('4', 10), lsn: 10, taken_at: at(10), bytes: 5000 },
      backups_count: 1,
      segments_count: 3,
      archived_bytes: 2200,
    });
  });
});

describe('GlobalManifestWriter (memory store)', () => {
  it('writes, bumps the version, and skips a batch that changes nothing', async () => {
    const store = new MemoryStore();
    const writer = new GlobalManifestWriter(store, { now: () => NOW });
    const first = await writer.apply([A('1', 1, 10)]);
    expect(first).toMatchObject({ written: true, attempts: 1 });
    expect(first.manifest.version).toBe(1);
    const dup = await writer.apply([A('1', 1, 10)]);
    expect(dup.written).toBe(false);
    const second = await writer.apply([A('1', 11, 20)]);
    expect(second.manifest.version).toBe(2);
    expect((await readGlobalManifest(store))?.value).toEqual(second.manifest);
    expect(store.calls.replace).toBe(2);
  });

  it('loses no update with many concurrent writers', async () => {
    const store = new MemoryStore();
    // Random latency on every request so the writers really interleave between read and replace.
    store.latency = () => new Promise((r) => setTimeout(r, Math.random() * 3));
    let conflicts = 0;
    const writers = Array.from(
      { length: 8 },
      () => new GlobalManifestWriter(store, { attempts: 200, onConflict: () => conflicts++ }),
    );
    await Promise.all(
      writers.map(async (w, i) => {
        for (let batch = 0; batch < 3; batch++) await w.apply([A(`p${i}`, batch * 10 + 1, batch * 10 + 10)]);
      }),
    );
    const final = (await readGlobalManifest(store))?.value;
    expect(Object.keys(final?.partitions ?? {})).toHaveLength(8);
    for (let i = 0; i < 8; i++) expect(final?.partitions[`p${i}`]?.archived_lsn).toBe(30);
    expect(final?.version).toBe(24);
    expect(conflicts).toBeGreaterThan(0);
  });

  it('writes against the copy it last wrote, and reads again only when another writer came between', async () => {
    const store = new MemoryStore();
    const writer = new GlobalManifestWriter(store, { now: () => NOW });
    await writer.apply([A('1', 1, 10)]);
    const reads = store.calls.get;
    await writer.apply([A('1', 11, 20)]);
    await writer.apply([A('2', 1, 5)]);
    expect(store.calls.get).toBe(reads);
    // Another writer's update is not lost: the stale copy fails its compare-and-swap and is read again.
    await new GlobalManifestWriter(store, { now: () => NOW }).apply([A('3', 1, 7)]);
    const after = await writer.apply([A('1', 21, 30)]);
    // One read by the other writer, one by this writer after its compare-and-swap failed.
    expect(store.calls.get).toBe(reads + 2);
    expect(after.attempts).toBe(1);
    const final = (await readGlobalManifest(store))?.value;
    expect(final?.version).toBe(5);
    expect(
      Object.fromEntries(Object.entries(final!.partitions).map(([id, e]) => [id, e.archived_lsn])),
    ).toEqual({ '1': 30, '2': 5, '3': 7 });
  });

  it('refuses to overwrite a corrupt global manifest', async () => {
    const store = new MemoryStore();
    await store.create(GLOBAL_MANIFEST_KEY, Buffer.from('[]'));
    await expect(new GlobalManifestWriter(store).apply([A('1', 1, 1)])).rejects.toMatchObject({
      code: 'CORRUPT',
    });
    expect(store.text(GLOBAL_MANIFEST_KEY)).toBe('[]');
  });
});

describe('rebuildFromObjects (memory store)', () => {
  it('uses partition manifests where valid, else the listing', async () => {
    const store = new MemoryStore();
    const now = () => NOW;
    await updatePartitionManifest(
      store,
      '1',
      { node: 2, term: 4 },
      { segments: [segment('1', 1, 10)], backups: [backup('1', 10)] },
      { now },
    );
    const meta = (first: number, last: number) => segmentObject('2', first, last, `${first}`);
    await store.create(segmentKey('2', 1, 10), Buffer.alloc(100), meta(1, 10));
    await store.create(segmentKey('2', 11, 20), Buffer.alloc(50), meta(11, 20));
    await store.create(segmentKey('2', 30, 40), Buffer.alloc(10), meta(30, 40));
    await store.create(baseBackupKey('2', 12), Buffer.alloc(7), { metadata: { partition: '2' } });
    await store.create(baseBackupKey('2', 5), Buffer.alloc(3));
    // A segment whose metadata contradicts its key is skipped and reported.
    await store.create(segmentKey('2', 41, 50), Buffer.alloc(10), meta(41, 49));
    // A corrupt manifest falls back to the listing.
    await store.create(partitionManifestKey('3'), Buffer.from('not json'));
    await store.create(segmentKey('3', 1, 5), Buffer.alloc(20));
    // Junk is ignored.
    await store.create('partitions/4/wal/junk.tar.zst', Buffer.alloc(1));
    await store.create('partitions/4/notes.txt', Buffer.alloc(1));

    const result = await rebuildFromObjects(store, { now });
    expect(result.sources).toEqual({ '1': 'manifest', '2': 'objects', '3': 'objects' });
    expect(result.problems.map((p) => p.key).sort()).toEqual(
      [segmentKey('2', 41, 50), partitionManifestKey('3')].sort(),
    );
    expect(result.manifest.partitions['1']).toMatchObject({
      leader: { node: 2, term: 4 },
      archived_lsn: 10,
      backups_count: 1,
    });
    expect(result.manifest.partitions['2']).toMatchObject({
      leader: null,
      archived_lsn: 20,
      committed_lsn: 20,
      lag_entries: 0,
      segments_count: 3,
      archived_bytes: 160,
      backups_count: 2,
      latest_backup: { key: baseBackupKey('2', 12), lsn: 12, bytes: 7 },
    });
    expect(result.manifest.partitions['3']).toMatchObject({ archived_lsn: 5, segments_count: 1 });
    expect(result.manifest.partitions['4']).toBeUndefined();
    expect(parseGlobalManifest({ ...result.manifest, version: 1 })).toEqual({
      ...result.manifest,
      version: 1,
    });
  });
});

describe('rebuildFromEvents (in-memory bus)', () => {
  it('folds every topic from the beginning, skipping malformed events', async () => {
    const bus = new ArrayBus();
    await bus.publish('archived', [
      { key: '1', value: { ...archivedEvent('1', 1, 10) } },
      { key: '1', value: { ...archivedEvent('1', 11, 20) } },
      { key: '1', value: { ...archivedEvent('1', 11, 20) } },
      { key: '2', value: { schema: 1, partition: '2' } },
    ]);
    await bus.publish('backups', [{ key: '1', value: { ...backupEvent('1', 12) } }]);
    await bus.publish('leadership', [{ key: '1', value: { ...leadershipEvent('1', 3, 2, { node: 2 }) } }]);
    await bus.publish('entries', [{ key: '1', value: { bogus: true } }]);
    const skipped: string[] = [];
    const result = await rebuildFromEvents(bus, { idleMs: 200, onSkip: (topic) => skipped.push(topic) });
    expect(result).toMatchObject({ events: 6, skipped: 1, caughtUp: true });
    expect(skipped).toEqual(['archived']);
    expect(result.manifest.partitions['1']).toMatchObject({
      archived_lsn: 20,
      segments_count: 2,
      latest_backup: { lsn: 12 },
      leader: { node: 2, term: 3 },
    });
    expect(result.manifest.partitions['2']).toBeUndefined();
  });
});

describe('foldEvents across timelines', () => {
  it("keeps a partition's line on its latest timeline, whatever order the events come in", () => {
    const events = [
      A('1', 1, 40, { term: 9 }),
      B('1', 40, { term: 9 }),
      A('1', 21, 25, { term: 2, timeline: 2, key: segmentKey('1', 21, 25, 2) }),
      B('1', 20, { term: 2, timeline: 2, key: baseBackupKey('1', 20, 2), trigger: 'restore' }),
      A('1', 41, 45, { term: 9 }),
    ];
    for (const order of permutations(events)) {
      const e = foldEvents(empty(), order).partitions['1']!;
      expect(e.timeline).toBe(2);
      expect(e.archived_lsn).toBe(25);
      expect(e.latest_backup?.lsn).toBe(20);
      expect(e.segments_count).toBe(1);
      expect(e.leader?.term).toBe(2);
    }
    // The document keeps the timeline through a parse, and a line of timeline 1 never merges into it.
    const folded = foldEvents(empty(), events);
    const parsed = parseGlobalManifest(JSON.parse(JSON.stringify({ ...folded, version: 1 })));
    expect(parsed.partitions['1']!.timeline).toBe(2);
    const older = foldEvents(empty(), [A('1', 1, 90, { term: 9 })]);
    expect(mergePartitions(parsed, older.partitions).partitions['1']!.archived_lsn).toBe(25);
  });
});
