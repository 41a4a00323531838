import { isRaftError, RaftErrorKinds } from '../../../../../storage-node/raft/errors.js';
import { RaftNode, type RaftConfig } from '../../../../../storage-node/raft/node.js';
import { MemoryStorage } from '../../../../../storage-node/raft/storage.js';
import type { Entry, Message, Ready, Role } from '../../../../../storage-node/raft/types.js';
import { Rng } from './prng.js';

/** A broken safety property, found by the checks below. */
export class SafetyViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetyViolation';
  }
}

/** What survives a crash: the persisted log and hard state, the snapshot, and the applied state machine. */
export interface Disk {
  readonly storage: MemoryStorage;
  /** The state machine as of the snapshot: one signature per index 1..snapshot index. */
  snapshotData: string[];
  /** The state machine: one signature per applied index 1..applied. */
  applied: string[];
}

export type NodeFactory = (config: RaftConfig) => RaftNode;

export interface ClusterOptions {
  ids: readonly number[];
  seed: number;
  electionTick?: number;
  heartbeatTick?: number;
  preVote?: boolean;
  checkQuorum?: boolean;
  maxMsgEntries?: number;
  maxInflight?: number;
  factory?: NodeFactory;
  /** Pre-populated disks (for scenario tests); missing ones start empty. */
  disks?: ReadonlyMap<number, Disk>;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

export function entrySignature(e: Entry): string {
  return `${e.term}/${e.type}/${decoder.decode(e.data)}`;
}

export function bytes(text: string): Uint8Array {
  return encoder.encode(text);
}

export function emptyDisk(ids: readonly number[]): Disk {
  return { storage: new MemoryStorage(ids), snapshotData: [], applied: [] };
}

/**
 * A disk whose log holds one entry per element of `terms` (index i+1 has term
 * terms[i]), committed and applied up to `commit`.
 */
export function diskWithLog(
  ids: readonly number[],
  terms: readonly number[],
  commit: number,
  vote = 0,
): Disk {
  const storage = new MemoryStorage(ids);
  const entries: Entry[] = terms.map((term, i) => ({
    term,
    index: i + 1,
    type: 'normal',
    data: bytes(`pre-${i + 1}-t${term}`),
  }));
  storage.append(entries);
  storage.setHardState({ term: Math.max(0, ...terms), vote, commit });
  return { storage, snapshotData: [], applied: entries.slice(0, commit).map(entrySignature) };
}

function linkKey(a: number, b: number): string {
  return a < b ? `${a}-${b}` : `${b}-${a}`;
}

/**
 * A whole Raft group in memory: nodes, their disks, and a network that can
 * drop, duplicate, delay and reorder messages and cut links. Every Ready is
 * handled as a driver would (persist, send, apply, advance), and every step is
 * checked against Raft's safety properties; a violation throws SafetyViolation.
 */
export class Cluster {
  readonly ids: readonly number[];
  readonly rng: Rng;
  readonly nodes = new Map<number, RaftNode | undefined>();
  readonly disks = new Map<number, Disk>();
  readonly roles = new Map<number, Role>();
  /** Messages on the wire. */
  queue: Message[] = [];
  dropRate = 0;
  duplicateRate = 0;
  /** Chance that the driver leaves a Ready half-done (not yet persisted) while the node keeps running. */
  slowDiskRate = 0;
  private readonly busy = new Map<number, { rd: Ready; term: number }>();
  /** Extra filter: return false to drop a message at send time. */
  filter: ((m: Message) => boolean) | undefined;
  private readonly cut = new Set<string>();
  private readonly snapshotPayload = new WeakMap<Message, string[]>();
  private readonly pendingSnapshots = new Map<number, Map<number, string[]>>();
  private readonly options: ClusterOptions;

  // ---- global knowledge for the checks ----
  /** Leader of each term ever seen. */
  readonly leaders = new Map<number, number>();
  /** The committed log as the state machines applied it: index -> signature (index 0 unused). */
  readonly committed: string[] = [''];
  /** Term of the leader that first applied each committed index. */
  private readonly committedInTerm: number[] = [0];
  private readonly entryTerms: number[] = [0];
  /** Per leader (by node): the term it leads and the last entry it had when last checked. */
  private readonly leaderTail = new Map<number, { term: number; index: number; entryTerm: number }>();
  stats = { delivered: 0, dropped: 0, elections: 0, snapshotsInstalled: 0, compactions: 0, crashes: 0 };

  constructor(options: ClusterOptions) {
    this.options = options;
    this.ids = [...options.ids];
    this.rng = new Rng(options.seed);
    for (const id of this.ids) {
      const given = options.disks?.get(id);
      if (given) this.seedCommitted(given);
      this.disks.set(id, given ?? emptyDisk(this.ids));
      this.pendingSnapshots.set(id, new Map());
      this.start(id);
    }
  }

  /** A pre-populated disk's applied state counts as committed (in term 0: before the run). */
  private seedCommitted(disk: Disk): void {
    disk.applied.forEach((sig, i) => {
      const index = i + 1;
      if (index < this.committed.length) {
        if (this.committed[index] !== sig) throw new Error(`pre-populated disks disagree at ${index}`);
        return;
      }
      this.committed.push(sig);
      this.committedInTerm.push(0);
      this.entryTerms.push(Number(sig.split('/')[0]));
    });
  }

  private start(id: number): void {
    const disk = this.disks.get(id)!;
    const config: RaftConfig = {
      id,
      voters: this.ids,
      storage: disk.storage,
      electionTick: this.options.electionTick ?? 10,
      heartbeatTick: this.options.heartbeatTick ?? 1,
      preVote: this.options.preVote ?? true,
      checkQuorum: this.options.checkQuorum ?? true,
      random: new Rng(this.rng.fork()).next,
      applied: disk.applied.length,
      maxMsgEntries: this.options.maxMsgEntries ?? 8,
      maxInflight: this.options.maxInflight ?? 4,
    };
    this.nodes.set(id, this.options.factory ? this.options.factory(config) : new RaftNode(config));
    this.roles.set(id, 'follower');
    this.leaderTail.delete(id);
  }

  node(id: number): RaftNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`node ${id} is down`);
    return n;
  }

  live(): number[] {
    return this.ids.filter((id) => this.nodes.get(id) !== undefined);
  }

  /** Live nodes that believe they lead. */
  leadersNow(): number[] {
    return this.live().filter((id) => this.roles.get(id) === 'leader');
  }

  // ---- faults ---------------------------------------------------------------

  cutLink(a: number, b: number): void {
    this.cut.add(linkKey(a, b));
  }

  isolate(id: number): void {
    for (const other of this.ids) if (other !== id) this.cutLink(id, other);
  }

  heal(): void {
    this.cut.clear();
  }

  linkUp(a: number, b: number): boolean {
    return !this.cut.has(linkKey(a, b));
  }

  /** Stops a node: everything not persisted is lost. */
  crash(id: number): void {
    if (!this.nodes.get(id)) return;
    this.nodes.set(id, undefined);
    this.roles.delete(id);
    this.pendingSnapshots.get(id)!.clear();
    this.leaderTail.delete(id);
    this.busy.delete(id);
    this.stats.crashes++;
  }

  /** Starts a crashed node again from its disk. */
  restart(id: number): void {
    if (this.nodes.get(id)) return;
    this.start(id);
    this.process(id);
  }

  /** Snapshots a node's applied state at a random index and drops the log it covers. */
  compact(id: number, index?: number): boolean {
    const disk = this.disks.get(id)!;
    const first = disk.storage.firstIndex();
    const applied = disk.applied.length;
    if (applied < first) return false;
    const at = index ?? this.rng.range(first, applied);
    disk.storage.createSnapshot(at);
    disk.storage.compact(at);
    disk.snapshotData = disk.applied.slice(0, at);
    this.stats.compactions++;
    return true;
  }

  // ---- driving --------------------------------------------------------------

  tick(id: number): void {
    const n = this.nodes.get(id);
    if (!n) return;
    n.tick();
    this.process(id);
  }

  tickAll(): void {
    for (const id of this.ids) this.tick(id);
  }

  /** Proposes on `id`; returns the index, or undefined if the node refused (not leader). */
  propose(id: number, text: string): number | undefined {
    const n = this.nodes.get(id);
    if (!n) return undefined;
    try {
      const { index } = n.propose(bytes(text));
      this.process(id);
      return index;
    } catch (err) {
      if (isRaftError(err, RaftErrorKinds.NOT_LEADER)) return undefined;
      throw err;
    }
  }

  campaign(id: number): void {
    this.node(id).campaign();
    this.process(id);
  }

  /** Delivers the message at `i` of the queue (removing it). */
  deliverAt(i: number): void {
    const m = this.queue[i]!;
    const last = this.queue.pop()!;
    if (i < this.queue.length) this.queue[i] = last;
    this.deliver(m);
  }

  /** Delivers one message chosen at random (reordering and delaying the rest). */
  deliverRandom(): boolean {
    if (this.queue.length === 0) return false;
    this.deliverAt(this.rng.int(this.queue.length));
    return true;
  }

  /** Delivers until the network is quiet, in FIFO order or at random. */
  deliverAll(order: 'fifo' | 'random' = 'fifo', limit = 100_000): void {
    let n = 0;
    while (this.queue.length > 0 && n++ < limit) {
      if (order === 'random') {
        this.deliverRandom();
      } else {
        const batch = this.queue;
        this.queue = [];
        for (const m of batch) this.deliver(m);
      }
    }
  }

  /** Drops every message on the wire. */
  dropAll(): void {
    for (const m of this.queue) this.onDropped(m);
    this.queue = [];
  }

  private deliver(m: Message): void {
    const target = this.nodes.get(m.to);
    if (!target || !this.linkUp(m.from, m.to)) {
      this.onDropped(m);
      return;
    }
    this.stats.delivered++;
    if (m.type === 'snapshot') {
      const data = this.snapshotPayload.get(m);
      if (!data) throw new Error('snapshot message without data');
      this.pendingSnapshots.get(m.to)!.set(m.snapshot!.index, data);
    }
    target.step(m);
    this.process(m.to);
    if (m.type === 'snapshot') {
      const sender = this.nodes.get(m.from);
      if (sender) {
        sender.reportSnapshot(m.to, true);
        this.process(m.from);
      }
    }
  }

  private onDropped(m: Message): void {
    this.stats.dropped++;
    if (m.type === 'snapshot') {
      // The transport notices a failed snapshot stream and says so.
      const sender = this.nodes.get(m.from);
      if (sender) {
        sender.reportSnapshot(m.to, false);
        this.process(m.from);
      }
    }
  }

  private send(m: Message): void {
    if (!this.linkUp(m.from, m.to) || (this.filter && !this.filter(m))) {
      this.onDropped(m);
      return;
    }
    if (this.dropRate > 0 && this.rng.chance(this.dropRate)) {
      this.onDropped(m);
      return;
    }
    this.queue.push(m);
    if (this.duplicateRate > 0 && this.rng.chance(this.duplicateRate)) this.queue.push(m);
  }

  /** Runs the driver loop for `id` until it has nothing ready. */
  process(id: number): void {
    const node = this.nodes.get(id);
    if (!node || this.busy.has(id)) return;
    while (node.hasReady()) {
      const rd = node.ready();
      const term = node.status().term;
      if (rd.softState) {
        this.roles.set(id, rd.softState.role);
        if (rd.softState.role === 'leader') this.onBecameLeader(id, node);
      }
      if (this.slowDiskRate > 0 && this.rng.chance(this.slowDiskRate)) {
        // The driver is still persisting: the node keeps stepping meanwhile.
        this.busy.set(id, { rd, term });
        return;
      }
      this.handleReady(id, node, rd, term);
    }
  }

  /** Nodes whose driver is in the middle of a Ready. */
  busyNodes(): number[] {
    return [...this.busy.keys()];
  }

  /** The driver of `id` finishes the Ready it was working on. */
  finishReady(id: number): void {
    const work = this.busy.get(id);
    const node = this.nodes.get(id);
    if (!work || !node) return;
    this.busy.delete(id);
    this.handleReady(id, node, work.rd, work.term);
    this.process(id);
  }

  private handleReady(id: number, node: RaftNode, rd: Ready, term: number): void {
    const disk = this.disks.get(id)!;
    // 1. persist: snapshot, entries, then hard state (so commit never points past the log)
    if (rd.snapshot) {
      const data = this.pendingSnapshots.get(id)!.get(rd.snapshot.index);
      if (!data) throw new Error(`node ${id}: no data for snapshot ${rd.snapshot.index}`);
      if (rd.snapshot.index <= disk.applied.length) {
        throw new SafetyViolation(
          `node ${id} installs snapshot ${rd.snapshot.index} at or below its applied index ${disk.applied.length}`,
        );
      }
      this.checkCommittedPrefix(id, data, 1);
      disk.storage.applySnapshot(rd.snapshot);
      disk.snapshotData = data;
      disk.applied = data.slice();
      const pending = this.pendingSnapshots.get(id)!;
      for (const index of pending.keys()) if (index <= rd.snapshot.index) pending.delete(index);
      this.stats.snapshotsInstalled++;
    }
    if (rd.entries.length > 0) disk.storage.append(rd.entries);
    if (rd.hardState) disk.storage.setHardState(rd.hardState);
    // 2. send
    for (let m of rd.messages) {
      if (m.type === 'snapshot') {
        // The driver ships the snapshot it has now, which may be newer than the one named.
        const current = disk.storage.snapshotMeta();
        if (current.index < m.snapshot!.index) {
          throw new Error(`node ${id}: asked to send snapshot ${m.snapshot!.index} but has ${current.index}`);
        }
        if (current.index !== m.snapshot!.index) m = { ...m, snapshot: current };
        this.snapshotPayload.set(m, disk.snapshotData);
      }
      this.send(m);
    }
    // 3. apply
    if (rd.committedEntries.length > 0) {
      const commit = disk.storage.getHardState().commit;
      for (const e of rd.committedEntries) {
        if (e.index !== disk.applied.length + 1) {
          throw new SafetyViolation(`node ${id} applies ${e.index} after ${disk.applied.length}`);
        }
        if (e.index > commit)
          throw new SafetyViolation(`node ${id} applies ${e.index} beyond its commit ${commit}`);
        const sig = entrySignature(e);
        this.recordCommitted(id, e.index, sig, e.term, term);
        disk.applied.push(sig);
      }
    }
    node.advance(rd);
    if (this.roles.get(id) === 'leader') this.checkLeaderAppendOnly(id, node);
  }

  // ---- checks ---------------------------------------------------------------

  private recordCommitted(id: number, index: number, sig: string, entryTerm: number, nodeTerm: number): void {
    const known = this.committed[index];
    if (known === undefined) {
      if (index !== this.committed.length) {
        throw new SafetyViolation(
          `node ${id} applies ${index} before anyone applied ${this.committed.length}`,
        );
      }
      this.committed.push(sig);
      this.committedInTerm.push(nodeTerm);
      this.entryTerms.push(entryTerm);
    } else if (known !== sig) {
      throw new SafetyViolation(
        `state machine safety: node ${id} applies ${sig} at ${index}, but ${known} was applied there before`,
      );
    }
  }

  private checkCommittedPrefix(id: number, data: readonly string[], from: number): void {
    for (let i = from; i <= data.length; i++) {
      const known = this.committed[i];
      if (known !== undefined && known !== data[i - 1]) {
        throw new SafetyViolation(`node ${id} snapshot holds ${data[i - 1]} at ${i}, committed is ${known}`);
      }
    }
  }

  private onBecameLeader(id: number, node: RaftNode): void {
    const st = node.status();
    this.stats.elections++;
    const other = this.leaders.get(st.term);
    if (other !== undefined && other !== id) {
      throw new SafetyViolation(`election safety: nodes ${other} and ${id} both lead term ${st.term}`);
    }
    this.leaders.set(st.term, id);
    // Leader completeness: every entry committed in an earlier term is in the new leader's log.
    for (let i = Math.max(1, st.firstIndex); i < this.committed.length; i++) {
      if (this.committedInTerm[i]! >= st.term) continue;
      const t = node.termAt(i);
      if (t !== this.entryTerms[i]) {
        throw new SafetyViolation(
          `leader completeness: leader ${id} of term ${st.term} has term ${t} at ${i}, committed entry has term ${this.entryTerms[i]}`,
        );
      }
    }
    this.leaderTail.set(id, { term: st.term, index: st.lastIndex, entryTerm: node.termAt(st.lastIndex)! });
  }

  private checkLeaderAppendOnly(id: number, node: RaftNode): void {
    const tail = this.leaderTail.get(id);
    if (!tail) return;
    const st = node.status();
    if (st.role !== 'leader' || st.term !== tail.term) {
      this.leaderTail.delete(id);
      return;
    }
    if (st.lastIndex < tail.index || node.termAt(tail.index) !== tail.entryTerm) {
      throw new SafetyViolation(
        `leader append-only: leader ${id} of term ${st.term} lost entry ${tail.index}`,
      );
    }
    tail.index = st.lastIndex;
    tail.entryTerm = node.termAt(st.lastIndex)!;
  }

  /** Log matching: two logs with the same term at an index agree on everything before it. */
  checkLogMatching(): void {
    const live = this.live();
    for (let a = 0; a < live.length; a++) {
      for (let b = a + 1; b < live.length; b++) {
        const na = this.node(live[a]!).status();
        const nb = this.node(live[b]!).status();
        const lo = Math.max(na.firstIndex, nb.firstIndex);
        const hi = Math.min(na.lastIndex, nb.lastIndex);
        let agreeFrom = -1;
        for (let i = hi; i >= lo; i--) {
          if (this.node(live[a]!).termAt(i) === this.node(live[b]!).termAt(i)) {
            agreeFrom = i;
            break;
          }
        }
        for (let i = agreeFrom; i >= lo; i--) {
          const ta = this.node(live[a]!).termAt(i);
          const tb = this.node(live[b]!).termAt(i);
          if (ta !== tb) {
            throw new SafetyViolation(
              `log matching: nodes ${live[a]} and ${live[b]} agree at ${agreeFrom} but differ at ${i} (${ta} vs ${tb})`,
            );
          }
        }
      }
    }
  }

  /** Whether one leader leads the highest term and every node applied the same log up to its commit. */
  converged(minCommit = 0): boolean {
    const live = this.live();
    if (live.length !== this.ids.length) return false;
    const leaders = this.leadersNow();
    if (leaders.length !== 1) return false;
    const leader = this.node(leaders[0]!).status();
    if (leader.commit < minCommit || leader.commit !== leader.lastIndex) return false;
    for (const id of live) {
      const st = this.node(id).status();
      if (st.term !== leader.term || st.leader !== leader.id) return false;
      if (st.commit !== leader.commit || this.disks.get(id)!.applied.length !== leader.commit) return false;
    }
    return true;
  }
}
