/**
 * Restore's build-and-publish into the target (src/restore/restore.ts,
 * restorePartition), from a real archive: entries 1..10 in five segments and
 * a base backup at 4, so a restore extracts the backup and replays 5..10.
 *
 * Two protocols: a restore into an absent target, and one replacing an
 * existing restored partition (at LSN 6) with --force. After a crash at any
 * op (and after a power cut):
 * - the target DIR either does not exist or is complete and byte for byte
 *   equal to the uncrashed result (with --force: or still the old one whole);
 * - a rerun (with --force, as the README documents for a non-empty target)
 *   completes, and its result equals the uncrashed one.
 */

import { readdir } from 'node:fs/promises';
import { join } from 'node:path';

import { restorePartition } from '../../../src/restore/restore.js';
import type { RestoreTarget } from '../../../src/restore/plan.js';
import type { CrashOutcome, CrashProtocol } from '../runner.js';
import { CrashWatcher, NODE, openStore, PARTITION, type Rig } from '../sidecar-helpers/fixtures.js';
import { prepareArchive } from '../sidecar-helpers/prepared.js';
import { diffTrees, readTree, sameTree, type Tree } from '../sidecar-helpers/state.js';

const LAST = 10;
const OLD_LSN = 6;

interface Ctx {
  rig: Rig;
  target: string;
  force: boolean;
  /** The uncrashed result (restored in setup, elsewhere under the root). */
  want: Tree;
  /** With --force: the restored partition that was there before. */
  old: Tree | undefined;
}

async function restoreTo(rig: Rig, targetDir: string, target: RestoreTarget, force: boolean): Promise<void> {
  const store = await openStore(rig);
  try {
    await restorePartition({ store, partition: PARTITION, target, targetDir, voters: [NODE], force });
  } finally {
    await store.close().catch(() => undefined);
  }
}

function restoreProtocol(force: boolean): CrashProtocol<Ctx> {
  return {
    name: force
      ? 'sidecar: restore build and publish, replacing with --force'
      : 'sidecar: restore build and publish',
    async setup(root) {
      const { rig } = await prepareArchive(root, LAST, [4]);
      const reference = join(root, 'reference', 'partitions', PARTITION);
      await restoreTo(rig, reference, { kind: 'latest' }, false);
      const want = (await readTree(reference))!;
      const target = join(root, 'restored', 'partitions', PARTITION);
      let old: Tree | undefined;
      if (force) {
        await restoreTo(rig, target, { kind: 'lsn', lsn: OLD_LSN }, false);
        old = (await readTree(target))!;
        if (sameTree(old, want)) throw new Error('setup: the old restore equals the new one');
      }
      return { rig, target, force, want, old };
    },
    async run(ctx) {
      const watcher = new CrashWatcher();
      try {
        await restoreTo(ctx.rig, ctx.target, { kind: 'latest' }, ctx.force);
      } finally {
        watcher.release();
      }
      watcher.finish();
    },
    async check(ctx, outcome: CrashOutcome) {
      const v: string[] = [];
      const when = outcome.crashed ? 'after the crash' : 'after the run';
      const got = await readTree(ctx.target);
      if (!outcome.crashed && !got) v.push(`${when}: the target does not exist`);
      if (got && !sameTree(ctx.want, got) && !(ctx.old && sameTree(ctx.old, got))) {
        const lines = diffTrees(ctx.want, got);
        v.push(
          `${when}: the target exists but is neither the complete result${ctx.old ? ' nor the old one' : ''}: ${lines.join('; ')}`,
        );
      }
      try {
        await restoreTo(ctx.rig, ctx.target, { kind: 'latest' }, true);
      } catch (err) {
        v.push(`the rerun (--force) failed: ${(err as Error).message}`);
        return v;
      }
      const again = await readTree(ctx.target);
      if (!again) v.push('after the rerun the target does not exist');
      else
        for (const d of diffTrees(ctx.want, again))
          v.push(`after the rerun the target differs from the uncrashed result: ${d}`);
      const parent = join(ctx.target, '..');
      const left = (await readdir(parent)).filter((n) => n !== PARTITION);
      if (left.length > 0) v.push(`after the rerun ${parent} still holds ${left.join(', ')}`);
      return v;
    },
  };
}

export const protocols: CrashProtocol<unknown>[] = [restoreProtocol(false), restoreProtocol(true)];
