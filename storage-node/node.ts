import { readdir } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Counter, Gauge, Registry } from 'prom-client';
import { describeError, ErrorCodes, isWalArchiverError, WalArchiverError } from '../contract/errors.js';
import { Topics, type EventBus } from '../contract/events/event-bus.js';
import type { Logger } from '../contract/log.js';
import { Backoff, sleep } from '../contract/retry.js';
import { comparePartitionIds, isPartitionId, sortPartitionIds } from '../contract/partition-id.js';
import { partitionDir, PARTITIONS_DIR } from '../contract/wal/entry.js';
import {
  buildTransaction,
  MAX_TRANSACTION_BYTES,
  type LeadershipChange,
  type TransactionResponse,
} from './api.js';
import { encodeLogEntry } from '../contract/wal/log-entry.js';
import { Replica } from './replica.js';
import { decodeFrames, decodeMessage, HttpTransport } from './transport.js';

/**
 * A storage node: hosts many partitions, each a Raft group over the same
 * peers, serves the HTTP API of api.ts, ticks every group, prunes WALs, and
 * publishes every leadership change locally (NDJSON stream) and on the
 * event bus (`wal.leadership`).
 */

export interface StorageNodeOptions {
  id: number;
  dataDir: string;
  /** host:port to listen on; port 0 picks a free one. */
  listen: string;
  /** Every member of the cluster, this node included: id → base URL. */
  peers: ReadonlyMap<number, string>;
  /** Make partitions 1..N exist (besides those already on disk). */
  partitions?: number;
  events?: EventBus;
  logger: Logger;
  tickMs?: number;
  electionTick?: number;
  /** Serve POST /v1/faults, which cuts this node off from its peers (for failure tests). */
  faultInjection?: boolean;
  pruneIntervalMs?: number;
  /**
   * Whether a sidecar archives this node's partitions (default true): the WAL
   * is then kept until it is archived. False prunes by Raft alone.
   */
  archiver?: boolean;
  /** The clock commit stamps come from (tests inject one). */
  now?: () => number;
}

export const DEFAULT_TICK_MS = 100;
/** Ticks without a leader before a follower campaigns; Raft randomises it in [this, 2 × this). */
export const DEFAULT_ELECTION_TICK = 10;

export class StorageNode {
  private readonly replicas = new Map<string, Replica>();
  private readonly server: http.Server;
  private readonly transport: HttpTransport;
  private readonly registry = new Registry();
  private readonly streams = new Set<http.ServerResponse>();
  private readonly pendingEvents: LeadershipChange[] = [];
  private readonly abort = new AbortController();
  private ticker: NodeJS.Timeout | undefined;
  private pruner: NodeJS.Timeout | undefined;
  private publisher: Promise<void> | undefined;
  private wakePublisher: (() => void) | undefined;
  private metrics!: ReturnType<StorageNode['createMetrics']>;
  url = '';

  private constructor(private readonly opts: StorageNodeOptions) {
    this.transport = new HttpTransport(
      opts.id,
      opts.peers,
      {
        unreachable: (p, peer) => this.replicas.get(p)?.reportUnreachable(peer),
        snapshotDone: (p, peer, ok) => this.replicas.get(p)?.reportSnapshot(peer, ok),
        archivedPosition: (p) => {
          const r = this.replicas.get(p);
          return r?.isLeader ? r.archived : undefined;
        },
      },
      opts.logger,
    );
    this.server = http.createServer((req, res) => {
      this.route(req, res).catch((err: unknown) => this.sendError(res, err));
    });
    this.server.keepAliveTimeout = 30_000;
  }

  static async start(opts: StorageNodeOptions): Promise<StorageNode> {
    if (!opts.peers.has(opts.id)) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `--peers does not list this node's own id ${opts.id}`,
      );
    }
    const node = new StorageNode(opts);
    node.metrics = node.createMetrics();
    const ids = new Set<string>();
    for (let p = 1; p <= (opts.partitions ?? 0); p++) ids.add(String(p));
    try {
      for (const name of await readdir(join(opts.dataDir, PARTITIONS_DIR)))
        if (isPartitionId(name)) ids.add(name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const voters = [...opts.peers.keys()].sort((a, b) => a - b);
    for (const id of sortPartitionIds(ids)) {
      try {
        node.replicas.set(
          id,
          await Replica.open({
            nodeId: opts.id,
            partition: id,
            dir: partitionDir(opts.dataDir, id),
            voters,
            transport: node.transport,
            onLeadership: (c) => node.leadershipChanged(c),
            logger: opts.logger,
            electionTick: opts.electionTick ?? DEFAULT_ELECTION_TICK,
            ...(opts.archiver === undefined ? {} : { archiver: opts.archiver }),
            ...(opts.now ? { now: opts.now } : {}),
          }),
        );
      } catch (err) {
        // One damaged partition must not keep the others down.
        opts.logger.error('partition cannot start', { partition: id, error: err });
        node.metrics.partitionErrors.inc({ partition: id });
        node.brokenPartitions.set(id, describeError(err));
      }
    }
    const [host, portText] = splitHostPort(opts.listen);
    await new Promise<void>((resolve, reject) => {
      node.server.once('error', reject);
      node.server.listen(Number(portText), host, () => resolve());
    });
    const addr = node.server.address() as AddressInfo;
    node.url = `http://${host}:${addr.port}`;
    node.ticker = setInterval(() => {
      for (const r of node.replicas.values()) r.tick();
    }, opts.tickMs ?? DEFAULT_TICK_MS);
    node.pruner = setInterval(() => {
      for (const r of node.replicas.values()) {
        r.prune().catch((err: unknown) =>
          opts.logger.warn('prune failed', { partition: r.partition, error: err }),
        );
      }
    }, opts.pruneIntervalMs ?? 2_000);
    if (opts.events) node.publisher = node.publishLoop(opts.events);
    opts.logger.info('storage node started', {
      node: opts.id,
      url: node.url,
      partitions: node.replicas.size,
    });
    return node;
  }

  private readonly brokenPartitions = new Map<string, string>();
  /** What the proposal and election counters were last advanced to, per partition. */
  private readonly counted = new Map<string, { proposals: number; elections: number }>();

  // ---- leadership ------------------------------------------------------------

  private leadershipChanged(change: LeadershipChange): void {
    this.opts.logger.info('leadership changed', { ...change });
    const line = `${JSON.stringify(change)}\n`;
    for (const res of this.streams) res.write(line);
    if (this.opts.events) {
      this.pendingEvents.push(change);
      this.wakePublisher?.();
    }
  }

  /** Publishes leadership changes in order; a bus that is down delays them, never loses or blocks Raft. */
  private async publishLoop(bus: EventBus): Promise<void> {
    const backoff = new Backoff({ maxMs: 10_000 });
    while (!this.abort.signal.aborted) {
      if (this.pendingEvents.length === 0) {
        await new Promise<void>((resolve) => {
          this.wakePublisher = resolve;
          this.abort.signal.addEventListener('abort', () => resolve(), { once: true });
        });
        this.wakePublisher = undefined;
        continue;
      }
      const batch = this.pendingEvents.slice(0, 500);
      try {
        await bus.publish(
          Topics.LEADERSHIP,
          batch.map((c) => ({ key: c.partition, value: { schema: 1, ...c } })),
          { signal: this.abort.signal },
        );
        this.pendingEvents.splice(0, batch.length);
        this.metrics.eventsPending.set(this.pendingEvents.length);
        backoff.reset();
      } catch (err) {
        if (this.abort.signal.aborted) break;
        this.metrics.eventsPending.set(this.pendingEvents.length);
        this.opts.logger.warn('cannot publish leadership events; will retry', {
          error: err,
          pending: this.pendingEvents.length,
        });
        await sleep(backoff.next(), this.abort.signal).catch(() => undefined);
      }
    }
  }

  // ---- HTTP ------------------------------------------------------------------

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://node');
    const parts = url.pathname.split('/').filter(Boolean);
    const method = req.method ?? 'GET';
    if (method === 'GET' && url.pathname === '/healthz')
      return this.json(res, 200, { ok: true, node: this.opts.id });
    if (method === 'GET' && url.pathname === '/metrics') {
      this.refreshMetrics();
      res.writeHead(200, { 'content-type': this.registry.contentType });
      res.end(await this.registry.metrics());
      return;
    }
    if (url.pathname.startsWith('/v1/raft/') && this.transport.isolated) {
      req.resume();
      throw new WalArchiverError(
        ErrorCodes.UNAVAILABLE,
        `node ${this.opts.id} is cut off from its peers (fault injection)`,
      );
    }
    if (method === 'POST' && url.pathname === '/v1/raft/messages') return this.receiveMessages(req, res);
    if (method === 'POST' && url.pathname === '/v1/raft/snapshot') return this.receiveSnapshot(req, res);
    if (url.pathname === '/v1/faults' && this.opts.faultInjection) return this.faults(req, res);
    if (method === 'GET' && url.pathname === '/v1/leadership/stream') return this.leadershipStream(req, res);
    if (parts[0] === 'v1' && parts[1] === 'partitions') {
      if (parts.length === 2 && method === 'GET') return this.json(res, 200, this.statuses());
      const replica = this.replicaOr404(parts[2] ?? '');
      if (parts.length === 3 && method === 'GET')
        return this.json(res, 200, this.withLeaderUrl(replica.status()));
      if (parts.length === 4 && parts[3] === 'transactions' && method === 'POST')
        return this.write(replica, req, res);
      if (parts.length === 4 && parts[3] === 'snapshot' && method === 'GET')
        return this.snapshot(replica, res);
    }
    throw new WalArchiverError(ErrorCodes.NOT_FOUND, `no route for ${method} ${url.pathname}`);
  }

  private replicaOr404(id: string): Replica {
    const r = this.replicas.get(id);
    if (r) return r;
    const broken = this.brokenPartitions.get(id);
    if (broken) throw new WalArchiverError(ErrorCodes.UNAVAILABLE, `partition ${id} is stopped: ${broken}`);
    throw new WalArchiverError(ErrorCodes.NOT_FOUND, `partition ${id} is not on this node`);
  }

  private statuses() {
    const out = [...this.replicas.values()].map((r) => this.withLeaderUrl(r.status()));
    for (const [id, error] of this.brokenPartitions) {
      out.push({
        partition: id,
        node: this.opts.id,
        role: 'follower',
        term: 0,
        leader: 0,
        committed: 0,
        applied: 0,
        appended: 0,
        firstLsn: 0,
        error,
      });
    }
    return out.sort((a, b) => comparePartitionIds(a.partition, b.partition));
  }

  private withLeaderUrl<T extends { leader: number }>(s: T): T & { leaderUrl?: string } {
    const leaderUrl = this.opts.peers.get(s.leader);
    return leaderUrl ? { ...s, leaderUrl } : s;
  }

  private async write(replica: Replica, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!replica.isLeader) return this.notLeader(replica, res);
    const body = await readBody(req, MAX_TRANSACTION_BYTES);
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'request body is not JSON');
    }
    const tx = buildTransaction(parsed);
    let result;
    try {
      result = await replica.propose({ manifest: encodeLogEntry(tx.manifest), files: tx.files });
    } catch (err) {
      if (isWalArchiverError(err, ErrorCodes.NOT_LEADER)) return this.notLeader(replica, res);
      throw err;
    }
    const out: TransactionResponse = {
      partition: replica.partition,
      lsn: result.lsn,
      term: result.term,
      committedAt: new Date(result.committedAt).toISOString(),
    };
    this.json(res, 200, out);
  }

  /** `POST /v1/faults {"isolate": true|false}`: cut this node off from its peers, or reconnect it. */
  private async faults(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method === 'POST') {
      const body = JSON.parse((await readBody(req, 4096)).toString('utf8') || '{}') as { isolate?: unknown };
      if (typeof body.isolate !== 'boolean')
        throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'expected {"isolate": true|false}');
      this.transport.isolated = body.isolate;
      this.opts.logger.warn(
        body.isolate ? 'fault injection: cut off from peers' : 'fault injection: reconnected',
      );
    }
    this.json(res, 200, { isolate: this.transport.isolated });
  }

  private notLeader(replica: Replica, res: http.ServerResponse): void {
    const leader = replica.leaderId;
    this.json(res, 421, {
      error: `node ${this.opts.id} is not the leader of partition ${replica.partition}`,
      code: ErrorCodes.NOT_LEADER,
      leader,
      ...(this.opts.peers.get(leader) ? { leaderUrl: this.opts.peers.get(leader) } : {}),
    });
  }

  private async snapshot(replica: Replica, res: http.ServerResponse): Promise<void> {
    const snap = await replica.openStateSnapshot();
    res.writeHead(200, {
      'content-type': 'application/x-tar',
      'x-snapshot-lsn': String(snap.lsn),
      'x-snapshot-term': String(snap.term),
      ...(snap.maxCommittedAt !== undefined
        ? { 'x-snapshot-max-committed-at': new Date(snap.maxCommittedAt).toISOString() }
        : {}),
      'x-partition': replica.partition,
    });
    try {
      snap.stream.pipe(res);
      await new Promise<void>((resolve, reject) => {
        res.on('finish', resolve);
        res.on('close', resolve);
        snap.stream.on('error', reject);
      });
    } catch (err) {
      res.destroy(err as Error);
    } finally {
      await snap.release();
    }
  }

  private async receiveMessages(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const frames = decodeFrames(await readBody(req, 256 * 1024 * 1024));
    for (const f of frames) {
      const r = this.replicas.get(f.partition);
      if (!r) continue;
      if (f.archived !== undefined) r.remoteArchived = Math.max(r.remoteArchived, f.archived);
      try {
        r.step(f.message);
      } catch (err) {
        this.opts.logger.warn('raft message rejected', { partition: f.partition, error: err });
      }
    }
    res.writeHead(204).end();
  }

  private async receiveSnapshot(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const raw = req.headers['x-raft-message'];
    if (typeof raw !== 'string')
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'missing x-raft-message header');
    let header: { partition?: unknown; message?: unknown };
    try {
      header = JSON.parse(Buffer.from(raw, 'base64').toString('utf8')) as typeof header;
    } catch {
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'x-raft-message is not base64 JSON');
    }
    const replica = this.replicaOr404(String(header.partition));
    await replica.receiveSnapshot(decodeMessage(header.message), req);
    res.writeHead(204).end();
  }

  private leadershipStream(req: http.IncomingMessage, res: http.ServerResponse): void {
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
    for (const s of this.statuses()) {
      const change: LeadershipChange = {
        partition: s.partition,
        node: this.opts.id,
        leader: s.leader,
        term: s.term,
        role: s.role,
        at: new Date().toISOString(),
      };
      res.write(`${JSON.stringify(change)}\n`);
    }
    this.streams.add(res);
    req.on('close', () => this.streams.delete(res));
  }

  private json(res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private sendError(res: http.ServerResponse, err: unknown): void {
    const code = isWalArchiverError(err) ? err.code : ErrorCodes.INTERNAL;
    const status =
      code === ErrorCodes.INVALID_ARGUMENT
        ? 400
        : code === ErrorCodes.NOT_FOUND
          ? 404
          : code === ErrorCodes.UNAVAILABLE
            ? 503
            : code === ErrorCodes.NOT_LEADER
              ? 421
              : code === ErrorCodes.CORRUPT
                ? 422
                : 500;
    if (status === 500) this.opts.logger.error('request failed', { error: err });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    this.json(res, status, { error: describeError(err), code });
  }

  // ---- metrics -----------------------------------------------------------------

  private createMetrics() {
    const registry = this.registry;
    const labelNames = ['partition'] as const;
    return {
      role: new Gauge({
        name: 'storage_node_partition_leader',
        help: '1 when this node leads the partition',
        labelNames,
        registers: [registry],
      }),
      term: new Gauge({
        name: 'storage_node_partition_term',
        help: 'Raft term',
        labelNames,
        registers: [registry],
      }),
      committed: new Gauge({
        name: 'storage_node_partition_committed_lsn',
        help: 'Committed LSN',
        labelNames,
        registers: [registry],
      }),
      applied: new Gauge({
        name: 'storage_node_partition_applied_lsn',
        help: 'Applied LSN',
        labelNames,
        registers: [registry],
      }),
      appended: new Gauge({
        name: 'storage_node_partition_appended_lsn',
        help: 'Last LSN in the WAL',
        labelNames,
        registers: [registry],
      }),
      walEntries: new Gauge({
        name: 'storage_node_partition_wal_entries',
        help: 'Entries kept in the WAL',
        labelNames,
        registers: [registry],
      }),
      retained: new Gauge({
        name: 'storage_node_partition_wal_entries_retained_for_archiver',
        help: 'Entries kept only because the archiver has not archived them yet',
        labelNames,
        registers: [registry],
      }),
      proposals: new Counter({
        name: 'storage_node_partition_proposals_total',
        help: 'Writes proposed by this node as leader',
        labelNames,
        registers: [registry],
      }),
      elections: new Counter({
        name: 'storage_node_partition_elections_total',
        help: 'Elections this node started',
        labelNames,
        registers: [registry],
      }),
      partitionErrors: new Counter({
        name: 'storage_node_partition_errors_total',
        help: 'Partitions stopped by an error (corrupt WAL …)',
        labelNames,
        registers: [registry],
      }),
      stopped: new Gauge({
        name: 'storage_node_partition_stopped',
        help: '1 when the partition stopped on an error',
        labelNames,
        registers: [registry],
      }),
      eventsPending: new Gauge({
        name: 'storage_node_leadership_events_pending',
        help: 'Leadership events not yet published',
        registers: [registry],
      }),
    };
  }

  private refreshMetrics(): void {
    const m = this.metrics;
    for (const r of this.replicas.values()) {
      const s = r.status();
      const l = { partition: r.partition };
      m.role.set(l, s.role === 'leader' ? 1 : 0);
      m.term.set(l, s.term);
      m.committed.set(l, s.committed);
      m.applied.set(l, s.applied);
      m.appended.set(l, s.appended);
      m.walEntries.set(l, r.walEntries);
      m.retained.set(l, r.retainedForArchiver);
      // Counters only go up: add what the replica counted since the last scrape.
      const seen = this.counted.get(r.partition) ?? { proposals: 0, elections: 0 };
      m.proposals.inc(l, Math.max(0, r.proposals - seen.proposals));
      m.elections.inc(l, Math.max(0, r.elections - seen.elections));
      this.counted.set(r.partition, { proposals: r.proposals, elections: r.elections });
      m.stopped.set(l, r.error ? 1 : 0);
    }
    for (const id of this.brokenPartitions.keys()) m.stopped.set({ partition: id }, 1);
  }

  async stop(): Promise<void> {
    this.abort.abort();
    clearInterval(this.ticker);
    clearInterval(this.pruner);
    for (const res of this.streams) res.end();
    this.streams.clear();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    await Promise.all([...this.replicas.values()].map((r) => r.close()));
    await this.publisher;
    this.transport.close();
  }
}

export function splitHostPort(listen: string): [string, string] {
  const m = /^(.*):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `--listen must be HOST:PORT, got "${listen}"`);
  }
  return [m[1] || '127.0.0.1', m[2]!];
}

function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        reject(new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `request body larger than ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
