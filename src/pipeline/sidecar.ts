import http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as dfs from '../../contract/fs/durable-fs.js';
import type { EventBus } from '../../contract/events/event-bus.js';
import type { Logger } from '../../contract/log.js';
import type { LeadershipState, StorageNode } from '../node/storage-node.js';
import { CommitWatcher } from '../tail/watch.js';
import type { ObjectStore } from '../store/object-store.js';
import {
  listPartitionIds,
  partitionDir,
  readArchiverPosition,
  writeArchiverPosition,
} from '../../contract/wal/entry.js';
import { createArchiverMetrics, type ArchiverMetrics } from './metrics.js';
import { PartitionArchiver, type ArchiverConfig } from './partition-archiver.js';
import { VerifiedPointExporter } from './verified-point.js';
import { Semaphore } from '../semaphore.js';
import { BackupSlots, resolveThresholds, type ThresholdOverrides, type Thresholds } from '../policy/index.js';
import type { BackupRetentionConfig } from '../backup/take.js';
import type { RetentionPolicy } from '../backup/retention.js';
import { comparePartitionIds } from '../../contract/partition-id.js';

/**
 * The sidecar: runs beside one storage node (same data directory), follows
 * the node's leadership stream, and keeps one PartitionArchiver running for
 * each partition the node leads, in the term it leads in. Serves /metrics,
 * /healthz, /readyz and /v1/status.
 */

/** Partitions reading and claiming their manifests at once when they resume. */
const RESUME_CONCURRENCY = 32;
/** Partition folders checked at once for `archiver/position` at start. */
const PIN_CONCURRENCY = 16;

export interface SidecarOptions {
  dataDir: string;
  /** The storage node this sidecar runs beside. */
  storageNode: StorageNode;
  store: ObjectStore;
  events?: EventBus;
  config: ArchiverConfig;
  /** Segments packed and uploaded at once across all partitions. */
  uploadConcurrency: number;
  spoolDir: string;
  /** Port for /metrics and health; undefined: no HTTP server. 0 picks a free port. */
  metricsPort?: number;
  metricsHost?: string;
  logger: Logger;
  /** Base backups by policy; absent: none are taken. */
  backups?: {
    concurrency: number;
    thresholds: Thresholds;
    overrides?: ThresholdOverrides;
    retention?: BackupRetentionConfig;
    keep?: RetentionPolicy;
  };
  /** How often the verified points of led partitions are read for /metrics (default 60 s). */
  verifiedPollMs?: number;
  /** Extra parts to start and stop with the sidecar (the global manifest projector). */
  companions?: Array<{ start(): Promise<void>; stop(): Promise<void> }>;
}

export interface PartitionReport {
  partition: string;
  term: number;
  state: string;
  archived: number;
  committed: number;
  published: number | null;
  error?: string;
}

export class Sidecar {
  readonly metrics: ArchiverMetrics;
  private readonly archivers = new Map<string, PartitionArchiver>();
  private readonly transitions = new Map<string, Promise<void>>();
  private readonly uploads: Semaphore;
  private readonly resumes: Semaphore;
  private readonly backupSlots: BackupSlots | undefined;
  private readonly verified: VerifiedPointExporter;
  private readonly abort = new AbortController();
  private watcher: CommitWatcher | undefined;
  private follower: Promise<void> | undefined;
  private server: http.Server | undefined;
  private connected = false;
  private companionStarts: Array<Promise<void>> = [];
  metricsUrl: string | undefined;

  constructor(private readonly o: SidecarOptions) {
    this.metrics = createArchiverMetrics();
    this.uploads = new Semaphore(o.uploadConcurrency);
    this.resumes = new Semaphore(RESUME_CONCURRENCY);
    this.backupSlots = o.backups ? new BackupSlots(o.backups.concurrency) : undefined;
    this.verified = new VerifiedPointExporter({
      store: o.store,
      metrics: this.metrics,
      logger: o.logger,
      leading: () => [...this.archivers.keys()],
      timelineOf: (p) => this.archivers.get(p)?.timeline ?? 1,
      ...(o.verifiedPollMs !== undefined ? { intervalMs: o.verifiedPollMs } : {}),
    });
  }

  /** The archive timeline a led partition is written to (1 when it is not led or not resumed yet). */
  timelineOf(partition: string): number {
    return this.archivers.get(partition)?.timeline ?? 1;
  }

  async start(): Promise<void> {
    await dfs.mkdir(this.o.spoolDir, { recursive: true });
    await this.pinAll();
    this.watcher = new CommitWatcher(this.o.dataDir, (p) => this.archivers.get(p)?.notify());
    if (this.o.metricsPort !== undefined) await this.listen(this.o.metricsPort);
    this.verified.start();
    // Companions (the global manifest projector) start beside archiving, never
    // before it: joining a consumer group can wait for a dead member's session
    // to expire, and archiving must not wait for that.
    this.companionStarts = (this.o.companions ?? []).map((c) =>
      c
        .start()
        .catch((err: unknown) => this.o.logger.error('a sidecar companion failed to start', { error: err })),
    );
    this.follower = this.o.storageNode.followLeadership({
      logger: this.o.logger,
      signal: this.abort.signal,
      onChange: (s) => {
        this.connected = true;
        this.onLeadership(s);
      },
      onDisconnect: () => {
        this.connected = false;
      },
    });
    this.o.logger.info('sidecar started', {
      dataDir: this.o.dataDir,
      nodeUrl: this.o.storageNode.url,
      store: this.o.store.url,
    });
  }

  /**
   * Makes sure every partition on this node has `archiver/position`, so the
   * node keeps its WAL until it is archived, also on followers (which prune
   * no further than their leader's sidecar reports).
   */
  private async pinAll(): Promise<void> {
    const ids = await listPartitionIds(this.o.dataDir);
    let next = 0;
    const worker = async () => {
      while (next < ids.length) {
        const dir = partitionDir(this.o.dataDir, ids[next++]!);
        if ((await readArchiverPosition(dir).catch(() => 0)) === undefined)
          await writeArchiverPosition(dir, 0);
      }
    };
    await Promise.all(Array.from({ length: Math.min(PIN_CONCURRENCY, ids.length) }, worker));
  }

  private onLeadership(s: LeadershipState): void {
    const leads = s.role === 'leader' && s.leader === s.node;
    // One transition at a time per partition, in the order the stream reports them.
    const prev = this.transitions.get(s.partition) ?? Promise.resolve();
    const next = prev
      .then(() => (leads ? this.ensure(s.partition, s.node, s.term) : this.release(s.partition)))
      .catch((err: unknown) =>
        this.o.logger.error('leadership transition failed', { partition: s.partition, error: err }),
      );
    this.transitions.set(s.partition, next);
  }

  private async ensure(partition: string, node: number, term: number): Promise<void> {
    if (this.abort.signal.aborted) return;
    const existing = this.archivers.get(partition);
    if (existing && existing.term === term && existing.state !== 'fenced' && existing.state !== 'stopped')
      return;
    if (existing) await existing.stop();
    const dir = partitionDir(this.o.dataDir, partition);
    if ((await readArchiverPosition(dir).catch(() => 0)) === undefined) await writeArchiverPosition(dir, 0);
    const a = new PartitionArchiver({
      partition,
      partitionDir: dir,
      node,
      term,
      store: this.o.store,
      ...(this.o.events ? { events: this.o.events } : {}),
      spoolDir: this.o.spoolDir,
      uploads: this.uploads,
      resumes: this.resumes,
      config: this.o.config,
      metrics: this.metrics,
      logger: this.o.logger,
      ...(this.o.backups && this.backupSlots
        ? {
            backup: {
              slots: this.backupSlots,
              thresholds: resolveThresholds(this.o.backups.thresholds, this.o.backups.overrides, partition),
              storageNode: this.o.storageNode,
              spoolDir: this.o.spoolDir,
              zstdLevel: this.o.config.zstdLevel,
              ...(this.o.backups.retention ? { retention: this.o.backups.retention } : {}),
              ...(this.o.backups.keep ? { keep: this.o.backups.keep } : {}),
            },
          }
        : {}),
    });
    this.archivers.set(partition, a);
    this.watcher?.add(partition);
    a.start();
    void a.whenResumed().then(() => this.verified.refresh(partition));
  }

  private async release(partition: string): Promise<void> {
    const a = this.archivers.get(partition);
    if (!a) return;
    this.archivers.delete(partition);
    this.verified.forget(partition);
    this.watcher?.remove(partition);
    await a.stop();
    this.o.logger.info('no longer leader; stopped archiving', { partition, term: a.term });
  }

  status(): PartitionReport[] {
    return [...this.archivers.values()]
      .map((a) => ({
        partition: a.partition,
        term: a.term,
        state: a.state,
        archived: a.archivedLsn,
        committed: a.committedLsn,
        published: this.o.events ? a.publishedLsn : null,
        ...(a.error ? { error: a.error } : {}),
      }))
      .sort((x, y) => comparePartitionIds(x.partition, y.partition));
  }

  /** Resolves once every led partition has resumed (tests, start-up). */
  async settled(): Promise<void> {
    await Promise.all([...this.transitions.values()]);
    await Promise.all([...this.archivers.values()].map((a) => a.whenResumed()));
  }

  private async listen(port: number): Promise<void> {
    const server = http.createServer((req, res) => {
      void this.serve(req, res).catch(() => res.writeHead(500).end());
    });
    const host = this.o.metricsHost ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    this.metricsUrl = `http://${host}:${(server.address() as AddressInfo).port}`;
  }

  private async serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/metrics') {
      const now = Date.now();
      for (const a of this.archivers.values()) {
        const b = a.backupState();
        if (!b) continue;
        const l = { partition: a.partition };
        if (b.lastBackupAt !== undefined)
          this.metrics.sinceBackupSeconds.set(l, (now - b.lastBackupAt) / 1000);
        this.metrics.walBytesSinceBackup.set(l, b.walBytesSince);
      }
      res.writeHead(200, { 'content-type': this.metrics.registry.contentType });
      res.end(await this.metrics.registry.metrics());
    } else if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    } else if (path === '/readyz') {
      const failed = this.status().filter((p) => p.state === 'failed');
      const ready = this.connected;
      res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          ready,
          nodeConnected: this.connected,
          failedPartitions: failed.map((p) => p.partition),
        }),
      );
    } else if (path === '/v1/status') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.status()));
    } else {
      res.writeHead(404).end();
    }
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.verified.stop();
    await this.follower;
    await Promise.all([...this.transitions.values()]);
    await Promise.all([...this.archivers.values()].map((a) => a.stop()));
    this.archivers.clear();
    await Promise.all(this.companionStarts);
    for (const c of this.o.companions ?? []) await c.stop();
    await this.watcher?.close();
    if (this.server) {
      const server = this.server;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    }
  }
}
