import { createHash } from 'node:crypto';
import { writeKvEntry } from '../../../helpers/test-entries.js';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CompressStream } from 'zstd-napi';
import { packState } from '../../../../contract/state/snapshot.js';
import { spoolSegment, type SegmentEntry } from '../../../../src/archive/segment-writer.js';
import { baseBackupKey, segmentKey } from '../../../../src/manifest/keys.js';
import {
  chooseBackupPair,
  compareTrees,
  describeDrill,
  drillPartition,
  type DrillResult,
} from '../../../../src/restore/drill.js';
import type { ArchiveBackup } from '../../../../src/restore/plan.js';
import { restorePartition } from '../../../../src/restore/restore.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { openObjectStore } from '../../../../src/store/open.js';
import { DrillScheduler } from '../../../../src/pipeline/drill-scheduler.js';
import { createLogger } from '../../../../contract/log.js';
import { Registry } from 'prom-client';

/**
 * Drills over a real folder store: segments written by the segment writer,
 * base backups packed from restored states the way a node packs its own.
 */

let root: string;
let archiveDir: string;
let store: ObjectStore;
let scratch: string;

/** Writes LSNs 1..n of `partition` as WAL entries and uploads them as segments of two entries each. */
async function archiveWal(partition: string, n: number): Promise<void> {
  const wal = join(root, 'wal', partition, 'partitions', partition);
  const entries: SegmentEntry[] = [];
  for (let lsn = 1; lsn <= n; lsn++) {
    entries.push(await writeKvEntry(wal, lsn));
  }
  for (let first = 1; first <= n; first += 2) {
    const last = Math.min(n, first + 1);
    const seg = await spoolSegment(entries.slice(first - 1, last), join(root, 'spool'));
    await store.create(segmentKey(partition, first, last), await readFile(seg.path), {
      metadata: { sha256: seg.sha256, partition },
    });
  }
}

/** Uploads a base backup of `partition` at `lsn` holding the state restored at `stateLsn`. */
async function backUp(partition: string, lsn: number, stateLsn = lsn): Promise<void> {
  const dir = join(root, 'states', `${partition}-${lsn}-${stateLsn}`);
  await restorePartition({
    store,
    partition,
    target: { kind: 'lsn', lsn: stateLsn },
    targetDir: dir,
    voters: [1],
  });
  const body = await buffer(packState(join(dir, 'state')).pipe(new CompressStream()));
  const sha256 = createHash('sha256').update(body).digest('hex');
  await store.create(baseBackupKey(partition, lsn), body, { metadata: { sha256, partition } });
}

const drill = (partition: string, extra: Parameters<typeof drillPartition>[2] = {}) =>
  drillPartition(store, partition, { scratchDir: scratch, ...extra });

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'drill-unit-'));
  archiveDir = join(root, 'archive');
  store = await openObjectStore(`file://${archiveDir}`);
  scratch = join(root, 'scratch');
  await mkdir(scratch);
  // 1: backups at 2 and 4, WAL 1-6. 2: one backup at 2. 3: no backup. 4: a backup at 4 that holds LSN 3's state.
  await archiveWal('1', 6);
  await backUp('1', 2);
  await backUp('1', 4);
  await archiveWal('2', 4);
  await backUp('2', 2);
  await archiveWal('3', 4);
  await archiveWal('4', 4);
  await backUp('4', 2);
  await backUp('4', 4, 3);
}, 60_000);

afterAll(async () => {
  await store?.close();
  await rm(root, { recursive: true, force: true });
});

describe('drillPartition', () => {
  it('restores from the older backup plus the WAL and matches the newer backup file by file', async () => {
    const r = await drill('1');
    expect(r).toMatchObject<Partial<DrillResult>>({
      partition: '1',
      timeline: 1,
      mode: 'compare',
      ok: true,
      baseLsn: 2,
      baseKey: baseBackupKey('1', 2),
      compareKey: baseBackupKey('1', 4),
      drilledLsn: 4,
    });
    expect(r.files).toBeGreaterThan(0);
    expect(r.bytes).toBeGreaterThan(0);
    expect(describeDrill(r)).toMatch(
      /^drill: partition 1 timeline 1 OK base 2 → LSN 4, [1-9]\d* files, [1-9]\d* bytes$/,
    );
    expect(await readdir(scratch)).toEqual([]);
  });

  it('fails naming the first differing file when the newer backup holds another state', async () => {
    const r = await drill('4');
    expect(r.ok).toBe(false);
    expect(r.failure).toMatchObject({ lsn: 4, file: 'kv-state', key: baseBackupKey('4', 4) });
    expect(describeDrill(r)).toMatch(/^drill: partition 4 timeline 1 FAILED at LSN 4: kv-state: /);
    expect(await readdir(scratch)).toEqual([]);
  });

  it('with one backup, replays from it to the archived end', async () => {
    const r = await drill('2');
    expect(r).toMatchObject({ mode: 'replay', ok: true, baseLsn: 2, drilledLsn: 4 });
    expect(r.files).toBeGreaterThan(0);
    expect(describeDrill(r)).toMatch(/OK base 2 → LSN 4, [1-9]\d* files, \d+ bytes \(replayed/);
  });

  it('with no backup, replays from LSN 1', async () => {
    const r = await drill('3');
    expect(r).toMatchObject({ mode: 'replay', ok: true, baseLsn: 0, drilledLsn: 4 });
    expect(describeDrill(r)).toMatch(/OK LSN 1 → LSN 4/);
  });

  it('fails naming a segment that no longer matches its SHA-256', async () => {
    const key = segmentKey('1', 3, 4);
    const path = join(archiveDir, key);
    const original = await readFile(path);
    const bad = Buffer.from(original);
    bad[bad.length >> 1] ^= 0xff;
    await writeFile(path, bad);
    try {
      const r = await drill('1');
      expect(r.ok).toBe(false);
      expect(r.failure?.key).toBe(key);
      expect(describeDrill(r)).toContain(key);
      expect(describeDrill(r)).toMatch(/^drill: partition 1 timeline 1 FAILED at LSN 3: .*checksum mismatch/);
    } finally {
      await writeFile(path, original);
    }
    expect(await readdir(scratch)).toEqual([]);
  });

  it('fails when the WAL does not reach the newer backup', async () => {
    const key = segmentKey('1', 3, 4);
    const path = join(archiveDir, key);
    const original = await readFile(path);
    await rm(path);
    try {
      const r = await drill('1');
      expect(r.ok).toBe(false);
      expect(r.failure?.lsn).toBe(3);
      expect(describeDrill(r)).toMatch(/FAILED at LSN 3: .*no segment holds LSN 3/);
    } finally {
      await writeFile(path, original);
    }
  });

  it('fails for a partition with nothing archived, marked empty', async () => {
    const r = await drill('9');
    expect(r).toMatchObject({ ok: false, empty: true, drilledLsn: 0 });
    expect(describeDrill(r)).toBe(
      'drill: partition 9 timeline 1 FAILED at LSN 0: nothing is archived (no segment and no base backup)',
    );
  });

  it('refuses to start when its objects exceed the scratch budget', async () => {
    await expect(drill('1', { budget: { maxScratchBytes: 10 } })).rejects.toThrow(
      /would download \d+ bytes, more than the scratch budget of 10 bytes/,
    );
    expect(await readdir(scratch)).toEqual([]);
  });
});

describe('chooseBackupPair', () => {
  const backups = [2, 4, 6, 8].map((lsn) => ({
    key: `b${lsn}`,
    lsn,
    sha256: undefined,
    bytes: 1,
  })) as ArchiveBackup[];
  it('takes the newest two without a seed, none with fewer than two', () => {
    expect(chooseBackupPair(backups, undefined)?.map((b) => b.lsn)).toEqual([6, 8]);
    expect(chooseBackupPair(backups.slice(0, 1), 7)).toBeUndefined();
  });
  it('takes consecutive backups, the same for the same seed, and every pair for some seed', () => {
    const seen = new Set<number>();
    for (let seed = 0; seed < 50; seed++) {
      const [a, b] = chooseBackupPair(backups, seed)!;
      expect(backups.indexOf(b)).toBe(backups.indexOf(a) + 1);
      expect(chooseBackupPair(backups, seed)![0]).toBe(a);
      seen.add(a.lsn);
    }
    expect([...seen].sort()).toEqual([2, 4, 6]);
  });
});

// The scheduler over the same archive (src/pipeline/drill-scheduler.ts): one drill at a time, metrics and a log line.
describe('DrillScheduler', () => {
  const scheduler = (partitions: string[], lines: string[], through: ObjectStore = store) => {
    const registry = new Registry();
    const s = new DrillScheduler({
      store: through,
      partitions: () => partitions,
      intervalMs: 60_000,
      seed: 3,
      scratchDir: scratch,
      registry,
      logger: createLogger({}, { level: 'debug', write: (line) => lines.push(line) }),
      now: () => 1_700_000_000_000,
    });
    return { s, registry };
  };

  it('exports the success time and the drilled LSN of a passing drill', async () => {
    const lines: string[] = [];
    const { s, registry } = scheduler(['1'], lines);
    expect((await s.drillOnce())?.ok).toBe(true);
    const text = await registry.metrics();
    expect(text).toContain('wal_archiver_drill_last_success_timestamp_seconds{partition="1"} 1700000000');
    expect(text).toContain('wal_archiver_drill_lsn{partition="1"} 4');
    expect(text).not.toMatch(/wal_archiver_drill_failures_total\{partition="1"\} [1-9]/);
    await s.stop();
  });

  it('counts a failed drill and logs one error naming the partition, the LSN and the file', async () => {
    const lines: string[] = [];
    const { s, registry } = scheduler(['4'], lines);
    expect((await s.drillOnce())?.ok).toBe(false);
    expect(await registry.metrics()).toContain('wal_archiver_drill_failures_total{partition="4"} 1');
    const errors = lines.filter((l) => l.includes('"level":"error"'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/restore drill failed at LSN 4: kv-state/);
    expect(JSON.parse(errors[0]!)).toMatchObject({ partition: '4', lsn: 4, file: 'kv-state' });
    await s.stop();
  });

  it('neither counts nor reports a led partition with nothing archived yet', async () => {
    const lines: string[] = [];
    const { s, registry } = scheduler(['9'], lines);
    expect((await s.drillOnce())?.empty).toBe(true);
    expect(await registry.metrics()).not.toMatch(/partition="9"/);
    expect(lines.filter((l) => l.includes('"level":"error"'))).toEqual([]);
    await s.stop();
  });

  it('drills again on a fresh listing when an object went missing meanwhile (retention), counting only a second miss', async () => {
    const key = segmentKey('1', 3, 4);
    let misses = 0;
    const missing = (times: number) =>
      new Proxy(store, {
        get(target, prop, receiver) {
          if (prop === 'head')
            return (k: string, o?: object) =>
              k === key && misses++ < times ? Promise.resolve(undefined) : target.head(k, o);
          return Reflect.get(target, prop, receiver) as unknown;
        },
      });
    const once = scheduler(['1'], [], missing(1));
    expect((await once.s.drillOnce())?.ok).toBe(true);
    expect(misses).toBeGreaterThanOrEqual(2);
    expect(await once.registry.metrics()).not.toMatch(
      /wal_archiver_drill_failures_total\{partition="1"\} [1-9]/,
    );
    misses = 0;
    const lines: string[] = [];
    const always = scheduler(['1'], lines, missing(Infinity));
    const r = await always.s.drillOnce();
    expect(r?.failure).toMatchObject({ lsn: 3, code: 'NOT_FOUND' });
    expect(await always.registry.metrics()).toContain('wal_archiver_drill_failures_total{partition="1"} 1');
    expect(lines.filter((l) => l.includes('"level":"error"'))).toHaveLength(1);
  });

  it('drills nothing while it leads nothing, and stops at once', async () => {
    const { s } = scheduler([], []);
    s.start();
    expect(await s.drillOnce()).toBeUndefined();
    await s.stop();
  });
});

describe('compareTrees', () => {
  const make = async (name: string, files: Record<string, string | number>) => {
    const dir = join(root, 'trees', name);
    for (const [rel, content] of Object.entries(files)) {
      await mkdir(join(dir, rel, '..'), { recursive: true });
      if (typeof content === 'number') await mkdir(join(dir, rel), { recursive: true, mode: content });
      else await writeFile(join(dir, rel), content, { mode: 0o644 });
    }
    return dir;
  };

  it('reports the first difference in path order: missing, extra, size, bytes, mode', async () => {
    const base = { 'a/x': 'one', 'a-b': 'two', z: 'three' };
    const same = await make('same', base);
    expect(await compareTrees(same, await make('same2', base))).toEqual({ files: 3, bytes: 11 });
    // a/x comes before a-b in the walk (a folder's contents right after it).
    const noAx = await make('no-ax', { a: 0o755, 'a-b': 'twX', z: 'three' });
    expect((await compareTrees(noAx, same)).first).toEqual({
      file: 'a/x',
      why: 'in the base backup, not in the restored state',
    });
    const extra = await make('extra', { ...base, zz: '' });
    expect((await compareTrees(extra, same)).first?.file).toBe('zz');
    const longer = await make('longer', { ...base, z: 'three!' });
    expect((await compareTrees(longer, same)).first).toEqual({
      file: 'z',
      why: '6 bytes restored, 5 in the base backup',
    });
    const other = await make('other', { ...base, 'a-b': 'twO' });
    expect((await compareTrees(other, same)).first).toEqual({
      file: 'a-b',
      why: 'bytes differ from offset 2',
    });
    const mode = await make('mode', base);
    await chmod(join(mode, 'z'), 0o600);
    expect((await compareTrees(mode, same)).first).toEqual({
      file: 'z',
      why: 'mode 600 restored, 644 in the base backup',
    });
  });
});
