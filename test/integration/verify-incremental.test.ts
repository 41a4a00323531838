import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ObjectStore } from '../../src/store/object-store.js';
import { openObjectStore } from '../../src/store/open.js';
import { SegmentArchive } from '../helpers/verify-archive.js';
import { createTestBucket, type TestBucket } from './object-store.s3-helpers.js';

/**
 * `wal-archiver verify --incremental`, run twice in a row as `npx wal-archiver`
 * runs it (the built bin/wal-archiver.js, `npm test` builds first), on the
 * folder store and on MinIO: the second run downloads far fewer objects, as
 * its summary line says, and new segments are checked by the next run.
 */

const BIN = fileURLToPath(new URL('../../bin/wal-archiver.js', import.meta.url));
const run = promisify(execFile);

async function verify(url: string, ...args: string[]): Promise<{ code: number; out: string[] }> {
  try {
    const { stdout } = await run(
      process.execPath,
      ['--no-warnings', BIN, 'verify', '--object-store', url, ...args],
      {
        env: { ...process.env, WAL_ARCHIVER_LOG_LEVEL: 'error' },
      },
    );
    return { code: 0, out: stdout.split('\n').filter(Boolean) };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, out: `${e.stdout}${e.stderr}`.split('\n').filter(Boolean) };
  }
}

/** The counts of the summary line `verify: N partitions, F faults, W warnings, O objects checked`. */
function summary(out: string[]): { partitions: number; faults: number; checked: number } {
  const m = /^verify: (\d+) partitions, (\d+) faults, (\d+) warnings, (\d+) objects checked$/.exec(
    out.at(-1) ?? '',
  );
  if (!m) throw new Error(`no summary line in:\n${out.join('\n')}`);
  return { partitions: Number(m[1]), faults: Number(m[2]), checked: Number(m[4]) };
}

const backends: Array<{
  name: string;
  open: () => Promise<{ url: string; store: ObjectStore; close(): Promise<void> }>;
}> = [
  {
    name: 'folder store',
    open: async () => {
      const dir = await mkdtemp(join(tmpdir(), 'verify-incr-folder-'));
      const url = `file://${dir}`;
      const store = await openObjectStore(url);
      return {
        url,
        store,
        close: async () => {
          await store.close();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  },
  {
    name: 'MinIO',
    open: async () => {
      const bucket: TestBucket = await createTestBucket({ objectLock: false, prefix: 'archive' });
      return { url: bucket.url, store: bucket.store, close: () => bucket.cleanup() };
    },
  },
];

describe.each(backends)('verify --incremental twice in a row ($name)', ({ open }) => {
  let work: string;
  let target: Awaited<ReturnType<typeof open>>;
  const archives: SegmentArchive[] = [];

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'verify-incr-'));
    target = await open();
    for (const p of ['1', '2']) {
      const a = new SegmentArchive(target.store, work, p);
      await a.append(15);
      archives.push(a);
    }
  });
  afterAll(async () => {
    await target?.close();
    await rm(work, { recursive: true, force: true });
  });

  it('checks far fewer objects the second time, and what was archived in between', async () => {
    const first = await verify(target.url, '--incremental', '--seed', '5');
    expect(first.code, first.out.join('\n')).toBe(0);
    expect(summary(first.out)).toEqual({ partitions: 2, faults: 0, checked: 30 });

    const second = await verify(target.url, '--incremental', '--seed', '5');
    expect(second.code, second.out.join('\n')).toBe(0);
    expect(summary(second.out)).toEqual({ partitions: 2, faults: 0, checked: 8 });
    expect(
      second.out.filter((l) => /^OK {4}partition [12]: .*\(0 new and 4 sampled of 15 objects\)/.test(l)),
    ).toHaveLength(2);

    await archives[0]!.append(3);
    const third = await verify(target.url, '--incremental', '--seed', '5', '--sample', '0');
    expect(summary(third.out)).toEqual({ partitions: 2, faults: 0, checked: 3 });

    const full = await verify(target.url);
    expect(summary(full.out)).toEqual({ partitions: 2, faults: 0, checked: 33 });
  });
});
