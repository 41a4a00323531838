import { afterEach, describe, expect, it } from 'vitest';
import { setDurableObserver, type DurableEvent } from '../../../../contract/fs/durable-fs.js';
import { ErrorCodes, WalArchiverError } from '../../../../contract/errors.js';
import { readPartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { archiverPositionPath, readArchiverPosition } from '../../../../contract/wal/entry.js';
import { archiverRig, eventually, writeEntries } from './rig.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  setDurableObserver(undefined);
  while (cleanups.length) await cleanups.pop()!();
});

const COMMIT = 5;

/**
 * A process that stops dead: once `crashed`, every store write and every
 * durable file operation fails, non-retryably, so nothing after the crash
 * point reaches the store or the disk; the archiver's memory is then dropped.
 */
class Crash {
  crashed = false;
  private dead(what: string): WalArchiverError {
    this.crashed = true;
    return new WalArchiverError(ErrorCodes.INTERNAL, `crashed at ${what}`, { retryable: false });
  }

  /** The store, crashing right after the first write whose key `after` accepts. */
  store(inner: ObjectStore, after: (key: string) => boolean = () => false): ObjectStore {
    return new Proxy(inner, {
      get: (target, prop, receiver) => {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        if (prop !== 'create' && prop !== 'replace' && prop !== 'delete') return v.bind(target);
        return async (key: string, ...rest: unknown[]) => {
          if (this.crashed) throw this.dead(`${String(prop)} ${key}`);
          const out = await (v as (...a: unknown[]) => Promise<unknown>).apply(target, [key, ...rest]);
          if (after(key)) throw this.dead(`${String(prop)} ${key}`);
          return out;
        };
      },
    });
  }

  /** Durable file operations, crashing before the first one `before` accepts. */
  observe(before: (e: DurableEvent) => boolean = () => false): void {
    setDurableObserver({
      before: (e) => {
        if (this.crashed || before(e)) throw this.dead(`${e.op} ${e.path}`);
      },
    });
  }
}

async function checkArchive(store: ObjectStore, dir: string): Promise<void> {
  const m = (await readPartitionManifest(store, '1'))!.value;
  const keys = m.segments.map((s) => s.key);
  expect(new Set(keys).size).toBe(keys.length);
  let next = 1;
  for (const s of m.segments) {
    expect(s.first_lsn).toBe(next);
    next = s.last_lsn + 1;
    expect(await store.head(s.key)).toBeDefined();
  }
  expect(next - 1).toBe(COMMIT);
  expect(m.archived?.last_lsn).toBe(COMMIT);
  expect(await readArchiverPosition(dir)).toBe(COMMIT);
}

async function crashThenRestart(
  crashAt: (crash: Crash, store: ObjectStore, dir: string) => ObjectStore,
  afterCrash: (store: ObjectStore, dir: string) => Promise<void>,
): Promise<void> {
  const rig = await archiverRig(cleanups, 'crash-record');
  await writeEntries(rig.dir, 1, COMMIT);
  const crash = new Crash();
  const first = rig.make({}, undefined, crashAt(crash, rig.store, rig.dir));
  first.archiver.start();
  expect(await eventually(() => crash.crashed && first.archiver.state === 'failed', 10_000)).toBe(true);
  await first.archiver.stop();
  setDurableObserver(undefined);
  await afterCrash(rig.store, rig.dir);
  const second = rig.make();
  second.archiver.start();
  expect(await eventually(async () => (await readArchiverPosition(rig.dir)) === COMMIT, 10_000)).toBe(true);
  await second.archiver.stop();
  await checkArchive(rig.store, rig.dir);
}

describe('a crash while recording a segment', () => {
  it('between the upload and the manifest: the restart records the uploaded segment once', async () => {
    await crashThenRestart(
      (crash, store) => crash.store(store, (key) => key.includes('/wal/')),
      async (store) => {
        const m = (await readPartitionManifest(store, '1'))?.value;
        expect(m?.segments ?? []).toEqual([]);
        const uploaded = [];
        for await (const o of store.list('partitions/1/wal/')) uploaded.push(o.key);
        expect(uploaded.length).toBe(1);
      },
    );
  });

  it('between the manifest and archiver/position: the restart moves the position, records nothing twice', async () => {
    await crashThenRestart(
      (crash, store, dir) => {
        // The first rename is the resume's (position 0); the second follows the recorded segment.
        let renames = 0;
        crash.observe((e) => e.op === 'rename' && e.dest === archiverPositionPath(dir) && ++renames === 2);
        return store;
      },
      async (store, dir) => {
        const m = (await readPartitionManifest(store, '1'))!.value;
        expect(m.archived?.last_lsn).toBe(COMMIT);
        expect((await readArchiverPosition(dir)) ?? 0).toBeLessThan(COMMIT);
      },
    );
  });

  it('while writing archiver/position: the old position stays, never a torn one', async () => {
    await crashThenRestart(
      (crash, store, dir) => {
        let writes = 0;
        crash.observe((e) => e.path.startsWith(`${dir}/`) && e.op === 'write' && ++writes === 2);
        return store;
      },
      async (_store, dir) => {
        const p = await readArchiverPosition(dir);
        expect(p === undefined || p === 0).toBe(true);
      },
    );
  });
});
