import { CreateBucketCommand, DeleteBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { Kafka, logLevel } from 'kafkajs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../contract/errors.js';
import type { EventBus } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import {
  GLOBAL_MANIFEST_KEY,
  GlobalManifestWriter,
  baseBackupKey,
  partitionManifestKey,
  readGlobalManifest,
  readPartitionManifest,
  rebuildFromEvents,
  rebuildFromObjects,
  segmentKey,
  updatePartitionManifest,
  type ManifestEvent,
} from '../../src/manifest/index.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { openObjectStore } from '../../src/store/open.js';
import { KAFKA_BROKERS, S3_ENDPOINT, S3_REGION, kafkaUrl, s3Url, uniqueName } from '../helpers/services.js';
import {
  archivedEvent,
  backup,
  backupEvent,
  leadershipEvent,
  segment,
  segmentObject,
} from '../unit/src/manifest/fixtures.js';

/** A backend: `open()` gives a new client of one fresh, empty store (several clients share it). */
interface StoreBackend {
  name: string;
  setup(): Promise<{ open: () => Promise<ObjectStore>; cleanup: () => Promise<void> }>;
}

let bucket: string | undefined;
let s3Admin: S3Client | undefined;

async function sharedBucket(): Promise<string> {
  if (bucket) return bucket;
  s3Admin = new S3Client({ endpoint: S3_ENDPOINT, region: S3_REGION, forcePathStyle: true });
  const name = uniqueName('wal-manifest');
  await s3Admin.send(new CreateBucketCommand({ Bucket: name }));
  bucket = name;
  return name;
}

afterAll(async () => {
  if (bucket && s3Admin) await s3Admin.send(new DeleteBucketCommand({ Bucket: bucket }));
  s3Admin?.destroy();
});

async function emptyStore(store: ObjectStore): Promise<void> {
  const keys: string[] = [];
  for await (const obj of store.list('')) keys.push(obj.key);
  for (const key of keys) await store.delete(key);
}

const backends: StoreBackend[] = [
  {
    name: 'folder',
    async setup() {
      const parent = await mkdtemp(path.join(os.tmpdir(), 'wal-manifest-'));
      const url = pathToFileURL(path.join(parent, uniqueName('archive'))).href;
      return {
        open: () => openObjectStore(url),
        cleanup: () => rm(parent, { recursive: true, force: true }),
      };
    },
  },
  {
    name: 's3',
    async setup() {
      const url = s3Url(await sharedBucket(), `${uniqueName('manifest')}/archive`);
      return {
        open: () => openObjectStore(url),
        cleanup: async () => {
          const store = await openObjectStore(url);
          try {
            await emptyStore(store);
          } finally {
            await store.close();
          }
        },
      };
    },
  },
];

for (const backend of backends) {
  describe(`manifests on the ${backend.name} store`, () => {
    const opened: ObjectStore[] = [];
    let cleanup: (() => Promise<void>) | undefined;
    let openStore: () => Promise<ObjectStore>;

    async function fresh(): Promise<ObjectStore> {
      const env = await backend.setup();
      cleanup = env.cleanup;
      openStore = async () => {
        const s = await env.open();
        opened.push(s);
        return s;
      };
      return openStore();
    }

    afterEach(async () => {
      await Promise.all(opened.splice(0).map((s) => s.close()));
      await cleanup?.();
      cleanup = undefined;
    });

    it('writes, re-reads and skips a repeated partition manifest update', async () => {
      const store = await fresh();
      const w = { node: 1, term: 1 };
      const first = await updatePartitionManifest(store, '7', w, { segments: [segment('7', 1, 10)] });
      expect(first.written).toBe(true);
      const second = await updatePartitionManifest(store, '7', w, {
        segments: [segment('7', 11, 20)],
        backups: [backup('7', 10)],
      });
      expect(second.manifest.version).toBe(2);
      const again = await updatePartitionManifest(store, '7', w, { segments: [segment('7', 11, 20)] });
      expect(again.written).toBe(false);
      const stored = await readPartitionManifest(store, '7');
      expect(stored?.value).toEqual(second.manifest);
      expect(stored?.value.archived).toEqual({ first_lsn: 1, last_lsn: 20 });
      expect(stored?.etag).toBe(second.etag);
    });

    it('fences a stale leader: the higher term takes over, the lower term gets FENCED', async () => {
      const store = await fresh();
      const other = await openStore();
      await updatePartitionManifest(store, '3', { node: 1, term: 5 }, { segments: [segment('3', 1, 10)] });
      await updatePartitionManifest(
        other,
        '3',
        { node: 2, term: 6 },
        { segments: [segment('3', 5, 12, { term: 6, node: 2 })] },
      );
      let error: unknown;
      try {
        await updatePartitionManifest(store, '3', { node: 1, term: 5 }, { segments: [segment('3', 11, 20)] });
      } catch (err) {
        error = err;
      }
      expect(isWalArchiverError(error, ErrorCodes.FENCED)).toBe(true);
      expect((error as { retryable: boolean }).retryable).toBe(false);
      const stored = await readPartitionManifest(store, '3');
      expect(stored?.value.leader).toEqual({ node: 2, term: 6 });
      expect(stored?.value.archived).toEqual({ first_lsn: 1, last_lsn: 12 });
      expect(stored?.value.segments.map((s) => s.key)).toEqual([
        segmentKey('3', 1, 10),
        segmentKey('3', 5, 12),
      ]);
    });

    it('keeps every update of concurrent writers of one partition manifest', async () => {
      const store = await fresh();
      const clients = await Promise.all([store, openStore(), openStore(), openStore()]);
      const w = { node: 4, term: 2 };
      await Promise.all(
        clients.map(async (client, i) => {
          for (let j = 0; j < 3; j++) {
            const first = (i * 3 + j) * 10 + 1;
            await updatePartitionManifest(
              client,
              '9',
              w,
              { segments: [segment('9', first, first + 9)] },
              { attempts: 100 },
            );
          }
        }),
      );
      const stored = (await readPartitionManifest(store, '9'))?.value;
      expect(stored?.segments).toHaveLength(12);
      expect(stored?.version).toBe(12);
      expect(stored?.archived).toEqual({ first_lsn: 1, last_lsn: 120 });
    });

    it('lets a new leader win a race against the old one without losing its segments', async () => {
      const store = await fresh();
      const other = await openStore();
      await updatePartitionManifest(store, '5', { node: 1, term: 1 }, { segments: [segment('5', 1, 10)] });
      const old = (async () => {
        const outcomes: string[] = [];
        for (let i = 1; i <= 5; i++) {
          try {
            await updatePartitionManifest(
              store,
              '5',
              { node: 1, term: 1 },
              {
                segments: [segment('5', i * 10 + 1, i * 10 + 10)],
              },
              { attempts: 100 },
            );
            outcomes.push('ok');
          } catch (err) {
            if (!isWalArchiverError(err, ErrorCodes.FENCED)) throw err;
            outcomes.push('fenced');
          }
        }
        return outcomes;
      })();
      const next = (async () => {
        for (let i = 1; i <= 5; i++) {
          await updatePartitionManifest(
            other,
            '5',
            { node: 2, term: 2 },
            {
              backups: [backup('5', i, { term: 2, node: 2 })],
            },
            { attempts: 100 },
          );
        }
      })();
      const [outcomes] = await Promise.all([old, next]);
      // Once fenced, always fenced.
      const firstFenced = outcomes.indexOf('fenced');
      if (firstFenced >= 0) expect(outcomes.slice(firstFenced).every((o) => o === 'fenced')).toBe(true);
      const stored = (await readPartitionManifest(store, '5'))?.value;
      expect(stored?.leader).toEqual({ node: 2, term: 2 });
      expect(stored?.backups.map((b) => b.lsn)).toEqual([1, 2, 3, 4, 5]);
      const accepted = outcomes.filter((o) => o === 'ok').length;
      expect(stored?.segments).toHaveLength(1 + accepted);
    });

    it('loses no global manifest update with concurrent writers', async () => {
      const store = await fresh();
      const writers = 6;
      const batches = 3;
      const clients = [store, ...(await Promise.all(Array.from({ length: writers - 1 }, () => openStore())))];
      await Promise.all(
        clients.map(async (client, i) => {
          const writer = new GlobalManifestWriter(client, { attempts: 200 });
          for (let b = 0; b < batches; b++) {
            const events: ManifestEvent[] = [
              {
                topic: 'archived',
                value: archivedEvent(`p${i}`, b * 10 + 1, b * 10 + 10, { committed_lsn: b * 10 + 12 }),
              },
            ];
            if (b === 1) events.push({ topic: 'backups', value: backupEvent(`p${i}`, 15) });
            await writer.apply(events);
          }
        }),
      );
      const stored = (await readGlobalManifest(store))?.value;
      expect(stored?.version).toBe(writers * batches);
      expect(Object.keys(stored?.partitions ?? {}).sort()).toEqual(clients.map((_, i) => `p${i}`).sort());
      for (let i = 0; i < writers; i++) {
        expect(stored?.partitions[`p${i}`]).toMatchObject({
          archived_lsn: 30,
          committed_lsn: 32,
          lag_entries: 2,
          segments_count: 3,
          backups_count: 1,
          latest_backup: { lsn: 15 },
        });
      }
    });

    it('rebuilds the global manifest from the objects alone', async () => {
      const store = await fresh();
      await updatePartitionManifest(
        store,
        '1',
        { node: 3, term: 7 },
        {
          segments: [segment('1', 1, 10)],
          backups: [backup('1', 10)],
        },
      );
      const meta = (first: number, last: number) => segmentObject('2', first, last, `${first}-${last}`);
      await store.create(segmentKey('2', 11, 20), Buffer.alloc(30), meta(11, 20));
      await store.create(segmentKey('2', 1, 10), Buffer.alloc(20), meta(1, 10));
      await store.create(segmentKey('2', 25, 30), Buffer.alloc(5), meta(25, 30));
      await store.create(baseBackupKey('2', 10), Buffer.alloc(9), { metadata: { partition: '2' } });
      await store.create('partitions/2/wal/not-a-segment', Buffer.alloc(1));
      await store.create(partitionManifestKey('4'), Buffer.from('{"schema":1}'));
      await store.create(baseBackupKey('4', 3), Buffer.alloc(4));

      const result = await rebuildFromObjects(store);
      expect(result.sources).toEqual({ '1': 'manifest', '2': 'objects', '4': 'objects' });
      expect(result.problems.map((p) => p.key)).toEqual([partitionManifestKey('4')]);
      expect(result.manifest.partitions['1']).toMatchObject({
        leader: { node: 3, term: 7 },
        archived_lsn: 10,
      });
      expect(result.manifest.partitions['2']).toMatchObject({
        leader: null,
        archived_lsn: 20,
        segments_count: 3,
        archived_bytes: 55,
        latest_backup: { key: baseBackupKey('2', 10), lsn: 10, bytes: 9 },
      });
      expect(result.manifest.partitions['4']).toMatchObject({ archived_lsn: 0, backups_count: 1 });

      const writer = new GlobalManifestWriter(store);
      const written = await writer.merge(result.manifest.partitions);
      expect(written.written).toBe(true);
      expect((await readGlobalManifest(store))?.value.partitions).toEqual(result.manifest.partitions);
      expect((await store.head(GLOBAL_MANIFEST_KEY))?.size).toBeGreaterThan(0);
    });
  });
}

interface BusBackend {
  name: string;
  idleMs: number;
  setup(): Promise<{ bus: EventBus; cleanup: () => Promise<void> }>;
}

const busBackends: BusBackend[] = [
  {
    name: 'folder',
    idleMs: 1_500,
    async setup() {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'wal-manifest-events-'));
      const bus = await openEventBus(`${pathToFileURL(dir).href}?topicPrefix=wal`, {
        folder: { heartbeatMs: 200, sessionTimeoutMs: 3_000, pollMs: 100 },
      });
      return {
        bus,
        cleanup: async () => {
          await bus.close();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  },
  {
    name: 'kafka',
    idleMs: 8_000,
    async setup() {
      const prefix = uniqueName('mfst');
      const bus = await openEventBus(kafkaUrl(prefix), { kafka: { sessionTimeoutMs: 6_000 } });
      return {
        bus,
        cleanup: async () => {
          await bus.close();
          const admin = new Kafka({
            clientId: 'manifest-test',
            brokers: KAFKA_BROKERS.split(','),
            logLevel: logLevel.NOTHING,
          }).admin();
          await admin.connect();
          try {
            const topics = (await admin.listTopics()).filter((t) => t.startsWith(`${prefix}.`));
            if (topics.length > 0) await admin.deleteTopics({ topics, timeout: 10_000 });
          } finally {
            await admin.disconnect();
          }
        },
      };
    },
  },
];

for (const backend of busBackends) {
  describe(`rebuildFromEvents on the ${backend.name} bus`, () => {
    let env: { bus: EventBus; cleanup: () => Promise<void> } | undefined;

    beforeAll(async () => {
      env = await backend.setup();
    });

    afterAll(async () => {
      await env?.cleanup();
    });

    it('replays the topics from the beginning and folds them, skipping malformed events', async () => {
      const bus = env!.bus;
      await bus.publish('leadership', [
        { key: '1', value: { ...leadershipEvent('1', 2, 2, { node: 2 }) } },
        { key: '2', value: { ...leadershipEvent('2', 1, null, { node: 1, role: 'follower' }) } },
      ]);
      await bus.publish('archived', [
        { key: '1', value: { ...archivedEvent('1', 1, 10, { term: 2, node: 2 }) } },
        { key: '1', value: { ...archivedEvent('1', 11, 20, { term: 2, node: 2, committed_lsn: 24 }) } },
        { key: '1', value: { ...archivedEvent('1', 11, 20, { term: 2, node: 2, committed_lsn: 24 }) } },
        { key: '2', value: { ...archivedEvent('2', 1, 5) } },
        { key: '3', value: { schema: 1, partition: '3', first_lsn: 'x' } },
      ]);
      await bus.publish('backups', [{ key: '1', value: { ...backupEvent('1', 15, { term: 2, node: 2 }) } }]);

      const result = await rebuildFromEvents(bus, { idleMs: backend.idleMs, maxMs: 120_000 });
      expect(result.caughtUp).toBe(true);
      expect(result.events).toBeGreaterThanOrEqual(8);
      expect(result.skipped).toBeGreaterThanOrEqual(1);
      expect(result.manifest.partitions['1']).toMatchObject({
        leader: { node: 2, term: 2 },
        archived_lsn: 20,
        committed_lsn: 24,
        lag_entries: 4,
        segments_count: 2,
        latest_backup: { lsn: 15 },
      });
      expect(result.manifest.partitions['2']).toMatchObject({
        leader: { node: 1, term: 1 },
        archived_lsn: 5,
      });
      expect(result.manifest.partitions['3']).toBeUndefined();
    });
  });
}
