import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { setDurableObserver, type DurableEvent } from '../../../contract/fs/durable-fs.js';
import { encodePayload, decodeEntryInfo, type EntryContent } from '../../../contract/wal/entry-info.js';
import { createLogger } from '../../../contract/log.js';
import { linkTree, packState } from '../../../contract/state/snapshot.js';
import { decodeRaftEntry } from '../../../contract/wal/raftpb.js';
import {
  entryDir,
  listEntryLsns,
  RAFT_FILE,
  readAppliedLsn,
  writeAppliedLsn,
  writeArchiverPosition,
} from '../../../contract/wal/entry.js';
import { encodeLogEntry } from '../../../contract/wal/log-entry.js';
import { formatLsn } from '../../../contract/wal/lsn.js';
import { buildTransaction } from '../../../storage-node/api.js';
import type { Entry, Message } from '../../../storage-node/raft/index.js';
import { PRUNE_BATCH, Replica, type ReplicaOptions } from '../../../storage-node/replica.js';
import { readSnapshotMeta, WalStorage } from '../../../storage-node/wal-storage.js';

const dirs: string[] = [];
afterEach(async () => {
  setDurableObserver(undefined);
  while (dirs.length) await rm(dirs.pop()!, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'replica-'));
  dirs.push(dir);
  return dir;
}

const logger = createLogger({}, { write: () => undefined });
const noTransport = { send: () => undefined, sendSnapshot: () => undefined };

function content(i: number, label = 'k'): EntryContent {
  const tx = buildTransaction({
    relativePath: 'repo.git',
    files: [Buffer.from(`${label}-${i}`).toString('base64')],
    operations: [{ setKey: { key: Buffer.from(`${label}-${i}`).toString('base64'), value: 'AA==' } }],
  });
  return { manifest: encodeLogEntry(tx.manifest), files: tx.files };
}

function normal(index: number, term: number, stamp: number): Entry {
  return { index, term, type: 'normal', data: encodePayload(content(index, 'leader'), stamp) };
}

async function until<T>(what: string, check: () => T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function open(dir: string, extra: Partial<ReplicaOptions> = {}): Promise<Replica> {
  return Replica.open({
    nodeId: 1,
    partition: '1',
    dir,
    voters: [1, 2, 3],
    transport: noTransport,
    onLeadership: () => undefined,
    logger,
    electionTick: 1000,
    ...extra,
  });
}

/** Ticks a single-voter replica until it leads. */
async function lead(r: Replica): Promise<void> {
  await until('leadership', () => {
    r.tick();
    return r.isLeader ? true : undefined;
  });
}

// ---- Defect 1: a crash at any step of a snapshot install --------------------------------

const OLD_STATE = Buffer.from('old state at LSN 3');
const NEW_STATE = Buffer.from('new state at LSN 20');
const SNAP = { index: 20, term: 2, voters: [1, 2, 3] };
const SHIPPED = Array.from({ length: 15 }, (_, i) => i + 6); // the leader's unarchived 6..20

interface Fixture {
  follower: string;
  leaderState: string;
  shippedWal: string;
  leaderWal: string;
}

/** A follower at LSN 3 (entries 1..3 on disk), and a leader's snapshot at 20 with its WAL 6..20. */
async function fixture(): Promise<Fixture> {
  const root = await tempDir();
  const follower = join(root, 'follower');
  const f = await WalStorage.open(follower, '1', [1, 2, 3]);
  await f.append([normal(1, 1, 100), normal(2, 1, 101), normal(3, 1, 102)]);
  await f.setHardState({ term: 1, vote: 0, commit: 3 });
  await mkdir(join(follower, 'state'), { recursive: true });
  await writeFile(join(follower, 'state', 'kv-state'), OLD_STATE);
  await writeAppliedLsn(follower, 3);

  const leaderWal = join(root, 'leader');
  const l = await WalStorage.open(leaderWal, '1', [1, 2, 3]);
  await l.append(Array.from({ length: 20 }, (_, i) => normal(i + 1, i < 3 ? 1 : 2, 1000 + i)));
  await l.compact(5, [1, 2, 3]);
  const shippedWal = join(root, 'shipped');
  for (const lsn of SHIPPED) await linkTree(entryDir(leaderWal, lsn), join(shippedWal, formatLsn(lsn)));
  const leaderState = join(root, 'leader-state');
  await mkdir(join(leaderState, 'repositories', 'repo.git'), { recursive: true });
  await writeFile(join(leaderState, 'kv-state'), NEW_STATE);
  await writeFile(join(leaderState, 'repositories', 'repo.git', 'HEAD'), 'ref: refs/heads/main\n');
  return { follower, leaderState, shippedWal, leaderWal };
}

const snapshotMessage: Message = {
  type: 'snapshot',
  from: 2,
  to: 1,
  term: 2,
  logTerm: 0,
  index: 0,
  entries: [],
  commit: 20,
  reject: false,
  rejectHint: 0,
  transfer: false,
  snapshot: SNAP,
};

class Crash extends Error {}

/**
 * Runs an install on the fixture, stopping at durable operation `crashAt`
 * (none: run to the end); returns how many operations it saw.
 */
async function install(fx: Fixture, crashAt?: number): Promise<{ ops: number; seen: DurableEvent[] }> {
  const replica = await open(fx.follower);
  const seen: DurableEvent[] = [];
  let crashed = false;
  setDurableObserver({
    before(e) {
      seen.push(e);
      if (crashAt !== undefined && seen.length === crashAt) {
        crashed = true;
        throw new Crash(`crash at ${e.op} ${e.path}`);
      }
    },
  });
  try {
    await replica.receiveSnapshot(snapshotMessage, packState(fx.leaderState, { walDir: fx.shippedWal }));
    await until('the install to finish or stop', () =>
      replica.error !== undefined || replica.status().applied === SNAP.index ? true : undefined,
    );
    // Let the Ready loop finish writing what followed (the hard state).
    await until('the Ready loop to settle', () =>
      replica.error !== undefined || !busy(replica) ? true : undefined,
    );
  } catch (err) {
    // The crash may come back wrapped; anything else is a failure of its own.
    if (!crashed) throw err;
  } finally {
    setDurableObserver(undefined);
    await replica.close();
  }
  return { ops: seen.length, seen };
}

function busy(r: Replica): boolean {
  return (r as unknown as { pumping: boolean }).pumping;
}

/** What a reopened follower holds must be all old or all new, and agree with itself. */
async function expectConsistent(fx: Fixture, where: string): Promise<'old' | 'new'> {
  const dir = fx.follower;
  const replica = await open(dir);
  try {
    expect(replica.error, where).toBeUndefined();
    const applied = await readAppliedLsn(dir);
    const snap = await readSnapshotMeta(dir, [1, 2, 3]);
    const kv = await readFile(join(dir, 'state', 'kv-state'));
    const wal = await listEntryLsns(dir);
    const leftovers = (await readdir(dir)).filter(
      (n) => n.startsWith('state.old-') || n.startsWith('snapshot-wal-'),
    );
    expect(leftovers, `${where}: leftovers`).toEqual([]);
    expect(existsSync(join(dir, 'raft', 'install')), `${where}: intent left`).toBe(false);
    expect(replica.status().applied, `${where}: applied in memory`).toBe(applied);
    if (applied === 3) {
      expect(kv.equals(OLD_STATE), `${where}: state/ is the old state`).toBe(true);
      expect(snap.index, `${where}: raft/snapshot`).toBe(0);
      expect(wal, `${where}: wal/`).toEqual([1, 2, 3]);
      return 'old';
    }
    expect(applied, `${where}: applied_lsn`).toBe(SNAP.index);
    expect(kv.equals(NEW_STATE), `${where}: state/ is the snapshot's`).toBe(true);
    expect(await readFile(join(dir, 'state', 'repositories', 'repo.git', 'HEAD'), 'utf8')).toBe(
      'ref: refs/heads/main\n',
    );
    expect(snap, `${where}: raft/snapshot`).toEqual(SNAP);
    expect(wal, `${where}: wal/ holds the shipped entries`).toEqual(SHIPPED);
    for (const lsn of SHIPPED) {
      const [mine, theirs] = await Promise.all([
        readFile(join(entryDir(dir, lsn), RAFT_FILE)),
        readFile(join(entryDir(fx.leaderWal, lsn), RAFT_FILE)),
      ]);
      expect(mine.equals(theirs), `${where}: RAFT at ${lsn}`).toBe(true);
    }
    return 'new';
  } finally {
    await replica.close();
  }
}

describe('Replica: installing a snapshot survives a crash at every durable step', () => {
  it('without a crash, installs state, applied_lsn, raft/snapshot and the shipped WAL', async () => {
    const fx = await fixture();
    const { ops } = await install(fx);
    expect(ops).toBeGreaterThan(10);
    expect(await expectConsistent(fx, 'no crash')).toBe('new');
  });

  it(
    'reopens to the old or the new snapshot, never a mix, after a crash at each operation',
    { timeout: 300_000 },
    async () => {
      const { ops, seen } = await install(await fixture());
      const outcomes: string[] = [];
      for (let k = 1; k <= ops; k++) {
        const fx = await fixture();
        await install(fx, k);
        const where = `crash at operation ${k} of ${ops} (${seen[k - 1]!.op} ${seen[k - 1]!.path.slice(fx.follower.length)})`;
        outcomes.push(await expectConsistent(fx, where));
      }
      // Early crashes keep the old state; once the intent is down, reopening finishes the install.
      expect(outcomes[0]).toBe('old');
      expect(outcomes[outcomes.length - 1]).toBe('new');
    },
  );

  it('puts state/ back from state.old-* when an install without an intent was cut between its renames', async () => {
    // What the install before the intent record left after a crash: no state/, the old one aside.
    const fx = await fixture();
    const dir = fx.follower;
    const { rename } = await import('node:fs/promises');
    await rename(join(dir, 'state'), join(dir, 'state.old-0a1b2c3d'));
    await mkdir(join(dir, 'snapshot-incoming', '20-00000000'), { recursive: true });
    await writeFile(join(dir, 'snapshot-incoming', '20-00000000', 'kv-state'), NEW_STATE);
    expect(await expectConsistent(fx, 'reopen')).toBe('old');
  });
});

describe('Replica.open: leftovers of an install without an intent', () => {
  it('keeps a shipped WAL folder that still holds entries, removes an empty one', async () => {
    const fx = await fixture();
    const dir = fx.follower;
    await linkTree(fx.shippedWal, join(dir, 'snapshot-wal-11111111'));
    await mkdir(join(dir, 'snapshot-wal-22222222'));
    const r = await open(dir);
    await r.close();
    const names = (await readdir(dir)).filter((n) => n.startsWith('snapshot-wal-'));
    expect(names).toEqual(['snapshot-wal-11111111']);
    expect((await readdir(join(dir, 'snapshot-wal-11111111'))).length).toBe(SHIPPED.length);
  });

  it('refuses to start with an empty state/ when state/ is missing but applied_lsn names an LSN', async () => {
    const fx = await fixture();
    await rm(join(fx.follower, 'state'), { recursive: true });
    await expect(open(fx.follower)).rejects.toThrow(/state\/ is missing but applied_lsn says 3/);
    // Not replaced by an empty one either, which a second start would take as the state.
    expect(existsSync(join(fx.follower, 'state'))).toBe(false);
    await expect(open(fx.follower)).rejects.toThrow(/state\/ is missing/);
  });
});

// ---- Defect 2: pruning waits for the archive ---------------------------------------------

async function leaderWithEntries(dir: string, count: number, extra: Partial<ReplicaOptions> = {}) {
  const r = await open(dir, { voters: [1], electionTick: 2, ...extra });
  await lead(r);
  for (let i = 0; i < count; i++) await r.propose(content(i));
  return r;
}

describe('Replica: pruning', () => {
  it('keeps every entry while archiver/position is missing', async () => {
    const dir = await tempDir();
    const r = await leaderWithEntries(dir, 3 * PRUNE_BATCH);
    try {
      await r.prune();
      await r.prune();
      expect((await listEntryLsns(dir))[0]).toBe(1);
      expect(r.walEntries).toBeGreaterThanOrEqual(3 * PRUNE_BATCH);
      expect(r.retainedForArchiver).toBeGreaterThanOrEqual(3 * PRUNE_BATCH);
    } finally {
      await r.close();
    }
  });

  it('prunes to the archived position: its own sidecar’s, or the leader’s when higher', async () => {
    const dir = await tempDir();
    const r = await leaderWithEntries(dir, 4 * PRUNE_BATCH);
    try {
      await writeArchiverPosition(dir, PRUNE_BATCH + 5);
      await r.prune();
      expect((await listEntryLsns(dir))[0]).toBe(PRUNE_BATCH + 6);
      r.remoteArchived = 3 * PRUNE_BATCH;
      await r.prune();
      expect((await listEntryLsns(dir))[0]).toBe(3 * PRUNE_BATCH + 1);
    } finally {
      await r.close();
    }
  });

  it('prunes by Raft alone when run without an archiver', async () => {
    const dir = await tempDir();
    const r = await leaderWithEntries(dir, 3 * PRUNE_BATCH, { archiver: false });
    try {
      await r.prune();
      const first = (await listEntryLsns(dir))[0];
      expect(first === undefined || first > 2 * PRUNE_BATCH).toBe(true);
    } finally {
      await r.close();
    }
  });
});

// ---- Defect 3: commit stamps never go backwards ------------------------------------------

function stampsOf(dir: string, lsns: number[]): Promise<number[]> {
  return Promise.all(
    lsns.map(async (lsn) => {
      const raft = decodeRaftEntry(await readFile(join(entryDir(dir, lsn), RAFT_FILE)));
      return raft.data && raft.data.length > 0 ? decodeEntryInfo(raft.data).committedAt : undefined;
    }),
  ).then((s) => s.filter((x): x is number => x !== undefined));
}

describe('Replica: commit stamps', () => {
  it('a new leader whose clock is behind stamps no lower than the entries it holds', async () => {
    const dir = await tempDir();
    let clock = 5_000_000;
    const first = await leaderWithEntries(dir, 5, { now: () => clock });
    await first.close();
    // The next leader (a new term) runs on a clock an hour behind.
    clock = 5_000_000 - 3_600_000;
    const second = await open(dir, { voters: [1], electionTick: 2, now: () => clock });
    try {
      await lead(second);
      const r = await second.propose(content(99));
      expect(r.committedAt).toBeGreaterThanOrEqual(5_000_000);
      const stamps = await stampsOf(dir, await listEntryLsns(dir));
      expect(stamps.length).toBe(6);
      for (let i = 1; i < stamps.length; i++) expect(stamps[i]!).toBeGreaterThanOrEqual(stamps[i - 1]!);
    } finally {
      await second.close();
    }
  });

  it('remembers the highest stamp when every entry has been pruned', async () => {
    const dir = await tempDir();
    let clock = 7_000_000;
    const first = await leaderWithEntries(dir, 2 * PRUNE_BATCH, { now: () => clock, archiver: false });
    await first.prune();
    await first.close();
    expect((await listEntryLsns(dir)).length).toBeLessThan(PRUNE_BATCH);
    clock = 1_000;
    const second = await open(dir, { voters: [1], electionTick: 2, now: () => clock });
    try {
      await lead(second);
      expect((await second.propose(content(1))).committedAt).toBeGreaterThanOrEqual(7_000_000);
    } finally {
      await second.close();
    }
  });

  it('counts entries it holds but has not applied (their commit is not known yet)', async () => {
    // Node 1 holds entries 1..2 stamped by the old leader's clock, without having learnt their commit.
    const dir = await tempDir();
    const s = await WalStorage.open(dir, '1', [1, 2, 3]);
    await s.append([normal(1, 1, 9_000_000), normal(2, 1, 9_000_001)]);
    await s.setHardState({ term: 1, vote: 0, commit: 0 });
    const r = await open(dir, { electionTick: 2, now: () => 1_000 });
    const vote = (type: Message['type'], term: number): Message => ({
      ...snapshotMessage,
      type,
      term,
      commit: 0,
      snapshot: undefined,
    });
    try {
      // It wins an election (node 2 votes for it); nothing is committed in its term yet.
      await until('pre-candidacy', () => {
        r.tick();
        return r.status().role === 'pre-candidate' ? true : undefined;
      });
      r.step(vote('pre-vote-response', r.status().term + 1));
      await until('candidacy', () => (r.status().role === 'candidate' ? true : undefined));
      r.step(vote('vote-response', r.status().term));
      await until('leadership', () => (r.isLeader ? true : undefined));
      expect(r.status().applied).toBe(0);
      const pending = r.propose(content(1)).catch(() => undefined);
      const lsn = await until('the proposal on disk', () => (r.status().appended >= 4 ? 4 : undefined));
      await until('the Ready loop to settle', () => (busy(r) ? undefined : true));
      const [stamp] = await stampsOf(dir, [lsn]);
      expect(stamp).toBeGreaterThanOrEqual(9_000_001);
      await r.close();
      await pending;
    } finally {
      await r.close();
    }
  });
});
