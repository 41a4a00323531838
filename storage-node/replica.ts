import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { decodePayload, encodePayload, type EntryContent } from '../contract/wal/entry-info.js';
import { describeError, ErrorCodes, WalArchiverError } from '../contract/errors.js';
import type { Logger } from '../contract/log.js';
import { applyEntry } from '../contract/state/apply.js';
import { ensureDir, syncTree } from '../contract/fs/fs-atomic.js';
import { extractState, linkTree, packState, removeTree } from '../contract/state/snapshot.js';
import { formatLsn } from '../contract/wal/lsn.js';
import { decodeLogEntry } from '../contract/wal/log-entry.js';
import {
  entryDir,
  listEntryLsns,
  readAppliedLsn,
  readArchiverPosition,
  stateDir as stateDirOf,
  writeAppliedLsn,
} from '../contract/wal/entry.js';
import type { LeadershipChange, PartitionStatus } from './api.js';
import { Mutex } from './mutex.js';
import {
  RaftErrorKinds,
  RaftNode,
  isRaftError,
  type Entry,
  type Message,
  type Ready,
  type SnapshotMeta,
} from './raft/index.js';
import { beginInstall, finishInstall, INCOMING_DIR, recoverInstall } from './snapshot-install.js';
import { WalStorage } from './wal-storage.js';

/**
 * One partition's replica on this node: drives the Raft core for the
 * partition's group, persists its log as the WAL, applies committed entries
 * to `state/`, and prunes the WAL once entries are applied, archived and no
 * longer needed by a follower.
 *
 * Ready handling order (what makes the WAL safe to read by the sidecar):
 * entries are written before the hard state, so `hard_state.Commit` never
 * names an entry that is not on disk, and an uncommitted entry replaced by a
 * new leader is truncated before a commit index could cover its LSN.
 */

export interface ReplicaTransport {
  send(partition: string, messages: Message[]): void;
  sendSnapshot(partition: string, message: Message, open: () => Promise<StateSnapshot>): void;
}

export interface StateSnapshot {
  lsn: number;
  term: number;
  /**
   * At least the greatest commit stamp of the entries up to `lsn` (Unix ms);
   * undefined when this node cannot bound them (it took some in a snapshot
   * without their stamps).
   */
  maxCommittedAt?: number;
  stream: Readable;
  /** Removes the temporary copy; call when the stream is consumed or abandoned. */
  release(): Promise<void>;
}

export interface ReplicaOptions {
  nodeId: number;
  partition: string;
  /** The partition's directory: `<data-dir>/partitions/<id>`. */
  dir: string;
  voters: readonly number[];
  transport: ReplicaTransport;
  onLeadership: (change: LeadershipChange) => void;
  logger: Logger;
  electionTick?: number;
  heartbeatTick?: number;
  now?: () => number;
  random?: () => number;
  /**
   * Whether a sidecar archives this partition (default true): then the WAL is
   * pruned no further than an archived position says, and a missing
   * `archiver/position` keeps every entry. False only for a node run without
   * an archiver on purpose (`storage-node run --archiver=false`).
   */
  archiver?: boolean;
}

export interface ProposalResult {
  lsn: number;
  term: number;
  committedAt: number;
}

interface Waiter {
  term: number;
  committedAt: number;
  resolve: (r: ProposalResult) => void;
  reject: (err: unknown) => void;
  timer: NodeJS.Timeout;
}

export const PROPOSAL_TIMEOUT_MS = 30_000;
/** Compact only once this many entries can go, so pruning is batched. */
export const PRUNE_BATCH = 32;
/** Entries removed under one hold of the log lock. */
export const PRUNE_CHUNK = 64;

export class Replica {
  readonly partition: string;
  private readonly raft: RaftNode;
  private readonly stateDir: string;
  private readonly log: Logger;
  private readonly now: () => number;
  /** Serialises everything that changes the log: Ready handling and compaction. */
  private readonly logLock = new Mutex();
  /** Held while entries are applied, and while `state/` is copied for a snapshot. */
  private readonly applyLock = new Mutex();
  private applied: number;
  private lastStamp = 0;
  /** At least the greatest commit stamp of the applied entries; a bound only while the log's stamps cover it. */
  private appliedStamp = 0;
  private pumping = false;
  private closed = false;
  private failure: string | undefined;
  private waiters = new Map<number, Waiter>();
  private role: PartitionStatus['role'] = 'follower';
  private leader = 0;
  private term: number;
  private lastEmitted = '';
  private incoming: { index: number; dir: string } | undefined;
  private archiverPosition: number | undefined;
  /** The archive position the leader reports, so followers do not prune what is not archived either. */
  remoteArchived = 0;
  /** Entries kept only because the archiver has not archived them yet. */
  retainedForArchiver = 0;
  proposals = 0;
  elections = 0;
  private lostReported = false;

  private constructor(
    private readonly opts: ReplicaOptions,
    private readonly storage: WalStorage,
    applied: number,
  ) {
    this.partition = opts.partition;
    this.stateDir = stateDirOf(opts.dir);
    this.log = opts.logger.child({ partition: opts.partition });
    this.now = opts.now ?? Date.now;
    this.applied = applied;
    this.term = storage.hardState.term;
    this.raft = new RaftNode({
      id: opts.nodeId,
      voters: storage.initialState().voters.length > 0 ? undefined : opts.voters,
      storage,
      applied,
      electionTick: opts.electionTick ?? 10,
      heartbeatTick: opts.heartbeatTick ?? 1,
      random: opts.random ?? Math.random,
      maxMsgBytes: 8 * 1024 * 1024,
    });
    storage.snapshotSource = () => ({
      index: this.applied,
      term: this.applied === 0 ? 0 : this.storage.term(this.applied),
      voters: this.storage.initialState().voters,
    });
  }

  static async open(opts: ReplicaOptions): Promise<Replica> {
    const log = opts.logger.child({ partition: opts.partition });
    // A snapshot install a crash cut short is finished first (its intent is on disk).
    const recovered = await recoverInstall(opts.dir);
    if (recovered.finished !== undefined)
      log.warn('finished a snapshot install cut short', { lsn: recovered.finished });
    for (const name of recovered.kept)
      log.warn('kept a shipped WAL folder no install names; it may hold unarchived entries', {
        path: join(opts.dir, name),
      });
    const stored = (await readAppliedLsn(opts.dir)) ?? 0;
    if (stored > 0 && !existsSync(stateDirOf(opts.dir))) {
      // Never stand in an empty state for one applied_lsn describes (and never create one to be found later).
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `partition ${opts.partition}: state/ is missing but applied_lsn says ${stored}`,
        { retryable: false },
      );
    }
    await ensureDir(stateDirOf(opts.dir));
    const storage = await WalStorage.open(opts.dir, opts.partition, opts.voters);
    const start = storage.logStart.index;
    // State is at least at the log start (a snapshot or a restore put it there).
    const applied = Math.min(Math.max(stored, start), storage.hardState.commit || start);
    const replica = new Replica(opts, storage, Math.max(applied, start));
    replica.lastStamp = storage.highestStamp;
    replica.appliedStamp = storage.highestStamp;
    replica.archiverPosition = await readArchiverPosition(opts.dir);
    replica.schedule();
    return replica;
  }

  // ---- inputs ----------------------------------------------------------------

  tick(): void {
    if (this.closed || this.failure) return;
    this.raft.tick();
    this.schedule();
  }

  step(message: Message): void {
    if (this.closed || this.failure) return;
    this.noteLostEntries(message);
    this.raft.step(message);
    this.schedule();
  }

  /** Logs, once per episode, that this node's log lost entries it had acknowledged, or that a follower's did. */
  private noteLostEntries(m: Message): void {
    if (m.type === 'heartbeat') {
      const last = this.raft.status().lastIndex;
      if (m.commit <= last) {
        this.lostReported = false;
      } else if (!this.lostReported) {
        this.lostReported = true;
        this.log.warn(
          'this node lost entries it had acknowledged; catching up before it votes or campaigns',
          {
            leader: m.from,
            lastLsn: last,
            acknowledged: m.commit,
          },
        );
      }
    } else if (m.type === 'heartbeat-response' && m.reject) {
      this.log.warn('a follower lost entries it had acknowledged; sending them again', {
        follower: m.from,
        lastLsn: m.rejectHint,
      });
    }
  }

  reportUnreachable(peer: number): void {
    if (!this.closed && !this.failure) this.raft.reportUnreachable(peer);
  }

  reportSnapshot(peer: number, ok: boolean): void {
    if (!this.closed && !this.failure) {
      this.raft.reportSnapshot(peer, ok);
      this.schedule();
    }
  }

  get isLeader(): boolean {
    return this.role === 'leader';
  }

  get leaderId(): number {
    return this.leader;
  }

  get error(): string | undefined {
    return this.failure;
  }

  /** Proposes a write; resolves once it is committed and applied here. */
  propose(content: EntryContent): Promise<ProposalResult> {
    if (this.failure) {
      return Promise.reject(
        new WalArchiverError(
          ErrorCodes.UNAVAILABLE,
          `partition ${this.partition} is stopped: ${this.failure}`,
        ),
      );
    }
    // Never below a stamp in the log: a new leader whose clock is behind, or
    // that holds committed entries it has not applied yet, keeps stamps monotonic.
    const committedAt = Math.max(this.now(), this.lastStamp, this.storage.highestStamp);
    let proposed: { index: number; term: number };
    try {
      proposed = this.raft.propose(encodePayload(content, committedAt));
    } catch (err) {
      // The core's "not the leader" is the node's NOT_LEADER answer, with the leader it knows.
      if (!isRaftError(err, RaftErrorKinds.NOT_LEADER)) throw err;
      return Promise.reject(
        new WalArchiverError(ErrorCodes.NOT_LEADER, err.message, { details: err.details }),
      );
    }
    const { index, term } = proposed;
    this.lastStamp = committedAt;
    this.proposals++;
    const result = new Promise<ProposalResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(index);
        reject(
          new WalArchiverError(
            ErrorCodes.UNAVAILABLE,
            `partition ${this.partition}: write at LSN ${index} not committed within ${PROPOSAL_TIMEOUT_MS} ms; its outcome is unknown`,
          ),
        );
      }, PROPOSAL_TIMEOUT_MS);
      this.waiters.set(index, { term, committedAt, resolve, reject, timer });
    });
    this.schedule();
    return result;
  }

  /**
   * A consistent tar of the applied state at one LSN (for base backups), and
   * for a lagging follower (`withWal`) the committed WAL entries still on disk
   * up to that LSN, which the follower keeps until they are archived.
   */
  async openStateSnapshot(options: { withWal?: boolean } = {}): Promise<StateSnapshot> {
    const copy = join(this.opts.dir, 'snapshots', randomBytes(6).toString('hex'));
    const { lsn, term, maxCommittedAt } = await this.applyLock.run(async () => {
      await linkTree(this.stateDir, join(copy, 'state'));
      if (options.withWal) {
        for (const entryLsn of await listEntryLsns(this.opts.dir)) {
          if (entryLsn > this.applied) break;
          await linkTree(entryDir(this.opts.dir, entryLsn), join(copy, 'wal', formatLsn(entryLsn)));
        }
      }
      return {
        lsn: this.applied,
        term: this.applied === 0 ? 0 : this.storage.term(this.applied),
        maxCommittedAt:
          this.storage.highestStampCoversAll && this.appliedStamp > 0 ? this.appliedStamp : undefined,
      };
    });
    const stream = packState(join(copy, 'state'), options.withWal ? { walDir: join(copy, 'wal') } : {});
    return {
      lsn,
      term,
      ...(maxCommittedAt !== undefined ? { maxCommittedAt } : {}),
      stream,
      release: () => removeTree(copy),
    };
  }

  /** Receives a snapshot a leader streams, then lets Raft decide whether to install it. */
  async receiveSnapshot(message: Message, body: Readable): Promise<void> {
    if (!message.snapshot)
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'snapshot message without metadata');
    const dir = join(
      this.opts.dir,
      INCOMING_DIR,
      `${message.snapshot.index}-${randomBytes(4).toString('hex')}`,
    );
    await extractState(body, dir, { allowWal: true });
    // Durable before the install relies on it; done here, so the Ready loop does not wait for it.
    await syncTree(dir);
    if (this.incoming) await removeTree(this.incoming.dir);
    this.incoming = { index: message.snapshot.index, dir };
    this.step(message);
  }

  status(): PartitionStatus {
    const s = this.raft.status();
    return {
      partition: this.partition,
      node: this.opts.nodeId,
      role: s.role,
      term: s.term,
      leader: s.leader,
      committed: this.storage.hardState.commit,
      applied: this.applied,
      appended: this.storage.lastIndex(),
      firstLsn: this.storage.oldestLsn,
      ...(this.archiverPosition === undefined ? {} : { archived: this.archiverPosition }),
      ...(this.failure ? { error: this.failure } : {}),
    };
  }

  /** The archive position this replica's own sidecar reported (leaders pass it to followers). */
  get archived(): number | undefined {
    return this.archiverPosition;
  }

  // ---- the Ready loop ----------------------------------------------------------

  private schedule(): void {
    if (this.pumping || this.closed || this.failure) return;
    if (!this.raft.hasReady()) return;
    this.pumping = true;
    void this.logLock
      .run(async () => {
        while (!this.closed && !this.failure && this.raft.hasReady()) {
          const rd = this.raft.ready();
          await this.handleReady(rd);
          this.raft.advance(rd);
        }
      })
      .catch((err: unknown) => this.fail(err))
      .finally(() => {
        this.pumping = false;
        if (!this.closed && !this.failure && this.raft.hasReady()) this.schedule();
      });
  }

  private async handleReady(rd: Ready): Promise<void> {
    if (rd.snapshot) await this.installSnapshot(rd.snapshot);
    await this.storage.append(rd.entries);
    if (rd.hardState) {
      await this.storage.setHardState(rd.hardState);
      // A campaign enters a new term voting for itself (the role may go straight to leader).
      if (rd.hardState.term > this.term && rd.hardState.vote === this.opts.nodeId) this.elections++;
      if (rd.hardState.term !== this.term) this.term = rd.hardState.term;
    }
    this.sendMessages(rd.messages);
    if (rd.committedEntries.length > 0) await this.apply(rd.committedEntries);
    if (rd.softState) {
      const wasLeader = this.role === 'leader';
      this.role = rd.softState.role;
      this.leader = rd.softState.leader;
      if (wasLeader && this.role !== 'leader')
        this.rejectWaiters('leadership moved before the write was applied here');
    }
    this.emitLeadership();
  }

  private sendMessages(messages: readonly Message[]): void {
    const plain: Message[] = [];
    for (const m of messages) {
      if (m.type === 'snapshot') {
        this.opts.transport.sendSnapshot(this.partition, m, () => this.openStateSnapshot({ withWal: true }));
      } else plain.push(m);
    }
    if (plain.length > 0) this.opts.transport.send(this.partition, plain);
  }

  private async apply(entries: readonly Entry[]): Promise<void> {
    await this.applyLock.run(async () => {
      for (const e of entries) {
        if (e.index <= this.applied) continue;
        if (e.type === 'normal') {
          const payload = decodePayload(e.data, `entry ${e.index} payload`);
          const manifest = decodeLogEntry(payload.manifest, `entry ${e.index} MANIFEST`);
          await applyEntry(manifest, {
            stateDir: this.stateDir,
            entryDir: entryDir(this.opts.dir, e.index),
            lsn: e.index,
          });
          this.lastStamp = Math.max(this.lastStamp, payload.committedAt);
          this.appliedStamp = Math.max(this.appliedStamp, payload.committedAt);
        }
        this.applied = e.index;
        const w = this.waiters.get(e.index);
        if (w) {
          this.waiters.delete(e.index);
          clearTimeout(w.timer);
          if (w.term === e.term) w.resolve({ lsn: e.index, term: e.term, committedAt: w.committedAt });
          else
            w.reject(
              new WalArchiverError(
                ErrorCodes.UNAVAILABLE,
                `partition ${this.partition}: the write at LSN ${e.index} was replaced by a new leader; retry`,
              ),
            );
        }
      }
      await writeAppliedLsn(this.opts.dir, this.applied);
    });
  }

  private async installSnapshot(meta: SnapshotMeta): Promise<void> {
    const incoming = this.incoming;
    if (!incoming || incoming.index !== meta.index) {
      throw new WalArchiverError(
        ErrorCodes.INTERNAL,
        `partition ${this.partition}: asked to install snapshot ${meta.index}, but the received one is ${incoming?.index ?? 'none'}`,
      );
    }
    this.incoming = undefined;
    await this.applyLock.run(async () => {
      // A protocol with an intent record: a crash at any step is finished on open.
      const intent = await beginInstall(this.opts.dir, meta, incoming.dir, randomBytes(4).toString('hex'), {
        synced: true,
      });
      await finishInstall(this.opts.dir, intent);
      await this.storage.adoptSnapshot(meta);
      this.lastStamp = Math.max(this.lastStamp, this.storage.highestStamp);
      this.appliedStamp = Math.max(this.appliedStamp, this.storage.highestStamp);
      this.applied = meta.index;
    });
    this.log.info('installed snapshot', { lsn: meta.index, term: meta.term });
  }

  private emitLeadership(): void {
    const s = this.raft.status();
    const key = `${s.role}/${s.leader}/${s.term}`;
    if (key === this.lastEmitted) return;
    this.lastEmitted = key;
    this.opts.onLeadership({
      partition: this.partition,
      node: this.opts.nodeId,
      leader: s.leader,
      term: s.term,
      role: s.role,
      at: new Date(this.now()).toISOString(),
    });
  }

  private rejectWaiters(reason: string): void {
    for (const [index, w] of this.waiters) {
      clearTimeout(w.timer);
      w.reject(
        new WalArchiverError(
          ErrorCodes.UNAVAILABLE,
          `partition ${this.partition}: ${reason} (LSN ${index}); its outcome is unknown`,
        ),
      );
    }
    this.waiters.clear();
  }

  private fail(err: unknown): void {
    if (this.failure) return;
    this.failure = describeError(err);
    this.role = 'follower';
    this.log.error('partition stopped', { error: err });
    this.rejectWaiters('the partition stopped');
  }

  // ---- pruning -------------------------------------------------------------------

  /**
   * Compacts the WAL through the highest LSN that is applied, archived (the
   * higher of this node's `archiver/position` and the position the leader
   * reports; nothing while neither is known, unless the node runs without an
   * archiver) and, on a leader, matched by every follower that is active.
   */
  async prune(): Promise<void> {
    if (this.closed || this.failure) return;
    this.archiverPosition = await readArchiverPosition(this.opts.dir).catch((err: unknown) => {
      this.log.warn('cannot read archiver position; not pruning', { error: err });
      return -1;
    });
    if (this.archiverPosition === -1) {
      this.archiverPosition = undefined;
      return;
    }
    let limit = this.applied;
    const s = this.raft.status();
    if (s.role === 'leader' && s.progress) {
      for (const [id, pr] of Object.entries(s.progress)) {
        if (Number(id) !== this.opts.nodeId && pr.recentActive) limit = Math.min(limit, pr.match);
      }
    }
    const beforeArchive = limit;
    if (this.opts.archiver !== false) {
      // Only what is known to be archived may go: by this node's sidecar, or by
      // the leader's (which it reports). A missing position means nothing is.
      limit = Math.min(limit, Math.max(this.archiverPosition ?? 0, this.remoteArchived));
    }
    this.retainedForArchiver = Math.max(0, beforeArchive - limit);
    if (limit - this.storage.logStart.index < PRUNE_BATCH) return;
    // In chunks, letting the Ready loop in between: removing each entry takes
    // fsyncs, and heartbeats wait while the log is locked.
    for (;;) {
      const done = await this.logLock.run(async () => {
        if (this.closed || this.failure) return true;
        const from = this.storage.logStart.index;
        const through = Math.min(limit, this.applied, from + PRUNE_CHUNK);
        if (through <= from) return true;
        await this.storage.compact(through, this.storage.initialState().voters);
        this.log.debug('compacted WAL', {
          through,
          archived: this.archiverPosition,
          remoteArchived: this.remoteArchived,
          applied: this.applied,
        });
        return through >= Math.min(limit, this.applied);
      });
      if (done) return;
    }
  }

  /** Bytes are not tracked per entry; this counts entries in the WAL. */
  get walEntries(): number {
    return this.storage.lastIndex() - this.storage.logStart.index;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.rejectWaiters('the node is shutting down');
    await this.logLock.run(async () => undefined);
    await this.applyLock.run(async () => undefined);
  }
}
