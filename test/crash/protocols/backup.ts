/**
 * A base backup upload and record (src/backup/take.ts): the node's
 * snapshot (a real `packState` tar of a state dir built by applying the WAL
 * with the node's apply path) is streamed, spooled under the root, created
 * in the folder store under the root and recorded in the partition manifest,
 * whose segments 1..N the real archiver wrote beforehand.
 *
 * After a crash at any op (and after a power cut), before rerunning:
 * - the manifest never names a backup that is missing or partial (each named
 *   backup exists, hashes to its record, decompresses to a complete tar);
 * - the archive the manifest describes is still whole.
 * Then a rerun completes, the manifest names the backup at N, and it unpacks
 * to exactly the node's state at N.
 */

import { join } from 'node:path';
import { Readable } from 'node:stream';
import { DecompressStream } from 'zstd-napi';

import { verifyBaseBackup } from '../../../src/backup/verify.js';
import { readPartitionManifest } from '../../../src/manifest/partition-manifest.js';
import { extractState } from '../../../contract/state/snapshot.js';
import type { CrashProtocol } from '../runner.js';
import { archiveThrough } from '../sidecar-helpers/archiver.js';
import {
  auditArchive,
  runWatched,
  makeRig,
  openStore,
  readAll,
  readWalFiles,
  writeWal,
  type Rig,
} from '../sidecar-helpers/fixtures.js';
import {
  applyRange,
  backupAt,
  diffTrees,
  keepStateAt,
  readTree,
  SnapshotServer,
} from '../sidecar-helpers/state.js';

const N = 4;

interface Ctx {
  rig: Rig;
  wal: Map<number, Map<string, Buffer>>;
  server: SnapshotServer;
  stateAtN: string;
}

/** Every backup the manifest names exists, matches its record and is a complete tar. */
export async function checkBackups(rig: Rig, when: string): Promise<string[]> {
  const store = await openStore(rig);
  try {
    const m = (await readPartitionManifest(store, '1'))?.value;
    const v: string[] = [];
    for (const b of m?.backups ?? []) {
      const c = await verifyBaseBackup(store, b.key, { expected: b, deep: true });
      if (!c.ok) v.push(`${when}: the manifest names backup ${b.key}, which is ${c.problems.join('; ')}`);
    }
    return v;
  } finally {
    await store.close();
  }
}

const backupProtocol: CrashProtocol<Ctx> = {
  name: 'sidecar: base backup upload and record',
  async setup(root) {
    const rig = await makeRig(root);
    await writeWal(rig.pdir, 1, N);
    const state = join(rig.pdir, 'state');
    await applyRange(rig.pdir, state, 1, N);
    const server = new SnapshotServer();
    await server.start();
    const stateAtN = await keepStateAt(rig, state, N, server);
    const store = await openStore(rig);
    try {
      const r = await archiveThrough(rig, store, N);
      if (r.position !== N)
        throw new Error(`setup: archiving stopped at ${r.archived}: ${r.error ?? r.state}`);
    } finally {
      await store.close();
    }
    return { rig, wal: await readWalFiles(rig.pdir), server, stateAtN };
  },
  async run(ctx) {
    await runWatched(ctx.rig, (store) => backupAt(ctx.rig, store, ctx.server, N));
  },
  async check(ctx, outcome) {
    const when = outcome.crashed ? 'after the crash' : 'after the run';
    try {
      const v = await checkBackups(ctx.rig, when);
      const store = await openStore(ctx.rig);
      try {
        const audit = await auditArchive(store, {
          wal: ctx.wal,
          coverTo: N,
          scratch: join(ctx.rig.root, 'check'),
        });
        v.push(...audit.violations.map((l) => `${when}: ${l}`));
        // The rerun: the same backup again (it may find the object and record it as it is).
        try {
          await backupAt(ctx.rig, store, ctx.server, N);
        } catch (err) {
          v.push(`the rerun of the backup failed: ${(err as Error).message}`);
          return v;
        }
        const m = (await readPartitionManifest(store, '1'))?.value;
        const b = m?.backups.find((x) => x.lsn === N);
        if (!b) {
          v.push(`after the rerun the manifest names no backup at ${N}`);
          return v;
        }
        if ((m?.backups.length ?? 0) !== 1)
          v.push(`after the rerun the manifest names ${m?.backups.length} backups, not 1`);
        v.push(...(await checkBackups(ctx.rig, 'after the rerun')));
        const out = join(ctx.rig.root, 'check', 'unpacked');
        await extractState(Readable.from([await readAll(store, b.key)]).pipe(new DecompressStream()), out);
        const want = (await readTree(ctx.stateAtN))!;
        const got = (await readTree(out))!;
        // extractState makes repositories/ even for a state that has none.
        want.set('repositories', got.get('repositories') ?? 'dir');
        for (const d of diffTrees(want, got))
          v.push(`after the rerun the backup does not unpack to the state at ${N}: ${d}`);
        const after = await auditArchive(store, {
          wal: ctx.wal,
          coverTo: N,
          scratch: join(ctx.rig.root, 'check'),
        });
        v.push(...after.violations.map((l) => `after the rerun: ${l}`));
      } finally {
        await store.close();
      }
      return v;
    } finally {
      await ctx.server.close();
    }
  },
};

export const protocols: CrashProtocol<unknown>[] = [backupProtocol];
