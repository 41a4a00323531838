/**
 * The sidecar's segment upload → partition manifest record → archiver/position,
 * for one partition: a real PartitionArchiver (its loops on, no event bus, no
 * node API: it reads the data dir the node wrote) archives entries 1..N to the
 * folder store under the same root, so the store's writes are durable ops too.
 *
 * After a crash at any op (and after a power cut), before reopening:
 * - every manifest reference points at an object that exists, with its checksum;
 * - archiver/position never exceeds what the manifest records as archived
 *   (the node prunes up to it).
 * Then a fresh archiver runs to completion, and:
 * - the archive covers 1..N with no gap, the position is N;
 * - every archived entry (in any segment object, recorded or not) equals the
 *   WAL's, and no LSN is archived twice with different content.
 */

import { join } from 'node:path';

import { readArchiverPosition } from '../../../contract/wal/entry.js';
import type { CrashOutcome, CrashProtocol } from '../runner.js';
import { archiveThrough } from '../sidecar-helpers/archiver.js';
import {
  auditArchive,
  CrashWatcher,
  makeRig,
  openStore,
  readWalFiles,
  writeWal,
  type Rig,
} from '../sidecar-helpers/fixtures.js';

const N = 5;

interface Ctx {
  rig: Rig;
  wal: Map<number, Map<string, Buffer>>;
}

/** Position ≤ what the manifest records as archived, and the manifest names only whole objects. */
export async function checkArchivedState(rig: Rig, wal: Ctx['wal'], when: string): Promise<string[]> {
  const store = await openStore(rig);
  try {
    const { violations, manifest } = await auditArchive(store, { wal, scratch: join(rig.root, 'check') });
    const v = violations.map((l) => `${when}: ${l}`);
    let position: number | undefined;
    try {
      position = await readArchiverPosition(rig.pdir);
    } catch (err) {
      v.push(`${when}: archiver/position cannot be read: ${(err as Error).message}`);
    }
    const archived = manifest?.archived?.last_lsn ?? 0;
    if (position !== undefined && position > archived) {
      v.push(
        `${when}: archiver/position is ${position}, but the manifest records only ${archived} as archived`,
      );
    }
    return v;
  } finally {
    await store.close();
  }
}

export async function reopenAndFinish(rig: Rig, wal: Ctx['wal'], through: number): Promise<string[]> {
  const store = await openStore(rig);
  let v: string[];
  try {
    const r = await archiveThrough(rig, store, through);
    v = [];
    if (r.timedOut || r.archived < through || r.position !== through) {
      v.push(
        `after reopen the archiver did not complete: state ${r.state}, archived ${r.archived}, position ${r.position ?? 'none'}` +
          (r.error ? `: ${r.error}` : ''),
      );
    }
    const audit = await auditArchive(store, { wal, coverTo: through, scratch: join(rig.root, 'check') });
    v.push(...audit.violations.map((l) => `after reopen: ${l}`));
  } finally {
    await store.close();
  }
  return v;
}

export const archiveProtocol: CrashProtocol<Ctx> = {
  name: 'sidecar: segment upload, manifest record, archiver/position',
  async setup(root) {
    const rig = await makeRig(root);
    await writeWal(rig.pdir, 1, N);
    return { rig, wal: await readWalFiles(rig.pdir) };
  },
  async run(ctx) {
    const store = await openStore(ctx.rig);
    const watcher = new CrashWatcher();
    try {
      const r = await archiveThrough(ctx.rig, store, N, watcher);
      if (!watcher.crashed && (r.timedOut || r.position !== N)) {
        throw new Error(
          `archiving did not complete: state ${r.state}, position ${r.position}: ${r.error ?? ''}`,
        );
      }
    } finally {
      await store.close().catch(() => undefined);
      watcher.finish();
    }
  },
  async check(ctx, outcome: CrashOutcome) {
    const v = await checkArchivedState(
      ctx.rig,
      ctx.wal,
      outcome.crashed ? 'after the crash' : 'after the run',
    );
    v.push(...(await reopenAndFinish(ctx.rig, ctx.wal, N)));
    return v;
  },
};

export const protocols: CrashProtocol<unknown>[] = [archiveProtocol];
