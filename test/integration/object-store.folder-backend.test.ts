import { spawnSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FolderStore } from '../../src/store/folder-store.js';
import { expectCode, readAll } from './object-store.conformance.js';

describe('folder store: on-disk layout and crash safety', () => {
  let parent: string;
  let root: string;
  let store: FolderStore;

  beforeEach(async () => {
    parent = await mkdtemp(path.join(tmpdir(), 'wal-folder-backend-'));
    root = path.join(parent, 'archive');
    store = await FolderStore.open(pathToFileURL(root).href, { lockTimeoutMs: 500 });
  });
  afterEach(async () => {
    await store.close();
    await rm(parent, { recursive: true, force: true });
  });

  it('stores each object as a plain file at <root>/<key>, read-only under retention', async () => {
    await store.create('partitions/1/wal/0000000000001-0000000000002.tar.zst', Buffer.from('segment'));
    await store.create('locked', Buffer.from('worm'), {
      retention: { mode: 'COMPLIANCE', retainUntil: new Date(Date.now() + 60_000) },
    });
    expect(
      await readFile(path.join(root, 'partitions/1/wal/0000000000001-0000000000002.tar.zst'), 'utf8'),
    ).toBe('segment');
    expect((await stat(path.join(root, 'locked'))).mode & 0o777).toBe(0o444);
    expect(await readdir(path.join(root, '.tmp'))).toEqual([]);
  });

  it('keeps metadata when the folder is copied (inode numbers change)', async () => {
    const a = await store.create('a/x', Buffer.from('one'), { metadata: { sha256: 'abc' } });
    const b = await store.create('a/y', Buffer.from('two'), { metadata: { sha256: 'def' } });
    const copy = path.join(parent, 'copy');
    await cp(root, copy, { recursive: true });
    const copied = await FolderStore.open(pathToFileURL(copy).href);
    expect((await copied.head('a/x'))?.metadata).toEqual({ sha256: 'abc' });
    expect((await copied.head('a/x'))?.etag).toBe(a.etag);
    expect((await copied.head('a/y'))?.etag).toBe(b.etag);
    // A leftover metadata file of the same size from a crashed create does not confuse it.
    await writeFile(
      path.join(copy, '.meta/a/x.999999999.json'),
      JSON.stringify({
        version: 1,
        key: 'a/x',
        size: 3,
        sha256: '0'.repeat(64),
        etag: 'f'.repeat(32),
        createdAt: new Date().toISOString(),
        metadata: { sha256: 'stale' },
      }),
    );
    expect((await copied.head('a/x'))?.metadata).toEqual({ sha256: 'abc' });
    const listed: string[] = [];
    for await (const info of copied.list('a/')) listed.push(`${info.key}=${info.etag}`);
    expect(listed).toEqual([`a/x=${a.etag}`, `a/y=${b.etag}`]);
  });

  it('ignores leftovers of crashed writes: temp files and metadata without data', async () => {
    await store.create('k', Buffer.from('v'));
    await writeFile(path.join(root, '.tmp', 'deadbeef.data'), 'half-written');
    await mkdir(path.join(root, '.meta', 'ghost'), { recursive: true });
    await writeFile(path.join(root, '.meta', 'ghost', 'obj.12345.json'), '{}');
    const keys: string[] = [];
    for await (const info of store.list('')) keys.push(info.key);
    expect(keys).toEqual(['k']);
    expect(await store.head('ghost/obj')).toBeUndefined();
    await store.create('ghost/obj', Buffer.from('real'));
    expect((await readAll(await store.get('ghost/obj'))).toString()).toBe('real');
  });

  it('a data file without metadata is reported as CORRUPT, not silently accepted', async () => {
    await mkdir(root, { recursive: true });
    await writeFile(path.join(root, 'stray'), 'dropped in by hand');
    const error = await expectCode(store.head('stray'), 'CORRUPT');
    expect(error.message).toContain('stray');
  });

  it('a key cannot be both an object and a folder of objects', async () => {
    await store.create('a/b', Buffer.from('x'));
    await expectCode(store.create('a', Buffer.from('y')), 'INVALID_ARGUMENT');
    await expectCode(store.create('a/b/c', Buffer.from('y')), 'INVALID_ARGUMENT');
  });

  it('breaks a lock left by a dead process, but waits for a live one', async () => {
    const created = await store.create('m.json', Buffer.from('v1'));
    const lockPath = path.join(root, '.locks', 'm.json.lock');
    await mkdir(path.dirname(lockPath), { recursive: true });

    const dead = spawnSync(process.execPath, ['-e', '0']).pid;
    await writeFile(lockPath, JSON.stringify({ pid: dead, host: hostname(), nonce: 'dead', at: Date.now() }));
    const replaced = await store.replace('m.json', Buffer.from('v2'), { ifMatch: created.etag });
    expect((await readAll(await store.get('m.json'))).toString()).toBe('v2');

    await writeFile(
      lockPath,
      JSON.stringify({ pid: process.ppid, host: hostname(), nonce: 'live', at: Date.now() }),
    );
    await expectCode(store.replace('m.json', Buffer.from('v3'), { ifMatch: replaced.etag }), 'UNAVAILABLE');
    await expectCode(store.delete('m.json'), 'UNAVAILABLE');
    expect((await readAll(await store.get('m.json'))).toString()).toBe('v2');
    // Nothing staged by the failed replace stays behind.
    expect(await readdir(path.join(root, '.tmp'))).toEqual([]);
    expect((await readdir(path.join(root, '.meta'))).filter((n) => n.startsWith('m.json.'))).toHaveLength(1);
  });
});
