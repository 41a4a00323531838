/**
 * Retention (src/backup/retention.ts: planRetention + applyRetention) on a
 * real archive: entries 1..12 in six segments, base backups at 4, 8 and 12,
 * keep the newest 2 (the window starts at the backup at 8).
 *
 * After a crash at any op (and after a power cut), before rerunning:
 * - the manifest references no deleted object (every record's object exists
 *   and hashes to its record), and the archive is gap-free from its oldest backup;
 * - every point inside the kept window (LSNs 8..12, and a time just after
 *   each of their commits) is still restorable: planned with src/restore/plan.ts,
 *   every planned object exists with its checksum.
 * Then a rerun completes: exactly the kept backups and segments remain, listed
 * and in the store; a further run finds nothing to do (idempotent).
 */

import { join } from 'node:path';

import { readPartitionManifest } from '../../../src/manifest/partition-manifest.js';
import { applyRetention, listPartitionObjects, planRetention } from '../../../src/backup/retention.js';
import { planObjects } from '../../../src/restore/plan.js';
import { planPartitionRestore } from '../../../src/restore/restore.js';
import type { ObjectStore } from '../../../src/store/object-store.js';
import type { CrashProtocol } from '../runner.js';
import {
  auditArchive,
  committedAtOf,
  runWatched,
  openStore,
  PARTITION,
  readAll,
  sha256,
} from '../sidecar-helpers/fixtures.js';
import { prepareArchive, type PreparedArchive } from '../sidecar-helpers/prepared.js';

const LAST = 12;
const BACKUPS = [4, 8, 12];
const POLICY = { keepCount: 2 };
const WINDOW_START = 8;

interface Ctx extends PreparedArchive {
  /** The keys that must remain once retention has run: the kept backups and segments. */
  kept: string[];
}

async function retentionOnce(store: ObjectStore) {
  const m = (await readPartitionManifest(store, PARTITION))?.value;
  if (!m) throw new Error('no partition manifest');
  const plan = planRetention(m, POLICY, new Date(), {
    objects: await listPartitionObjects(store, PARTITION),
  });
  const result = await applyRetention(store, PARTITION, undefined, plan);
  return { plan, result };
}

/** Every point inside the kept window can be planned and its objects are there, whole. */
export async function checkWindowRestorable(
  store: ObjectStore,
  from: number,
  to: number,
  scratch: string,
  when: string,
): Promise<string[]> {
  const v: string[] = [];
  const checked = new Map<string, string | undefined>();
  const targets = [];
  for (let lsn = from; lsn <= to; lsn++) {
    targets.push({ lsn, target: { kind: 'lsn' as const, lsn }, what: `LSN ${lsn}` });
    const time = new Date(committedAtOf(lsn) + 500);
    targets.push({ lsn, target: { kind: 'time' as const, time }, what: `time ${time.toISOString()}` });
  }
  for (const t of targets) {
    let plan;
    try {
      plan = (await planPartitionRestore(store, PARTITION, t.target, join(scratch, `plan-${t.lsn}`))).plan;
    } catch (err) {
      v.push(`${when}: ${t.what} inside the kept window cannot be planned: ${(err as Error).message}`);
      continue;
    }
    if (plan.targetLsn !== t.lsn) v.push(`${when}: ${t.what} plans to LSN ${plan.targetLsn}, not ${t.lsn}`);
    for (const o of planObjects(plan)) {
      if (!checked.has(o.key)) {
        const bytes = await readAll(store, o.key).catch(() => undefined);
        checked.set(o.key, bytes && sha256(bytes));
      }
      const got = checked.get(o.key);
      if (got === undefined) v.push(`${when}: restoring to ${t.what} needs ${o.key}, which is gone`);
      else if (o.sha256 !== undefined && got !== o.sha256)
        v.push(`${when}: ${o.key} does not match its checksum`);
    }
  }
  return v;
}

const retentionProtocol: CrashProtocol<Ctx> = {
  name: 'sidecar: retention',
  async setup(root) {
    const prepared = await prepareArchive(root, LAST, BACKUPS);
    const store = await openStore(prepared.rig);
    try {
      const m = (await readPartitionManifest(store, PARTITION))!.value;
      const plan = planRetention(m, POLICY, new Date());
      const gone = new Set([...plan.deleteBackups, ...plan.deleteSegments]);
      if (plan.windowStartLsn !== WINDOW_START || gone.size === 0) {
        throw new Error(
          `setup: retention plans window ${plan.windowStartLsn}, deleting ${gone.size} objects`,
        );
      }
      const kept = [...m.backups, ...m.segments].map((r) => r.key).filter((k) => !gone.has(k));
      return { ...prepared, kept: kept.sort() };
    } finally {
      await store.close();
    }
  },
  async run(ctx) {
    await runWatched(ctx.rig, (store) => retentionOnce(store));
  },
  async check(ctx, outcome) {
    const when = outcome.crashed ? 'after the crash' : 'after the run';
    const scratch = join(ctx.rig.root, 'check');
    const store = await openStore(ctx.rig);
    try {
      const audit = await auditArchive(store, { wal: ctx.wal, coverTo: LAST, scratch });
      const v = audit.violations.map((l) => `${when}: ${l}`);
      v.push(...(await checkWindowRestorable(store, WINDOW_START, LAST, scratch, when)));
      try {
        await retentionOnce(store);
      } catch (err) {
        v.push(`the rerun of retention failed: ${(err as Error).message}`);
        return v;
      }
      const m = (await readPartitionManifest(store, PARTITION))?.value;
      const listed = [...(m?.backups ?? []), ...(m?.segments ?? [])].map((r) => r.key).sort();
      const stored = (await listPartitionObjects(store, PARTITION)).sort();
      if (listed.join() !== ctx.kept.join()) {
        v.push(
          `after the rerun the manifest lists [${listed.join(', ')}], not the kept [${ctx.kept.join(', ')}]`,
        );
      }
      if (stored.join() !== ctx.kept.join()) {
        v.push(
          `after the rerun the store holds [${stored.join(', ')}], not the kept [${ctx.kept.join(', ')}]`,
        );
      }
      const after = await auditArchive(store, { wal: ctx.wal, coverTo: LAST, scratch });
      v.push(...after.violations.map((l) => `after the rerun: ${l}`));
      v.push(...(await checkWindowRestorable(store, WINDOW_START, LAST, scratch, 'after the rerun')));
      // Idempotent: one more run plans and does nothing.
      const etag = (await readPartitionManifest(store, PARTITION))?.etag;
      const again = await retentionOnce(store);
      const work = [...again.plan.deleteBackups, ...again.plan.deleteSegments, ...again.plan.orphans];
      if (work.length > 0 || again.result.deleted.length > 0 || again.result.unlisted.length > 0) {
        v.push(
          `a further run of retention still does something: ${work.join(', ') || again.result.deleted.join(', ')}`,
        );
      }
      if ((await readPartitionManifest(store, PARTITION))?.etag !== etag) {
        v.push('a further run of retention rewrote the manifest');
      }
      return v;
    } finally {
      await store.close();
    }
  },
};

export const protocols: CrashProtocol<unknown>[] = [retentionProtocol];
