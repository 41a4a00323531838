import { join } from 'node:path';

import { archiveThrough } from './archiver.js';
import { committedAtOf, makeRig, openStore, readWalFiles, writeWal, type Rig } from './fixtures.js';
import { applyRange, backupAt, keepStateAt, SnapshotServer } from './state.js';

export interface PreparedArchive {
  rig: Rig;
  wal: Map<number, Map<string, Buffer>>;
  /** The LSNs base backups were taken at. */
  backups: number[];
  last: number;
}

/**
 * A real archive made by the project's own parts, not observed: the node's
 * entry writer writes the WAL in steps, the real archiver archives each step
 * (two entries a segment), and a base backup of the applied state (packState)
 * is taken at each LSN of `backups`, one day apart.
 */
export async function prepareArchive(
  root: string,
  last: number,
  backups: number[],
): Promise<PreparedArchive> {
  const rig = await makeRig(root);
  const server = new SnapshotServer();
  await server.start();
  const store = await openStore(rig);
  const state = join(rig.pdir, 'state');
  try {
    let done = 0;
    for (const step of [...backups, last]) {
      if (step <= done) continue;
      await writeWal(rig.pdir, done + 1, step);
      await applyRange(rig.pdir, state, done + 1, step);
      const r = await archiveThrough(rig, store, step);
      if (r.position !== step)
        throw new Error(`prepare: archiving stopped at ${r.archived}: ${r.error ?? r.state}`);
      if (backups.includes(step)) {
        await keepStateAt(rig, state, step, server);
        // Taken just after its LSN was committed (a backup cannot predate the state it holds).
        const at = new Date(committedAtOf(step) + 250);
        await backupAt(rig, store, server, step, () => at);
      }
      done = step;
    }
  } finally {
    await store.close();
    await server.close();
  }
  return { rig, wal: await readWalFiles(rig.pdir), backups, last };
}
