import { join } from 'node:path';
import { parseFlags, UsageError } from '../../contract/cli/flags.js';
import {
  DEFAULT_BACKUP_SLOTS,
  DEFAULT_THRESHOLDS,
  resolveThresholds,
  type ThresholdOverrides,
} from '../policy/index.js';
import type { Command } from '../../contract/cli/runner.js';
import type { EventBus } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import { createLogger } from '../../contract/log.js';
import { GlobalManifestProjector } from '../manifest/projector.js';
import { DEFAULT_ARCHIVER_CONFIG } from '../pipeline/partition-archiver.js';
import { registerProjectorMetrics } from '../pipeline/metrics.js';
import { DrillScheduler } from '../pipeline/drill-scheduler.js';
import { Sidecar } from '../pipeline/sidecar.js';
import { verifyConditionalWrites } from '../store/conditional-check.js';
import { openObjectStore } from '../store/open.js';
import { HttpStorageNode } from '../node/http-node.js';

export const RUN_FLAGS = {
  'data-dir': {
    type: 'string',
    help: "the storage node's data directory",
    value: 'DIR',
    required: true,
    env: 'WAL_ARCHIVER_DATA_DIR',
  },
  'node-url': {
    type: 'string',
    help: 'the co-located storage node',
    value: 'URL',
    required: true,
    env: 'WAL_ARCHIVER_NODE_URL',
  },
  'object-store': {
    type: 'string',
    help: 's3://bucket/prefix?… or file:///path',
    value: 'URL',
    required: true,
    env: 'WAL_ARCHIVER_OBJECT_STORE',
  },
  events: {
    type: 'string',
    help: 'kafka://host:port?topicPrefix=wal or file:///path (optional)',
    value: 'URL',
    env: 'WAL_ARCHIVER_EVENTS',
  },
  'metrics-port': {
    type: 'int',
    help: 'port for /metrics, /healthz, /readyz (0: any free port)',
    value: 'N',
    min: 0,
    max: 65535,
    default: 9187,
    env: 'WAL_ARCHIVER_METRICS_PORT',
  },
  'metrics-host': {
    type: 'string',
    help: 'address for the metrics server',
    value: 'HOST',
    default: '127.0.0.1',
    env: 'WAL_ARCHIVER_METRICS_HOST',
  },
  'segment-size': {
    type: 'bytes',
    help: 'close a segment at this many entry bytes',
    value: 'SIZE',
    min: 1,
    default: DEFAULT_ARCHIVER_CONFIG.segmentMaxBytes,
    env: 'WAL_ARCHIVER_SEGMENT_SIZE',
  },
  'segment-entries': {
    type: 'int',
    help: 'close a segment at this many entries',
    value: 'N',
    min: 1,
    default: DEFAULT_ARCHIVER_CONFIG.segmentMaxEntries,
    env: 'WAL_ARCHIVER_SEGMENT_ENTRIES',
  },
  'segment-age': {
    type: 'duration',
    help: 'close a segment this long after its first entry was committed',
    value: 'DURATION',
    min: 1,
    default: DEFAULT_ARCHIVER_CONFIG.segmentMaxAgeMs,
    env: 'WAL_ARCHIVER_SEGMENT_AGE',
  },
  'upload-concurrency': {
    type: 'int',
    help: 'segments uploaded at once, all partitions together',
    value: 'N',
    min: 1,
    max: 256,
    default: 8,
    env: 'WAL_ARCHIVER_UPLOAD_CONCURRENCY',
  },
  'partition-inflight': {
    type: 'int',
    help: 'segments of one partition in flight at once',
    value: 'N',
    min: 1,
    max: 32,
    default: DEFAULT_ARCHIVER_CONFIG.maxInflight,
    env: 'WAL_ARCHIVER_PARTITION_INFLIGHT',
  },
  'zstd-level': {
    type: 'int',
    help: 'zstd compression level',
    value: 'N',
    min: -7,
    max: 22,
    default: DEFAULT_ARCHIVER_CONFIG.zstdLevel,
    env: 'WAL_ARCHIVER_ZSTD_LEVEL',
  },
  backups: {
    type: 'bool',
    help: 'take base backups when the thresholds below are crossed',
    default: true,
    env: 'WAL_ARCHIVER_BACKUPS',
  },
  'backup-size': {
    type: 'bytes',
    help: 'base backup after this much WAL (raw bytes) since the last',
    value: 'SIZE',
    min: 1,
    default: DEFAULT_THRESHOLDS.maxBytes,
    env: 'WAL_ARCHIVER_BACKUP_SIZE',
  },
  'backup-entries': {
    type: 'int',
    help: 'base backup after this many WAL entries since the last',
    value: 'N',
    min: 1,
    default: DEFAULT_THRESHOLDS.maxEntries,
    env: 'WAL_ARCHIVER_BACKUP_ENTRIES',
  },
  'backup-age': {
    type: 'duration',
    help: 'base backup when the last is this old (and WAL changed)',
    value: 'DURATION',
    min: 1,
    default: DEFAULT_THRESHOLDS.maxAge,
    env: 'WAL_ARCHIVER_BACKUP_AGE',
  },
  'backup-min-interval': {
    type: 'duration',
    help: 'no threshold backup sooner than this after the last',
    value: 'DURATION',
    min: 0,
    default: DEFAULT_THRESHOLDS.minInterval,
    env: 'WAL_ARCHIVER_BACKUP_MIN_INTERVAL',
  },
  'backup-overrides': {
    type: 'string',
    help: 'per-partition thresholds as JSON, e.g. {"7":{"maxBytes":1048576,"maxAge":3600000}}',
    value: 'JSON',
    env: 'WAL_ARCHIVER_BACKUP_OVERRIDES',
  },
  'backup-concurrency': {
    type: 'int',
    help: 'base backups in flight at once on this node',
    value: 'N',
    min: 1,
    max: 64,
    default: DEFAULT_BACKUP_SLOTS,
    env: 'WAL_ARCHIVER_BACKUP_CONCURRENCY',
  },
  'keep-backups': {
    type: 'int',
    help: 'after each backup, keep this many base backups (and the WAL they need); 0: keep all',
    value: 'N',
    min: 0,
    default: 0,
    env: 'WAL_ARCHIVER_KEEP_BACKUPS',
  },
  'keep-backup-age': {
    type: 'duration',
    help: 'also keep every base backup younger than this',
    value: 'DURATION',
    min: 1,
    env: 'WAL_ARCHIVER_KEEP_BACKUP_AGE',
  },
  'retention-mode': {
    type: 'string',
    help: 'object lock (WORM) mode for base backups: GOVERNANCE or COMPLIANCE',
    value: 'MODE',
    env: 'WAL_ARCHIVER_RETENTION_MODE',
  },
  'retention-days': {
    type: 'int',
    help: 'object lock period for base backups, in days',
    value: 'N',
    min: 1,
    max: 36500,
    env: 'WAL_ARCHIVER_RETENTION_DAYS',
  },
  'manifest-projector': {
    type: 'bool',
    help: 'keep the global manifest current from the events (one consumer group across all sidecars)',
    default: true,
    env: 'WAL_ARCHIVER_MANIFEST_PROJECTOR',
  },
  'drill-interval': {
    type: 'duration',
    help: 'every this long, drill one led partition (restore in scratch and compare); default: off',
    value: 'DURATION',
    min: 1,
    env: 'WAL_ARCHIVER_DRILL_INTERVAL',
  },
  'drill-seed': {
    type: 'int',
    help: 'seeds which partition and backups each drill takes (default: random)',
    value: 'S',
    min: 0,
    env: 'WAL_ARCHIVER_DRILL_SEED',
  },
  'drill-max-scratch': {
    type: 'bytes',
    help: 'skip (and count as failed) a drill whose objects exceed this',
    value: 'SIZE',
    min: 1,
    env: 'WAL_ARCHIVER_DRILL_MAX_SCRATCH',
  },
  'spool-dir': {
    type: 'string',
    help: 'where segments are staged before upload (default: <data-dir>/.wal-archiver-spool)',
    value: 'DIR',
    env: 'WAL_ARCHIVER_SPOOL_DIR',
  },
} as const;

const help = {
  usage: 'wal-archiver run --data-dir D --node-url U --object-store URL [--events URL] [--metrics-port N]',
  description:
    'Archives the committed WAL entries of every partition the co-located storage node leads: publishes\n' +
    'each entry on wal.entries, packs entries into zstd tar segments uploaded in LSN order, keeps the\n' +
    'partition manifests, and tells the node how far it may prune. Runs until SIGINT/SIGTERM.',
};

export const runCommand: Command = {
  summary: 'archive the WAL of the partitions the co-located node leads',
  async run(argv, ctx) {
    const f = parseFlags(argv, RUN_FLAGS, help, ctx.env);
    const logger = createLogger({ component: 'wal-archiver' });
    const store = await openObjectStore(f['object-store']);
    let events: EventBus | undefined;
    try {
      // Term fencing and the manifests' compare-and-swap are only as good as the store's conditions.
      await verifyConditionalWrites(store, { signal: ctx.signal });
      if (f.events) events = await openEventBus(f.events);
      let overrides: ThresholdOverrides | undefined;
      if (f['backup-overrides']) {
        try {
          overrides = JSON.parse(f['backup-overrides']) as ThresholdOverrides;
        } catch {
          throw new UsageError('--backup-overrides is not JSON');
        }
        if (typeof overrides !== 'object' || overrides === null || Array.isArray(overrides)) {
          throw new UsageError('--backup-overrides must be a JSON object of partition ID → thresholds');
        }
      }
      const mode = f['retention-mode'];
      if (mode !== undefined && mode !== 'GOVERNANCE' && mode !== 'COMPLIANCE') {
        throw new UsageError(`--retention-mode must be GOVERNANCE or COMPLIANCE, not "${mode}"`);
      }
      if ((mode === undefined) !== (f['retention-days'] === undefined)) {
        throw new UsageError('--retention-mode and --retention-days go together');
      }
      const thresholds = {
        maxBytes: f['backup-size'],
        maxEntries: f['backup-entries'],
        maxAge: f['backup-age'],
        minInterval: f['backup-min-interval'],
        retryAfter: DEFAULT_THRESHOLDS.retryAfter,
      };
      // Validates the defaults and every override now, not at the first backup.
      resolveThresholds(thresholds, overrides, '1');
      for (const id of Object.keys(overrides ?? {})) resolveThresholds(thresholds, overrides, id);
      const keep =
        f['keep-backups'] > 0 || f['keep-backup-age'] !== undefined
          ? {
              ...(f['keep-backups'] > 0 ? { keepCount: f['keep-backups'] } : {}),
              ...(f['keep-backup-age'] !== undefined ? { keepAge: f['keep-backup-age'] } : {}),
            }
          : undefined;
      const projector =
        events && f['manifest-projector']
          ? new GlobalManifestProjector({ store, bus: events, logger })
          : undefined;
      const sidecar = new Sidecar({
        dataDir: f['data-dir'],
        storageNode: new HttpStorageNode(f['node-url']),
        store,
        ...(events ? { events } : {}),
        config: {
          ...DEFAULT_ARCHIVER_CONFIG,
          segmentMaxBytes: f['segment-size'],
          segmentMaxEntries: f['segment-entries'],
          segmentMaxAgeMs: f['segment-age'],
          maxInflight: f['partition-inflight'],
          zstdLevel: f['zstd-level'],
        },
        uploadConcurrency: f['upload-concurrency'],
        spoolDir: f['spool-dir'] ?? join(f['data-dir'], '.wal-archiver-spool'),
        metricsPort: f['metrics-port'],
        metricsHost: f['metrics-host'],
        logger,
        companions: projector ? [projector] : [],
        ...(f.backups
          ? {
              backups: {
                concurrency: f['backup-concurrency'],
                thresholds,
                ...(overrides ? { overrides } : {}),
                ...(mode ? { retention: { mode, days: f['retention-days']! } } : {}),
                ...(keep ? { keep } : {}),
              },
            }
          : {}),
      });
      if (projector) registerProjectorMetrics(sidecar.metrics.registry, () => projector.stats);
      const drills =
        f['drill-interval'] !== undefined
          ? new DrillScheduler({
              store,
              partitions: () => sidecar.status().map((p) => p.partition),
              timelineOf: (p) => sidecar.timelineOf(p),
              intervalMs: f['drill-interval'],
              ...(f['drill-seed'] !== undefined ? { seed: f['drill-seed'] } : {}),
              ...(f['drill-max-scratch'] !== undefined ? { maxScratchBytes: f['drill-max-scratch'] } : {}),
              registry: sidecar.metrics.registry,
              logger,
            })
          : undefined;
      await sidecar.start();
      drills?.start();
      ctx.stderr.write(`wal-archiver: archiving to ${store.url}; metrics at ${sidecar.metricsUrl}/metrics\n`);
      await new Promise<void>((resolve) =>
        ctx.signal.addEventListener('abort', () => resolve(), { once: true }),
      );
      await drills?.stop();
      await sidecar.stop();
      return 0;
    } finally {
      await events?.close().catch(() => undefined);
      await store.close().catch(() => undefined);
    }
  },
};
