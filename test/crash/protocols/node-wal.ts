/**
 * The node's WAL steps (storage-node/wal-storage.ts over contract/wal/entry.ts):
 * appending and committing an entry, replacing an uncommitted suffix, and
 * writing raft/hard_state.
 */
import { readHardState, writeHardState } from '../../../contract/wal/entry.js';
import type { HardState } from '../../../storage-node/raft/index.js';
import { WalStorage } from '../../../storage-node/wal-storage.js';
import type { Entry } from '../../../storage-node/raft/index.js';
import { kvEntry, partitionDir, VOTERS } from '../node-helpers.js';
import type { AnyCrashProtocol, CrashOutcome, CrashProtocol } from '../runner.js';

interface WalCtx {
  dir: string;
  storage: WalStorage;
}

const sameEntry = (a: Entry, b: Entry) =>
  a.index === b.index && a.term === b.term && Buffer.from(a.data).equals(Buffer.from(b.data));

async function reopen(dir: string): Promise<WalStorage> {
  return WalStorage.open(dir, '1', VOTERS);
}

/** Entries 1..3 committed; the step appends entry 4 and then commits it. */
const appendAndCommit: CrashProtocol<WalCtx> = {
  name: 'node: append and commit',
  async setup(root) {
    const dir = await partitionDir(root);
    const storage = await reopen(dir);
    await storage.append([kvEntry(1), kvEntry(2), kvEntry(3)]);
    await storage.setHardState({ term: 1, vote: 1, commit: 3 });
    return { dir, storage };
  },
  async run({ storage }) {
    await storage.append([kvEntry(4)]);
    await storage.setHardState({ term: 1, vote: 1, commit: 4 });
  },
  async check({ dir }, outcome: CrashOutcome) {
    const v: string[] = [];
    const s = await reopen(dir); // refuses a Commit beyond the entries on disk, or a gap
    const commit = s.hardState.commit;
    if (commit < 3) v.push(`committed entries lost: hard_state.Commit is ${commit}, was 3`);
    if (!outcome.crashed && commit !== 4) v.push(`the step returned but Commit is ${commit}, not 4`);
    if (!outcome.crashed && s.lastIndex() !== 4)
      v.push(`the step returned but the last entry is ${s.lastIndex()}`);
    for (let i = 1; i <= s.lastIndex(); i++) {
      if (!sameEntry(s.entry(i), kvEntry(i))) v.push(`entry ${i} is not the one appended`);
    }
    if (s.lastIndex() < 3) v.push(`committed entries lost: the WAL ends at ${s.lastIndex()}`);
    return v;
  },
};

/**
 * Entries 1..5 at term 1, 1..3 committed; a new leader (term 2) replaces 4..5
 * with its own entry 4 and commits it.
 */
const truncateSuffix: CrashProtocol<WalCtx> = {
  name: 'node: truncate uncommitted suffix',
  async setup(root) {
    const dir = await partitionDir(root);
    const storage = await reopen(dir);
    await storage.append([1, 2, 3, 4, 5].map((i) => kvEntry(i)));
    await storage.setHardState({ term: 1, vote: 1, commit: 3 });
    return { dir, storage };
  },
  async run({ storage }) {
    await storage.append([kvEntry(4, 2, undefined, ' (new leader)')]);
    await storage.setHardState({ term: 2, vote: 2, commit: 4 });
  },
  async check({ dir }, outcome) {
    const v: string[] = [];
    const s = await reopen(dir);
    const commit = s.hardState.commit;
    if (commit < 3) v.push(`committed entries lost: Commit is ${commit}`);
    const last = s.lastIndex();
    if (last < 3) v.push(`committed entries lost: the WAL ends at ${last}`);
    for (let i = 1; i <= Math.min(3, last); i++) {
      if (!sameEntry(s.entry(i), kvEntry(i))) v.push(`committed entry ${i} changed`);
    }
    // The log must be a prefix of the old one, or 1..3 then the new entry 4.
    const new4 = kvEntry(4, 2, undefined, ' (new leader)');
    const isNew = last >= 4 && sameEntry(s.entry(4), new4);
    if (isNew && last !== 4) v.push(`new entry 4 followed by entry ${last}`);
    if (!isNew) {
      for (let i = 4; i <= last; i++)
        if (!sameEntry(s.entry(i), kvEntry(i))) v.push(`entry ${i} is neither old nor new`);
    }
    if (commit >= 4 && !isNew)
      v.push(`Commit ${commit} (term ${s.hardState.term}) names an entry 4 that is not the new leader's`);
    if (!outcome.crashed && (!isNew || commit !== 4))
      v.push(`the step returned but the WAL is not 1..3 + new 4, committed`);
    return v;
  },
};

interface HsCtx {
  dir: string;
  before: HardState;
  after: HardState;
}

const hardState: CrashProtocol<HsCtx> = {
  name: 'node: write raft/hard_state',
  async setup(root) {
    const dir = await partitionDir(root);
    const before = { term: 3, vote: 2, commit: 10 };
    await writeHardState(dir, before);
    return { dir, before, after: { term: 4, vote: 1, commit: 12 } };
  },
  async run({ dir, after }) {
    await writeHardState(dir, after);
  },
  async check({ dir, before, after }, outcome) {
    const hs = await readHardState(dir);
    const show = JSON.stringify(hs);
    const is = (x: HardState) => hs?.term === x.term && hs.vote === x.vote && hs.commit === x.commit;
    if (!is(before) && !is(after)) return [`hard_state is ${show}: neither the old nor the new one`];
    if (!outcome.crashed && !is(after)) return [`the write returned but hard_state is ${show}`];
    return [];
  },
};

export const protocols: AnyCrashProtocol[] = [appendAndCommit, truncateSuffix, hardState];
