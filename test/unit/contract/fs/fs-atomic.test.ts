import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { isWalArchiverError } from '../../../../contract/errors.js';
import {
  atomicWriteFile,
  ensureDir,
  fsyncDir,
  writeNewFileSynced,
} from '../../../../contract/fs/fs-atomic.js';

let root: string;

beforeEach(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'fs-atomic-'));
});

afterEach(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});

describe('atomicWriteFile', () => {
  it('creates and replaces a file, leaving no temporary files', async () => {
    const file = path.join(root, 'state');
    await atomicWriteFile(file, 'one');
    await atomicWriteFile(file, Buffer.from('two, longer'));
    expect(await fsp.readFile(file, 'utf8')).toBe('two, longer');
    expect(await fsp.readdir(root)).toEqual(['state']);
  });

  it('replaces by rename: a new inode, the old content intact until then', async () => {
    const file = path.join(root, 'state');
    await atomicWriteFile(file, 'old');
    const handle = await fsp.open(file, 'r');
    try {
      await atomicWriteFile(file, 'new content');
      // A reader that opened the old file still sees the old bytes, untruncated.
      expect((await handle.readFile()).toString()).toBe('old');
    } finally {
      await handle.close();
    }
    expect(await fsp.readFile(file, 'utf8')).toBe('new content');
  });

  it('concurrent readers never see a partial or empty file', async () => {
    const file = path.join(root, 'state');
    const a = Buffer.alloc(64 * 1024, 'a');
    const b = Buffer.alloc(3, 'b');
    await atomicWriteFile(file, a);
    let stop = false;
    const seen = new Set<string>();
    const reader = (async () => {
      while (!stop) {
        const got = await fsp.readFile(file);
        seen.add(got.equals(a) ? 'a' : got.equals(b) ? 'b' : `other:${got.length}`);
      }
    })();
    for (let i = 0; i < 60; i++) await atomicWriteFile(file, i % 2 === 0 ? b : a);
    stop = true;
    await reader;
    expect([...seen].filter((s) => s.startsWith('other'))).toEqual([]);
  });

  it('fails with NOT_FOUND when the folder does not exist, leaving nothing behind', async () => {
    let caught: unknown;
    try {
      await atomicWriteFile(path.join(root, 'missing', 'state'), 'x');
    } catch (err) {
      caught = err;
    }
    expect(isWalArchiverError(caught, 'NOT_FOUND')).toBe(true);
    expect(await fsp.readdir(root)).toEqual([]);
  });

  it('removes its temporary file when the rename fails', async () => {
    const target = path.join(root, 'dir-in-the-way');
    await fsp.mkdir(target);
    await fsp.writeFile(path.join(target, 'x'), 'x');
    await expect(atomicWriteFile(target, 'data')).rejects.toThrow(/rename into place/);
    expect(await fsp.readdir(root)).toEqual(['dir-in-the-way']);
  });
});

describe('writeNewFileSynced, ensureDir, fsyncDir', () => {
  it('writeNewFileSynced refuses to overwrite', async () => {
    const file = path.join(root, 'f');
    await writeNewFileSynced(file, Buffer.from('1'));
    let caught: unknown;
    try {
      await writeNewFileSynced(file, Buffer.from('2'));
    } catch (err) {
      caught = err;
    }
    expect(isWalArchiverError(caught, 'ALREADY_EXISTS')).toBe(true);
    expect(await fsp.readFile(file, 'utf8')).toBe('1');
  });

  it('ensureDir creates missing levels and reports whether it did', async () => {
    const deep = path.join(root, 'a', 'b', 'c');
    expect(await ensureDir(deep)).toBe(true);
    expect((await fsp.stat(deep)).isDirectory()).toBe(true);
    expect(await ensureDir(deep)).toBe(false);
    await fsp.writeFile(path.join(root, 'file'), '');
    await expect(ensureDir(path.join(root, 'file'))).rejects.toThrow(/file is not a directory/);
    await expect(ensureDir(path.join(root, 'file', 'x'))).rejects.toThrow(/not a directory/);
  });

  it('fsyncDir works on a folder and reports a missing one', async () => {
    await fsyncDir(root);
    let caught: unknown;
    try {
      await fsyncDir(path.join(root, 'nope'));
    } catch (err) {
      caught = err;
    }
    expect(isWalArchiverError(caught, 'NOT_FOUND')).toBe(true);
  });
});
