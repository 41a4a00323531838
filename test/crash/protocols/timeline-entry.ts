/**
 * A restored partition's start on a new timeline, from a real archive
 * (entries 1..10, a base backup at 4): `restore --to-lsn 6` with `branch`
 * (restored.json and the restored-state links, src/timeline/restored.ts),
 * then the sidecar's start on it (src/pipeline/timeline-entry.ts: the
 * history record, archiver/timeline, the restored state uploaded as the new
 * timeline's base backup at the branch LSN, then restored-state removed).
 *
 * Crashed at every durable op of the restore and of the sidecar's start, and
 * restarted (restore rerun with --force when it had not finished, then the
 * sidecar), the partition ends on exactly one new timeline: one history
 * record carrying the restore id, archiver/timeline naming it, its manifest
 * listing the base backup at the branch LSN once, whose object checks out,
 * and restored-state gone; after the crash, restored-state is gone only when
 * that backup is recorded.
 */

import { join } from 'node:path';

import { baseBackupKey } from '../../../src/manifest/keys.js';
import { readPartitionManifest } from '../../../src/manifest/partition-manifest.js';
import { restorePartition } from '../../../src/restore/restore.js';
import { listTimelines } from '../../../src/timeline/history.js';
import { hasRestoredState, readTimelineFile } from '../../../src/timeline/restored.js';
import type { ObjectStore } from '../../../src/store/object-store.js';
import type { CrashOutcome, CrashProtocol } from '../runner.js';
import { newArchiver } from '../sidecar-helpers/archiver.js';
import {
  CrashWatcher,
  NODE,
  PARTITION,
  openStore,
  readAll,
  makeRig,
  sha256,
  waitUntil,
  type Rig,
} from '../sidecar-helpers/fixtures.js';
import { prepareArchive } from '../sidecar-helpers/prepared.js';
import { rmSync } from 'node:fs';
import { cp, mkdir, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';

const LAST = 10;
const BRANCH_LSN = 6;
const RESTORE_ID = 'crash-restore-1';
const BRANCH = {
  restoreId: RESTORE_ID,
  reason: `restore --to-lsn ${BRANCH_LSN}`,
  at: new Date('2026-02-01T00:00:00Z'),
};

interface Ctx {
  /** The restored partition's rig: its own data dir and spool, the same archive. */
  restored: Rig;
  /** Whether run() includes the restore (else the restore was done in setup). */
  withRestore: boolean;
}

async function restore(rig: Rig, force: boolean): Promise<void> {
  const store = await openStore(rig);
  try {
    await restorePartition({
      store,
      partition: PARTITION,
      target: { kind: 'lsn', lsn: BRANCH_LSN },
      targetDir: rig.pdir,
      voters: [NODE],
      force,
      branch: BRANCH,
    });
  } finally {
    await store.close().catch(() => undefined);
  }
}

/** Runs the sidecar's archiver on the restored partition until restored-state is gone (or it stops, or the crash). */
async function startSidecar(
  rig: Rig,
  store: ObjectStore,
  watcher?: CrashWatcher,
): Promise<string | undefined> {
  const archiver = newArchiver(rig, store);
  archiver.start();
  const done = await waitUntil(async () => {
    if (watcher?.crashed) return true;
    if (archiver.state === 'failed' || archiver.state === 'fenced') return true;
    return !(await hasRestoredState(rig.pdir)) && archiver.state === 'archiving';
  }, 20_000);
  await archiver.stop();
  if (watcher?.crashed) return undefined;
  if (!done) return `the sidecar did not finish its start (state ${archiver.state})`;
  return archiver.state === 'failed' || archiver.state === 'fenced'
    ? `the sidecar stopped: ${archiver.state}: ${archiver.error ?? ''}`
    : undefined;
}

/** The source archive, prepared once and copied for each crash point (setup is not observed). */
let template: Promise<string> | undefined;

async function sourceRig(root: string): Promise<Rig> {
  template ??= mkdtemp(join(tmpdir(), 'crash-timeline-')).then(async (dir) => {
    // Nothing else owns it: it goes with the process.
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    await prepareArchive(join(dir, 'source'), LAST, [4]);
    return dir;
  });
  const dir = await template;
  await cp(join(dir, 'source'), join(root, 'source'), { recursive: true });
  const rig = await makeRig(join(root, 'source'));
  return rig;
}

function protocol(withRestore: boolean): CrashProtocol<Ctx> {
  return {
    name: withRestore
      ? 'timeline: restore with a branch, then the sidecar enters the timeline'
      : "timeline: the sidecar enters a restored partition's timeline",
    async setup(root) {
      const rig = await sourceRig(root);
      const restored: Rig = {
        ...rig,
        root: join(root, 'restored'),
        dataDir: join(root, 'restored', 'data'),
        pdir: join(root, 'restored', 'data', 'partitions', PARTITION),
        spoolDir: join(root, 'restored', 'spool'),
      };
      await mkdir(restored.spoolDir, { recursive: true });
      if (!withRestore) await restore(restored, false);
      return { restored, withRestore };
    },
    async run(ctx) {
      const watcher = new CrashWatcher();
      const store = await openStore(ctx.restored);
      let problem: string | undefined;
      try {
        if (ctx.withRestore) await restore(ctx.restored, false);
        problem = await startSidecar(ctx.restored, store, watcher);
      } finally {
        await store.close().catch(() => undefined);
        watcher.release();
      }
      watcher.finish();
      if (problem) throw new Error(problem);
    },
    async check(ctx, outcome: CrashOutcome) {
      const v: string[] = [];
      const rig = ctx.restored;
      const store = await openStore(rig);
      try {
        // After the crash: restored-state gone means the base backup is recorded.
        const marked = await hasRestoredState(rig.pdir).catch(() => true);
        const tlAfterCrash = await readTimelineFile(rig.pdir).catch(() => undefined);
        if (!marked && tlAfterCrash !== undefined && tlAfterCrash > 1) {
          const m = await readPartitionManifest(store, PARTITION, { timeline: tlAfterCrash });
          if (!(m?.value.backups ?? []).some((b) => b.lsn === BRANCH_LSN))
            v.push(
              `after the crash restored-state is gone but timeline ${tlAfterCrash} records no base backup at ${BRANCH_LSN}`,
            );
        }
        // Restart: a restore that may not have finished is rerun (--force), then the sidecar.
        if (outcome.crashed && ctx.withRestore && tlAfterCrash === undefined) {
          try {
            await restore(rig, true);
          } catch (err) {
            v.push(`the restore rerun failed: ${(err as Error).message}`);
            return v;
          }
        }
        const problem = await startSidecar(rig, store);
        if (problem) v.push(`after the restart: ${problem}`);
        const timelines = await listTimelines(store, PARTITION);
        const own = timelines.filter((t) => t.restoreId === RESTORE_ID);
        if (timelines.length !== 2 || own.length !== 1)
          v.push(
            `timelines ${JSON.stringify(timelines.map((t) => [t.timeline, t.restoreId]))}: not one new timeline for the restore`,
          );
        const tl = own[0]?.timeline ?? 2;
        if (own[0] && own[0].branchLsn !== BRANCH_LSN)
          v.push(`timeline ${tl} branches at ${own[0].branchLsn}`);
        const file = await readTimelineFile(rig.pdir).catch((err: Error) => err.message);
        if (file !== tl) v.push(`archiver/timeline is ${String(file)}, not ${tl}`);
        if (await hasRestoredState(rig.pdir)) v.push('restored-state is still there after the restart');
        const m = await readPartitionManifest(store, PARTITION, { timeline: tl });
        const bases = (m?.value.backups ?? []).filter((b) => b.lsn === BRANCH_LSN);
        if (bases.length !== 1)
          v.push(`timeline ${tl} manifest lists ${bases.length} base backups at ${BRANCH_LSN}`);
        for (const b of bases) {
          if (b.key !== baseBackupKey(PARTITION, BRANCH_LSN, tl)) v.push(`base backup key ${b.key}`);
          const body = await readAll(store, b.key).catch(() => undefined);
          if (!body) v.push(`base backup ${b.key} is missing`);
          else if (sha256(body) !== b.sha256)
            v.push(`base backup ${b.key} does not match its recorded checksum`);
        }
      } finally {
        await store.close().catch(() => undefined);
      }
      return v;
    },
  };
}

/**
 * The whole start, restore then sidecar (~240 ops, sampled to CRASH_MAX_POINTS),
 * runs in the suite; the sidecar-only variant (~110 ops: denser over the
 * sidecar's start) with `CRASH_TIMELINE_SIDECAR=1`, to keep the suite short.
 */
export const protocols: CrashProtocol<unknown>[] = [
  protocol(true) as CrashProtocol<unknown>,
  ...(process.env.CRASH_TIMELINE_SIDECAR === '1' ? [protocol(false) as CrashProtocol<unknown>] : []),
];
