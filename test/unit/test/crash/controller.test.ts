import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import * as dfs from '../../../../contract/fs/durable-fs.js';
import { atomicWriteFile, fsyncDir, writeNewFileSynced } from '../../../../contract/fs/fs-atomic.js';
import { CrashController, SimulatedCrash } from '../../../crash/controller.js';

const roots: string[] = [];
async function freshRoot(): Promise<string> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'crash-ctl-'));
  roots.push(root);
  return root;
}

afterEach(async () => {
  for (const r of roots.splice(0)) await rm(r, { recursive: true, force: true });
});

async function countOps(run: (root: string) => Promise<void>, setup: (root: string) => Promise<void>) {
  const root = await freshRoot();
  await setup(root);
  const c = new CrashController({ root });
  c.install();
  try {
    await run(root);
  } finally {
    c.uninstall();
  }
  return c;
}

describe('CrashController', () => {
  const setup = async (root: string) => {
    await writeFile(path.join(root, 'f'), 'old');
  };
  const run = async (root: string) => atomicWriteFile(path.join(root, 'f'), 'new');

  it('counts the durable ops under root and lets ops elsewhere pass', async () => {
    const c = await countOps(run, setup);
    // create tmp, write, fsync, rename, fsyncDir
    expect(c.events.map((e) => e.op)).toEqual(['create', 'write', 'fsync', 'rename', 'fsyncDir']);
    expect(c.count).toBe(5);
    expect(c.crashed).toBe(false);
  });

  it('atomicWriteFile crashed at every op, with and without power cut, leaves old or new content', async () => {
    const n = (await countOps(run, setup)).count;
    for (const powerCut of [false, true]) {
      const seen = new Set<string>();
      for (let k = 1; k <= n; k++) {
        const root = await freshRoot();
        await setup(root);
        const c = new CrashController({ root, crashAt: k });
        c.install();
        let thrown: unknown;
        try {
          await run(root);
        } catch (err) {
          thrown = err;
        } finally {
          c.uninstall();
        }
        expect(c.crashed).toBe(true);
        expect(String(thrown)).toMatch(/simulated crash|crashed/);
        if (powerCut) await c.powerCut();
        const content = await readFile(path.join(root, 'f'), 'utf8');
        expect(['old', 'new']).toContain(content);
        seen.add(content);
        // a power cut drops the never-durable temp file name
        if (powerCut) expect(await readdir(root)).toEqual(['f']);
      }
      // crashing before the rename keeps old; after it (without power cut) shows new
      expect(seen.has('old')).toBe(true);
      if (!powerCut) expect(seen.has('new')).toBe(true);
    }
  });

  it('refuses every op after the crash', async () => {
    const root = await freshRoot();
    const c = new CrashController({ root, crashAt: 1 });
    c.install();
    try {
      await expect(dfs.writeFile(path.join(root, 'a'), 'x')).rejects.toBeInstanceOf(SimulatedCrash);
      await expect(dfs.mkdir(path.join(root, 'd'))).rejects.toBeInstanceOf(SimulatedCrash);
    } finally {
      c.uninstall();
    }
    expect(await readdir(root)).toEqual([]);
    expect(c.count).toBe(0);
  });

  it('a power cut loses a write that was not fsynced, and keeps one that was', async () => {
    const root = await freshRoot();
    await writeFile(path.join(root, 'existing'), 'start');
    const c = new CrashController({ root });
    c.install();
    try {
      await dfs.writeFile(path.join(root, 'existing'), 'changed, not synced');
      await dfs.writeFile(path.join(root, 'new-unsynced'), 'data');
      await writeNewFileSynced(path.join(root, 'new-synced'), Buffer.from('kept'));
      await fsyncDir(root);
      await writeNewFileSynced(path.join(root, 'name-not-durable'), Buffer.from('x'));
    } finally {
      c.uninstall();
    }
    await c.powerCut();
    expect((await readdir(root)).sort()).toEqual(['existing', 'new-synced', 'new-unsynced']);
    expect(await readFile(path.join(root, 'existing'), 'utf8')).toBe('start');
    expect(await readFile(path.join(root, 'new-unsynced'), 'utf8')).toBe('');
    expect(await readFile(path.join(root, 'new-synced'), 'utf8')).toBe('kept');
  });

  it('follows inodes across renames and hard links; a new directory comes back empty until fsynced', async () => {
    const root = await freshRoot();
    await dfs.mkdir(path.join(root, 'sub'));
    await writeFile(path.join(root, 'sub', 'a'), 'A');
    const c = new CrashController({ root });
    c.install();
    try {
      await dfs.rename(path.join(root, 'sub'), path.join(root, 'moved'));
      await dfs.link(path.join(root, 'moved', 'a'), path.join(root, 'b'));
      await dfs.mkdir(path.join(root, 'newdir'));
      await writeNewFileSynced(path.join(root, 'newdir', 'inside'), Buffer.from('I'));
      await fsyncDir(root);
    } finally {
      c.uninstall();
    }
    await c.powerCut();
    expect((await readdir(root)).sort()).toEqual(['b', 'moved', 'newdir']);
    expect(await readdir(path.join(root, 'moved'))).toEqual(['a']);
    expect(await readFile(path.join(root, 'b'), 'utf8')).toBe('A');
    expect((await stat(path.join(root, 'b'))).ino).toBe((await stat(path.join(root, 'moved', 'a'))).ino);
    expect(await readdir(path.join(root, 'newdir'))).toEqual([]);
  });

  it('syncfs makes everything durable', async () => {
    const root = await freshRoot();
    const c = new CrashController({ root });
    c.install();
    try {
      await dfs.mkdir(path.join(root, 'd'));
      await dfs.writeFile(path.join(root, 'd', 'x'), 'X');
      await dfs.syncfs(root, async () => true);
      await dfs.writeFile(path.join(root, 'd', 'y'), 'Y');
    } finally {
      c.uninstall();
    }
    await c.powerCut();
    expect(await readdir(path.join(root, 'd'))).toEqual(['x']);
    expect(await readFile(path.join(root, 'd', 'x'), 'utf8')).toBe('X');
  });
});
