import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { setDurableObserver } from '../../contract/fs/durable-fs.js';
import { isWalArchiverError } from '../../contract/errors.js';
import { FolderStore } from '../../src/store/folder-store.js';
import type { FolderStoreOptions } from '../../src/store/folder-store.js';
import { expectCode, readAll } from './object-store.conformance.js';

const etagOf = (text: string) => createHash('sha256').update(text).digest('hex').slice(0, 32);

class CrashAt extends Error {}

describe('folder store: the compare-and-swap commit point is exclusive', () => {
  let parent: string;
  let root: string;
  let url: string;
  const stores: FolderStore[] = [];
  const open = async (options: FolderStoreOptions = {}) => {
    const s = await FolderStore.open(url, { lockTimeoutMs: 5_000, ...options });
    stores.push(s);
    return s;
  };

  beforeEach(async () => {
    parent = await mkdtemp(path.join(tmpdir(), 'wal-folder-cas-'));
    root = path.join(parent, 'archive');
    url = pathToFileURL(root).href;
  });
  afterEach(async () => {
    setDurableObserver(undefined);
    while (stores.length) await stores.pop()!.close();
    await rm(parent, { recursive: true, force: true });
  });

  it('a replace stalled past lockStaleMs loses to the replace that broke its lock: exactly one wins', async () => {
    const lockStaleMs = 200;
    let stalled!: () => void;
    const isStalled = new Promise<void>((resolve) => (stalled = resolve));
    let resume!: () => void;
    const resumed = new Promise<void>((resolve) => (resume = resolve));
    let first = true;
    const store = await open({
      lockStaleMs,
      beforeCommit: async () => {
        if (!first) return;
        first = false;
        stalled();
        await resumed;
      },
    });
    const v1 = await store.create('m.json', Buffer.from('v1'));
    const slow = store.replace('m.json', Buffer.from('slow'), { ifMatch: v1.etag }).then(
      (info) => ({ ok: true as const, info }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    await isStalled;
    // The slow replace holds the lock, its precondition checked; wait until its lock is stale by age.
    await new Promise((resolve) => setTimeout(resolve, lockStaleMs * 2));
    const other = await open({ lockStaleMs });
    const fast = await other.replace('m.json', Buffer.from('fast'), { ifMatch: v1.etag });
    resume();
    const late = await slow;
    expect(late.ok, 'the stalled replace must not win as well').toBe(false);
    if (!late.ok) expect(isWalArchiverError(late.err, 'PRECONDITION_FAILED')).toBe(true);
    for (const s of [store, other, await open()]) {
      expect((await s.head('m.json'))?.etag).toBe(fast.etag);
      expect((await readAll(await s.get('m.json'))).toString()).toBe('fast');
    }
    expect(await readFile(path.join(root, 'm.json'), 'utf8')).toBe('fast');
  });

  it('a replace stalled past lockStaleMs while the object is deleted does not bring it back', async () => {
    const lockStaleMs = 200;
    for (const replacedBefore of [false, true]) {
      await rm(root, { recursive: true, force: true });
      let stalled!: () => void;
      const isStalled = new Promise<void>((resolve) => (stalled = resolve));
      let resume!: () => void;
      const resumed = new Promise<void>((resolve) => (resume = resolve));
      const store = await open({
        lockStaleMs,
        beforeCommit: async () => {
          stalled();
          await resumed;
        },
      });
      let v = await store.create('m.json', Buffer.from('v1'));
      if (replacedBefore) v = await (await open()).replace('m.json', Buffer.from('v2'), { ifMatch: v.etag });
      const slow = store.replace('m.json', Buffer.from('slow'), { ifMatch: v.etag }).then(
        () => 'won',
        (err: unknown) => (isWalArchiverError(err, 'PRECONDITION_FAILED') ? 'lost' : String(err)),
      );
      await isStalled;
      await new Promise((resolve) => setTimeout(resolve, lockStaleMs * 2));
      await (await open({ lockStaleMs })).delete('m.json');
      resume();
      expect(await slow, `replaced before: ${replacedBefore}`).toBe('lost');
      expect(await (await open()).head('m.json'), `replaced before: ${replacedBefore}`).toBeUndefined();
    }
  });

  it('reads and replaces an archive in the layout written before versions (plain file + .meta/K.<inode>.json)', async () => {
    const key = 'partitions/1/manifest.json';
    const file = path.join(root, 'partitions/1/manifest.json');
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, 'old manifest');
    const ino = (await stat(file, { bigint: true })).ino;
    await mkdir(path.join(root, '.meta/partitions/1'), { recursive: true });
    const sha256 = createHash('sha256').update('old manifest').digest('hex');
    await writeFile(
      path.join(root, `.meta/partitions/1/manifest.json.${ino}.json`),
      JSON.stringify({
        version: 1,
        key,
        size: 12,
        sha256,
        etag: sha256.slice(0, 32),
        createdAt: '2026-01-01T00:00:00.000Z',
        metadata: { partition: '1' },
        contentType: 'application/json',
      }),
    );
    await mkdir(path.join(root, '.tmp'));
    const store = await open();
    const before = await store.head(key);
    expect(before?.etag).toBe(etagOf('old manifest'));
    expect(before?.metadata).toEqual({ partition: '1' });
    expect((await readAll(await store.get(key))).toString()).toBe('old manifest');

    await expectCode(
      store.replace(key, Buffer.from('x'), { ifMatch: etagOf('other') }),
      'PRECONDITION_FAILED',
    );
    const next = await store.replace(key, Buffer.from('new manifest'), { ifMatch: before!.etag });
    await expectCode(store.replace(key, Buffer.from('y'), { ifMatch: before!.etag }), 'PRECONDITION_FAILED');
    const third = await store.replace(key, Buffer.from('third'), { ifMatch: next.etag });

    const again = await open();
    expect((await again.head(key))?.etag).toBe(third.etag);
    expect((await readAll(await again.get(key))).toString()).toBe('third');
    expect(await readFile(file, 'utf8')).toBe('third');
    const keys: string[] = [];
    for await (const info of again.list('partitions/')) keys.push(`${info.key}=${info.etag}`);
    expect(keys).toEqual([`${key}=${third.etag}`]);
    // Superseded versions and their metadata are gone; the newest stays.
    expect((await readdir(path.join(root, '.meta/partitions/1'))).length).toBe(1);
    expect(await readdir(path.join(root, '.versions/partitions/1/manifest.json.v'))).toEqual(['2']);
    expect(await readdir(path.join(root, '.tmp'))).toEqual([]);
    await again.delete(key);
    expect(await again.head(key)).toBeUndefined();
    await again.create(key, Buffer.from('recreated'));
    expect((await readAll(await again.get(key))).toString()).toBe('recreated');
  });

  it('removes what crashed writers left in .tmp/ once it is a day old, and a leftover lock never blocks for good', async () => {
    const store = await open({ lockStaleMs: 300, lockTimeoutMs: 2_000 });
    const v1 = await store.create('m.json', Buffer.from('v1'));
    const tmp = path.join(root, '.tmp');
    await writeFile(path.join(tmp, 'old.data'), 'crashed stage');
    await mkdir(path.join(tmp, 'old.deleted'));
    await writeFile(path.join(tmp, 'old.deleted', '3'), 'x');
    await writeFile(path.join(tmp, 'fresh.data'), 'being written');
    const dayAgo = new Date(Date.now() - 25 * 3_600_000);
    for (const name of ['old.data', 'old.deleted']) await utimes(path.join(tmp, name), dayAgo, dayAgo);
    // A lock held by a process on another host that never came back.
    await mkdir(path.join(root, '.locks'), { recursive: true });
    await writeFile(
      path.join(root, '.locks', 'm.json.lock'),
      JSON.stringify({ pid: 1, host: 'elsewhere', nonce: 'gone', at: Date.now() }),
    );
    const next = await open({ lockStaleMs: 300, lockTimeoutMs: 2_000 });
    await next.replace('m.json', Buffer.from('v2'), { ifMatch: v1.etag });
    expect((await readdir(tmp)).sort()).toEqual(['fresh.data']);
    expect((await readAll(await next.get('m.json'))).toString()).toBe('v2');
  });

  /** Runs `work` on a store over the archive, crashing at its k-th durable operation (nothing after it reaches the disk). */
  async function crashAt(k: number, work: (s: FolderStore) => Promise<unknown>): Promise<number> {
    const s = await open();
    let n = 0;
    let crashed = false;
    setDurableObserver({
      before() {
        if (crashed) throw new CrashAt('after the crash');
        n++;
        if (n === k) {
          crashed = true;
          throw new CrashAt(`crash at op ${k}`);
        }
      },
    });
    try {
      await work(s);
    } catch (err) {
      if (!crashed) throw err;
    } finally {
      setDurableObserver(undefined);
    }
    return n;
  }

  it.each([
    ['replace', 'v1', 'v2'],
    ['replace of a replaced object', 'v1', 'v3'],
    ['create', undefined, 'v1'],
    ['delete', 'v1', undefined],
  ] as const)(
    '%s, crashed at every durable operation, reopens as the old or the new object, and later writes go on',
    async (label, oldText, newText) => {
      const setup = async () => {
        await rm(root, { recursive: true, force: true });
        const s = await open();
        if (oldText !== undefined) {
          const v = await s.create('m.json', Buffer.from('v1'));
          if (label === 'replace of a replaced object')
            await s.replace('m.json', Buffer.from('v2'), { ifMatch: v.etag });
        }
      };
      const oldBody = label === 'replace of a replaced object' ? 'v2' : oldText;
      const work = async (s: FolderStore) => {
        if (newText === undefined) return s.delete('m.json');
        if (oldBody === undefined) return s.create('m.json', Buffer.from(newText));
        return s.replace('m.json', Buffer.from(newText), { ifMatch: etagOf(oldBody) });
      };
      await setup();
      const total = await crashAt(Number.MAX_SAFE_INTEGER, work);
      expect(total).toBeGreaterThan(2);
      const seen = new Set<string>();
      for (let k = 1; k <= total; k++) {
        await setup();
        await crashAt(k, work);
        const s = await open();
        const head = await s.head('m.json');
        const text = head === undefined ? undefined : (await readAll(await s.get('m.json'))).toString();
        expect([oldBody, newText], `crash at op ${k} of ${label}`).toContain(text);
        if (head !== undefined) expect(head.etag, `crash at op ${k}`).toBe(etagOf(text!));
        seen.add(String(text));
        // Nothing left by the crash blocks the next write.
        if (head === undefined) await s.create('m.json', Buffer.from('after'));
        else await s.replace('m.json', Buffer.from('after'), { ifMatch: head.etag });
        const reread = await open();
        expect((await readAll(await reread.get('m.json'))).toString()).toBe('after');
        const keys: string[] = [];
        for await (const info of reread.list('')) keys.push(info.key);
        expect(keys).toEqual(['m.json']);
      }
      // Both outcomes occur: crashes before the commit point and after it.
      expect(seen.size).toBe(2);
    },
  );
});
