import { describe, expect, test } from 'vitest';
import { RaftError } from '../../../../storage-node/raft/errors.js';
import { RaftNode, type RaftConfig } from '../../../../storage-node/raft/node.js';
import {
  Cluster,
  SafetyViolation,
  diskWithLog,
  emptyDisk,
  entrySignature,
  type ClusterOptions,
  type Disk,
} from './testing/cluster.js';
import { MemoryStorage } from '../../../../storage-node/raft/storage.js';
import type { Message } from '../../../../storage-node/raft/types.js';

const THREE = [1, 2, 3];
const FIVE = [1, 2, 3, 4, 5];

function cluster(options: Partial<ClusterOptions> & { ids?: readonly number[] } = {}): Cluster {
  return new Cluster({ ids: THREE, seed: 7, ...options });
}

/** Elects `id` (FIFO delivery, no ticks) and lets everyone catch up. */
function elect(c: Cluster, id: number): void {
  for (let attempt = 0; attempt < 3 && c.roles.get(id) !== 'leader'; attempt++) {
    c.campaign(id);
    c.deliverAll();
  }
  expect(c.roles.get(id)).toBe('leader');
}

/** Ticks every live node `n` times, delivering everything after each tick. */
function run(c: Cluster, n: number): void {
  for (let i = 0; i < n; i++) {
    c.tickAll();
    c.deliverAll();
  }
}

function applied(c: Cluster, id: number): string[] {
  return c.disks.get(id)!.applied;
}

function appliedData(c: Cluster, id: number): string[] {
  return applied(c, id).filter((s) => !s.includes('/empty/'));
}

/** Stops `id`, replaces its disk by node 1's first `upTo` entries, committed and applied (a restore's output), and starts it. */
function replaceWithOlderCopy(c: Cluster, id: number, upTo: number): void {
  c.crash(id);
  const kept = c.disks.get(1)!.storage.entries(1, upTo + 1);
  const disk = emptyDisk(THREE);
  disk.storage.append(kept);
  disk.storage.setHardState({ term: c.node(1).status().term, vote: 0, commit: upTo });
  disk.applied = kept.map(entrySignature);
  c.disks.set(id, disk);
  c.restart(id);
}

function notLeaderError(fn: () => unknown): RaftError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(RaftError);
    expect((err as RaftError).kind).toBe('not-leader');
    return err as RaftError;
  }
  throw new Error('expected NOT_LEADER');
}

describe('§5.2 leader election', () => {
  test('election safety: a candidate that wins becomes the only leader of its term', () => {
    const c = cluster();
    elect(c, 1);
    for (const id of [2, 3]) {
      expect(c.roles.get(id)).toBe('follower');
      expect(c.node(id).status().leader).toBe(1);
    }
    expect(c.leaders.get(c.node(1).status().term)).toBe(1);
  });

  test('election safety: simultaneous candidates never both win a term', () => {
    for (let seed = 1; seed <= 50; seed++) {
      const c = cluster({ ids: FIVE, seed, preVote: false });
      c.node(1).campaign();
      c.node(2).campaign();
      c.node(3).campaign();
      for (const id of FIVE) c.process(id);
      c.deliverAll('random');
      const term = c.node(1).status().term;
      const leadersOfTerm = FIVE.filter((id) => {
        const st = c.node(id).status();
        return st.role === 'leader' && st.term === term;
      });
      expect(leadersOfTerm.length).toBeLessThanOrEqual(1);
    }
  });

  test('randomized timeouts: an idle group elects one leader by ticking alone', () => {
    const c = cluster({ ids: FIVE, seed: 3 });
    run(c, 40);
    expect(c.leadersNow()).toHaveLength(1);
    const leader = c.leadersNow()[0]!;
    for (const id of FIVE) expect(c.node(id).status().leader).toBe(leader);
  });

  test('the vote is persisted in the same Ready as the vote request, before it is sent', () => {
    const storage = new MemoryStorage(THREE);
    const node = new RaftNode({ id: 1, storage, random: () => 0, preVote: false });
    node.campaign();
    const rd = node.ready();
    expect(rd.hardState).toEqual({ term: 1, vote: 1, commit: 0 });
    expect(rd.messages.map((m) => [m.type, m.to, m.term])).toEqual([
      ['vote', 2, 1],
      ['vote', 3, 1],
    ]);
    node.advance(rd);
  });

  test('a restarted node remembers its vote and does not vote twice in a term', () => {
    const storage = new MemoryStorage(THREE);
    const voter = new RaftNode({ id: 3, storage, random: () => 0, preVote: false });
    voter.step(voteRequest(1, 3, 1, 0, 0));
    const rd = voter.ready();
    storage.setHardState(rd.hardState!);
    expect(rd.messages[0]).toMatchObject({ type: 'vote-response', to: 1, reject: false });
    // Crash before advance: only the disk survives.
    const restarted = new RaftNode({ id: 3, storage, random: () => 0, preVote: false });
    restarted.step(voteRequest(2, 3, 1, 0, 0));
    expect(restarted.ready().messages[0]).toMatchObject({ type: 'vote-response', to: 2, reject: true });
  });
});

function voteRequest(from: number, to: number, term: number, index: number, logTerm: number): Message {
  return {
    type: 'vote',
    from,
    to,
    term,
    index,
    logTerm,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    transfer: false,
  };
}

describe('§5.3 log replication', () => {
  test('leader append-only: rejections and stale responses never change the leader log', () => {
    const c = cluster();
    elect(c, 1);
    c.isolate(2);
    c.isolate(3);
    for (let i = 0; i < 5; i++) c.propose(1, `w${i}`);
    const leader = c.node(1);
    const before = Array.from({ length: 7 }, (_, i) => leader.termAt(i));
    const term = leader.status().term;
    for (const index of [0, 1, 3, 6, 9]) {
      leader.step({
        ...voteRequest(2, 1, term, index, 0),
        type: 'append-response',
        reject: true,
        rejectHint: 0,
      });
      leader.step({ ...voteRequest(3, 1, term, index, 0), type: 'append-response', reject: false });
      c.process(1);
    }
    expect(Array.from({ length: 7 }, (_, i) => leader.termAt(i))).toEqual(before);
    expect(leader.status().lastIndex).toBe(6);
  });

  test('log matching: a follower rejects an append whose previous entry does not match, and hints where to retry', () => {
    const storage = diskWithLog(THREE, [1, 1, 2, 2, 2], 2).storage;
    const node = new RaftNode({ id: 2, storage, random: () => 0, applied: 0 });
    node.step({ ...voteRequest(1, 2, 3, 5, 3), type: 'append', entries: [] });
    const rd = node.ready();
    const resp = rd.messages[0]!;
    expect(resp).toMatchObject({ type: 'append-response', reject: true, index: 5 });
    // The hint names our last entry with a term <= the probe's, and its term, so
    // the leader can skip a whole term of its own log per round trip.
    expect(resp.rejectHint).toBe(5);
    expect(resp.logTerm).toBe(2);
    node.advance(rd);
  });

  test('log matching: an accepted append replaces a conflicting uncommitted suffix', () => {
    const disk = diskWithLog(THREE, [1, 1, 2, 2, 2], 2);
    const node = new RaftNode({ id: 2, storage: disk.storage, random: () => 0, applied: 0 });
    const entries = [3, 4].map((index) => ({
      term: 3,
      index,
      type: 'normal' as const,
      data: new Uint8Array([index]),
    }));
    node.step({ ...voteRequest(1, 2, 3, 2, 1), type: 'append', entries, commit: 4 });
    const rd = node.ready();
    expect(rd.entries.map((e) => [e.index, e.term])).toEqual([
      [3, 3],
      [4, 3],
    ]);
    expect(rd.messages[0]).toMatchObject({ type: 'append-response', reject: false, index: 4 });
    // Commit follows the leader only as far as this append matched (4, not 5).
    expect(rd.hardState?.commit).toBe(4);
    disk.storage.append(rd.entries);
    disk.storage.setHardState(rd.hardState!);
    node.advance(rd);
    expect(disk.storage.lastIndex()).toBe(4);
    expect(node.status().lastIndex).toBe(4);
  });

  test('heartbeats carry min(match, commit), so a lagging follower never commits entries it lacks', () => {
    const c = cluster();
    elect(c, 1);
    c.isolate(3);
    for (let i = 0; i < 4; i++) c.propose(1, `w${i}`);
    c.deliverAll();
    const leader = c.node(1).status();
    expect(leader.commit).toBe(5);
    c.heal();
    c.filter = (m) => m.type === 'heartbeat' || m.type === 'heartbeat-response';
    const sent: Message[] = [];
    c.node(1).tick();
    const rd = c.node(1).ready();
    sent.push(...rd.messages);
    c.node(1).advance(rd);
    const toLagging = sent.find((m) => m.type === 'heartbeat' && m.to === 3)!;
    const toCurrent = sent.find((m) => m.type === 'heartbeat' && m.to === 2)!;
    expect(toLagging.commit).toBe(1);
    expect(toCurrent.commit).toBe(5);
  });

  test('a follower whose log was replaced by an older copy (a restore) is sent what it lost, not left waiting', () => {
    const c = cluster();
    elect(c, 1);
    for (let i = 0; i < 10; i++) c.propose(1, `w${i}`);
    c.deliverAll();
    expect(c.node(3).status().commit).toBe(11);
    // Node 3's partition is replaced by a copy of the first 6 entries, as a restore from an archive that ends there writes it.
    replaceWithOlderCopy(c, 3, 6);
    run(c, 5);
    expect(c.node(3).status().lastIndex).toBe(11);
    expect(c.node(1).status().progress![3]!.match).toBe(11);
    c.propose(1, 'after');
    c.deliverAll();
    run(c, 2);
    expect(applied(c, 3)).toEqual(applied(c, 1));
  });

  test('a follower that lost acknowledged entries neither votes nor campaigns until it has them again', () => {
    const c = cluster();
    elect(c, 1);
    c.cutLink(1, 2);
    for (let i = 0; i < 10; i++) c.propose(1, `w${i}`);
    c.deliverAll();
    // Committed by nodes 1 and 3 alone: node 2 never saw them.
    expect(c.node(1).status().commit).toBe(11);
    expect(c.node(2).status().lastIndex).toBe(1);
    replaceWithOlderCopy(c, 3, 6);
    // Node 3 hears the leader's heartbeats (and so learns what it lost), then the leader dies.
    c.filter = (m) => !(m.type === 'append' && m.to === 3);
    run(c, 3);
    c.crash(1);
    c.filter = undefined;
    c.heal();
    // With node 3's vote node 2 could not win (its log is older), but node 3 could, with node 2's
    // vote, and then lose 7..11. It must wait for node 1.
    run(c, 60);
    expect(c.leadersNow()).toEqual([]);
    c.restart(1);
    run(c, 60);
    expect(c.leadersNow().length).toBe(1);
    for (const id of THREE) expect(appliedData(c, id).slice(0, 10)).toEqual(appliedData(c, 1).slice(0, 10));
    expect(appliedData(c, 3).length).toBeGreaterThanOrEqual(10);
  });

  test('fast backtracking: a follower with a long divergent tail is repaired in a few round trips', () => {
    const common = [1, 1, 1];
    const disks = new Map<number, Disk>([
      [1, diskWithLog(THREE, [...common, 4, 4, 4, 4, 4, 4], 3)],
      [2, diskWithLog(THREE, [...common, 4, 4, 4, 4, 4, 4], 3)],
      [3, diskWithLog(THREE, [...common, ...Array<number>(30).fill(2), ...Array<number>(30).fill(3)], 3)],
    ]);
    const c = cluster({ disks, preVote: false, maxMsgEntries: 64 });
    let rejections = 0;
    c.filter = (m) => {
      if (m.type === 'append-response' && m.reject) rejections++;
      return true;
    };
    elect(c, 1);
    c.propose(1, 'after');
    c.deliverAll();
    expect(rejections).toBeLessThanOrEqual(3);
    expect(applied(c, 3)).toEqual(applied(c, 1));
    c.checkLogMatching();
  });

  test('flow control: a pipelined follower gets at most maxInflight unacknowledged appends', () => {
    const c = cluster({ maxInflight: 2, maxMsgEntries: 1 });
    elect(c, 1);
    c.filter = (m) => !(m.type === 'append-response' && m.from === 3);
    for (let i = 0; i < 10; i++) c.propose(1, `w${i}`);
    const appendsTo3 = c.queue.filter((m) => m.type === 'append' && m.to === 3).length;
    expect(appendsTo3).toBe(2);
    expect(c.node(1).status().progress![3]).toMatchObject({ state: 'replicate', inflight: 2 });
  });

  test('flow control: a probing follower gets one append at a time', () => {
    const c = cluster({ maxInflight: 4, maxMsgEntries: 1 });
    elect(c, 1);
    c.node(1).reportUnreachable(3);
    expect(c.node(1).status().progress![3]!.state).toBe('probe');
    c.filter = (m) => !(m.from === 3);
    for (let i = 0; i < 5; i++) c.propose(1, `w${i}`);
    expect(c.queue.filter((m) => m.type === 'append' && m.to === 3)).toHaveLength(1);
  });

  test('a lost pipelined append is resent after heartbeats show no progress', () => {
    const c = cluster();
    elect(c, 1);
    // Without node 2 nothing commits, so no commit broadcast repairs node 3 early.
    c.isolate(2);
    let dropOne = true;
    c.filter = (m) => {
      if (dropOne && m.type === 'append' && m.to === 3 && m.entries.length > 0) {
        dropOne = false;
        return false;
      }
      return true;
    };
    c.propose(1, 'w');
    c.deliverAll();
    expect(c.node(3).status().lastIndex).toBe(1);
    run(c, 4);
    expect(c.node(3).status().lastIndex).toBe(2);
    expect(appliedData(c, 3)).toEqual(appliedData(c, 1));
  });
});

describe('§5.4 safety', () => {
  test('leader completeness: a node missing a committed entry cannot win an election', () => {
    // No pre-vote or lease: node 2 turns node 3 down only because of its log.
    const c = cluster({ preVote: false, checkQuorum: false });
    elect(c, 1);
    c.isolate(3);
    c.propose(1, 'committed');
    c.deliverAll();
    expect(c.node(1).status().commit).toBe(2);
    c.crash(1);
    c.heal();
    c.campaign(3);
    c.deliverAll();
    expect(c.roles.get(3)).not.toBe('leader');
    elect(c, 2);
    c.propose(2, 'next');
    c.deliverAll();
    expect(appliedData(c, 3)).toEqual(appliedData(c, 2));
    expect(appliedData(c, 2)[0]).toContain('committed');
  });

  test('state machine safety: nodes that crash and restart apply the same entries at the same indexes', () => {
    const c = cluster({ ids: FIVE, seed: 11 });
    run(c, 30);
    for (let round = 0; round < 10; round++) {
      const leader = c.leadersNow()[0];
      if (leader !== undefined) c.propose(leader, `r${round}`);
      c.crash(((round * 2) % 5) + 1);
      run(c, 15);
      c.restart(((round * 2) % 5) + 1);
      run(c, 15);
    }
    const reference = applied(c, c.leadersNow()[0]!);
    expect(reference.length).toBeGreaterThan(5);
    for (const id of FIVE) expect(applied(c, id)).toEqual(reference);
  });

  test('a committed entry is never truncated, by the log or by storage', () => {
    const disk = diskWithLog(THREE, [1, 1, 1], 2);
    expect(() => disk.storage.truncate(2)).toThrow(/committed/);
    expect(() =>
      disk.storage.append([{ term: 5, index: 2, type: 'normal', data: new Uint8Array() }]),
    ).toThrow(/committed/);
    disk.storage.truncate(3);
    expect(disk.storage.lastIndex()).toBe(2);
  });

  /**
   * Raft paper Figure 8. S1 leads term 1 and gets entry 2 onto S2 only. S5 wins
   * term 2 with S3 and S4 and appends its own entry 2, which reaches no one. S1
   * wins term 3 and copies its entry 2 (term 1) onto S3 — a majority holds it,
   * but S1 has not yet replicated an entry of term 3. If S1 counted replicas
   * to commit it, S5 could still win term 4 (its last term 2 beats S3's and
   * S4's) and overwrite it.
   */
  function figure8(factory?: (config: RaftConfig) => RaftNode): Cluster {
    const c = new Cluster({
      ids: FIVE,
      seed: 1,
      preVote: false,
      checkQuorum: false,
      maxMsgEntries: 1,
      ...(factory ? { factory } : {}),
    });
    elect(c, 1);
    // (a) entry 2 of term 1 reaches S2 only.
    for (const id of [3, 4, 5]) c.isolate(id);
    c.propose(1, 'x');
    c.deliverAll();
    // (b) S5 wins term 2 with S3, S4; its entry 2 reaches no one.
    c.crash(1);
    c.heal();
    c.cutLink(5, 2);
    c.campaign(5);
    c.filter = (m) => !(m.from === 5 && m.type === 'append');
    c.deliverAll();
    expect(c.roles.get(5)).toBe('leader');
    expect(c.node(5).termAt(2)).toBe(2);
    c.crash(5);
    c.filter = undefined;
    // (c) S1 returns, wins term 3 (second try) with S2, S3, S4 and copies entry 2 onto S3 only.
    c.restart(1);
    c.isolate(4);
    c.filter = (m) =>
      !(m.type === 'append' && m.to === 3 && m.index >= 2 && c.node(3).status().lastIndex >= 2);
    c.campaign(1);
    c.deliverAll();
    if (c.roles.get(1) !== 'leader') {
      c.campaign(1);
      c.deliverAll();
    }
    expect(c.roles.get(1)).toBe('leader');
    expect(c.node(1).status().term).toBe(3);
    expect(c.node(3).termAt(2)).toBe(1);
    expect(c.node(3).status().lastIndex).toBe(2);
    // (d) S1 crashes; S5 returns and wins term 4 with S3 and S4.
    c.crash(1);
    c.filter = undefined;
    c.heal();
    c.cutLink(5, 2);
    c.restart(5);
    c.campaign(5);
    c.deliverAll();
    if (c.roles.get(5) !== 'leader') {
      c.campaign(5);
      c.deliverAll();
    }
    return c;
  }

  test('Figure 8: a leader does not commit an entry of an earlier term by counting replicas', () => {
    const c = figure8();
    expect(c.roles.get(5)).toBe('leader');
    c.heal();
    c.restart(1);
    c.propose(5, 'y');
    run(c, 10);
    // Entry 2 of term 1 was never committed; S5's entry replaced it everywhere.
    for (const id of FIVE) {
      expect(appliedData(c, id).some((s) => s.endsWith('/x'))).toBe(false);
      expect(applied(c, id)).toEqual(applied(c, 5));
    }
  });

  test('Figure 8 with a node that commits by counting replicas: the checker reports the lost entry', () => {
    class CountsReplicas extends RaftNode {
      protected override mayCommitByQuorum(): boolean {
        return true;
      }
    }
    expect(() => figure8((config) => new CountsReplicas(config))).toThrow(SafetyViolation);
  });
});

describe('etcd practice', () => {
  test('pre-vote: a node rejoining after a partition does not disrupt the leader', () => {
    const c = cluster();
    elect(c, 1);
    const term = c.node(1).status().term;
    c.isolate(3);
    for (let i = 0; i < 100; i++) c.tick(3);
    expect(c.node(3).status().term).toBe(term);
    c.heal();
    run(c, 5);
    expect(c.node(1).status()).toMatchObject({ role: 'leader', term });
    expect(c.node(3).status()).toMatchObject({ role: 'follower', leader: 1, term });
  });

  test('without pre-vote the same rejoin forces a new election (the rule above is what prevents it)', () => {
    const c = cluster({ preVote: false });
    elect(c, 1);
    const term = c.node(1).status().term;
    c.isolate(3);
    for (let i = 0; i < 100; i++) c.tick(3);
    expect(c.node(3).status().term).toBeGreaterThan(term + 3);
    c.heal();
    run(c, 30);
    expect(c.node(1).status().term).toBeGreaterThan(term);
  });

  test('check-quorum: a leader cut off from the quorum steps down and refuses writes', () => {
    const c = cluster();
    elect(c, 1);
    c.isolate(1);
    // Followers heard from before the cut count for the first period; the second one fails.
    for (let i = 0; i < 10; i++) c.tick(1);
    expect(c.node(1).status().role).toBe('leader');
    for (let i = 0; i < 10; i++) c.tick(1);
    expect(c.node(1).status().role).toBe('follower');
    const err = notLeaderError(() => c.node(1).propose(new Uint8Array([1])));
    expect(err.details).toMatchObject({ leader: 0 });
    for (let i = 0; i < 100 && !c.leadersNow().some((id) => id !== 1); i++) run(c, 1);
    const leaders = c.leadersNow();
    expect(leaders).toHaveLength(1);
    expect(leaders[0]).not.toBe(1);
  });

  test('without check-quorum the cut-off leader keeps leading (the rule above is what makes it step down)', () => {
    const c = cluster({ checkQuorum: false });
    elect(c, 1);
    c.isolate(1);
    for (let i = 0; i < 50; i++) c.tick(1);
    expect(c.node(1).status().role).toBe('leader');
  });

  test('propose on a follower throws a not-leader RaftError naming the leader', () => {
    const c = cluster();
    elect(c, 1);
    const err = notLeaderError(() => c.node(2).propose(new Uint8Array([1])));
    expect(err.details).toMatchObject({ leader: 1 });
    expect(err.message).toBe('raft: node 2 is not the leader');
  });

  test('snapshot: a follower whose entries were compacted away catches up from a snapshot', () => {
    const c = cluster();
    elect(c, 1);
    c.isolate(3);
    for (let i = 0; i < 20; i++) c.propose(1, `w${i}`);
    c.deliverAll();
    expect(c.node(1).status().commit).toBe(21);
    c.compact(1, 18);
    c.compact(2, 18);
    expect(c.node(1).status().firstIndex).toBe(19);
    c.heal();
    run(c, 5);
    expect(c.stats.snapshotsInstalled).toBe(1);
    expect(c.disks.get(3)!.storage.snapshotMeta().index).toBe(18);
    c.propose(1, 'after');
    c.deliverAll();
    expect(applied(c, 3)).toEqual(applied(c, 1));
    expect(c.node(1).status().progress![3]!.state).toBe('replicate');
  });

  test('snapshot: a lost snapshot is retried once the transport reports the failure', () => {
    const c = cluster();
    elect(c, 1);
    c.isolate(3);
    for (let i = 0; i < 5; i++) c.propose(1, `w${i}`);
    c.deliverAll();
    c.compact(1, 6);
    c.compact(2, 6);
    c.heal();
    let dropped = 0;
    c.filter = (m) => !(m.type === 'snapshot' && dropped++ === 0);
    run(c, 10);
    expect(dropped).toBeGreaterThanOrEqual(2);
    expect(applied(c, 3)).toEqual(applied(c, 1));
  });

  test('an old leader cut off with uncommitted entries has them replaced when it rejoins', () => {
    const c = cluster();
    elect(c, 1);
    c.propose(1, 'shared');
    c.deliverAll();
    c.isolate(1);
    for (const text of ['lost-a', 'lost-b', 'lost-c']) expect(c.propose(1, text)).toBeDefined();
    expect(c.node(1).status().lastIndex).toBe(5);
    for (let i = 0; i < 100 && !c.leadersNow().some((id) => id !== 1); i++) {
      c.tick(2);
      c.tick(3);
      c.deliverAll();
    }
    const newLeader = c.leadersNow().find((id) => id !== 1)!;
    expect(newLeader).toBeDefined();
    for (const text of ['new-a', 'new-b']) c.propose(newLeader, text);
    c.deliverAll();
    c.heal();
    run(c, 20);
    expect(c.node(1).status()).toMatchObject({ role: 'follower', leader: newLeader });
    const data = appliedData(c, 1);
    expect(data.some((s) => s.includes('lost-'))).toBe(false);
    expect(data.filter((s) => s.includes('new-'))).toHaveLength(2);
    expect(applied(c, 1)).toEqual(applied(c, newLeader));
    c.checkLogMatching();
  });

  test('leader transfer: the target takes over and the old leader refuses writes meanwhile', () => {
    const c = cluster();
    elect(c, 1);
    const term = c.node(1).status().term;
    c.isolate(3);
    c.propose(1, 'w');
    c.deliverAll();
    c.node(1).transferLeadership(3);
    notLeaderError(() => c.node(1).propose(new Uint8Array([1])));
    c.heal();
    run(c, 3);
    expect(c.node(3).status()).toMatchObject({ role: 'leader', term: term + 1 });
    expect(c.node(1).status()).toMatchObject({ role: 'follower', leader: 3 });
  });

  test('ready() twice without advance() is refused', () => {
    const node = new RaftNode({ id: 1, voters: [1], storage: new MemoryStorage(), random: () => 0 });
    node.campaign();
    node.ready();
    expect(node.hasReady()).toBe(false);
    expect(() => node.ready()).toThrow(/advance/);
  });

  test('a single-node group elects itself and commits on its own', () => {
    const storage = new MemoryStorage([1]);
    const node = new RaftNode({ id: 1, storage, random: () => 0 });
    node.campaign();
    expect(node.status().role).toBe('leader');
    const { index } = node.propose(new Uint8Array([42]));
    const rd = node.ready();
    expect(rd.entries.map((e) => e.index)).toEqual([1, 2]);
    expect(rd.committedEntries.map((e) => e.index)).toEqual([1, index]);
    expect(rd.softState).toEqual({ leader: 1, role: 'leader' });
  });

  test('config is validated when the node is built', () => {
    const storage = new MemoryStorage();
    expect(() => new RaftNode({ id: 0, voters: [1], storage, random: Math.random })).toThrow(/id/);
    expect(() => new RaftNode({ id: 1, voters: [], storage, random: Math.random })).toThrow(/voters/);
    expect(
      () =>
        new RaftNode({ id: 1, voters: [1], storage, random: Math.random, electionTick: 2, heartbeatTick: 2 }),
    ).toThrow(/heartbeatTick/);
    expect(
      () => new RaftNode({ id: 1, voters: [1, 2], storage: new MemoryStorage([1, 3]), random: Math.random }),
    ).toThrow(/differ/);
  });
});
