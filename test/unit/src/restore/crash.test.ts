import { lstat, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { writeKvEntry } from '../../../helpers/test-entries.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setDurableObserver, type DurableEvent } from '../../../../contract/fs/durable-fs.js';
import { segmentKey } from '../../../../src/manifest/keys.js';
import { spoolSegment, type SegmentEntry } from '../../../../src/archive/segment-writer.js';
import { INCOMPLETE_MARKER, restorePartition } from '../../../../src/restore/restore.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { openObjectStore } from '../../../../src/store/open.js';

/**
 * Restore's build-and-publish crashed at every durable step: after the crash
 * no further durable step happens (the process is gone); the target is then
 * absent or complete, and a rerun (with --force) completes.
 */

const P = '5';
let root: string;
let store: ObjectStore;

class Crash extends Error {}

/** Every file below `dir` with its content, or undefined when `dir` does not exist. */
async function tree(dir: string): Promise<Record<string, string> | undefined> {
  if (!(await lstat(dir).catch(() => undefined))) return undefined;
  const out: Record<string, string> = {};
  const visit = async (d: string, rel: string) => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        out[`${r}/`] = '';
        await visit(join(d, e.name), r);
      } else out[r] = (await readFile(join(d, e.name))).toString('base64');
    }
  };
  await visit(dir, '');
  return out;
}

/** Runs `fn` with a crash at durable operation k (1-based); returns the operations counted. */
async function crashAt(
  k: number,
  fn: () => Promise<unknown>,
): Promise<{ ops: DurableEvent[]; crashed: boolean }> {
  const ops: DurableEvent[] = [];
  let dead = false;
  setDurableObserver({
    before(event) {
      if (dead) throw new Crash('after the crash');
      ops.push(event);
      if (ops.length === k) {
        dead = true;
        throw new Crash(`crash at ${event.op} ${event.path}`);
      }
    },
  });
  try {
    await fn();
  } catch (err) {
    if (!dead) throw err;
  } finally {
    setDurableObserver(undefined);
  }
  return { ops, crashed: dead };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'restore-crash-'));
  store = await openObjectStore(`file://${join(root, 'archive')}`);
  const wal = join(root, 'wal', 'partitions', P);
  const entries: SegmentEntry[] = [];
  for (let lsn = 1; lsn <= 4; lsn++) {
    entries.push(await writeKvEntry(wal, lsn, String(lsn).repeat(40)));
  }
  for (const [first, last] of [
    [1, 2],
    [3, 4],
  ] as const) {
    const seg = await spoolSegment(entries.slice(first - 1, last), join(root, 'spool'));
    await store.create(segmentKey(P, first, last), await readFile(seg.path), {
      metadata: { sha256: seg.sha256, 'first-lsn': String(first), 'last-lsn': String(last), partition: P },
    });
  }
});
afterAll(async () => {
  await store?.close();
  await rm(root, { recursive: true, force: true });
});

const restore = (targetDir: string, lsn: number, force = false) =>
  restorePartition({
    store,
    partition: P,
    target: { kind: 'lsn', lsn },
    targetDir,
    voters: [1, 2, 3],
    force,
  });

describe('restore crashed at every durable step', () => {
  it(
    'leaves no target or a complete one, and a rerun completes (new target, and one replaced with --force)',
    { timeout: 180_000 },
    async () => {
      const expected = new Map<number, Record<string, string>>();
      for (const lsn of [2, 4]) {
        const dir = join(root, 'reference', String(lsn));
        await restore(dir, lsn);
        expected.set(lsn, (await tree(dir))!);
        expect(expected.get(lsn)!['archiver/position']).toBe(Buffer.from(`${lsn}\n`).toString('base64'));
      }
      for (const replace of [false, true]) {
        const base = join(root, replace ? 'replace' : 'new');
        const counted = join(base, 'count', 'partitions', P);
        if (replace) await restore(counted, 2);
        const count = await crashAt(0, () => restore(counted, 4, replace));
        const total = count.ops.length;
        expect(total).toBeGreaterThan(10);
        // Replacing differs from a new target only once the build is complete:
        // crash it from the whole-tree sync of the publish on.
        const from = replace ? count.ops.findIndex((o) => o.op === 'syncfs') + 1 : 1;
        expect(from).toBeGreaterThan(0);
        let points = 0;
        for (let k = from; ; k++) {
          const dir = join(base, String(k), 'partitions', P);
          if (replace) await restore(dir, 2);
          const { crashed, ops } = await crashAt(k, () => restore(dir, 4, replace));
          if (!crashed) {
            expect(ops.length).toBeLessThanOrEqual(total);
            break;
          }
          points++;
          const what = `crash at operation ${k}: ${ops.at(-1)!.op} ${ops.at(-1)!.path}`;
          const after = await tree(dir);
          // No target, or a complete one: the old (when replacing) or the new.
          if (after !== undefined) {
            expect(after[INCOMPLETE_MARKER], what).toBeUndefined();
            expect([expected.get(4), ...(replace ? [expected.get(2)] : [])], what).toContainEqual(after);
          }
          // The rerun completes; nothing is left beside the target.
          await restore(dir, 4, true);
          expect(await tree(dir), what).toEqual(expected.get(4));
          expect((await readdir(join(base, String(k), 'partitions'))).sort(), what).toEqual([P]);
        }
        // Every durable step of the run was crashed once.
        expect(points).toBe(total - from + 1);
      }
    },
  );

  it('a build finished but not yet renamed into place (a crash between the two) is rebuilt by a rerun', async () => {
    const done = join(root, 'finished', 'a');
    await restore(done, 4);
    const reference = await tree(done);
    // What a crash after the marker went and before the rename leaves.
    const target = join(root, 'finished', 'b');
    await rename(done, `${target}.partial`);
    expect(await tree(`${target}.partial`)).toEqual(reference);
    await restore(target, 4);
    expect(await tree(target)).toEqual(reference);
    expect(await tree(`${target}.partial`)).toBeUndefined();
  });

  it("a leftover folder that is not a restore's own is still refused", async () => {
    const target = join(root, 'foreign', 'b');
    await mkdir(`${target}.partial`, { recursive: true });
    await writeFile(join(`${target}.partial`, 'notes.txt'), 'mine');
    await expect(restore(target, 4)).rejects.toThrow(/is not an interrupted restore/);
    expect(await readFile(join(`${target}.partial`, 'notes.txt'), 'utf8')).toBe('mine');
  });
});
