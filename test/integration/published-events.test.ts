import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { describeError } from '../../contract/errors.js';
import { Topics, type ConsumedEvent } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import { parseTopicEvent } from '../../contract/events/schemas.js';
import { startLocalCluster } from '../../storage-node/cluster.js';
import { waitFor, writeMany } from '../helpers/node-cluster.js';
import { startSidecars } from '../helpers/sidecars.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

/**
 * What the storage node and the sidecar publish is what the sidecar's parsers
 * (the global manifest projector's input) accept: a real cluster, a sidecar
 * per node, the folder event bus, and every event on every topic checked.
 */
describe('published events', () => {
  it('every event the nodes and sidecars publish passes the sidecar’s schema', async () => {
    const work = await mkdtemp(join(tmpdir(), 'published-events-'));
    cleanups.push(() => rm(work, { recursive: true, force: true }));
    const eventsUrl = pathToFileURL(join(work, 'events')).href;
    const storeUrl = pathToFileURL(join(work, 'archive')).href;
    const dataDir = join(work, 'nodes');
    const partitions = ['1', '2'];
    const cluster = await startLocalCluster({
      nodes: 3,
      partitions: partitions.length,
      dataDir,
      basePort: 7880,
      events: eventsUrl,
    });
    cleanups.push(() => cluster.stop());
    const sidecars = await startSidecars(
      {
        urls: cluster.urls,
        dataDir,
        objectStore: storeUrl,
        events: eventsUrl,
        metricsBase: 9380,
        extraArgs: ['--segment-age', '200ms', '--backup-entries', '10', '--backup-min-interval', '0s'],
      },
      cleanups,
    );
    await writeMany(cluster.urls, partitions, 30);

    const bus = await openEventBus(eventsUrl, { folder: { heartbeatMs: 100, pollMs: 50 } });
    cleanups.push(() => bus.close());
    const seen = new Map<string, ConsumedEvent[]>();
    const topics = [Topics.ENTRIES, Topics.ARCHIVED, Topics.BACKUPS, Topics.LEADERSHIP];
    for (const topic of topics) {
      seen.set(topic, []);
      const sub = await bus.subscribe({
        topic,
        group: `check-${topic}`,
        fromBeginning: true,
        handler: async (events) => void seen.get(topic)!.push(...events),
      });
      cleanups.push(() => sub.stop());
    }
    const count = (topic: string) => seen.get(topic)!.length;
    await waitFor(
      'entries, archived, backups and leadership events',
      async () =>
        count(Topics.ENTRIES) >= 30 &&
        count(Topics.ARCHIVED) > 0 &&
        count(Topics.BACKUPS) > 0 &&
        seen.get(Topics.LEADERSHIP)!.some((e) => e.value.role === 'leader')
          ? true
          : undefined,
      60_000,
      100,
    );

    const rejected: string[] = [];
    for (const [topic, events] of seen) {
      for (const e of events) {
        try {
          parseTopicEvent(topic, e.value);
        } catch (err) {
          rejected.push(`${topic}: ${describeError(err)}: ${JSON.stringify(e.value)}`);
        }
      }
    }
    expect(rejected).toEqual([]);
    // The election at start goes through pre-vote: the role the parser used to reject is among them.
    expect(seen.get(Topics.LEADERSHIP)!.map((e) => e.value.role)).toContain('pre-candidate');
    // And the sidecars' own projectors skipped nothing.
    for (const s of sidecars) expect(s.output.filter((l) => /malformed|skipp/i.test(l))).toEqual([]);
  }, 120_000);
});
