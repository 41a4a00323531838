import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { makeEntry } from '../../../../bench/harness.js';
import { segmentKey } from '../../../../src/manifest/keys.js';
import { readPartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import { spoolSegment, type SegmentEntry } from '../../../../src/archive/segment-writer.js';
import { MetadataKeys, type ObjectStore } from '../../../../src/store/object-store.js';
import { entryDir } from '../../../../contract/wal/entry.js';
import { formatLsn } from '../../../../contract/wal/lsn.js';
import { archivedThrough, archiverRig, counterValue, eventually, writeEntries } from './rig.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const ENTRIES = 3;

function segmentEntry(dir: string, lsn: number): SegmentEntry {
  return { lsn, name: formatLsn(lsn), dir, files: ['MANIFEST', '1', 'RAFT'] };
}

/**
 * Packs copies of the partition's entries 1..3 at zstd level 19 (the sidecar uses 3) and creates the
 * segment key the sidecar will use; `alter` may change the copy of an entry first.
 */
async function precreate(
  store: ObjectStore,
  pdir: string,
  alter?: (lsn: number, copy: string) => Promise<void>,
): Promise<string> {
  const scratch = await mkdtemp(join(tmpdir(), 'existing-segment-'));
  cleanups.push(() => rm(scratch, { recursive: true, force: true }));
  const entries: SegmentEntry[] = [];
  for (let lsn = 1; lsn <= ENTRIES; lsn++) {
    const copy = join(scratch, formatLsn(lsn));
    await cp(entryDir(pdir, lsn), copy, { recursive: true });
    await alter?.(lsn, copy);
    entries.push(segmentEntry(copy, lsn));
  }
  const seg = await spoolSegment(entries, join(scratch, 'spool'), { level: 19 });
  const key = segmentKey('1', 1, ENTRIES);
  await store.create(key, await readFile(seg.path), {
    size: seg.bytes,
    metadata: { [MetadataKeys.SHA256]: seg.sha256 },
  });
  return seg.sha256;
}

describe('a segment key that exists with other bytes', () => {
  it('is adopted when its entries are the committed ones, and archiving goes on', async () => {
    const rig = await archiverRig(cleanups, 'existing-segment');
    await writeEntries(rig.dir, 1, ENTRIES);
    const sha = await precreate(rig.store, rig.dir);
    const { archiver } = rig.make();
    archiver.start();
    expect(await eventually(async () => (await archivedThrough(rig.store)) >= ENTRIES, 10_000)).toBe(true);
    const m = (await readPartitionManifest(rig.store, '1'))!.value;
    const head = await rig.store.head(segmentKey('1', 1, ENTRIES));
    expect(m.segments[0]).toMatchObject({ key: segmentKey('1', 1, ENTRIES), sha256: sha, bytes: head!.size });
    await writeEntries(rig.dir, ENTRIES + 1, ENTRIES + 2);
    archiver.notify();
    expect(await eventually(async () => (await archivedThrough(rig.store)) >= ENTRIES + 2, 10_000)).toBe(
      true,
    );
    expect(archiver.state).toBe('archiving');
  });

  it('stops the partition naming the key and the LSN when an entry was tampered with', async () => {
    const rig = await archiverRig(cleanups, 'existing-segment');
    await writeEntries(rig.dir, 1, ENTRIES);
    await precreate(rig.store, rig.dir, async (lsn, copy) => {
      if (lsn !== 2) return;
      const file = join(copy, '1');
      const bytes = await readFile(file);
      bytes[7] = bytes[7]! ^ 0xff;
      await writeFile(file, bytes);
    });
    const { archiver, metrics } = rig.make();
    archiver.start();
    expect(await eventually(() => archiver.state === 'failed', 10_000)).toBe(true);
    expect(archiver.error).toContain(segmentKey('1', 1, ENTRIES));
    expect(archiver.error).toContain('LSN 2');
    expect(await counterValue(metrics.errors, { kind: 'corrupt' })).toBe(1);
    expect(await archivedThrough(rig.store)).toBe(0);
  });

  it('stops the partition when an entry is self-consistent but not the committed one', async () => {
    const rig = await archiverRig(cleanups, 'existing-segment');
    await writeEntries(rig.dir, 1, ENTRIES);
    await precreate(rig.store, rig.dir, async (lsn, copy) => {
      if (lsn !== 3) return;
      const other = makeEntry(3, 1, randomBytes(512), Date.now());
      await writeFile(join(copy, 'MANIFEST'), other.manifest);
      await writeFile(join(copy, '1'), other.file);
      await writeFile(join(copy, 'RAFT'), other.raft);
    });
    const { archiver } = rig.make();
    archiver.start();
    expect(await eventually(() => archiver.state === 'failed', 10_000)).toBe(true);
    expect(archiver.error).toContain(segmentKey('1', 1, ENTRIES));
    expect(archiver.error).toContain('LSN 3');
  });
});
