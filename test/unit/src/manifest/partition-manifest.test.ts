import { describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../../../contract/errors.js';
import { partitionManifestKey } from '../../../../src/manifest/keys.js';
import {
  applyPartitionUpdate,
  contiguousPrefix,
  contiguousRuns,
  latestBackupAtOrBefore,
  parsePartitionManifest,
  readPartitionManifest,
  segmentFromArchivedEvent,
  backupFromBackupEvent,
  updatePartitionManifest,
  type PartitionManifest,
  type PartitionManifestUpdate,
} from '../../../../src/manifest/partition-manifest.js';
import { MemoryStore } from '../../../helpers/memory-store.js';
import { T0, archivedEvent, at, backup, backupEvent, segment, sha } from './fixtures.js';

const NOW = new Date(T0 + 3_600_000);
const W1 = { node: 1, term: 1 };

function apply(m: PartitionManifest | undefined, update: PartitionManifestUpdate, writer = W1) {
  return applyPartitionUpdate(m, '7', writer, update, NOW);
}

function build(...updates: PartitionManifestUpdate[]): PartitionManifest {
  let m: PartitionManifest | undefined;
  for (const u of updates) m = apply(m, u).manifest;
  return m as PartitionManifest;
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isWalArchiverError(err) ? err.code : 'not a WalArchiverError';
  }
  return undefined;
}

describe('contiguous prefix', () => {
  it('joins overlapping and adjacent segments and stops at the first gap', () => {
    const s = (a: number, b: number) => ({ first_lsn: a, last_lsn: b });
    expect(contiguousPrefix([])).toBeNull();
    expect(contiguousPrefix([s(1, 10), s(11, 20)])).toEqual({ first_lsn: 1, last_lsn: 20 });
    expect(contiguousPrefix([s(11, 20), s(1, 10), s(5, 15)])).toEqual({ first_lsn: 1, last_lsn: 20 });
    expect(contiguousPrefix([s(1, 10), s(12, 20)])).toEqual({ first_lsn: 1, last_lsn: 10 });
    expect(contiguousPrefix([s(1, 30), s(5, 10), s(31, 31)])).toEqual({ first_lsn: 1, last_lsn: 31 });
    expect(contiguousRuns([s(1, 10), s(12, 20), s(15, 25), s(40, 41)])).toEqual([
      { first_lsn: 1, last_lsn: 10 },
      { first_lsn: 12, last_lsn: 25 },
      { first_lsn: 40, last_lsn: 41 },
    ]);
  });
});

describe('applyPartitionUpdate', () => {
  it('creates the first version with the writer as leader', () => {
    const { manifest, changed } = apply(undefined, { segments: [segment('7', 1, 10)] });
    expect(changed).toBe(true);
    expect(manifest.version).toBe(1);
    expect(manifest.leader).toEqual({ node: 1, term: 1 });
    expect(manifest.archived).toEqual({ first_lsn: 1, last_lsn: 10 });
    expect(manifest.updated_at).toBe(NOW.toISOString());
  });

  it('merges segments by key, sorted by first LSN, and extends the prefix', () => {
    const m = build({ segments: [segment('7', 21, 30)] }, { segments: [segment('7', 1, 10)] });
    // First write took the lowest run (21-30); a lower segment with a gap does not lower it.
    expect(m.archived).toEqual({ first_lsn: 21, last_lsn: 30 });
    const filled = apply(m, { segments: [segment('7', 11, 20)] }).manifest;
    expect(filled.segments.map((s) => s.first_lsn)).toEqual([1, 11, 21]);
    expect(filled.archived).toEqual({ first_lsn: 1, last_lsn: 30 });
    expect(filled.version).toBe(3);
  });

  it('keeps archived.last_lsn where it was when a segment arrives past a gap', () => {
    const m = build({ segments: [segment('7', 1, 10)] }, { segments: [segment('7', 20, 30)] });
    expect(m.archived).toEqual({ first_lsn: 1, last_lsn: 10 });
    expect(m.segments).toHaveLength(2);
    const joined = apply(m, { segments: [segment('7', 8, 19, { term: 2, node: 2 })] }, { node: 2, term: 2 });
    expect(joined.manifest.archived).toEqual({ first_lsn: 1, last_lsn: 30 });
  });

  it('allows overlapping segments (identical content after a handoff)', () => {
    const m = build({ segments: [segment('7', 1, 10), segment('7', 5, 15), segment('7', 16, 16)] });
    expect(m.archived).toEqual({ first_lsn: 1, last_lsn: 16 });
    expect(m.segments).toHaveLength(3);
  });

  it('is idempotent: re-applying an update changes and writes nothing', () => {
    const update = { segments: [segment('7', 1, 10)], backups: [backup('7', 5)] };
    const once = apply(undefined, update).manifest;
    const again = apply(once, update);
    expect(again.changed).toBe(false);
    expect(again.manifest).toBe(once);
    const partly = apply(once, { segments: [segment('7', 1, 10), segment('7', 11, 12)] });
    expect(partly.changed).toBe(true);
    expect(partly.manifest.segments).toHaveLength(2);
  });

  it('does not modify its input', () => {
    const m = build({ segments: [segment('7', 1, 10)] });
    const before = JSON.stringify(m);
    apply(m, { segments: [segment('7', 11, 20)], backups: [backup('7', 10)] }, { node: 2, term: 3 });
    expect(JSON.stringify(m)).toBe(before);
  });

  it('refuses a key reported with another checksum as CORRUPT', () => {
    const m = build({ segments: [segment('7', 1, 10)], backups: [backup('7', 10)] });
    expect(codeOf(() => apply(m, { segments: [segment('7', 1, 10, { sha256: sha('other') })] }))).toBe(
      ErrorCodes.CORRUPT,
    );
    expect(codeOf(() => apply(m, { backups: [backup('7', 10, { sha256: sha('other') })] }))).toBe(
      ErrorCodes.CORRUPT,
    );
    // Same object seen by another writer: fine.
    expect(apply(m, { segments: [segment('7', 1, 10, { term: 1, archived_at: at(99) })] }).changed).toBe(
      false,
    );
  });

  it('refuses malformed records with INVALID_ARGUMENT', () => {
    expect(codeOf(() => apply(undefined, { segments: [segment('8', 1, 10)] }))).toBe(
      ErrorCodes.INVALID_ARGUMENT,
    );
    expect(codeOf(() => apply(undefined, { segments: [{ ...segment('7', 1, 10), last_lsn: 11 }] }))).toBe(
      ErrorCodes.INVALID_ARGUMENT,
    );
    expect(codeOf(() => apply(undefined, { backups: [{ ...backup('7', 10), lsn: 11 }] }))).toBe(
      ErrorCodes.INVALID_ARGUMENT,
    );
    expect(codeOf(() => applyPartitionUpdate(undefined, '7', { node: 0, term: 1 }, {}, NOW))).toBe(
      ErrorCodes.INVALID_ARGUMENT,
    );
  });

  it('lets retention move first_lsn up, never uncover last_lsn', () => {
    const m = build({ segments: [segment('7', 1, 10), segment('7', 11, 20), segment('7', 21, 30)] });
    const trimmed = apply(m, { removeSegments: [segment('7', 1, 10).key] }).manifest;
    expect(trimmed.archived).toEqual({ first_lsn: 11, last_lsn: 30 });
    expect(codeOf(() => apply(m, { removeSegments: [segment('7', 21, 30).key] }))).toBe(
      ErrorCodes.INVALID_ARGUMENT,
    );
    const withBackups = build({ backups: [backup('7', 5), backup('7', 15)] });
    expect(
      apply(withBackups, { removeBackups: [backup('7', 5).key] }).manifest.backups.map((b) => b.lsn),
    ).toEqual([15]);
  });

  describe('fencing', () => {
    const m = build({ segments: [segment('7', 1, 10)] });
    const at5 = apply(m, {}, { node: 2, term: 5 }).manifest;

    it('a higher term takes the manifest over', () => {
      expect(at5.leader).toEqual({ node: 2, term: 5 });
      expect(at5.version).toBe(2);
      expect(at5.segments).toEqual(m.segments);
    });

    it('a lower term is FENCED, not retryable', () => {
      let error: unknown;
      try {
        apply(at5, { segments: [segment('7', 11, 20)] }, { node: 1, term: 4 });
      } catch (err) {
        error = err;
      }
      expect(isWalArchiverError(error, ErrorCodes.FENCED)).toBe(true);
      expect((error as { retryable: boolean }).retryable).toBe(false);
      expect((error as Error).message).toContain('term 5');
    });

    it('another node at the same term is FENCED; the same node writes on', () => {
      expect(codeOf(() => apply(at5, {}, { node: 3, term: 5 }))).toBe(ErrorCodes.FENCED);
      expect(
        apply(at5, { segments: [segment('7', 11, 20)] }, { node: 2, term: 5 }).manifest.archived,
      ).toEqual({
        first_lsn: 1,
        last_lsn: 20,
      });
    });
  });
});

describe('parsePartitionManifest', () => {
  const m = build({
    segments: [segment('7', 1, 10), segment('7', 11, 20)],
    backups: [backup('7', 10), backup('7', 3)],
  });

  it('round-trips through JSON', () => {
    expect(parsePartitionManifest(JSON.parse(JSON.stringify(m)), '7')).toEqual(m);
    expect(m.backups.map((b) => b.lsn)).toEqual([3, 10]);
  });

  it.each([
    ['another partition', (d: Record<string, unknown>) => ({ ...d, partition: '8' })],
    [
      'a wrong archived range',
      (d: Record<string, unknown>) => ({ ...d, archived: { first_lsn: 1, last_lsn: 25 } }),
    ],
    ['no archived range', (d: Record<string, unknown>) => ({ ...d, archived: null })],
    ['version 0', (d: Record<string, unknown>) => ({ ...d, version: 0 })],
    [
      'a duplicate segment',
      (d: Record<string, unknown>) => ({ ...d, segments: [m.segments[0], ...m.segments] }),
    ],
    [
      'a bad key',
      (d: Record<string, unknown>) => ({ ...d, segments: [{ ...m.segments[0], key: 'x' }, m.segments[1]] }),
    ],
    ['schema 2', (d: Record<string, unknown>) => ({ ...d, schema: 2 })],
    ['no segments array', (d: Record<string, unknown>) => ({ ...d, segments: undefined })],
  ])('rejects %s as CORRUPT', (_name, mutate) => {
    const doc = mutate(JSON.parse(JSON.stringify(m)) as Record<string, unknown>);
    expect(codeOf(() => parsePartitionManifest(doc, '7'))).toBe(ErrorCodes.CORRUPT);
  });
});

describe('records from events', () => {
  it('maps wal.archived and wal.backups events to manifest records', () => {
    expect(segmentFromArchivedEvent(archivedEvent('7', 1, 10))).toEqual(segment('7', 1, 10));
    const b = backupFromBackupEvent(backupEvent('7', 10));
    expect(b).toEqual(backup('7', 10, { taken_at: at(12) }));
  });
});

describe('queries', () => {
  const m = build({
    segments: [segment('7', 1, 10), segment('7', 5, 20), segment('7', 21, 21), segment('7', 22, 40)],
    backups: [backup('7', 4), backup('7', 25)],
  });

  it('latestBackupAtOrBefore', () => {
    expect(latestBackupAtOrBefore(m)?.lsn).toBe(25);
    expect(latestBackupAtOrBefore(m, 24)?.lsn).toBe(4);
    expect(latestBackupAtOrBefore(m, 3)).toBeUndefined();
  });
});

describe('updatePartitionManifest (memory store)', () => {
  const now = () => NOW;

  it('creates, updates and skips a repeated update', async () => {
    const store = new MemoryStore();
    const first = await updatePartitionManifest(store, '7', W1, { segments: [segment('7', 1, 10)] }, { now });
    expect(first).toMatchObject({ written: true, attempts: 1 });
    expect(first.manifest.version).toBe(1);
    const again = await updatePartitionManifest(store, '7', W1, { segments: [segment('7', 1, 10)] }, { now });
    expect(again.written).toBe(false);
    expect(store.calls.replace).toBe(1);
    const stored = await readPartitionManifest(store, '7');
    expect(stored?.value).toEqual(first.manifest);
    expect(JSON.parse(store.text(partitionManifestKey('7')) ?? '')).toEqual(first.manifest);
  });

  it('writes against a known copy without reading, and reads again when that copy is stale', async () => {
    const store = new MemoryStore();
    const first = await updatePartitionManifest(store, '7', W1, { segments: [segment('7', 1, 10)] }, { now });
    const gets = store.calls.get;
    const known = { value: first.manifest, etag: first.etag! };
    const second = await updatePartitionManifest(
      store,
      '7',
      W1,
      { segments: [segment('7', 11, 20)] },
      { now, current: known },
    );
    expect(second).toMatchObject({ written: true, attempts: 1 });
    expect(store.calls.get).toBe(gets);
    // `known` is stale now: the write loses the compare-and-swap, reads, and keeps both segments.
    const third = await updatePartitionManifest(
      store,
      '7',
      W1,
      { segments: [segment('7', 21, 30)] },
      { now, current: known },
    );
    expect(third.written).toBe(true);
    expect(store.calls.get).toBe(gets + 1);
    expect(third.manifest.segments.map((s) => s.first_lsn)).toEqual([1, 11, 21]);
    expect((await readPartitionManifest(store, '7'))?.value.archived?.last_lsn).toBe(30);
  });

  it('re-reads and re-applies after losing a race, keeping both updates', async () => {
    const store = new MemoryStore();
    await updatePartitionManifest(store, '7', W1, { segments: [segment('7', 1, 10)] }, { now });
    let raced = false;
    store.beforeReplace = async () => {
      if (raced) return;
      raced = true;
      store.beforeReplace = undefined;
      await updatePartitionManifest(store, '7', W1, { backups: [backup('7', 10)] }, { now });
    };
    const conflicts: number[] = [];
    const result = await updatePartitionManifest(
      store,
      '7',
      W1,
      { segments: [segment('7', 11, 20)] },
      { now, onConflict: (n) => conflicts.push(n) },
    );
    expect(conflicts).toEqual([1]);
    expect(result.attempts).toBe(2);
    expect(result.manifest.version).toBe(3);
    expect(result.manifest.backups).toHaveLength(1);
    expect(result.manifest.archived).toEqual({ first_lsn: 1, last_lsn: 20 });
  });

  it('keeps every update of concurrent writers', async () => {
    const store = new MemoryStore();
    store.latency = () => new Promise((r) => setTimeout(r, Math.random() * 3));
    await Promise.all(
      [0, 1, 2, 3].map(async (i) => {
        for (let j = 0; j < 3; j++) {
          const first = (i * 3 + j) * 10 + 1;
          await updatePartitionManifest(
            store,
            '7',
            W1,
            { segments: [segment('7', first, first + 9)] },
            { now, attempts: 200 },
          );
        }
      }),
    );
    const stored = (await readPartitionManifest(store, '7'))?.value;
    expect(stored?.segments).toHaveLength(12);
    expect(stored?.version).toBe(12);
    expect(stored?.archived).toEqual({ first_lsn: 1, last_lsn: 120 });
  });

  it('gives up after the attempts allowed', async () => {
    const store = new MemoryStore();
    await updatePartitionManifest(store, '7', W1, {}, { now });
    store.beforeReplace = async (key) => {
      const cur = store.objects.get(key);
      if (cur) store.objects.set(key, { ...cur, info: { ...cur.info, etag: `${cur.info.etag}x` } });
    };
    await expect(
      updatePartitionManifest(store, '7', W1, { segments: [segment('7', 1, 1)] }, { now, attempts: 3 }),
    ).rejects.toMatchObject({ code: 'PRECONDITION_FAILED', details: { attempts: 3 } });
    expect(store.calls.replace).toBe(4);
  });

  it('stops a stale leader with FENCED and does not retry', async () => {
    const store = new MemoryStore();
    await updatePartitionManifest(store, '7', { node: 2, term: 6 }, {}, { now });
    const replaces = store.calls.replace;
    await expect(
      updatePartitionManifest(store, '7', { node: 1, term: 5 }, { segments: [segment('7', 1, 10)] }, { now }),
    ).rejects.toMatchObject({ code: 'FENCED', retryable: false });
    expect(store.calls.replace).toBe(replaces);
    expect((await readPartitionManifest(store, '7'))?.value.segments).toEqual([]);
  });

  it('never overwrites a corrupt manifest', async () => {
    const store = new MemoryStore();
    await store.create(partitionManifestKey('7'), Buffer.from('{"schema":1,'));
    await expect(updatePartitionManifest(store, '7', W1, {}, { now })).rejects.toMatchObject({
      code: 'CORRUPT',
    });
    await expect(readPartitionManifest(store, '7')).rejects.toMatchObject({ code: 'CORRUPT' });
    expect(store.text(partitionManifestKey('7'))).toBe('{"schema":1,');
  });
});
