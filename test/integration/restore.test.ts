import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compress } from 'zstd-napi';
import { retentionCommand } from '../../src/cli/backup.js';
import { restoreCommand, verifyCommand } from '../../src/cli/restore.js';
import { contentDigest, encodeEntryInfo } from '../../contract/wal/entry-info.js';
import { emptyGlobalManifest, entryFromPartitionManifest } from '../../src/manifest/global-manifest.js';
import type { Command } from '../../contract/cli/runner.js';
import {
  GLOBAL_MANIFEST_KEY,
  baseBackupKey,
  partitionPrefix,
  segmentKey,
  segmentPrefix,
} from '../../src/manifest/keys.js';
import { spoolSegment, type SegmentEntry } from '../../src/archive/segment-writer.js';
import { readPartitionManifest, updatePartitionManifest } from '../../src/manifest/partition-manifest.js';
import { copyTree } from '../../src/restore/restore-all.js';
import { INCOMPLETE_MARKER } from '../../src/restore/restore.js';
import { applyEntry } from '../../contract/state/apply.js';
import { packState } from '../../contract/state/snapshot.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { openObjectStore } from '../../src/store/open.js';
import { entryDir, readConfState, readHardState, writeEntry } from '../../contract/wal/entry.js';
import {
  encodeLogEntry,
  newLogEntry,
  operation,
  referenceChange,
  type LogEntry,
} from '../../contract/wal/log-entry.js';
import { startLocalCluster } from '../../storage-node/cluster.js';
import { LOAD_DEFAULTS, readLoadRecord, runLoad, type WriteRecord } from '../../storage-node/load.js';
import { readArchive, replay, type ArchiveView } from '../helpers/archive-check.js';
import { expectedRefs, refsIn } from '../helpers/refs.js';
import { captureContext, runCommand } from '../helpers/cli-context.js';
import { leaderOf, statusOf, treeDigest, waitFor, writeMany } from '../helpers/node-cluster.js';
import { s3Url, uniqueName } from '../helpers/services.js';
import { startSidecars, type ArchivingCluster } from '../helpers/sidecars.js';
import { createTestBucket, type TestBucket } from './object-store.s3-helpers.js';

const run = promisify(execFile);

interface Setup extends ArchivingCluster {
  cleanups: Array<() => Promise<unknown>>;
}

async function setup(partitions: number, basePort: number, metricsBase: number): Promise<Setup> {
  const cleanups: Array<() => Promise<unknown>> = [];
  const work = await mkdtemp(join(tmpdir(), 'restore-'));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const bucket = await createTestBucket({ objectLock: false, prefix: 'archive' });
  cleanups.push(() => bucket.cleanup());
  const dataDir = join(work, 'nodes');
  const cluster = await startLocalCluster({ nodes: 3, partitions, dataDir, basePort });
  cleanups.push(() => cluster.stop());
  const sidecars = await startSidecars(
    {
      urls: cluster.urls,
      dataDir,
      objectStore: bucket.url,
      metricsBase: metricsBase,
      extraArgs: ['--segment-age', '200ms', '--segment-entries', '6', '--backups=false'],
    },
    cleanups,
  );
  return { cluster, dataDir, sidecars, bucket, work, cleanups };
}

async function teardown(s: Setup | undefined): Promise<void> {
  while (s?.cleanups.length) await s.cleanups.pop()!().catch(() => undefined);
}

async function load(s: Setup, partitions: string[], count: number): Promise<WriteRecord[]> {
  const file = join(s.work, `record-${uniqueName('r')}.jsonl`);
  const summary = await runLoad({
    ...LOAD_DEFAULTS,
    nodeUrls: s.cluster.urls,
    rate: 40,
    size: 3000,
    partitions,
    count,
    durationMs: 60_000,
    git: true,
    record: file,
    seed: 7,
    maxInFlight: 4,
    progressIntervalMs: 0,
    log: () => undefined,
  });
  expect(summary.ok).toBe(count);
  const { writes } = await readLoadRecord(file);
  return writes;
}

/** Waits until the partition manifest has archived everything the partition committed. */
async function waitArchived(s: Setup, partition: string): Promise<number> {
  const leader = await leaderOf(s.cluster.urls, partition);
  const commit = (await statusOf(s.cluster.urls[leader - 1]!, partition)).committed;
  try {
    await waitFor(
      `partition ${partition} archived through ${commit}`,
      async () => {
        const m = await readPartitionManifest(s.bucket.store, partition);
        return (m?.value.archived?.last_lsn ?? 0) >= commit || undefined;
      },
      60_000,
      100,
    );
  } catch (err) {
    const m = (await readPartitionManifest(s.bucket.store, partition).catch(() => undefined))?.value;
    const problems = s.sidecars.map((c) => c.problems().slice(-5));
    throw new Error(
      `${(err as Error).message}; manifest archived ${JSON.stringify(m?.archived)} leader ${JSON.stringify(m?.leader)}; sidecars: ${JSON.stringify(problems)}`,
    );
  }
  return commit;
}

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command as the wal-archiver CLI does (one error line on stderr, the exit code). */
async function cli(command: Command, argv: string[]): Promise<CliResult> {
  const c = captureContext();
  const code = await runCommand(command, argv, c);
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

/** `restore` of one partition of the archive at `url` to a point (`--latest`, `--to-lsn N`, `--to-time T`). */
function restoreOne(url: string, partition: string, point: string[], target: string): Promise<CliResult> {
  return cli(restoreCommand, ['--object-store', url, '--partition', partition, ...point, '--target', target]);
}

async function fsckClean(stateDir: string, repositories: string[]): Promise<void> {
  for (const repo of repositories) {
    const gitDir = join(stateDir, 'repositories', repo);
    if (!(await stat(gitDir).catch(() => undefined))) continue;
    const { stdout, stderr } = await run('git', ['--git-dir', gitDir, 'fsck', '--full', '--strict']);
    expect(`${stdout}${stderr}`.trim(), `git fsck of ${repo}`).toBe('');
  }
}

/** Copies one partition's objects (and manifest) to a fresh prefix of the bucket, for damaging. */
async function copyPartition(s: Setup, partition: string): Promise<{ store: ObjectStore; url: string }> {
  const url = s3Url(s.bucket.bucket, uniqueName('copy'));
  const store = await openObjectStore(url);
  for await (const o of s.bucket.store.list(partitionPrefix(partition))) {
    const info = await s.bucket.store.head(o.key);
    const body = await readAll(await s.bucket.store.get(o.key));
    await store.create(o.key, body, { metadata: info!.metadata });
  }
  s.cleanups.push(() => store.close());
  return { store, url };
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function segmentKeys(store: ObjectStore, partition: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of store.list(segmentPrefix(partition))) keys.push(o.key);
  return keys;
}

/**
 * Stores the packed state of `stateDir` as partition p's base backup at `lsn`, as the sidecar stores one,
 * and records it (taken by `leader` at `takenAt`) in the partition manifest. Returns its key.
 */
async function storeBaseBackup(
  store: ObjectStore,
  p: string,
  lsn: number,
  stateDir: string,
  leader: { node: number; term: number },
  takenAt: Date,
): Promise<string> {
  // A git workload sets no key; the node's packed state then holds an empty kv-state.
  await writeFile(join(stateDir, 'kv-state'), '', { flag: 'a' });
  const body = compress(await readAll(packState(stateDir) as unknown as NodeJS.ReadableStream));
  const key = baseBackupKey(p, lsn);
  await store.create(key, body, { metadata: { sha256: sha256(body), partition: p } });
  const record = { key, lsn, taken_at: takenAt.toISOString(), bytes: body.length, sha256: sha256(body) };
  await updatePartitionManifest(store, p, leader, {
    backups: [{ ...record, trigger: 'manual', term: leader.term, node: leader.node }],
  });
  return key;
}

/** Replaces an object (same key, so restore plans it) by other bytes carrying their own SHA-256. */
async function replaceObject(store: ObjectStore, key: string, body: Buffer, keepSha = false): Promise<void> {
  const info = await store.head(key);
  await store.delete(key);
  await store.create(key, body, {
    metadata: { ...info!.metadata, ...(keepSha ? {} : { sha256: sha256(body) }) },
  });
}

/** Every file below `dir`, relative. */
async function filesBelow(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string) => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(join(d, e.name), r);
      else out.push(r);
    }
  };
  await walk(dir, '');
  return out;
}

async function expectNothingAt(target: string): Promise<void> {
  expect(await stat(target).catch(() => undefined), `${target} must not exist`).toBeUndefined();
  expect(
    await stat(`${target}.partial`).catch(() => undefined),
    `${target}.partial must not exist`,
  ).toBeUndefined();
}

function oneErrorLine(r: CliResult, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(1);
  const lines = r.stderr.split('\n').filter((l) => l && !l.startsWith('restore: '));
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
}

/**
 * A restore of partition 1 from a damaged copy of the archive fails with one line and leaves nothing
 * behind; verify then reports a fault. Returns verify's result, for the fault it names.
 */
async function refusedThenFaulted(url: string, point: string[], target: string, error: RegExp) {
  oneErrorLine(await restoreOne(url, '1', point, target), error);
  await expectNothingAt(target);
  const v = await cli(verifyCommand, ['--object-store', url, '--partition', '1']);
  expect(v.code).toBe(1);
  return v;
}

describe('restore a partition from the archive of a live cluster', () => {
  let s: Setup;
  let writes: WriteRecord[];
  const views = new Map<string, ArchiveView>();
  const commits = new Map<string, number>();
  const refDir = (p: string, lsn: number) => join(s.work, 'reference', p, String(lsn));

  /** The replay of the archive to `lsn`: what a restore must give, byte for byte. */
  async function reference(p: string, lsn: number): Promise<Record<string, string>> {
    const dir = refDir(p, lsn);
    if (!(await stat(dir).catch(() => undefined))) await replay(views.get(p)!, lsn, dir);
    return treeDigest(dir);
  }

  const repos = (p: string) => [
    ...new Set(writes.filter((w) => w.partition === p).map((w) => w.relativePath)),
  ];

  beforeAll(async () => {
    s = await setup(2, 7700, 9700);
    writes = await load(s, ['1', '2'], 48);
    for (const p of ['1', '2']) {
      const commit = await waitArchived(s, p);
      commits.set(p, commit);
      views.set(p, await readArchive(s.bucket.store, p, commit, join(s.work, 'archive-view')));
    }
  });
  afterAll(() => teardown(s));

  it('restores to recorded LSNs exactly: refs as recorded, git fsck clean, state identical to a replay', async () => {
    const mine = writes.filter((w) => w.partition === '1').sort((a, b) => a.lsn - b.lsn);
    const lsns = [mine[0]!.lsn, mine[Math.floor(mine.length / 2)]!.lsn, mine.at(-1)!.lsn];
    for (const lsn of lsns) {
      const target = join(s.work, 'lsn', String(lsn), 'partitions', '1');
      const r = await restoreOne(s.bucket.url, '1', ['--to-lsn', String(lsn)], target);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(
        new RegExp(`restored partition 1 to LSN ${lsn} of timeline 1 \\(term \\d+\\)`),
      );
      expect(r.stderr).toMatch(/^restore: partition 1: /m);
      expect(await treeDigest(join(target, 'state'))).toEqual(await reference('1', lsn));
      expect(await refsIn(join(target, 'state'), repos('1'))).toEqual(expectedRefs(writes, '1', lsn));
      await fsckClean(join(target, 'state'), repos('1'));
      const term = views.get('1')!.terms.get(lsn)!;
      expect(await readFile(join(target, 'applied_lsn'), 'utf8')).toBe(`${lsn}\n`);
      // No base backups here: every stamp up to the LSN was replayed, so the greatest is whole.
      const stamp = Math.max(...mine.filter((w) => w.lsn <= lsn).map((w) => Date.parse(w.committedAt)));
      expect(JSON.parse(await readFile(join(target, 'raft', 'snapshot'), 'utf8'))).toEqual({
        index: lsn,
        term,
        voters: [1, 2, 3],
        stamp,
      });
      expect(await readHardState(target)).toEqual({ term, vote: 0, commit: lsn });
      expect((await readConfState(target))?.voters).toEqual([1, 2, 3]);
      expect(await filesBelow(target)).not.toContain(INCOMPLETE_MARKER);
      expect(await stat(`${target}.partial`).catch(() => undefined)).toBeUndefined();
    }
    // At the latest LSN the restored state is the node's own, byte for byte.
    const latest = join(s.work, 'latest', 'partitions', '1');
    const r = await restoreOne(s.bucket.url, '1', ['--latest'], latest);
    expect(r.code, r.stderr).toBe(0);
    const leader = await leaderOf(s.cluster.urls, '1');
    const status = await statusOf(s.cluster.urls[leader - 1]!, '1');
    expect(status.applied).toBe(commits.get('1'));
    expect(await readFile(join(latest, 'applied_lsn'), 'utf8')).toBe(`${commits.get('1')}\n`);
    expect(await treeDigest(join(latest, 'state'))).toEqual(
      await treeDigest(join(s.dataDir, `node-${leader}`, 'partitions', '1', 'state')),
    );
  });

  it('restores to times between recorded writes: the last entry committed at or before the time', async () => {
    const mine = writes.filter((w) => w.partition === '2').sort((a, b) => a.lsn - b.lsn);
    const gaps = mine
      .slice(0, -1)
      .map((w, i) => ({ w, next: mine[i + 1]! }))
      .filter(({ w, next }) => Date.parse(next.committedAt) - Date.parse(w.committedAt) >= 2);
    expect(gaps.length).toBeGreaterThan(2);
    for (const { w, next } of [gaps[0]!, gaps[Math.floor(gaps.length / 2)]!]) {
      const time = new Date(Date.parse(w.committedAt) + 1).toISOString();
      const target = join(s.work, 'time', time.replace(/[:.]/g, '-'));
      const r = await restoreOne(s.bucket.url, '2', ['--to-time', time], target);
      expect(r.code, r.stderr).toBe(0);
      const applied = Number(await readFile(join(target, 'applied_lsn'), 'utf8'));
      expect(applied).toBeGreaterThanOrEqual(w.lsn);
      expect(applied).toBeLessThan(next.lsn);
      expect(await treeDigest(join(target, 'state'))).toEqual(await reference('2', applied));
      expect(await refsIn(join(target, 'state'), repos('2'))).toEqual(expectedRefs(writes, '2', w.lsn));
      await fsckClean(join(target, 'state'), repos('2'));
    }
  });

  it('starts from the newest base backup at or before the target, and verify accepts it', async () => {
    const p = '2';
    const mine = writes.filter((w) => w.partition === p).sort((a, b) => a.lsn - b.lsn);
    const b = mine[Math.floor(mine.length / 3)]!.lsn;
    // A base backup of the state at LSN b, as the sidecar stores one.
    await reference(p, b);
    const packed = join(s.work, 'packed', String(b));
    await copyTree(refDir(p, b), packed);
    const m = (await readPartitionManifest(s.bucket.store, p))!.value;
    const key = await storeBaseBackup(s.bucket.store, p, b, packed, m.leader!, new Date());

    const latest = commits.get(p)!;
    const target = join(s.work, 'backup', 'latest');
    const r = await restoreOne(s.bucket.url, p, ['--latest'], target);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`base backup ${key} + `);
    expect(await treeDigest(join(target, 'state'))).toEqual(await reference(p, latest));
    expect(await refsIn(join(target, 'state'), repos(p))).toEqual(expectedRefs(writes, p, latest));

    // Exactly at the backup: nothing replayed, the term still that of the entry at b.
    const at = join(s.work, 'backup', 'at');
    const r2 = await restoreOne(s.bucket.url, p, ['--to-lsn', String(b)], at);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.stdout).toContain('0 segments, 0 entries replayed');
    expect(await treeDigest(join(at, 'state'))).toEqual(await reference(p, b));
    expect((await readHardState(at))?.term).toBe(views.get(p)!.terms.get(b));

    // Before the backup: replayed from LSN 1.
    const before = join(s.work, 'backup', 'before');
    const r3 = await restoreOne(s.bucket.url, p, ['--to-lsn', String(b - 1)], before);
    expect(r3.code, r3.stderr).toBe(0);
    expect(r3.stdout).not.toContain('base backup');
    expect(await treeDigest(join(before, 'state'))).toEqual(await reference(p, b - 1));

    const v = await cli(verifyCommand, ['--object-store', s.bucket.url]);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(v.stdout).toMatch(/^OK {4}partition 1: /m);
    expect(v.stdout).toMatch(/^OK {4}partition 2: .*1 base backups/m);
    expect(v.stdout).not.toContain('FAULT');
  });

  it('refuses a non-empty target without --force, and replaces it with --force', async () => {
    const target = join(s.work, 'occupied');
    await mkdir(target, { recursive: true });
    await writeFile(join(target, 'precious'), 'keep me');
    const args = ['--object-store', s.bucket.url, '--partition', '1', '--to-lsn', '3', '--target', target];
    const r = await cli(restoreCommand, args);
    oneErrorLine(r, /^wal-archiver: target .*occupied is not empty \(use --force to replace it\)$/);
    expect(await readFile(join(target, 'precious'), 'utf8')).toBe('keep me');
    const forced = await cli(restoreCommand, [...args, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(await stat(join(target, 'precious')).catch(() => undefined)).toBeUndefined();
    expect(await readFile(join(target, 'applied_lsn'), 'utf8')).toBe('3\n');
  });

  it('clears what an interrupted restore left behind, and an aborted one leaves nothing that looks complete', async () => {
    const target = join(s.work, 'interrupted');
    await mkdir(`${target}.partial/state`, { recursive: true });
    await writeFile(join(`${target}.partial`, INCOMPLETE_MARKER), 'incomplete');
    const args = ['--object-store', s.bucket.url, '--partition', '1', '--latest', '--target', target];
    const r = await cli(restoreCommand, args);
    expect(r.code, r.stderr).toBe(0);
    expect(await stat(`${target}.partial`).catch(() => undefined)).toBeUndefined();

    const other = join(s.work, 'aborted');
    const controller = new AbortController();
    const { restorePartition } = await import('../../src/restore/restore.js');
    let seen = false;
    await expect(
      restorePartition({
        store: s.bucket.store,
        partition: '1',
        target: { kind: 'latest' },
        targetDir: other,
        voters: [1, 2, 3],
        concurrency: 1,
        signal: controller.signal,
        onProgress: (p) => {
          if (p.phase === 'replay' && p.segmentsDone >= 1 && !seen) {
            seen = true;
            expect(p.segmentsDone).toBeLessThan(p.segmentsTotal);
            controller.abort(new Error('operator pressed Ctrl-C'));
          }
        },
      }),
    ).rejects.toThrow();
    expect(seen).toBe(true);
    await expectNothingAt(other);
  });

  it('bad input: a missing object, named with its partition and LSNs; verify lists it', async () => {
    const copy = await copyPartition(s, '1');
    const keys = await segmentKeys(copy.store, '1');
    const victim = keys[1]!;
    await copy.store.delete(victim);
    const target = join(s.work, 'bad', 'missing');
    const v = await refusedThenFaulted(
      copy.url,
      ['--latest'],
      target,
      new RegExp(`^wal-archiver: partition 1: segment of LSNs \\d+-\\d+: object ${victim} is missing`),
    );
    expect(v.stdout).toContain(`FAULT partition 1 ${victim}: segment of LSNs`);
    expect(v.stdout).toMatch(/the object is missing/);
  });

  it('bad input: a segment whose bytes do not match its checksum', async () => {
    const copy = await copyPartition(s, '1');
    const victim = (await segmentKeys(copy.store, '1'))[0]!;
    const bytes = await readAll(await copy.store.get(victim));
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await replaceObject(copy.store, victim, bytes, true);
    const target = join(s.work, 'bad', 'checksum');
    const v = await refusedThenFaulted(
      copy.url,
      ['--to-lsn', '2'],
      target,
      new RegExp(
        `^wal-archiver: partition 1: segment ${victim}: checksum mismatch \\(expected [0-9a-f]{64}, read [0-9a-f]{64}\\)`,
      ),
    );
    expect(v.stdout).toMatch(new RegExp(`FAULT partition 1 ${victim}: segment of LSNs .*checksum mismatch`));
  });

  it('bad input: a gap in the archive (manifest gone, a segment lost)', async () => {
    const copy = await copyPartition(s, '1');
    await copy.store.delete(`${partitionPrefix('1')}manifest.json`);
    const keys = await segmentKeys(copy.store, '1');
    const victim = keys[2]!;
    await copy.store.delete(victim);
    const target = join(s.work, 'bad', 'gap');
    const v = await refusedThenFaulted(
      copy.url,
      ['--latest'],
      target,
      new RegExp(
        `^wal-archiver: partition 1: gap in the archive: no segment holds LSN \\d+, needed for .*the segment before ends at LSN \\d+ \\(${keys[1]}\\)`,
      ),
    );
    expect(v.stdout).toContain('the partition manifest is missing');
    expect(v.stdout).toMatch(/FAULT partition 1 .*gap in the archive: no segment holds LSN/);
  });

  it('bad input: an LSN beyond the archive, and a time before its first entry', async () => {
    const target = join(s.work, 'bad', 'range');
    const beyond = await restoreOne(s.bucket.url, '1', ['--to-lsn', '100000'], target);
    oneErrorLine(
      beyond,
      /^wal-archiver: partition 1: LSN 100000 is beyond the archive, which ends at LSN \d+ \(last segment partitions\/1\/wal\/.*\)$/,
    );
    const early = await restoreOne(s.bucket.url, '1', ['--to-time', '2001-01-01T00:00:00Z'], target);
    oneErrorLine(
      early,
      /^wal-archiver: partition 1: 2001-01-01T00:00:00\.000Z is before the first archived entry \(LSN 1; the first commit time is .*, at LSN \d+; in partitions\/1\/wal\/0000000000001-/,
    );
    await expectNothingAt(target);
    const usage = await restoreOne(s.bucket.url, '1', ['--to-lsn', '3', '--latest'], target);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toBe('wal-archiver: give exactly one of --to-lsn N, --to-time T or --latest\n');
  });

  it('bad input: a malicious segment trying to write outside the target, or plant a symlink', async () => {
    for (const [label, members] of [
      [
        'escape',
        [
          { name: '0000000000001/', type: 'directory' as const },
          { name: '../../../../evil', type: 'file' as const, body: 'pwned' },
        ],
      ],
      [
        'symlink',
        [
          { name: '0000000000001/', type: 'directory' as const },
          { name: '0000000000001/1', type: 'symlink' as const, linkname: '../../../../../etc' },
        ],
      ],
    ] as const) {
      const copy = await copyPartition(s, '1');
      await copy.store.delete(`${partitionPrefix('1')}manifest.json`);
      const victim = (await segmentKeys(copy.store, '1'))[0]!;
      const pack = tar.pack();
      for (const m of members) {
        if (m.type === 'file') pack.entry({ name: m.name, type: 'file', mode: 0o644 }, m.body);
        else if (m.type === 'symlink') pack.entry({ name: m.name, type: 'symlink', linkname: m.linkname });
        else pack.entry({ name: m.name, type: 'directory', mode: 0o755 });
      }
      pack.finalize();
      await replaceObject(
        copy.store,
        victim,
        compress(await readAll(pack as unknown as NodeJS.ReadableStream)),
      );
      const root = join(s.work, 'malicious', label);
      const target = join(root, 'a', 'b', 'c', 'target');
      const r = await restoreOne(copy.url, '1', ['--latest'], target);
      oneErrorLine(
        r,
        new RegExp(
          `^wal-archiver: partition 1: segment ${victim}: refusing "(\\.\\./\\.\\./\\.\\./\\.\\./evil|0000000000001/1)": `,
        ),
      );
      await expectNothingAt(target);
      expect(await filesBelow(join(s.work, 'malicious'))).toEqual([]);
    }
  });
});

describe('restore --all: rebuild a destroyed cluster from the archive', () => {
  let s: Setup | undefined;
  afterAll(() => teardown(s));

  it('archives under load, loses every node, restores all partitions to a time for 3 nodes and boots a cluster from them', async () => {
    s = await setup(2, 7705, 9705);
    const writes = await load(s, ['1', '2'], 30);
    const commits = new Map<string, number>();
    for (const p of ['1', '2']) commits.set(p, await waitArchived(s, p));
    // Lose everything: sidecars, nodes and their data.
    for (const c of s.sidecars) await c.stop();
    await s.cluster.stop();
    await rm(s.dataDir, { recursive: true, force: true });

    // The target: a time in the middle of the load. Each partition is restored to
    // its last entry committed at or before it.
    const byTime = [...writes].sort((a, b) => Date.parse(a.committedAt) - Date.parse(b.committedAt));
    const targetTime = byTime[Math.floor(byTime.length * 0.6)]!.committedAt;
    const targets = new Map<string, number>();
    for (const p of ['1', '2']) {
      const before = writes.filter(
        (w) => w.partition === p && Date.parse(w.committedAt) <= Date.parse(targetTime),
      );
      expect(before.length, `partition ${p} has writes before the target time`).toBeGreaterThan(0);
      targets.set(p, Math.max(...before.map((w) => w.lsn)));
      expect(targets.get(p)!).toBeLessThan(commits.get(p)!);
    }
    const restored = join(s.work, 'restored');
    const r = await cli(restoreCommand, [
      '--object-store',
      s.bucket.url,
      '--all',
      '--to-time',
      targetTime,
      '--nodes',
      '3',
      '--target',
      restored,
    ]);
    expect(r.code, r.stderr).toBe(0);
    for (const p of ['1', '2']) expect(r.stdout).toContain(`partition ${p}: LSN ${targets.get(p)} `);
    expect(r.stdout).toContain(`storage-node run --id I --data-dir ${join(restored, 'node-I')}`);
    for (let n = 1; n <= 3; n++) {
      for (const p of ['1', '2']) {
        const dir = join(restored, `node-${n}`, 'partitions', p);
        expect(await readFile(join(dir, 'applied_lsn'), 'utf8')).toBe(`${targets.get(p)}\n`);
        expect(await treeDigest(join(dir, 'state'))).toEqual(
          await treeDigest(join(restored, 'node-1', 'partitions', p, 'state')),
        );
      }
    }

    // Form the cluster from the restored data directories.
    const cluster = await startLocalCluster({ nodes: 3, partitions: 2, dataDir: restored, basePort: 7705 });
    s.cleanups.push(() => cluster.stop());
    for (const p of ['1', '2']) {
      const leader = await leaderOf(cluster.urls, p);
      const status = await statusOf(cluster.urls[leader - 1]!, p);
      expect(status.applied).toBeGreaterThanOrEqual(targets.get(p)!);
      const stateDir = join(restored, `node-${leader}`, 'partitions', p, 'state');
      const repositories = [
        ...new Set(
          writes.filter((w) => w.partition === p && w.lsn <= targets.get(p)!).map((w) => w.relativePath),
        ),
      ];
      // Every repository reads back as of the target time: the refs the record had then.
      expect(await refsIn(stateDir, repositories)).toEqual(expectedRefs(writes, p, targets.get(p)!));
      await fsckClean(stateDir, repositories);
    }
    // The new cluster takes writes after the restored LSN, on every replica.
    const lsns = await writeMany(cluster.urls, ['1', '2'], 4);
    for (const p of ['1', '2']) {
      for (const lsn of lsns.get(p)!) expect(lsn).toBeGreaterThan(targets.get(p)!);
      const last = Math.max(...lsns.get(p)!);
      for (const url of cluster.urls) {
        await waitFor(
          `partition ${p} applied ${last} on ${url}`,
          async () => (await statusOf(url, p)).applied >= last || undefined,
        );
      }
    }
  });
});

describe('restore of an archive whose commit stamps go backwards, after retention, and with --all', () => {
  let bucket: TestBucket | undefined;
  let work: string;
  afterAll(async () => {
    await bucket?.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const T0 = Date.parse('2025-03-01T00:00:00.000Z');
  // LSN 4 was stamped by a leader whose clock was ahead, LSNs 5-8 by the next
  // one, behind it; LSN 9 is that leader's empty entry (no stamp).
  const STAMPS = [10, 20, 30, 80, 40, 50, 60, 70, 0, 90, 100, 110];
  const N = STAMPS.length;
  const oid = (lsn: number) => lsn.toString(16).padStart(40, '0');
  /** LSN 1 creates the repository, LSN 2 hard-links its main ref in storage; every other one moves main. */
  function entryAt(lsn: number): LogEntry {
    if (STAMPS[lsn - 1] === 0) return newLogEntry({});
    if (lsn === 2)
      return newLogEntry({
        relativePath: 'r.git',
        operations: [operation.createHardLink('r.git/refs/heads/main', 'r.git/refs/heads/keep', true)],
      });
    return newLogEntry({
      relativePath: 'r.git',
      operations: lsn === 1 ? [operation.createDirectory('r.git', 0o755)] : [],
      referenceTransactions: [{ changes: [referenceChange('refs/heads/main', oid(lsn))] }],
    });
  }

  let wal: string;
  /** The node's own state after applying LSNs 1…lsn (the node's apply path, durable). */
  async function nodeState(lsn: number): Promise<Record<string, string>> {
    const dir = join(work, 'node-state', String(lsn), 'state');
    for (let l = 1; l <= lsn; l++) {
      if (STAMPS[l - 1] === 0) continue;
      await applyEntry(entryAt(l), { stateDir: dir, entryDir: entryDir(wal, l), lsn: l });
    }
    return treeDigest(dir);
  }

  /** Uploads LSNs first…last of the WAL as one segment, as the archiver does. */
  async function upload(store: ObjectStore, p: string, first: number, last: number, withMax: boolean) {
    const entries: SegmentEntry[] = [];
    for (let l = first; l <= last; l++) {
      const dir = entryDir(wal, l);
      entries.push({ lsn: l, name: basename(dir), dir, files: (await readdir(dir)).sort() });
    }
    const seg = await spoolSegment(entries, join(work, 'spool'));
    const stamps = STAMPS.slice(first - 1, last).filter((x) => x > 0);
    const max = stamps.length ? new Date(T0 + Math.max(...stamps)).toISOString() : undefined;
    const at = (l: number) => new Date(T0 + (STAMPS[l - 1] || STAMPS[l - 2]!)).toISOString();
    const key = segmentKey(p, first, last);
    await store.create(key, await readFile(seg.path), {
      metadata: {
        sha256: seg.sha256,
        'first-lsn': String(first),
        'last-lsn': String(last),
        partition: p,
        ...(withMax && max ? { 'max-committed-at': max } : {}),
      },
    });
    return {
      key,
      first_lsn: first,
      last_lsn: last,
      entries: last - first + 1,
      bytes: seg.bytes,
      raw_bytes: seg.rawBytes,
      sha256: seg.sha256,
      first_committed_at: at(first),
      last_committed_at: at(last),
      ...(withMax && max ? { max_committed_at: max } : {}),
      archived_at: new Date(T0 + 1000).toISOString(),
      term: 1,
      node: 1,
    };
  }

  /** Archives all N entries of partition p as segments ending at `ends` (and N). */
  async function archivePartition(p: string, ends: number[], o: { manifest: boolean; withMax: boolean }) {
    const store = bucket!.store;
    const records = [];
    let first = 1;
    for (const last of [...ends, N]) {
      records.push(await upload(store, p, first, last, o.withMax));
      first = last + 1;
    }
    if (o.manifest) await updatePartitionManifest(store, p, { node: 1, term: 1 }, { segments: records });
  }

  async function restoreTo(p: string, time: number, dir: string): Promise<CliResult> {
    return restoreOne(bucket!.url, p, ['--to-time', new Date(T0 + time).toISOString()], dir);
  }

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'restore-stamps-'));
    bucket = await createTestBucket({ objectLock: false, prefix: 'archive' });
    wal = join(work, 'wal-source', 'partitions', '1');
    for (let l = 1; l <= N; l++) {
      const manifest = entryAt(l);
      const stamp = STAMPS[l - 1]!;
      const contentSha256 = contentDigest({ manifest: encodeLogEntry(manifest), files: [] });
      await writeEntry(wal, l, {
        manifest,
        raft: {
          term: 1,
          index: l,
          type: 0,
          ...(stamp ? { data: encodeEntryInfo({ contentSha256, committedAt: T0 + stamp, files: 0 }) } : {}),
        },
      });
    }
    // The same entries in several segmentations: manifest records written before
    // the greatest time was recorded (1), with it (2), and objects alone (3).
    await archivePartition('1', [5], { manifest: true, withMax: false });
    await archivePartition('2', [4, 8], { manifest: true, withMax: true });
    await archivePartition('3', [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], { manifest: false, withMax: true });
  });

  it('restores every segmentation to the same LSN, never one stamped after the time, with archiver/position', async () => {
    // At T0+65 ms: LSN 4 (80 ms) is after the time, so LSNs 5-7 (40-60 ms) are not
    // applied either. At T0+85 ms: up to LSN 8, and LSN 9 (no stamp) goes with them.
    for (const [time, want] of [
      [65, 3],
      [85, 9],
    ] as const) {
      const expected = await nodeState(want);
      for (const p of ['1', '2', '3']) {
        const dir = join(work, `time-${time}`, p);
        const r = await restoreTo(p, time, dir);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout, `partition ${p} at T0+${time} ms`).toContain(`to LSN ${want} `);
        expect(await readFile(join(dir, 'applied_lsn'), 'utf8')).toBe(`${want}\n`);
        expect(await readFile(join(dir, 'archiver', 'position'), 'utf8')).toBe(`${want}\n`);
        // The node's own state, hard link included: the linked name keeps LSN 1's ref.
        expect(await treeDigest(join(dir, 'state'))).toEqual(expected);
        expect(
          await readFile(join(dir, 'state', 'repositories', 'r.git', 'refs', 'heads', 'keep'), 'utf8'),
        ).toBe(`${oid(1)}\n`);
      }
    }
  });

  it('a time just after the oldest backup retention kept restores from that backup', async () => {
    const p = '4';
    await archivePartition(p, [4, 8], { manifest: true, withMax: true });
    for (const [lsn, taken] of [
      [4, 45],
      [8, 88],
    ] as const) {
      const stateDir = join(work, 'backup', String(lsn));
      for (let l = 1; l <= lsn; l++)
        if (STAMPS[l - 1] !== 0)
          await applyEntry(entryAt(l), { stateDir, entryDir: entryDir(wal, l), lsn: l });
      await storeBaseBackup(bucket!.store, p, lsn, stateDir, { node: 1, term: 1 }, new Date(T0 + taken));
    }
    const ret = await cli(retentionCommand, [
      '--object-store',
      bucket!.url,
      '--partition',
      p,
      '--keep-count',
      '1',
    ]);
    expect(ret.code, ret.stderr).toBe(0);
    const m = (await readPartitionManifest(bucket!.store, p))!.value;
    expect(m.backups.map((b) => b.lsn)).toEqual([8]);
    expect(m.segments.map((s) => s.first_lsn)).toEqual([9]);
    // T0+89 ms: after the kept backup (88 ms); LSN 9 has no stamp, LSN 10 is at 90 ms.
    const dir = join(work, 'after-retention');
    const r = await restoreTo(p, 89, dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`to LSN 9 `);
    expect(await readFile(join(dir, 'archiver', 'position'), 'utf8')).toBe(`9\n`);
    expect(await treeDigest(join(dir, 'state'))).toEqual(await nodeState(9));
  });

  it('restore --all restores a partition the global manifest never listed, and says where each came from', async () => {
    const listed = { ...emptyGlobalManifest(new Date(T0)), version: 1 };
    for (const p of ['1', '2']) {
      listed.partitions[p] = entryFromPartitionManifest(
        (await readPartitionManifest(bucket!.store, p))!.value,
      );
    }
    await bucket!.store.create(GLOBAL_MANIFEST_KEY, Buffer.from(JSON.stringify(listed)), {
      contentType: 'application/json',
    });
    const dir = join(work, 'all');
    const r = await cli(restoreCommand, [
      '--object-store',
      bucket!.url,
      '--all',
      '--latest',
      '--nodes',
      '2',
      '--target',
      dir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/global manifest is (missing|damaged)/);
    // The partition the global manifest never listed is restored too.
    expect(r.stdout).toMatch(/^partition 3: LSN 12 /m);
    expect(r.stdout).toMatch(/partition 1: LSN 12 .*\(listed in the global manifest and objects\)/);
    expect(r.stdout).toMatch(/partition 3: LSN 12 .*\(listed in the objects only\)/);
    expect(r.stdout).toMatch(/partition 4: LSN 12 .*\(listed in the objects only\)/);
    expect(r.stderr).toContain('restore: partition 3: found in the objects only');
    for (const n of [1, 2]) {
      for (const p of ['1', '2', '3', '4']) {
        const at = join(dir, `node-${n}`, 'partitions', p);
        expect(await readFile(join(at, 'applied_lsn'), 'utf8')).toBe('12\n');
        expect(await readFile(join(at, 'archiver', 'position'), 'utf8')).toBe('12\n');
      }
    }
  });
});
