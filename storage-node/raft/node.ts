import { RaftError, RaftErrorKinds } from './errors.js';
import { RaftLog } from './log.js';
import { Progress } from './progress.js';
import { invariantError, type RaftStorage } from './storage.js';
import {
  NONE,
  type Entry,
  type EntryType,
  type HardState,
  type Message,
  type MessageType,
  type PeerProgress,
  type Ready,
  type Role,
  type SnapshotMeta,
  type SoftState,
  type Status,
} from './types.js';

export const DEFAULT_ELECTION_TICK = 10;
export const DEFAULT_HEARTBEAT_TICK = 1;
export const DEFAULT_MAX_MSG_ENTRIES = 64;
export const DEFAULT_MAX_INFLIGHT = 256;
/** Heartbeat responses in a row without progress before a pipelined follower is probed again. */
export const REPLICATE_STALL_HEARTBEATS = 2;

export interface RaftConfig {
  /** This node's id (> 0). */
  id: number;
  /** The group's voters, used when the storage holds none yet (a new group). */
  voters?: readonly number[];
  storage: RaftStorage;
  /** Ticks without hearing from a leader before campaigning; the timeout is randomized in [electionTick, 2*electionTick). */
  electionTick?: number;
  /** Ticks between a leader's heartbeats; less than electionTick. */
  heartbeatTick?: number;
  /** Run a pre-vote round before a real election, so a node that was cut off does not inflate terms. Default true. */
  preVote?: boolean;
  /** A leader that has not heard from a quorum for an election timeout steps down. Default true. */
  checkQuorum?: boolean;
  /** Uniform in [0, 1): the source of election-timeout jitter (seeded in tests). */
  random: () => number;
  /** Last index the driver applied before this start (default: the storage's snapshot index). */
  applied?: number;
  /** Most entries in one append message. */
  maxMsgEntries?: number;
  /** Most entry bytes in one append message (at least one entry is always sent). */
  maxMsgBytes?: number;
  /** Most append messages in flight to one follower in replicate state. */
  maxInflight?: number;
}

export interface ProposeResult {
  readonly index: number;
  readonly term: number;
}

type CampaignKind = 'pre-election' | 'election' | 'transfer';

const EMPTY = new Uint8Array(0);

function invalid(message: string): RaftError {
  return new RaftError(RaftErrorKinds.INVALID, message);
}

function positiveInt(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0)
    throw invalid(`raft: ${name} must be a positive integer, got ${value}`);
  return value;
}

function responseType(type: 'vote' | 'pre-vote'): MessageType {
  return type === 'vote' ? 'vote-response' : 'pre-vote-response';
}

/**
 * The Raft consensus core for one group (one partition), after etcd-io/raft.
 *
 * It does no I/O and reads no clock. The driver calls `tick()` on a timer,
 * `step()` for every message received, `propose()` for writes, and, whenever
 * `hasReady()`, takes a `ready()`, persists it, sends its messages, applies
 * its committed entries and calls `advance()`. Only one Ready is outstanding
 * at a time; `step()`/`tick()`/`propose()` may be called while it is.
 */
export class RaftNode {
  readonly id: number;
  private readonly electionTick: number;
  private readonly heartbeatTick: number;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly random: () => number;
  private readonly maxMsgEntries: number;
  private readonly maxMsgBytes: number | undefined;
  private readonly maxInflight: number;
  private readonly voters: readonly number[];
  private readonly quorum: number;

  private readonly log: RaftLog;
  private term = 0;
  private vote = NONE;
  private lead = NONE;
  private role: Role = 'follower';
  private prs = new Map<number, Progress>();
  private votes = new Map<number, boolean>();
  private msgs: Message[] = [];
  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  private leadTransferee = NONE;
  /**
   * Entries up to this index were acknowledged by this node and are gone from
   * its log (its partition was replaced by an older copy). Until it has them
   * again it neither votes nor campaigns: its vote could elect a leader that
   * lacks them, and those entries may be committed on the strength of its
   * acknowledgement. Learned from a leader; 0 when nothing is missing.
   */
  private lostUpTo = 0;

  private readyOutstanding = false;
  private prevSoft: SoftState;
  private prevHard: HardState;

  constructor(config: RaftConfig) {
    this.id = positiveInt('id', config.id);
    this.electionTick = positiveInt('electionTick', config.electionTick ?? DEFAULT_ELECTION_TICK);
    this.heartbeatTick = positiveInt('heartbeatTick', config.heartbeatTick ?? DEFAULT_HEARTBEAT_TICK);
    if (this.heartbeatTick >= this.electionTick)
      throw invalid('raft: heartbeatTick must be less than electionTick');
    this.preVote = config.preVote ?? true;
    this.checkQuorum = config.checkQuorum ?? true;
    if (typeof config.random !== 'function') throw invalid('raft: random must be a function');
    this.random = config.random;
    this.maxMsgEntries = positiveInt('maxMsgEntries', config.maxMsgEntries ?? DEFAULT_MAX_MSG_ENTRIES);
    this.maxMsgBytes =
      config.maxMsgBytes === undefined ? undefined : positiveInt('maxMsgBytes', config.maxMsgBytes);
    this.maxInflight = positiveInt('maxInflight', config.maxInflight ?? DEFAULT_MAX_INFLIGHT);

    const { hardState, voters: storedVoters } = config.storage.initialState();
    const configured = config.voters ?? [];
    if (storedVoters.length > 0 && configured.length > 0 && !sameMembers(storedVoters, configured)) {
      throw invalid(`raft: configured voters [${configured}] differ from stored voters [${storedVoters}]`);
    }
    const voters = storedVoters.length > 0 ? storedVoters : configured;
    if (voters.length === 0) throw invalid('raft: no voters configured');
    for (const v of voters) positiveInt('voter id', v);
    if (new Set(voters).size !== voters.length) throw invalid(`raft: duplicate voters [${voters}]`);
    this.voters = [...voters].sort((a, b) => a - b);
    this.quorum = Math.floor(this.voters.length / 2) + 1;

    const firstIndex = config.storage.firstIndex();
    const lastIndex = config.storage.lastIndex();
    const commit = Math.max(hardState.commit, firstIndex - 1);
    if (commit > lastIndex) {
      throw invalid(`raft: stored commit ${commit} is beyond the stored log (last index ${lastIndex})`);
    }
    const applied = config.applied ?? firstIndex - 1;
    if (applied < firstIndex - 1 || applied > commit) {
      throw invalid(`raft: applied ${applied} outside [${firstIndex - 1}, ${commit}]`);
    }
    this.log = new RaftLog(config.storage, commit, applied);
    this.becomeFollower(hardState.term, NONE);
    this.vote = hardState.vote;
    this.prevSoft = { leader: NONE, role: 'follower' };
    this.prevHard = { term: hardState.term, vote: hardState.vote, commit };
  }

  // ---- inputs ---------------------------------------------------------------

  /** One logical clock tick. */
  tick(): void {
    if (this.role === 'leader') this.tickHeartbeat();
    else this.tickElection();
  }

  /** Starts an election now (through pre-vote when enabled). */
  campaign(): void {
    this.hup(this.preVote ? 'pre-election' : 'election');
  }

  /**
   * Appends a write to the leader's log. Throws NOT_LEADER (details.leader is
   * the known leader, 0 if none) on a follower, and on a leader handing off.
   */
  propose(data: Uint8Array): ProposeResult {
    if (this.role !== 'leader') {
      throw new RaftError(RaftErrorKinds.NOT_LEADER, `raft: node ${this.id} is not the leader`, {
        leader: this.lead,
        term: this.term,
      });
    }
    if (this.leadTransferee !== NONE) {
      throw new RaftError(
        RaftErrorKinds.NOT_LEADER,
        `raft: node ${this.id} is handing leadership to ${this.leadTransferee}`,
        { leader: this.id, term: this.term, transferee: this.leadTransferee },
      );
    }
    const index = this.appendEntry('normal', data);
    this.bcastAppend();
    return { index, term: this.term };
  }

  /** Asks the leader to hand leadership to `to` once `to` has caught up (leader only). */
  transferLeadership(to: number): void {
    if (this.role !== 'leader') {
      throw new RaftError(RaftErrorKinds.NOT_LEADER, `raft: node ${this.id} is not the leader`, {
        leader: this.lead,
        term: this.term,
      });
    }
    if (to === this.id || !this.prs.has(to)) throw invalid(`raft: cannot transfer leadership to ${to}`);
    if (this.leadTransferee === to) return;
    this.leadTransferee = to;
    this.electionElapsed = 0;
    const pr = this.prs.get(to)!;
    if (pr.match === this.log.lastIndex()) this.send({ type: 'timeout-now', to });
    else this.sendAppend(to);
  }

  /** The transport could not reach `id`: stop pipelining to it. */
  reportUnreachable(id: number): void {
    const pr = this.role === 'leader' ? this.prs.get(id) : undefined;
    if (pr && pr.state === 'replicate') pr.becomeProbe();
  }

  /** The driver finished (ok) or gave up (!ok) sending a snapshot to `id`. */
  reportSnapshot(id: number, ok: boolean): void {
    const pr = this.role === 'leader' ? this.prs.get(id) : undefined;
    if (!pr || pr.state !== 'snapshot') return;
    if (!ok) pr.pendingSnapshot = 0;
    pr.becomeProbe();
    // Wait for the next heartbeat response before probing again.
    pr.probeSent = true;
  }

  /** Handles a message from a peer; messages from non-voters or addressed to another node are ignored. */
  step(m: Message): void {
    if (m.to !== this.id || !this.voters.includes(m.from) || m.from === this.id) return;

    if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'pre-vote') {
        const inLease = this.checkQuorum && this.lead !== NONE && this.electionElapsed < this.electionTick;
        if (inLease && !m.transfer) return;
      }
      if (m.type === 'pre-vote' || (m.type === 'pre-vote-response' && !m.reject)) {
        // A pre-vote is for a term nobody has entered yet; keep ours.
      } else if (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot') {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NONE);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === 'append' || m.type === 'heartbeat')) {
        // A leader cut off from us: tell it the current term so it steps down.
        this.send({ type: 'append-response', to: m.from });
      } else if (m.type === 'pre-vote') {
        this.send({ type: 'pre-vote-response', to: m.from, reject: true });
      }
      return;
    }

    if (m.type === 'vote' || m.type === 'pre-vote') {
      this.handleVoteRequest(m, m.type);
      return;
    }
    switch (this.role) {
      case 'leader':
        return this.stepLeader(m);
      case 'candidate':
      case 'pre-candidate':
        return this.stepCandidate(m);
      case 'follower':
        return this.stepFollower(m);
    }
  }

  // ---- Ready ----------------------------------------------------------------

  /** Whether there is work for a Ready; always false while a Ready is outstanding (before `advance()`). */
  hasReady(): boolean {
    if (this.readyOutstanding) return false;
    return (
      this.msgs.length > 0 ||
      this.log.hasUnstable() ||
      this.log.hasNextCommittedEntries() ||
      this.softChanged() ||
      this.hardChanged()
    );
  }

  ready(): Ready {
    if (this.readyOutstanding) throw invariantError('ready() called again before advance()');
    const soft: SoftState = { leader: this.lead, role: this.role };
    const hard: HardState = { term: this.term, vote: this.vote, commit: this.log.committed };
    const unstable = this.log.unstable();
    const rd: Ready = {
      ...(this.softChanged() ? { softState: soft } : {}),
      ...(this.hardChanged() ? { hardState: hard } : {}),
      entries: unstable.entries,
      ...(unstable.snapshot ? { snapshot: unstable.snapshot } : {}),
      committedEntries: this.log.nextCommittedEntries(),
      messages: this.msgs,
    };
    this.msgs = [];
    this.prevSoft = soft;
    this.prevHard = hard;
    this.readyOutstanding = true;
    return rd;
  }

  /** The driver has persisted, sent and applied everything in `rd`. */
  advance(rd: Ready): void {
    if (!this.readyOutstanding) throw invariantError('advance() without an outstanding ready()');
    if (rd.snapshot) {
      this.log.stableSnapshotTo(rd.snapshot.index);
      this.log.applied = Math.max(this.log.applied, rd.snapshot.index);
    }
    const lastEntry = rd.entries[rd.entries.length - 1];
    if (lastEntry) this.log.stableTo(lastEntry.index, lastEntry.term);
    const lastApplied = rd.committedEntries[rd.committedEntries.length - 1];
    if (lastApplied) this.log.appliedTo(lastApplied.index);
    this.readyOutstanding = false;
  }

  status(): Status {
    let progress: Record<number, PeerProgress> | undefined;
    if (this.role === 'leader') {
      progress = {};
      for (const [id, pr] of this.prs) progress[id] = pr.snapshotView();
    }
    return {
      id: this.id,
      term: this.term,
      vote: this.vote,
      role: this.role,
      leader: this.lead,
      commit: this.log.committed,
      applied: this.log.applied,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      voters: this.voters,
      ...(progress ? { progress } : {}),
      leadTransferee: this.leadTransferee,
    };
  }

  /** Term of the entry at `index` in this node's log (persisted or not); undefined if compacted or absent. */
  termAt(index: number): number | undefined {
    return this.log.term(index);
  }

  // ---- rules that tests replace to prove the checkers catch a broken node ----

  /** §5.4.2: a leader only counts replicas to commit entries of its own term. */
  protected mayCommitByQuorum(index: number): boolean {
    return this.log.term(index) === this.term;
  }

  /** §5.4.1: vote only for a candidate whose log is at least as up-to-date as ours. */
  protected candidateLogUpToDate(lastIndex: number, lastTerm: number): boolean {
    return this.log.isUpToDate(lastIndex, lastTerm);
  }

  // ---- roles ----------------------------------------------------------------

  private reset(term: number): void {
    if (term !== this.term) {
      this.term = term;
      this.vote = NONE;
    }
    this.lead = NONE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.electionTick + Math.floor(this.random() * this.electionTick);
    this.leadTransferee = NONE;
    this.votes.clear();
    const lastIndex = this.log.lastIndex();
    this.prs = new Map();
    for (const id of this.voters) {
      const pr = new Progress(lastIndex + 1, this.maxInflight);
      if (id === this.id) pr.match = lastIndex;
      this.prs.set(id, pr);
    }
  }

  private becomeFollower(term: number, lead: number): void {
    this.reset(term);
    this.lead = lead;
    this.role = 'follower';
  }

  private becomePreCandidate(): void {
    if (this.role === 'leader') throw invariantError('leader cannot become pre-candidate');
    // Neither the term nor the vote changes: a pre-vote promises nothing.
    this.votes.clear();
    this.lead = NONE;
    this.role = 'pre-candidate';
  }

  private becomeCandidate(): void {
    if (this.role === 'leader') throw invariantError('leader cannot become candidate');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = 'candidate';
  }

  private becomeLeader(): void {
    if (this.role === 'follower') throw invariantError('follower cannot become leader');
    this.reset(this.term);
    this.lead = this.id;
    this.role = 'leader';
    const self = this.prs.get(this.id)!;
    self.becomeReplicate();
    self.recentActive = true;
    // An entry of the new term: committing it commits everything before it (§5.4.2).
    this.appendEntry('empty', EMPTY);
  }

  private promotable(): boolean {
    return this.voters.includes(this.id);
  }

  /** Whether entries this node acknowledged are still missing from its log (see `lostUpTo`). */
  private missingAcknowledged(): boolean {
    if (this.lostUpTo > 0 && this.log.committed >= this.lostUpTo) this.lostUpTo = 0;
    return this.lostUpTo > 0;
  }

  private hup(kind: CampaignKind): void {
    if (this.role === 'leader' || !this.promotable() || this.missingAcknowledged()) return;
    this.runCampaign(kind);
  }

  private runCampaign(kind: CampaignKind): void {
    let voteTerm: number;
    let type: 'vote' | 'pre-vote';
    if (kind === 'pre-election') {
      this.becomePreCandidate();
      voteTerm = this.term + 1;
      type = 'pre-vote';
    } else {
      this.becomeCandidate();
      voteTerm = this.term;
      type = 'vote';
    }
    if (this.poll(this.id, true) === 'won') {
      if (kind === 'pre-election') this.runCampaign('election');
      else this.becomeLeader();
      return;
    }
    const index = this.log.lastIndex();
    const logTerm = this.log.lastTerm();
    for (const to of this.voters) {
      if (to === this.id) continue;
      this.send({ type, to, term: voteTerm, index, logTerm, transfer: kind === 'transfer' });
    }
  }

  private poll(id: number, granted: boolean): 'won' | 'lost' | 'pending' {
    if (!this.votes.has(id)) this.votes.set(id, granted);
    let yes = 0;
    let no = 0;
    for (const v of this.votes.values()) {
      if (v) yes++;
      else no++;
    }
    if (yes >= this.quorum) return 'won';
    if (no > this.voters.length - this.quorum) return 'lost';
    return 'pending';
  }

  // ---- ticks ----------------------------------------------------------------

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup(this.preVote ? 'pre-election' : 'election');
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTick) {
      this.electionElapsed = 0;
      if (this.checkQuorum && !this.quorumActive()) {
        this.becomeFollower(this.term, NONE);
        return;
      }
      // A transfer that did not finish within an election timeout is abandoned.
      this.leadTransferee = NONE;
    }
    if (this.heartbeatElapsed >= this.heartbeatTick) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  /** Whether a quorum was heard from since the last check; starts the next period. */
  private quorumActive(): boolean {
    let active = 0;
    for (const id of this.voters) {
      const pr = this.prs.get(id)!;
      if (id === this.id || pr.recentActive) active++;
      if (id !== this.id) pr.recentActive = false;
    }
    return active >= this.quorum;
  }

  // ---- message handling -----------------------------------------------------

  private handleVoteRequest(m: Message, type: 'vote' | 'pre-vote'): void {
    const canVote =
      this.vote === m.from ||
      (this.vote === NONE && this.lead === NONE) ||
      (type === 'pre-vote' && m.term > this.term);
    if (canVote && !this.missingAcknowledged() && this.candidateLogUpToDate(m.index, m.logTerm)) {
      this.send({ type: responseType(type), to: m.from, term: m.term });
      if (type === 'vote') {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: responseType(type), to: m.from, reject: true });
    }
  }

  private stepFollower(m: Message): void {
    // A message from the leader of this term resets the election timer and names the leader.
    if (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot') {
      this.electionElapsed = 0;
      this.lead = m.from;
    }
    switch (m.type) {
      case 'append':
        return this.handleAppend(m);
      case 'heartbeat':
        return this.handleHeartbeat(m);
      case 'snapshot':
        return this.handleSnapshot(m);
      case 'timeout-now':
        return this.hup('transfer');
      default:
        return;
    }
  }

  private stepCandidate(m: Message): void {
    const myResponse: MessageType = this.role === 'pre-candidate' ? 'pre-vote-response' : 'vote-response';
    switch (m.type) {
      case 'append':
        this.becomeFollower(m.term, m.from);
        this.handleAppend(m);
        break;
      case 'heartbeat':
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        break;
      case 'snapshot':
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        break;
      case myResponse: {
        const result = this.poll(m.from, !m.reject);
        if (result === 'won') {
          if (this.role === 'pre-candidate') {
            this.runCampaign('election');
          } else {
            this.becomeLeader();
            this.bcastAppend();
          }
        } else if (result === 'lost') {
          this.becomeFollower(this.term, NONE);
        }
        break;
      }
      default:
        break;
    }
  }

  private stepLeader(m: Message): void {
    const pr = this.prs.get(m.from);
    if (!pr) return;
    switch (m.type) {
      case 'append-response':
        pr.recentActive = true;
        this.handleAppendResponse(m, pr);
        break;
      case 'heartbeat-response':
        pr.recentActive = true;
        if (m.reject) {
          // The follower's log ends below what it acknowledged: start again from where it ends.
          if (m.rejectHint < pr.match) pr.lostLog(m.rejectHint);
          this.sendAppend(m.from);
          break;
        }
        if (pr.onHeartbeatResponse(this.log.lastIndex(), REPLICATE_STALL_HEARTBEATS)) pr.becomeProbe();
        if (pr.match < this.log.lastIndex()) this.sendAppend(m.from);
        break;
      default:
        break;
    }
  }

  private handleAppendResponse(m: Message, pr: Progress): void {
    if (m.reject) {
      const hint = m.logTerm > 0 ? this.log.findConflictByTerm(m.rejectHint, m.logTerm) : m.rejectHint;
      if (pr.maybeDecrTo(m.index, hint)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.sendAppend(m.from);
      }
      return;
    }
    // An acknowledgement beyond our log comes from a confused peer; acting on it would corrupt progress.
    if (m.index > this.log.lastIndex()) return;
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.index) && !(pr.match === m.index && pr.state === 'probe')) return;
    if (pr.state === 'probe') {
      pr.becomeReplicate();
    } else if (pr.state === 'snapshot' && pr.match + 1 >= this.log.firstIndex()) {
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === 'replicate') {
      pr.inflights.freeLE(m.index);
    }
    if (this.maybeCommit()) this.bcastAppend();
    else if (wasPaused) this.sendAppend(m.from);
    while (this.sendAppend(m.from, false)) {
      // keep the pipeline full
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
      this.send({ type: 'timeout-now', to: m.from });
    }
  }

  private handleAppend(m: Message): void {
    if (m.index < this.log.committed) {
      this.send({ type: 'append-response', to: m.from, index: this.log.committed });
      return;
    }
    const lastNew = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastNew !== undefined) {
      this.send({ type: 'append-response', to: m.from, index: lastNew });
      return;
    }
    // Point the leader at the last entry that could match: skip every entry of a
    // term above the probe's term in one round trip.
    const hint = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex()), m.logTerm);
    this.send({
      type: 'append-response',
      to: m.from,
      index: m.index,
      reject: true,
      rejectHint: hint,
      logTerm: this.log.term(hint) ?? 0,
    });
  }

  private handleHeartbeat(m: Message): void {
    // A heartbeat's commit is at most what we acknowledged, and committed
    // entries are never truncated: a commit beyond our log means the entries
    // we acknowledged are gone (the partition was replaced by a restore, or its
    // storage was lost). Say where the log ends so the leader sends the rest,
    // instead of waiting for an acknowledgement it already counts.
    if (m.commit > this.log.lastIndex()) {
      this.lostUpTo = Math.max(this.lostUpTo, m.commit);
      this.send({ type: 'heartbeat-response', to: m.from, reject: true, rejectHint: this.log.lastIndex() });
      return;
    }
    this.log.commitTo(m.commit);
    this.send({ type: 'heartbeat-response', to: m.from });
  }

  private handleSnapshot(m: Message): void {
    const snap = m.snapshot;
    if (!snap) return;
    if (this.restore(snap)) {
      this.send({ type: 'append-response', to: m.from, index: this.log.lastIndex() });
    } else {
      this.send({ type: 'append-response', to: m.from, index: this.log.committed });
    }
  }

  private restore(snap: SnapshotMeta): boolean {
    if (snap.index <= this.log.committed) return false;
    if (this.log.matchTerm(snap.index, snap.term)) {
      // We have the entry already: just learn that it is committed.
      this.log.commitTo(snap.index);
      return false;
    }
    this.log.restore(snap);
    return true;
  }

  // ---- leader replication ---------------------------------------------------

  private appendEntry(type: EntryType, data: Uint8Array): number {
    const index = this.log.lastIndex() + 1;
    const entry: Entry = { term: this.term, index, type, data };
    this.log.append([entry]);
    this.prs.get(this.id)!.maybeUpdate(index);
    this.maybeCommit();
    return index;
  }

  private maybeCommit(): boolean {
    const matches = this.voters.map((id) => this.prs.get(id)!.match).sort((a, b) => b - a);
    const index = matches[this.quorum - 1]!;
    if (index > this.log.committed && this.mayCommitByQuorum(index)) {
      this.log.commitTo(index);
      return true;
    }
    return false;
  }

  private bcastAppend(): void {
    for (const id of this.voters) if (id !== this.id) this.sendAppend(id);
  }

  private bcastHeartbeat(): void {
    for (const id of this.voters) {
      if (id === this.id) continue;
      const pr = this.prs.get(id)!;
      this.send({ type: 'heartbeat', to: id, commit: Math.min(pr.match, this.log.committed) });
    }
  }

  /** Sends `to` what it is missing (a snapshot if that was compacted); false if nothing was sent. */
  private sendAppend(to: number, sendIfEmpty = true): boolean {
    const pr = this.prs.get(to)!;
    if (pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    const entries =
      prevTerm === undefined
        ? undefined
        : this.log.slice(pr.next, pr.next + this.maxMsgEntries, this.maxMsgBytes);
    if (prevTerm === undefined || entries === undefined) return this.sendSnapshot(to, pr);
    if (entries.length === 0 && !sendIfEmpty) return false;
    this.send({
      type: 'append',
      to,
      index: prevIndex,
      logTerm: prevTerm,
      entries,
      commit: this.log.committed,
    });
    pr.sentEntries(prevIndex + entries.length, entries.length);
    return true;
  }

  private sendSnapshot(to: number, pr: Progress): boolean {
    if (!pr.recentActive) return false;
    const snapshot = this.log.snapshotMeta();
    if (snapshot.index === 0)
      throw invariantError(`follower ${to} needs compacted entries but there is no snapshot`);
    pr.becomeSnapshot(snapshot.index);
    this.send({ type: 'snapshot', to, snapshot });
    return true;
  }

  // ---- helpers --------------------------------------------------------------

  private send(m: Partial<Message> & { type: MessageType; to: number }): void {
    this.msgs.push({
      from: this.id,
      term: this.term,
      logTerm: 0,
      index: 0,
      entries: [],
      commit: 0,
      reject: false,
      rejectHint: 0,
      transfer: false,
      ...m,
    });
  }

  private softChanged(): boolean {
    return this.prevSoft.leader !== this.lead || this.prevSoft.role !== this.role;
  }

  private hardChanged(): boolean {
    return (
      this.prevHard.term !== this.term ||
      this.prevHard.vote !== this.vote ||
      this.prevHard.commit !== this.log.committed
    );
  }
}

function sameMembers(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}
