/**
 * The node's steps on state/: applying a committed entry (applied_lsn),
 * installing a snapshot with its WAL tail (storage-node/replica.ts and
 * wal-storage.ts), and pruning the WAL (Replica.prune: never an entry the
 * archiver has not archived; no archiver/position means keep everything).
 */
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { decodePayload } from '../../../contract/wal/entry-info.js';
import { silentLogger } from '../../../contract/log.js';
import { applyEntry } from '../../../contract/state/apply.js';
import { linkTree, SHIPPED_WAL_DIR } from '../../../contract/state/snapshot.js';
import {
  entryDir,
  listEntryLsns,
  readAppliedLsn,
  readHardState,
  stateDir,
  writeAppliedLsn,
  writeArchiverPosition,
} from '../../../contract/wal/entry.js';
import { decodeLogEntry } from '../../../contract/wal/log-entry.js';
import { formatLsn } from '../../../contract/wal/lsn.js';
import type { Entry, SnapshotMeta } from '../../../storage-node/raft/index.js';
import { Replica, type ReplicaTransport } from '../../../storage-node/replica.js';
import { WalStorage } from '../../../storage-node/wal-storage.js';
import { emptyEntry, kvEntry, partitionDir, sameTree, treeDiff, treeOf, VOTERS } from '../node-helpers.js';
import type { AnyCrashProtocol, CrashProtocol } from '../runner.js';

const transport: ReplicaTransport = { send: () => undefined, sendSnapshot: () => undefined };

async function openReplica(dir: string): Promise<Replica> {
  return Replica.open({
    nodeId: 2,
    partition: '1',
    dir,
    voters: VOTERS,
    transport,
    onLeadership: () => undefined,
    logger: silentLogger,
  });
}

/** Applies entry `e` to `dir`'s state as the replica does. */
async function applyOne(dir: string, e: Entry): Promise<void> {
  if (e.type !== 'normal') return;
  const payload = decodePayload(e.data);
  await applyEntry(decodeLogEntry(payload.manifest), {
    stateDir: stateDir(dir),
    entryDir: entryDir(dir, e.index),
    lsn: e.index,
  });
}

const templates = new Map<string, string>();

/**
 * A partition with entries 1..n committed and applied through `applied`: built
 * once (in a template folder of this process) and copied for every crash point.
 */
async function buildPartition(root: string, n: number, applied: number, make = kvEntry): Promise<string> {
  const key = `${n}/${applied}/${make === kvEntry ? 'kv' : 'empty'}`;
  let template = templates.get(key);
  if (!template) {
    template = await mkdtemp(path.join(os.tmpdir(), 'crash-template-'));
    await buildPartitionIn(template, n, applied, make);
    templates.set(key, template);
  }
  const dir = await partitionDir(root);
  await cp(path.join(template, 'partitions', '1'), dir, { recursive: true, preserveTimestamps: true });
  return dir;
}

async function buildPartitionIn(
  root: string,
  n: number,
  applied: number,
  make: (i: number) => Entry,
): Promise<string> {
  const dir = await partitionDir(root);
  await mkdir(stateDir(dir), { recursive: true });
  const s = await WalStorage.open(dir, '1', VOTERS);
  const entries = Array.from({ length: n }, (_, i) => make(i + 1));
  await s.append(entries);
  await s.setHardState({ term: 1, vote: 1, commit: n });
  for (const e of entries.slice(0, applied)) await applyOne(dir, e);
  await writeAppliedLsn(dir, applied);
  return dir;
}

/** state/ of a partition with entries 1..lsn applied, built once per lsn in its own root. */
const referenceStates = new Map<number, Record<string, string>>();
async function referenceState(scratch: string, lsn: number): Promise<Record<string, string>> {
  const known = referenceStates.get(lsn);
  if (known) return known;
  const dir = await buildPartitionIn(
    path.join(scratch, `ref-${lsn}-${randomBytes(3).toString('hex')}`),
    lsn,
    lsn,
    kvEntry,
  );
  const tree = treeOf(stateDir(dir));
  referenceStates.set(lsn, tree);
  return tree;
}

// ---- applying an entry ---------------------------------------------------------------------

interface ApplyCtx {
  root: string;
  dir: string;
}

/** Entries 1..3 committed, 1..2 applied; the step applies 3 and records applied_lsn. */
const applyProtocol: CrashProtocol<ApplyCtx> = {
  name: 'node: apply an entry to state/',
  async setup(root) {
    return { root, dir: await buildPartition(root, 3, 2) };
  },
  async run({ dir }) {
    const s = await WalStorage.open(dir, '1', VOTERS);
    await applyOne(dir, s.entry(3));
    await writeAppliedLsn(dir, 3);
  },
  async check({ root, dir }, outcome) {
    const v: string[] = [];
    const applied = (await readAppliedLsn(dir)) ?? 0;
    if (applied !== 2 && applied !== 3) v.push(`applied_lsn is ${applied}, expected 2 or 3`);
    if (!outcome.crashed && applied !== 3) v.push(`the step returned but applied_lsn is ${applied}`);
    // applied_lsn must describe state/: it equals the state of an uncrashed run at that LSN.
    const before = treeOf(stateDir(dir));
    const atApplied = await referenceState(path.join(root, '..'), applied);
    if (!sameTree(before, atApplied) && applied === 3) {
      v.push(`applied_lsn says 3 but state/ is not entry 3's: ${treeDiff(before, atApplied).join(', ')}`);
    }
    // Reopen as the node does: re-apply everything after applied_lsn up to the commit.
    const s = await WalStorage.open(dir, '1', VOTERS);
    for (let i = applied + 1; i <= s.hardState.commit; i++) await applyOne(dir, s.entry(i));
    const after = treeOf(stateDir(dir));
    const want = await referenceState(path.join(root, '..'), 3);
    if (!sameTree(after, want))
      v.push(`state/ after reopen is not an uncrashed run's: ${treeDiff(after, want).join(', ')}`);
    return v;
  },
};

// ---- installing a snapshot with its WAL tail ---------------------------------------------

interface InstallCtx {
  root: string;
  dir: string;
  replica: Replica;
  meta: SnapshotMeta;
}

/**
 * The follower holds entries 1..8 (applied); the leader, archived through 5,
 * sends a snapshot at 20 with its WAL 6..20. The step is the replica's install.
 */
const installProtocol: CrashProtocol<InstallCtx> = {
  name: 'node: install a snapshot with its WAL tail',
  async setup(root) {
    const leader = await buildPartition(path.join(root, 'leader'), 20, 20);
    const dir = await buildPartition(root, 8, 8);
    // Opened first: opening removes what an earlier install left in snapshot-incoming/.
    const replica = await openReplica(dir);
    const incoming = path.join(dir, 'snapshot-incoming', `20-${randomBytes(4).toString('hex')}`);
    await linkTree(stateDir(leader), incoming);
    for (let lsn = 6; lsn <= 20; lsn++) {
      await linkTree(entryDir(leader, lsn), path.join(incoming, SHIPPED_WAL_DIR, formatLsn(lsn)));
    }
    const meta = { index: 20, term: 1, voters: [...VOTERS] };
    (replica as unknown as { incoming: { index: number; dir: string } }).incoming = {
      index: 20,
      dir: incoming,
    };
    return { root, dir, replica, meta };
  },
  async run({ replica, meta }) {
    await (replica as unknown as { installSnapshot(m: SnapshotMeta): Promise<void> }).installSnapshot(meta);
  },
  async abandon({ replica }) {
    await replica.close();
  },
  async check({ root, dir }, outcome) {
    const v: string[] = [];
    const scratch = path.join(root, '..');
    // Reopen (what the node does at start); it must not fail.
    const replica = await openReplica(dir);
    const st = replica.status();
    await replica.close();
    const applied = st.applied;
    const tree = treeOf(stateDir(dir));
    if (applied !== 8 && applied !== 20) v.push(`after reopen applied is ${applied}, expected 8 or 20`);
    if (!outcome.crashed && applied !== 20) v.push(`the install returned but applied is ${applied}`);
    const want = await referenceState(scratch, applied === 20 ? 20 : 8);
    if (!sameTree(tree, want)) {
      v.push(
        `state/ after reopen (applied ${applied}, applied_lsn ${await readAppliedLsn(dir)}) is not the state at ${applied}: ` +
          treeDiff(tree, want).slice(0, 4).join(', '),
      );
    }
    // Nothing committed and unarchived (archived through 5) may be gone: 6..max(applied, 8).
    const onDisk = new Set(await listEntryLsns(dir));
    const missing: number[] = [];
    for (let lsn = 6; lsn <= Math.max(applied, 8); lsn++) if (!onDisk.has(lsn)) missing.push(lsn);
    if (missing.length > 0) v.push(`unarchived committed entries missing from wal/: ${missing.join(',')}`);
    const hs = await readHardState(dir);
    if ((hs?.commit ?? 0) < 8) v.push(`hard_state.Commit went back to ${hs?.commit}`);
    return v;
  },
};

// ---- pruning -----------------------------------------------------------------------------------

interface PruneCtx {
  dir: string;
  replica: Replica;
  position: number | undefined;
}

function pruneProtocol(position: number | undefined): CrashProtocol<PruneCtx> {
  return {
    name:
      position === undefined
        ? 'node: prune (no archiver/position: keep everything)'
        : `node: prune (archiver/position ${position})`,
    async setup(root) {
      const dir = await buildPartition(root, 36, 36, (i) => emptyEntry(i));
      if (position !== undefined) await writeArchiverPosition(dir, position);
      const replica = await openReplica(dir);
      return { dir, replica, position };
    },
    async run({ replica }) {
      await replica.prune();
    },
    async abandon({ replica }) {
      await replica.close();
    },
    async check({ dir, position: pos }) {
      const v: string[] = [];
      const keepFrom = (pos ?? 0) + 1;
      const onDisk = new Set(await listEntryLsns(dir));
      const gone: number[] = [];
      for (let lsn = keepFrom; lsn <= 36; lsn++) if (!onDisk.has(lsn)) gone.push(lsn);
      if (gone.length > 0) {
        v.push(
          `entries pruned before they were archived (archiver/position ${pos ?? 'missing'}): ` +
            `${gone[0]}..${gone[gone.length - 1]}`,
        );
      }
      // The log reopens gap-free and consistent with its snapshot meta.
      const s = await WalStorage.open(dir, '1', VOTERS);
      if (s.lastIndex() !== 36) v.push(`the log ends at ${s.lastIndex()}, not 36`);
      return v;
    },
  };
}

export const protocols: AnyCrashProtocol[] = [
  applyProtocol,
  installProtocol,
  pruneProtocol(33),
  pruneProtocol(undefined),
];
