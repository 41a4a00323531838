import { execSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { backupCommand, retentionCommand } from '../../src/cli/backup.js';
import { setDurableObserver } from '../../contract/fs/durable-fs.js';
import { isWalArchiverError } from '../../contract/errors.js';
import { readAll } from '../../src/manifest/cas.js';
import { baseBackupPrefix, segmentPrefix } from '../../src/manifest/keys.js';
import { readPartitionManifest, type PartitionManifest } from '../../src/manifest/partition-manifest.js';
import { archiveFromManifest, coverRange } from '../../src/restore/plan.js';
import { takeBaseBackup, type BaseBackupResult } from '../../src/backup/take.js';
import { verifyBaseBackup } from '../../src/backup/verify.js';
import { applyRetention, listPartitionObjects, planRetention } from '../../src/backup/retention.js';
import { decide, policyStateFromManifest } from '../../src/policy/index.js';
import { parseWalBackupEvent } from '../../contract/events/schemas.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { openObjectStore } from '../../src/store/open.js';
import { startLocalCluster, type StartedCluster } from '../../storage-node/cluster.js';
import { leaderOf, statusOf, treeDigest, waitFor, writeMany } from '../helpers/node-cluster.js';
import { captureContext, lines } from '../helpers/cli-context.js';
import { SidecarProcess } from '../helpers/sidecars.js';
import { createTestBucket } from './object-store.s3-helpers.js';
import { HttpStorageNode } from '../../src/node/http-node.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

const P = '1';

interface Setup {
  cluster: StartedCluster;
  store: ObjectStore;
  storeUrl: string;
  work: string;
  spoolDir: string;
  leader(): Promise<{ id: number; url: string; term: number; stateDir: string }>;
  /** Writes `n` entries and waits until the sidecar archived them all. */
  writeAndArchive(n: number, label: string): Promise<PartitionManifest>;
  backup(
    trigger: 'first' | 'size' | 'age' | 'manual',
    retention?: { mode: 'GOVERNANCE'; days: number },
  ): Promise<BaseBackupResult>;
}

async function setup(o: { backend: 'folder' | 's3'; objectLock?: boolean; port: number }): Promise<Setup> {
  const work = await mkdtemp(join(tmpdir(), 'base-backup-'));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  let storeUrl: string;
  let store: ObjectStore;
  if (o.backend === 'folder') {
    storeUrl = `file://${join(work, 'archive')}`;
    store = await openObjectStore(storeUrl);
  } else {
    const bucket = await createTestBucket({ objectLock: o.objectLock ?? false, prefix: 'bb' });
    cleanups.push(() => bucket.cleanup());
    storeUrl = bucket.url;
    store = bucket.store;
  }
  const cluster = await startLocalCluster({
    nodes: 3,
    partitions: 1,
    dataDir: join(work, 'nodes'),
    basePort: o.port,
  });
  cleanups.push(() => cluster.stop());
  for (const [i, url] of cluster.urls.entries()) {
    const sidecar = new SidecarProcess({
      dataDir: cluster.nodes[i]!.dataDir,
      nodeUrl: url,
      objectStore: storeUrl,
      metricsPort: o.port + 50 + i,
      extraArgs: ['--segment-age', '100ms', '--segment-entries', '7', '--backups=false'],
    });
    await sidecar.start();
    cleanups.push(() => sidecar.stop());
  }
  const spoolDir = join(work, 'spool');
  const s: Setup = {
    cluster,
    store,
    storeUrl,
    work,
    spoolDir,
    async leader() {
      const id = await leaderOf(cluster.urls, P);
      const url = cluster.urls[id - 1]!;
      const status = await statusOf(url, P);
      return {
        id,
        url,
        term: status.term,
        stateDir: join(cluster.nodes[id - 1]!.dataDir, 'partitions', P, 'state'),
      };
    },
    async writeAndArchive(n, label) {
      await writeMany(cluster.urls, [P], n, 4, label);
      const { url } = await s.leader();
      const committed = (await statusOf(url, P)).committed;
      return waitFor(
        `partition ${P} archived to ${committed}`,
        async () => {
          const m = (await readPartitionManifest(store, P))?.value;
          return m && (m.archived?.last_lsn ?? 0) >= committed ? m : undefined;
        },
        120_000,
      );
    },
    async backup(trigger, retention) {
      const l = await s.leader();
      return takeBaseBackup({
        store,
        storageNode: new HttpStorageNode(l.url),
        partition: P,
        node: l.id,
        term: l.term,
        trigger,
        spoolDir,
        ...(retention ? { retention } : {}),
      });
    },
  };
  return s;
}

async function objectKeys(store: ObjectStore): Promise<string[]> {
  return (await listPartitionObjects(store, P)).sort();
}

/** `zstd -d | tar -x` with the standard tools, into a fresh folder. */
async function extractWithTools(store: ObjectStore, key: string, work: string): Promise<string> {
  const file = join(work, `${createHash('sha1').update(key).digest('hex')}.tar.zst`);
  await writeFile(file, await readAll(await store.get(key)));
  const dir = join(work, `x-${Date.now()}`);
  await mkdir(dir);
  execSync(`zstd -q -d -c '${file}' | tar -xpf - -C '${dir}'`);
  return dir;
}

describe.each([
  ['folder', 7600],
  ['s3', 7610],
] as const)('base backups on the %s store', (backend, port) => {
  it('takes a backup the standard tools open, equal to the node state, and listed in the manifest; retention then deletes exactly what no kept backup needs', async () => {
    const s = await setup({ backend, port });
    let m = await s.writeAndArchive(20, 'a');
    // The policy asks for the first backup of a partition with archived WAL.
    expect(
      decide(
        policyStateFromManifest(m, { leading: true, backupRunning: false, manualRequested: false }),
        Date.now(),
        { maxBytes: 1e9, maxEntries: 1e9, maxAge: 1e9 },
      ),
    ).toEqual({ action: 'backup', reason: 'first' });

    const first = await s.backup('first');
    const leader = await s.leader();
    // No writes since: the node's state is the backup's state.
    expect((await statusOf(leader.url, P)).applied).toBe(first.record.lsn);
    const dir = await extractWithTools(s.store, first.record.key, s.work);
    expect(await treeDigest(join(dir, 'fs'))).toEqual(
      await treeDigest(join(leader.stateDir, 'repositories')),
    );
    expect(await readFile(join(dir, 'kv-state'))).toEqual(await readFile(join(leader.stateDir, 'kv-state')));

    const info = (await s.store.head(first.record.key))!;
    const bytes = await readAll(await s.store.get(first.record.key));
    expect(info.metadata).toMatchObject({
      sha256: createHash('sha256').update(bytes).digest('hex'),
      'first-lsn': String(first.record.lsn),
      'last-lsn': String(first.record.lsn),
      partition: P,
    });
    expect(first.record).toMatchObject({
      sha256: info.metadata.sha256,
      bytes: bytes.length,
      trigger: 'first',
      node: leader.id,
      term: leader.term,
    });
    // The node bounds the commit times of the entries up to the backup's LSN: the archive's greatest one.
    const archivedMax = m.segments
      .filter((seg) => seg.first_lsn <= first.record.lsn)
      .map((seg) => Date.parse(seg.max_committed_at ?? seg.last_committed_at))
      .reduce((x, y) => Math.max(x, y), 0);
    expect(first.record.max_committed_at).toBe(new Date(archivedMax).toISOString());
    expect(info.metadata['max-committed-at']).toBe(first.record.max_committed_at);
    expect(parseWalBackupEvent(first.event)).toEqual(first.event);
    expect(first.event).toMatchObject({
      partition: P,
      lsn: first.record.lsn,
      key: first.record.key,
      sha256: first.record.sha256,
    });
    m = (await readPartitionManifest(s.store, P))!.value;
    expect(m.backups).toEqual([first.record]);
    expect(
      await verifyBaseBackup(s.store, first.record.key, { expected: first.record, deep: true }),
    ).toMatchObject({ ok: true, problems: [] });
    expect(await readdir(s.spoolDir)).toEqual([]);

    // Taking the same LSN again records the existing object, changes nothing.
    const again = await s.backup('manual');
    expect(again.reused).toBe(true);
    expect(again.record).toEqual(first.record);

    await s.writeAndArchive(20, 'b');
    const second = await s.backup('size');
    m = await s.writeAndArchive(20, 'c');
    const third = await s.backup('age');
    expect(second.record.lsn).toBeGreaterThan(first.record.lsn);
    expect(third.record.lsn).toBeGreaterThan(second.record.lsn);

    m = (await readPartitionManifest(s.store, P))!.value;
    const before = await objectKeys(s.store);
    const plan = planRetention(m, { keepCount: 2 }, new Date());
    expect(plan.deleteBackups).toEqual([first.record.key]);
    const needed = m.segments
      .filter((x) => x.last_lsn > second.record.lsn || x.last_lsn >= m.archived!.last_lsn)
      .map((x) => x.key);
    const expectedGone = [
      first.record.key,
      ...m.segments.map((x) => x.key).filter((k) => !needed.includes(k)),
    ].sort();
    expect(expectedGone.length).toBeGreaterThan(1);

    const dry = await applyRetention(s.store, P, undefined, plan, { dryRun: true });
    expect([...dry.deleted].sort()).toEqual(expectedGone);
    expect(await objectKeys(s.store)).toEqual(before);

    const result = await applyRetention(s.store, P, undefined, plan);
    expect([...result.deleted].sort()).toEqual(expectedGone);
    expect(result.locked).toEqual([]);
    const after = await objectKeys(s.store);
    expect(after).toEqual(before.filter((k) => !expectedGone.includes(k)));
    const kept = (await readPartitionManifest(s.store, P))!.value;
    expect(kept.backups.map((b) => b.key)).toEqual([second.record.key, third.record.key]);
    // Every point from the oldest kept backup on still restores: its backup plus the WAL after it.
    expect(() =>
      coverRange(archiveFromManifest(kept), second.record.lsn + 1, kept.archived!.last_lsn, 'the test'),
    ).not.toThrow();
    // The latest point needs only the latest backup and the WAL after it.
    const tail =
      third.record.lsn < kept.archived!.last_lsn
        ? coverRange(archiveFromManifest(kept), third.record.lsn + 1, kept.archived!.last_lsn, 'the test')
        : [];
    expect(tail.every((x) => x.lastLsn > third.record.lsn)).toBe(true);

    // Twice is harmless.
    const twice = await applyRetention(
      s.store,
      P,
      undefined,
      planRetention(kept, { keepCount: 2 }, new Date(), { objects: after }),
    );
    expect(twice).toMatchObject({ deleted: [], unlisted: [], locked: [], failed: [] });
  });

  it('a snapshot stream cut off mid-way, or a store failing mid-upload, leaves no object', async () => {
    const s = await setup({ backend, port: port + 20 });
    await s.writeAndArchive(30, 'cut');
    const l = await s.leader();
    const backup = (more: Partial<Parameters<typeof takeBaseBackup>[0]> = {}) =>
      takeBaseBackup({
        store: s.store,
        storageNode: new HttpStorageNode(l.url),
        partition: P,
        node: l.id,
        term: l.term,
        trigger: 'size',
        spoolDir: s.spoolDir,
        ...more,
      });
    for (const mode of ['reset', 'clean-end'] as const) {
      const proxy = await cuttingProxy(l.url, mode);
      cleanups.push(() => proxy.close());
      const err = await backup({ storageNode: new HttpStorageNode(proxy.url) }).catch((e: unknown) => e);
      expect(isWalArchiverError(err, 'UNAVAILABLE'), `${mode}: ${String(err)}`).toBe(true);
      expect(
        await objectKeys(s.store).then((k) => k.filter((x) => x.startsWith(baseBackupPrefix(P)))),
      ).toEqual([]);
      expect(await readdir(s.spoolDir).catch(() => [])).toEqual([]);
    }
    const failing: ObjectStore = Object.create(s.store) as ObjectStore;
    failing.create = async (key, body) => {
      // Reads a little, then the store "fails".
      if (typeof (body as NodeJS.ReadableStream).read === 'function') (body as NodeJS.ReadableStream).read();
      throw Object.assign(new Error('store went away'), { key });
    };
    await expect(backup({ store: failing })).rejects.toThrow(/store went away/);
    const abort = new AbortController();
    abort.abort();
    await expect(backup({ signal: abort.signal })).rejects.toBeTruthy();
    expect((await objectKeys(s.store)).filter((x) => x.startsWith(baseBackupPrefix(P)))).toEqual([]);
    expect(await readdir(s.spoolDir).catch(() => [])).toEqual([]);
    expect((await readPartitionManifest(s.store, P))!.value.backups).toEqual([]);
    // A full spool disk is the spool's failure, named with its path, retryable; never the node's.
    setDurableObserver({
      before(e) {
        if (e.path.startsWith(s.spoolDir) && (e.op === 'create' || e.op === 'write' || e.op === 'mkdir'))
          throw Object.assign(new Error(`ENOSPC: no space left on device, open '${e.path}'`), {
            code: 'ENOSPC',
          });
      },
    });
    const full = await backup()
      .catch((e: unknown) => e)
      .finally(() => setDurableObserver(undefined));
    expect(isWalArchiverError(full, 'UNAVAILABLE'), String(full)).toBe(true);
    expect((full as Error).message).toMatch(/cannot write the spool .*ENOSPC/);
    expect((full as Error).message).not.toMatch(/storage node/);
    expect((full as { retryable?: boolean }).retryable).toBe(true);
    expect((await objectKeys(s.store)).filter((x) => x.startsWith(baseBackupPrefix(P)))).toEqual([]);
    // A follower is refused with the leader named.
    const follower = s.cluster.urls.find((u) => u !== l.url)!;
    await expect(
      takeBaseBackup({
        store: s.store,
        storageNode: new HttpStorageNode(follower),
        partition: P,
        node: 9,
        term: l.term,
        trigger: 'manual',
        spoolDir: s.spoolDir,
      }),
    ).rejects.toThrow(new RegExp(`not the leader.*${l.url.replace(/[.]/g, '\\.')}`));

    // The commands: refused on a follower with the leader named, then one manual backup from the leader.
    const backupRun = captureContext();
    await expect(
      backupCommand.run(
        ['--object-store', s.storeUrl, '--node-url', follower, '--partition', P],
        backupRun.ctx,
      ),
    ).rejects.toMatchObject({ code: 'NOT_LEADER', message: expect.stringContaining(l.url) });
    expect(
      await backupCommand.run(
        ['--object-store', s.storeUrl, '--node-url', l.url, '--partition', P],
        backupRun.ctx,
      ),
    ).toBe(0);
    // The backup's record is the last line it prints.
    const taken = JSON.parse(lines(backupRun.stdout()).at(-1)!) as { trigger: string; key: string };
    expect(taken.trigger).toBe('manual');
    expect((await readPartitionManifest(s.store, P))!.value.backups.map((b) => b.key)).toEqual([taken.key]);
    const dryRun = captureContext();
    expect(
      await retentionCommand.run(
        ['--object-store', s.storeUrl, '--all', '--keep-count', '1', '--dry-run'],
        dryRun.ctx,
      ),
    ).toBe(0);
    expect(dryRun.stdout() + dryRun.stderr()).toMatch(
      new RegExp(`partition ${P}: would delete \\d+ objects`),
    );
    expect((await readPartitionManifest(s.store, P))!.value.segments.length).toBeGreaterThan(0);
  });
});

describe('base backups under object lock (MinIO)', () => {
  it('every backup object is locked, manifests still update, and retention deletes nothing locked and reports it', async () => {
    const s = await setup({ backend: 's3', objectLock: true, port: 7640 });
    await s.writeAndArchive(15, 'l1');
    const first = await s.backup('first', { mode: 'GOVERNANCE', days: 1 });
    await s.writeAndArchive(15, 'l2');
    const second = await s.backup('size', { mode: 'GOVERNANCE', days: 1 });
    const info = (await s.store.head(first.record.key))!;
    expect(info.retention?.mode).toBe('GOVERNANCE');
    expect(info.retention!.retainUntil.getTime()).toBeGreaterThan(Date.now() + 23 * 3_600_000);
    // The store itself refuses to delete it.
    await expect(s.store.delete(first.record.key)).rejects.toMatchObject({ code: 'OBJECT_LOCKED' });

    const m = (await readPartitionManifest(s.store, P))!.value;
    const plan = planRetention(m, { keepCount: 1 }, new Date());
    expect(plan.deleteBackups).toEqual([first.record.key]);
    const result = await applyRetention(s.store, P, undefined, plan);
    expect(result.locked.map((x) => x.key)).toEqual([first.record.key]);
    expect(result.deleted).not.toContain(first.record.key);
    // Segments carry no lock here: those below the window went.
    expect([...result.deleted].sort()).toEqual([...plan.deleteSegments].sort());
    expect(await s.store.head(first.record.key)).toBeDefined();
    const after = (await readPartitionManifest(s.store, P))!.value;
    expect(after.backups.map((b) => b.key)).toEqual([first.record.key, second.record.key]);
    const keys = await objectKeys(s.store);
    for (const k of result.deleted) expect(keys).not.toContain(k);
    expect(keys.filter((k) => k.startsWith(segmentPrefix(P))).sort()).toEqual(
      after.segments.map((x) => x.key).sort(),
    );
  });
});

/** An HTTP proxy to a node that cuts the snapshot response after a third of its bytes. */
async function cuttingProxy(
  target: string,
  mode: 'reset' | 'clean-end',
): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    void (async () => {
      const upstream = await fetch(`${target}${req.url}`);
      const body = Buffer.from(await upstream.arrayBuffer());
      const headers: Record<string, string> = {};
      upstream.headers.forEach((v, k) => {
        if (k.startsWith('x-') || k === 'content-type') headers[k] = v;
      });
      const cut = req.url?.endsWith('/snapshot') ? body.subarray(0, Math.floor(body.length / 3)) : body;
      if (mode === 'clean-end') {
        res.writeHead(upstream.status, { ...headers, 'content-length': String(cut.length) });
        res.end(cut);
      } else {
        res.writeHead(upstream.status, headers);
        res.write(cut, () => setTimeout(() => res.socket?.destroy(), 20));
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${address.port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
