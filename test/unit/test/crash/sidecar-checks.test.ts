// The sidecar crash protocols' checks must be able to fail: each is shown here
// finding the damage it exists for, on a real archive made by the project's parts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { readPartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import { writeArchiverPosition } from '../../../../contract/wal/entry.js';
import { checkBackups } from '../../../crash/protocols/backup.js';
import { checkWindowRestorable } from '../../../crash/protocols/retention.js';
import { checkArchivedState } from '../../../crash/protocols/sidecar-archive.js';
import { auditArchive, openStore, PARTITION } from '../../../crash/sidecar-helpers/fixtures.js';
import { prepareArchive } from '../../../crash/sidecar-helpers/prepared.js';
import { diffTrees, readTree } from '../../../crash/sidecar-helpers/state.js';

const roots: string[] = [];
afterEach(async () => {
  while (roots.length) await rm(roots.pop()!, { recursive: true, force: true });
});

async function prepared() {
  const root = await mkdtemp(join(tmpdir(), 'sidecar-checks-'));
  roots.push(root);
  return prepareArchive(root, 6, [2]);
}

describe('sidecar crash checks', () => {
  it('pass on an intact archive', async () => {
    const a = await prepared();
    expect(await checkArchivedState(a.rig, a.wal, 'now')).toEqual([]);
    expect(await checkBackups(a.rig, 'now')).toEqual([]);
    const store = await openStore(a.rig);
    try {
      expect(await checkWindowRestorable(store, 2, 6, join(a.rig.root, 'scratch'), 'now')).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('find a position beyond the manifest, a dangling reference, a changed entry and a missing backup', async () => {
    const a = await prepared();
    const store = await openStore(a.rig);
    try {
      const m = (await readPartitionManifest(store, PARTITION))!.value;
      await writeArchiverPosition(a.rig.pdir, 9);
      const seg = m.segments.find((s) => s.first_lsn === 3)!;
      await store.delete(seg.key);
      await store.delete(m.backups[0]!.key);
      const wal = new Map(a.wal);
      wal.set(5, new Map([...wal.get(5)!].map(([k, v]) => [k, k === 'MANIFEST' ? Buffer.from('x') : v])));

      const state = (await checkArchivedState(a.rig, wal, 'now')).join('\n');
      expect(state).toContain('archiver/position is 9, but the manifest records only 6');
      expect(state).toContain(`the manifest names ${seg.key}, which does not exist`);
      expect(state).toContain('LSN 5 differs from the WAL');
      expect((await checkBackups(a.rig, 'now')).join('\n')).toContain('object does not exist');
      const window = (await checkWindowRestorable(store, 2, 6, join(a.rig.root, 'scratch'), 'now')).join(
        '\n',
      );
      expect(window).toContain(`needs ${m.backups[0]!.key}, which is gone`);
      const audit = await auditArchive(store, { coverTo: 8, scratch: join(a.rig.root, 'scratch') });
      expect(audit.violations.join('\n')).toContain('the archive ends at 6, not at 8');
    } finally {
      await store.close();
    }
  });

  it('compare trees byte for byte', async () => {
    const a = await prepared();
    const tree = (await readTree(a.rig.pdir))!;
    const changed = new Map(tree);
    const [name, desc] = [...tree].find(([, d]) => d.startsWith('file'))!;
    changed.set(name, `${desc}A`);
    expect(diffTrees(tree, tree)).toEqual([]);
    expect(diffTrees(tree, changed)[0]).toContain(`${name} differs`);
  });
});
