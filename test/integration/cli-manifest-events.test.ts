import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EventBus } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import {
  GlobalManifestProjector,
  emptyGlobalManifest,
  foldEvents,
  readGlobalManifest,
  updatePartitionManifest,
  type GlobalManifest,
  type ManifestEvent,
} from '../../src/manifest/index.js';
import { silentLogger } from '../../contract/log.js';
import { kafkaUrl, uniqueName } from '../helpers/services.js';
import { archivedEvent, at, backupEvent, leadershipEvent, segment } from '../unit/src/manifest/fixtures.js';
import { createTestBucket, type TestBucket } from './object-store.s3-helpers.js';

/**
 * The two commands end to end, as `npx wal-archiver` runs them: the built
 * bin/wal-archiver.js (`npm run build`; `npm test` builds first), with the
 * real runner (exit codes, one-line errors, SIGINT) over MinIO and Kafka.
 */
const BIN = fileURLToPath(new URL('../../bin/wal-archiver.js', import.meta.url));
const BUILT = fileURLToPath(new URL('../../dist/src/cli/manifest.js', import.meta.url));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function start(args: string[]): {
  child: ChildProcess;
  result: Promise<Result>;
  out: () => string;
  err: () => string;
} {
  const child = spawn(process.execPath, ['--no-warnings', BIN, ...args], {
    env: { ...process.env, WAL_ARCHIVER_LOG_LEVEL: 'error' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const result = new Promise<Result>((resolve) =>
    child.on('close', (code) => resolve({ code, stdout, stderr })),
  );
  return { child, result, out: () => stdout, err: () => stderr };
}

function cli(args: string[]): Promise<Result> {
  return start(args).result;
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '');
}

async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const events: ManifestEvent[] = [
  { topic: 'leadership', value: leadershipEvent('1', 2, 3, { node: 3 }) },
  { topic: 'archived', value: archivedEvent('1', 1, 10, { term: 2, node: 3, committed_lsn: 14 }) },
  { topic: 'archived', value: archivedEvent('1', 11, 20, { term: 2, node: 3, committed_lsn: 22 }) },
  { topic: 'backups', value: backupEvent('1', 20, { term: 2, node: 3 }) },
  { topic: 'leadership', value: leadershipEvent('2', 1, 1) },
  { topic: 'archived', value: archivedEvent('2', 1, 5) },
];

describe('wal-archiver manifest and events as processes, on MinIO and Kafka', () => {
  let bucket: TestBucket;
  let busUrl: string;
  let bus: EventBus;
  let projector: GlobalManifestProjector;

  beforeAll(async () => {
    expect(existsSync(BUILT), 'run `npm run build` first').toBe(true);
    bucket = await createTestBucket({ objectLock: false, prefix: 'archive' });
    busUrl = kafkaUrl(uniqueName('cli'));
    bus = await openEventBus(busUrl);
    projector = new GlobalManifestProjector({
      store: bucket.store,
      bus,
      group: uniqueName('manifest'),
      logger: silentLogger,
    });
    await projector.start();
    for (const e of events) await bus.publish(e.topic, [{ key: e.value.partition, value: { ...e.value } }]);
    await bus.publish('archived', [{ key: '2', value: { schema: 1, partition: '2', bogus: true } }]);
    await bus.publish('entries', [
      {
        key: '1',
        value: {
          schema: 1,
          partition: '1',
          lsn: 21,
          term: 2,
          node: 3,
          bytes: 10,
          refs: [{ name: 'refs/heads/main', new_oid: 'f'.repeat(40) }],
          committed_at: at(21),
        },
      },
    ]);
    await updatePartitionManifest(
      bucket.store,
      '1',
      { node: 3, term: 2 },
      { segments: [segment('1', 1, 10, { term: 2, node: 3 }), segment('1', 11, 20, { term: 2, node: 3 })] },
    );
  });

  afterAll(async () => {
    await projector?.stop();
    await bus?.close();
    await bucket?.cleanup();
  });

  const expected = () => foldEvents(emptyGlobalManifest(new Date()), events).partitions;

  it('shows the global manifest the sidecars project, as a table and as JSON', async () => {
    await waitFor('the projection', async () => {
      const m = await readGlobalManifest(bucket.store);
      return m !== undefined && JSON.stringify(m.value.partitions) === JSON.stringify(expected());
    });
    const table = await cli(['manifest', '--object-store', bucket.url]);
    expect(table.stderr).toBe('');
    expect(table.code).toBe(0);
    const out = lines(table.stdout);
    expect(out[0]).toMatch(/^global manifest version \d+, .*, 2 partitions$/);
    expect(out[2]).toMatch(/^1\s+node 3\s+2\s+20\s+2 entries, 1s\s+LSN 20, .* ago\s+/);
    expect(out[3]).toMatch(/^2\s+node 1\s+1\s+5\s+0 entries, 1s\s+none\s+/);

    const json = await cli(['manifest', '--object-store', bucket.url, '--json']);
    expect(json.code).toBe(0);
    expect((JSON.parse(json.stdout) as GlobalManifest).partitions).toEqual(expected());
    await waitFor('the malformed event to be skipped', () => projector.stats.eventsSkipped >= 1);
    expect(projector.stats.eventsSkipped).toBe(1);
  });

  it('shows one partition, and fails in one line for an unknown one', async () => {
    const detail = await cli(['manifest', '--object-store', bucket.url, '--partition', '1']);
    expect(detail.code).toBe(0);
    expect(detail.stdout).toMatch(/^partition 1\nleader: node 3, term 2\n/);
    expect(detail.stdout).toContain('archived: LSN 1-20 in 2 segments');

    const missing = await cli(['manifest', '--object-store', bucket.url, '--partition', '99']);
    expect(missing.code).toBe(1);
    expect(lines(missing.stderr)).toEqual([
      expect.stringMatching(/^wal-archiver: partition 99 has nothing archived/),
    ]);
  });

  it('rebuilds from the Kafka topics (dry run) to what the projection holds', async () => {
    const r = await cli([
      'manifest',
      '--object-store',
      bucket.url,
      '--rebuild',
      '--from-events',
      busUrl,
      '--idle',
      '4s',
      '--dry-run',
      '--json',
    ]);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as GlobalManifest).partitions).toEqual(expected());
    expect(r.stderr).toMatch(/rebuilt from 7 events of kafka:.*: 2 partitions, 1 malformed skipped/);
    expect(r.stderr).toMatch(/dry run: nothing was stored/);
  });

  it('prints every topic from the beginning with --count, malformed events included', async () => {
    const r = await cli(['events', '--events', busUrl, '--topic', 'all', '--from-beginning', '--count', '8']);
    expect(r.code).toBe(0);
    const out = lines(r.stdout);
    expect(out).toHaveLength(8);
    expect(
      out.filter((l) => / entries +partition 1 lsn 21 .*refs\/heads\/main=ffffffffffff/.test(l)),
    ).toHaveLength(1);
    expect(
      out.filter((l) => / archived +partition 2 MALFORMED at bus partition \d+ offset \d+/.test(l)),
    ).toHaveLength(1);
    expect(out.filter((l) => / leadership +partition /.test(l))).toHaveLength(2);

    const json = await cli([
      'events',
      '--events',
      busUrl,
      '--topic',
      'archived',
      '--from-beginning',
      '--count',
      '1',
      '--partition',
      '2',
      '--json',
    ]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({
      topic: expect.stringMatching(/\.archived$/),
      key: '2',
      value: { partition: '2', last_lsn: 5 },
    });
  });

  it('follows new events until SIGINT, then exits 0', async () => {
    const p = start(['events', '--events', busUrl]);
    await waitFor('the consumer to join', () => p.err().includes('following'));
    // A new group starts at the end once its partitions are assigned; publish until one arrives.
    let lsn = 100;
    await waitFor('a new event to be printed', async () => {
      if (p.out().includes('partition 3')) return true;
      await bus.publish('entries', [
        {
          key: '3',
          value: {
            schema: 1,
            partition: '3',
            lsn: lsn++,
            term: 1,
            node: 1,
            bytes: 1,
            refs: [],
            committed_at: at(1),
          },
        },
      ]);
      await new Promise((r) => setTimeout(r, 500));
      return p.out().includes('partition 3');
    });
    p.child.kill('SIGINT');
    const r = await p.result;
    expect(r.code).toBe(0);
    expect(lines(r.stdout).every((l) => / entries +partition 3 lsn \d+ /.test(l))).toBe(true);
    expect(r.stdout).not.toContain('partition 1');
  });

  it('ends with one line and a non-zero exit for bad flags and unreachable services', async () => {
    const usage = await cli(['events', '--events', busUrl, '--topic', 'nope']);
    expect(usage.code).toBe(2);
    expect(lines(usage.stderr)).toHaveLength(1);

    const noKafka = await cli(['events', '--events', 'kafka://127.0.0.1:1', '--count', '1']);
    expect(noKafka.code).toBe(1);
    expect(lines(noKafka.stderr)).toEqual([
      expect.stringMatching(/^wal-archiver: event bus kafka:\/\/127\.0\.0\.1:1: cannot connect/),
    ]);

    const noBucket = await cli([
      'manifest',
      '--object-store',
      bucket.url.replace(/^s3:\/\/[^/?]+/, `s3://${uniqueName('missing')}`),
    ]);
    expect(noBucket.code).toBe(1);
    expect(lines(noBucket.stderr)).toEqual([
      expect.stringMatching(/^wal-archiver: object store s3:.*does not exist/),
    ]);
    expect(noBucket.stderr).not.toMatch(/\n\s+at /);
  });
});
