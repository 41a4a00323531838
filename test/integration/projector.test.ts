import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import type { EventBus } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import { createLogger, type Logger } from '../../contract/log.js';
import {
  GlobalManifestProjector,
  emptyGlobalManifest,
  foldEvents,
  readGlobalManifest,
  type GlobalManifest,
  type ManifestEvent,
} from '../../src/manifest/index.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { openObjectStore } from '../../src/store/open.js';
import { kafkaUrl, uniqueName } from '../helpers/services.js';
import { archivedEvent, backupEvent, leadershipEvent } from '../unit/src/manifest/fixtures.js';
import { createTestBucket } from './object-store.s3-helpers.js';

/** One fresh object store and event bus; `open*` give new clients of them (one per simulated sidecar). */
interface Env {
  openStore(): Promise<ObjectStore>;
  openBus(): Promise<EventBus>;
  cleanup(): Promise<void>;
}

interface Backend {
  name: string;
  setup(): Promise<Env>;
}

const backends: Backend[] = [
  {
    name: 'folder store + folder bus',
    async setup() {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'wal-projector-'));
      const storeUrl = pathToFileURL(path.join(dir, 'archive')).href;
      const busUrl = pathToFileURL(path.join(dir, 'events')).href;
      return {
        openStore: () => openObjectStore(storeUrl),
        openBus: () => openEventBus(busUrl, { folder: { heartbeatMs: 100, pollMs: 50 } }),
        cleanup: () => rm(dir, { recursive: true, force: true }),
      };
    },
  },
  {
    name: 'MinIO + Kafka',
    async setup() {
      const bucket = await createTestBucket({ objectLock: false, prefix: 'archive' });
      const busUrl = kafkaUrl(uniqueName('projector'));
      return {
        openStore: () => openObjectStore(bucket.url),
        openBus: () => openEventBus(busUrl),
        cleanup: () => bucket.cleanup(),
      };
    },
  },
];

interface LogRecord {
  level: string;
  msg: string;
  [field: string]: unknown;
}

function capturingLogger(records: LogRecord[]): Logger {
  return createLogger(
    { component: 'manifest-projector' },
    { level: 'debug', write: (line) => records.push(JSON.parse(line) as LogRecord) },
  );
}

async function waitFor(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 120_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function publish(bus: EventBus, events: readonly ManifestEvent[]): Promise<void> {
  for (const e of events) await bus.publish(e.topic, [{ key: e.value.partition, value: { ...e.value } }]);
}

function expectedPartitions(events: readonly ManifestEvent[]): GlobalManifest['partitions'] {
  return foldEvents(emptyGlobalManifest(new Date()), events).partitions;
}

/** Events of six partitions, with leadership moving on one and several segments each. */
function sampleEvents(): ManifestEvent[] {
  const events: ManifestEvent[] = [];
  for (let p = 1; p <= 6; p++) {
    const id = String(p);
    events.push({ topic: 'leadership', value: leadershipEvent(id, 2, (p % 3) + 1, { node: (p % 3) + 1 }) });
    for (let first = 1; first <= 30; first += 10) {
      events.push({
        topic: 'archived',
        value: archivedEvent(id, first, first + 9, {
          term: 2,
          node: (p % 3) + 1,
          committed_lsn: first + 9 + p,
          bytes: 1000 * p + first,
        }),
      });
    }
    events.push({ topic: 'backups', value: backupEvent(id, 10 * p, { term: 2, node: (p % 3) + 1 }) });
  }
  events.push({ topic: 'leadership', value: leadershipEvent('4', 3, null, { node: 2, role: 'candidate' }) });
  events.push({ topic: 'leadership', value: leadershipEvent('4', 3, 2, { node: 2 }) });
  return events;
}

for (const backend of backends) {
  describe(`global manifest projector on ${backend.name}`, () => {
    const toClose: (() => Promise<void>)[] = [];
    let env: Env | undefined;

    afterEach(async () => {
      for (const close of toClose.splice(0).reverse()) await close().catch(() => undefined);
      await env?.cleanup();
      env = undefined;
    });

    async function client(): Promise<{ store: ObjectStore; bus: EventBus }> {
      const store = await env!.openStore();
      const bus = await env!.openBus();
      toClose.push(
        () => store.close(),
        () => bus.close(),
      );
      return { store, bus };
    }

    function projector(
      c: { store: ObjectStore; bus: EventBus },
      group: string,
      logs: LogRecord[],
      storeOverride?: ObjectStore,
    ): GlobalManifestProjector {
      const p = new GlobalManifestProjector({
        store: storeOverride ?? c.store,
        bus: c.bus,
        group,
        logger: capturingLogger(logs),
        errorLogIntervalMs: 60_000,
      });
      toClose.push(() => p.stop());
      return p;
    }

    it('two projectors in one group fold every event once into the right global manifest', async () => {
      env = await backend.setup();
      const group = uniqueName('manifest');
      const logsA: LogRecord[] = [];
      const logsB: LogRecord[] = [];
      const a = projector(await client(), group, logsA);
      const b = projector(await client(), group, logsB);
      await Promise.all([a.start(), b.start()]);

      const publisher = await client();
      const events = sampleEvents();
      const malformed = { schema: 1, partition: '3', first_lsn: 'eleven', last_lsn: 20 };
      await publish(publisher.bus, events.slice(0, 20));
      // A redelivered segment event and a malformed one in the middle of the stream.
      await publish(publisher.bus, [events[1]!]);
      await publisher.bus.publish('archived', [{ key: '3', value: malformed }]);
      await publish(publisher.bus, events.slice(20));

      const expected = expectedPartitions(events);
      let stored: GlobalManifest | undefined;
      await waitFor('the global manifest to hold every event', async () => {
        stored = (await readGlobalManifest(publisher.store))?.value;
        return stored !== undefined && JSON.stringify(stored.partitions) === JSON.stringify(expected);
      });
      await waitFor(
        'the malformed event to be counted',
        () => a.stats.eventsSkipped + b.stats.eventsSkipped >= 1,
      );

      expect(stored!.partitions).toEqual(expected);
      expect(Object.keys(stored!.partitions)).toEqual(['1', '2', '3', '4', '5', '6']);
      // The duplicate did not count twice; leadership moved to the higher term.
      expect(stored!.partitions['1']).toMatchObject({
        segments_count: 3,
        archived_lsn: 30,
        committed_lsn: 31,
      });
      expect(stored!.partitions['4']!.leader).toEqual({ node: 2, term: 3 });
      expect(stored!.partitions['6']!.latest_backup).toMatchObject({ lsn: 60 });

      // Counters move once a handler resolves, just after its write is visible: read them after stop().
      await Promise.all([a.stop(), b.stop()]);
      expect(a.stats.eventsSkipped + b.stats.eventsSkipped).toBe(1);
      // Both members took part: the group shares the topics' partitions.
      expect(a.stats.eventsFolded).toBeGreaterThan(0);
      expect(b.stats.eventsFolded).toBeGreaterThan(0);
      expect(a.stats.eventsFolded + b.stats.eventsFolded).toBeGreaterThanOrEqual(events.length + 1);
      expect(a.stats.writes + b.stats.writes).toBe(stored!.version);

      const skipLog = [...logsA, ...logsB].find((r) => r.msg === 'skipped a malformed event');
      expect(skipLog).toMatchObject({
        level: 'warn',
        topic: publisher.bus.topicName('archived'),
        key: '3',
        bus_partition: expect.any(Number),
        offset: expect.stringMatching(/^\d+$/),
      });
      expect(String(skipLog!.error)).toMatch(/field "first_lsn"/);

      // After a clean stop, a new member resumes after the committed positions: it folds only what is new.
      const later: ManifestEvent[] = [
        { topic: 'archived', value: archivedEvent('2', 31, 40, { term: 2, node: 3, committed_lsn: 45 }) },
        { topic: 'backups', value: backupEvent('7', 5) },
      ];
      await publish(publisher.bus, later);
      const c = projector(await client(), group, []);
      await c.start();
      const expectedLater = expectedPartitions([...events, ...later]);
      await waitFor('the restarted projector to fold the new events', async () => {
        const m = (await readGlobalManifest(publisher.store))?.value;
        return m !== undefined && JSON.stringify(m.partitions) === JSON.stringify(expectedLater);
      });
      await waitFor('the handlers to finish', () => c.stats.eventsFolded >= 2);
      await c.stop();
      expect(c.stats.eventsFolded).toBe(2);
      expect(c.stats.eventsSkipped).toBe(0);
    });

    it('retries a batch whose write failed, committing it only once the fold is stored', async () => {
      env = await backend.setup();
      const logs: LogRecord[] = [];
      const c = await client();
      let failuresLeft = 3;
      const flaky: ObjectStore = Object.assign(Object.create(c.store) as ObjectStore, {
        replace: (...args: Parameters<ObjectStore['replace']>) => {
          if (failuresLeft > 0) {
            failuresLeft--;
            return Promise.reject(
              new WalArchiverError(ErrorCodes.UNAVAILABLE, 'object store is down (test)'),
            );
          }
          return c.store.replace(...args);
        },
      });
      const p = projector(c, uniqueName('manifest'), logs, flaky);
      await p.start();
      const events = sampleEvents().filter((e) => e.value.partition === '5');
      await publish(c.bus, events);
      await waitFor('the manifest to be written after the failures', async () => {
        const m = (await readGlobalManifest(c.store))?.value;
        return m !== undefined && JSON.stringify(m.partitions) === JSON.stringify(expectedPartitions(events));
      });
      expect(failuresLeft).toBe(0);
      expect(p.stats.errors).toBeGreaterThanOrEqual(3);
      expect(p.stats.lastError).toMatch(/object store is down/);
      // Rate-limited: one warning for the burst of failures, then a note when writes recovered.
      const warnings = logs.filter((r) => r.msg === 'global manifest projection failed; retrying');
      expect(warnings).toHaveLength(1);
      expect(logs.some((r) => r.msg === 'global manifest writes recovered')).toBe(true);
      // Failed attempts were not counted as folded.
      await p.stop();
      expect(p.stats.eventsFolded).toBe(events.length);
    });
  });
}
