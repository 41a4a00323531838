import { describe, expect, it } from 'vitest';
import { isWalArchiverError } from '../../../../contract/errors.js';
import { baseBackupKey, segmentKey } from '../../../../src/manifest/keys.js';
import {
  applyPartitionUpdate,
  readPartitionManifest,
  updatePartitionManifest,
  type PartitionManifest,
} from '../../../../src/manifest/partition-manifest.js';
import { applyRetention, planRetention, type RetentionPolicy } from '../../../../src/backup/retention.js';
import { archiveFromManifest, coverRange } from '../../../../src/restore/plan.js';
import { MemoryStore } from '../../../helpers/memory-store.js';
import { T0, backup, segment } from '../manifest/fixtures.js';

const P = '4';
const DAY = 86_400_000;

/** Segments 1-10, 11-20 … 91-100; backups at the given LSNs, LSN n finished n seconds after T0. */
function manifest(backupLsns: number[], segs: Array<[number, number]> = tens(100)): PartitionManifest {
  return applyPartitionUpdate(
    undefined,
    P,
    { node: 1, term: 3 },
    { segments: segs.map(([a, b]) => segment(P, a, b)), backups: backupLsns.map((l) => backup(P, l)) },
    new Date(T0),
  ).manifest;
}

function tens(last: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let a = 1; a <= last; a += 10) out.push([a, a + 9]);
  return out;
}

const seg = (a: number, b: number) => segmentKey(P, a, b);
const base = (l: number) => baseBackupKey(P, l);
const atSeconds = (s: number) => new Date(T0 + s * 1000);

describe('planRetention', () => {
  const table: Array<{
    name: string;
    backups: number[];
    policy: RetentionPolicy;
    now?: Date;
    segs?: Array<[number, number]>;
    deleteBackups: string[];
    deleteSegments: string[];
    window: number | undefined;
  }> = [
    {
      name: 'keep 2 of 4: the two oldest go, and the WAL up to the oldest kept',
      backups: [10, 30, 55, 80],
      policy: { keepCount: 2 },
      deleteBackups: [base(10), base(30)],
      deleteSegments: [seg(1, 10), seg(11, 20), seg(21, 30), seg(31, 40), seg(41, 50)],
      window: 55,
    },
    {
      name: 'a segment straddling the oldest kept backup stays',
      backups: [15, 80],
      policy: { keepCount: 1 },
      deleteBackups: [base(15)],
      deleteSegments: tens(80).map(([a, b]) => seg(a, b)),
      window: 80,
    },
    {
      name: 'keep count larger than the backups: nothing goes but WAL before the oldest',
      backups: [20, 40],
      policy: { keepCount: 5 },
      deleteBackups: [],
      deleteSegments: [seg(1, 10), seg(11, 20)],
      window: 20,
    },
    {
      name: 'no backup: nothing is deleted (restore needs all the WAL)',
      backups: [],
      policy: { keepCount: 1 },
      deleteBackups: [],
      deleteSegments: [],
      window: undefined,
    },
    {
      name: 'keep age keeps the backups within it and the one before its start',
      backups: [10, 30, 55, 80],
      // Now is T0+100s; keep 50s: cutoff T0+50s, so 55 and 80 are within, 30 is the anchor.
      policy: { keepAge: 50_000 },
      now: atSeconds(100),
      deleteBackups: [base(10)],
      deleteSegments: [seg(1, 10), seg(11, 20), seg(21, 30)],
      window: 30,
    },
    {
      name: 'keep age with every backup old: the newest stays',
      backups: [10, 30],
      policy: { keepAge: DAY },
      now: atSeconds(10 * 86_400),
      deleteBackups: [base(10)],
      deleteSegments: [seg(1, 10), seg(11, 20), seg(21, 30)],
      window: 30,
    },
    {
      name: 'count and age together: a backup kept by either rule stays',
      backups: [10, 30, 55, 80],
      policy: { keepCount: 1, keepAge: 30_000 },
      now: atSeconds(100),
      // cutoff T0+70s: 80 within, 55 the anchor.
      deleteBackups: [base(10), base(30)],
      deleteSegments: [seg(1, 10), seg(11, 20), seg(21, 30), seg(31, 40), seg(41, 50)],
      window: 55,
    },
    {
      name: 'the segment holding the archived LSN stays even below the window',
      backups: [50],
      policy: { keepCount: 1 },
      segs: tens(40),
      deleteBackups: [],
      deleteSegments: [seg(1, 10), seg(11, 20), seg(21, 30)],
      window: 50,
    },
    {
      name: 'overlapping segments after a handoff: each judged by its last LSN',
      backups: [25, 60],
      policy: { keepCount: 1 },
      segs: [
        [1, 25],
        [20, 40],
        [26, 60],
        [41, 70],
      ],
      deleteBackups: [base(25)],
      deleteSegments: [seg(1, 25), seg(20, 40), seg(26, 60)],
      window: 60,
    },
  ];

  it.each(table)('$name', (row) => {
    const m = manifest(row.backups, row.segs);
    const plan = planRetention(m, row.policy, row.now ?? atSeconds(1000));
    expect(plan.deleteBackups).toEqual(row.deleteBackups);
    expect(plan.deleteSegments).toEqual(row.deleteSegments);
    expect(plan.windowStartLsn).toBe(row.window);
    expect(plan.keepSegments + plan.deleteSegments.length).toBe(m.segments.length);
    for (const k of [...plan.deleteBackups, ...plan.deleteSegments])
      expect(plan.reasons[k]).toMatch(/^delete/);
    for (const k of plan.keepBackups) expect(plan.reasons[k]).toMatch(/^keep/);
    // What remains restores to every point from the window on.
    if (row.window !== undefined) {
      const gone = new Set([...plan.deleteBackups, ...plan.deleteSegments]);
      const after = applyPartitionUpdate(
        m,
        P,
        { node: 1, term: 3 },
        { removeBackups: plan.deleteBackups, removeSegments: plan.deleteSegments },
        new Date(T0),
      ).manifest;
      expect(after.backups.some((b) => gone.has(b.key))).toBe(false);
      const last = after.archived!.last_lsn;
      if (row.window < last)
        expect(() => coverRange(archiveFromManifest(after), row.window! + 1, last, 'the test')).not.toThrow();
    }
  });

  it('finds unreferenced leftovers below the window, never anything that may still be recorded', () => {
    const m = manifest([30, 60], tens(100).slice(2)); // segments 21-100 listed, backups 30 and 60
    const objects = [
      seg(1, 10), // removed from the manifest by an earlier run: a leftover
      seg(11, 20), // same
      seg(21, 30), // listed
      seg(101, 110), // above the archive: an upload not recorded yet
      base(10), // a leftover backup
      base(30),
      base(70), // a backup being recorded right now
      'partitions/9/wal/0000000000001-0000000000002.tar.zst', // another partition
    ];
    const plan = planRetention(m, { keepCount: 1 }, atSeconds(1000), { objects });
    expect(plan.orphans).toEqual([seg(1, 10), seg(11, 20), base(10)]);
  });

  it.each([{}, { keepCount: 0 }, { keepCount: 1.5 }, { keepAge: -1 }])('refuses policy %j', (policy) => {
    let caught: unknown;
    try {
      planRetention(manifest([10]), policy, atSeconds(1));
    } catch (err) {
      caught = err;
    }
    expect(isWalArchiverError(caught, 'INVALID_ARGUMENT')).toBe(true);
  });
});

describe('applyRetention (memory store)', () => {
  async function setup(): Promise<MemoryStore> {
    const store = new MemoryStore();
    const m = manifest([10, 30, 55, 80]);
    await updatePartitionManifest(
      store,
      P,
      { node: 1, term: 3 },
      { segments: m.segments, backups: m.backups },
    );
    for (const r of [...m.segments, ...m.backups]) await store.create(r.key, Buffer.from(r.key));
    return store;
  }

  it('unlists, then deletes; a second run does nothing; a dry run changes nothing', async () => {
    const store = await setup();
    const stored = (await readPartitionManifest(store, P))!.value;
    const plan = planRetention(stored, { keepCount: 2 }, atSeconds(1000));

    const dry = await applyRetention(store, P, undefined, plan, { dryRun: true });
    expect(dry.deleted.sort()).toEqual([...plan.deleteBackups, ...plan.deleteSegments].sort());
    expect((await readPartitionManifest(store, P))!.value.version).toBe(stored.version);
    for (const k of dry.deleted) expect(await store.head(k)).toBeDefined();

    const first = await applyRetention(store, P, undefined, plan);
    expect(first.deleted.sort()).toEqual([...plan.deleteBackups, ...plan.deleteSegments].sort());
    expect(first.locked).toEqual([]);
    for (const k of first.deleted) expect(await store.head(k)).toBeUndefined();
    const after = (await readPartitionManifest(store, P))!.value;
    expect(after.backups.map((b) => b.lsn)).toEqual([55, 80]);
    expect(after.leader).toEqual({ node: 1, term: 3 });
    expect(after.segments[0]!.first_lsn).toBe(51);

    const again = await applyRetention(
      store,
      P,
      undefined,
      planRetention(after, { keepCount: 2 }, atSeconds(1000)),
    );
    expect(again).toMatchObject({ unlisted: [], deleted: [], locked: [], failed: [] });
    expect((await readPartitionManifest(store, P))!.value.version).toBe(after.version);
  });

  it('a stale leader cannot run it with its own writer: FENCED, nothing deleted', async () => {
    const store = await setup();
    const plan = planRetention(
      (await readPartitionManifest(store, P))!.value,
      { keepCount: 1 },
      atSeconds(1000),
    );
    await expect(applyRetention(store, P, { node: 2, term: 2 }, plan)).rejects.toMatchObject({
      code: 'FENCED',
    });
    for (const k of plan.deleteBackups) expect(await store.head(k)).toBeDefined();
  });
});

describe('planRetention protect (branch points of later timelines)', () => {
  it('keeps the newest backup at or before a child branch point, and the WAL above it', () => {
    const plan = planRetention(manifest([10, 30, 55, 80]), { keepCount: 1 }, atSeconds(1000), {
      protect: [40],
    });
    expect(plan.keepBackups).toEqual([base(30), base(80)]);
    expect(plan.deleteBackups).toEqual([base(10), base(55)]);
    expect(plan.reasons[base(30)]).toBe('keep: a later timeline branches at LSN 40 and needs it');
    expect(plan.windowStartLsn).toBe(30);
    expect(plan.deleteSegments).toEqual([seg(1, 10), seg(11, 20), seg(21, 30)]);
    const unprotected = planRetention(manifest([10, 30, 55, 80]), { keepCount: 1 }, atSeconds(1000));
    expect(unprotected.deleteBackups).toContain(base(30));
  });

  it('a branch point at a backup keeps that backup', () => {
    const plan = planRetention(manifest([10, 30, 55, 80]), { keepCount: 1 }, atSeconds(1000), {
      protect: [55],
    });
    expect(plan.keepBackups).toEqual([base(55), base(80)]);
    expect(plan.windowStartLsn).toBe(55);
  });

  it('a branch point below every backup keeps the WAL from the start', () => {
    // Restored from the WAL alone (LSN 1 up) to LSN 5: that history needs segment 1-10.
    const plan = planRetention(manifest([30, 80]), { keepCount: 1 }, atSeconds(1000), { protect: [5] });
    expect(plan.deleteSegments).not.toContain(seg(1, 10));
    expect(plan.deleteSegments).toEqual([]);
    expect(plan.windowStartLsn).toBe(0);
  });
});
