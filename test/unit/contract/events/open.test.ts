import { createServer } from 'node:net';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Partitioners } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, isRetryable, isWalArchiverError } from '../../../../contract/errors.js';
import { capturingLogger } from '../../../helpers/capturing-logger.js';
import { openEventBus } from '../../../../contract/events/open.js';
import { partitionForKey } from '../../../../contract/events/partitioner.js';

async function failure(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a failure');
    },
    (e: unknown) => e,
  );
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  return port;
}

describe('openEventBus URL handling', () => {
  it.each([
    '',
    '   ',
    'not a url',
    'kafka://',
    'kafka://?topicPrefix=wal',
    'kafka://localhost',
    'kafka://localhost:0',
    'kafka://localhost:99999',
    'kafka://localhost:abc',
    'kafka://a:1,,b:2',
    'kafka://a:1,',
    'kafka://user:secret@a:9092',
    'kafka://a:9092/some/path',
    'file://remote-host/var/events',
    'file:///',
  ])('rejects malformed %j with INVALID_ARGUMENT', async (url) => {
    const err = await failure(openEventBus(url));
    expect(isWalArchiverError(err, ErrorCodes.INVALID_ARGUMENT), String(err)).toBe(true);
    expect((err as Error).message).not.toContain('\n');
    expect((err as Error).message).not.toContain('secret');
    expect(isRetryable(err)).toBe(false);
  });

  it.each(['redis://127.0.0.1:6379', 'http://127.0.0.1:9092', 's3://bucket/prefix', 'kafkas://a:1'])(
    'rejects unknown scheme %j with UNSUPPORTED_SCHEME',
    async (url) => {
      const err = await failure(openEventBus(url));
      expect(isWalArchiverError(err, ErrorCodes.UNSUPPORTED_SCHEME), String(err)).toBe(true);
      expect((err as Error).message).toContain(url.split(':')[0]!);
    },
  );

  it.each([
    'kafka://127.0.0.1:9092?partitions=abc',
    'kafka://127.0.0.1:9092?partitions=0',
    'kafka://127.0.0.1:9092?partitions=-1',
    'kafka://127.0.0.1:9092?partitions=1.5',
    'kafka://127.0.0.1:9092?topicPrefix=',
    'kafka://127.0.0.1:9092?topicPrefix=a/b',
    'kafka://127.0.0.1:9092?topicPrefix=..',
    'kafka://127.0.0.1:9092?replicationFactor=x',
    'kafka://127.0.0.1:9092?topicprefix=wal',
    'kafka://127.0.0.1:9092?clientId=a%20b',
    'file:///tmp/wal-events-never?partitions=abc',
    'file:///tmp/wal-events-never?topicPrefix=a%2Fb',
    'file:///tmp/wal-events-never?unknown=1',
  ])('rejects bad parameters in %j with INVALID_ARGUMENT naming the URL', async (url) => {
    const err = await failure(openEventBus(url));
    expect(isWalArchiverError(err, ErrorCodes.INVALID_ARGUMENT), String(err)).toBe(true);
    expect((err as Error).message).toContain(url.slice(0, 12));
    expect((err as Error).message).not.toContain('\n');
  });

  it('opens good URLs without contacting anything and names topics with the prefix', async () => {
    const kafka = await openEventBus('kafka://127.0.0.1:1,127.0.0.1:2?topicPrefix=prod.wal&partitions=8');
    expect(kafka.topicName('entries')).toBe('prod.wal.entries');
    expect(kafka.url).toBe('kafka://127.0.0.1:1,127.0.0.1:2?topicPrefix=prod.wal&partitions=8');
    await kafka.close();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'wal-events-url-'));
    try {
      const sub = path.join(dir, 'nested', 'events');
      const folder = await openEventBus(pathToFileURL(sub).href);
      expect(folder.topicName('leadership')).toBe('wal.leadership');
      expect((await stat(sub)).isDirectory()).toBe(true);
      await folder.checkConnection();
      await folder.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('partitions keys as Kafka does (murmur2)', () => {
    const kafkaPartitioner = Partitioners.DefaultPartitioner()!;
    const partitionMetadata = Array.from({ length: 7 }, (_, i) => ({
      partitionId: i,
      leader: 1,
      partitionErrorCode: 0,
      replicas: [1],
      isr: [1],
    }));
    for (const key of ['', 'a', 'ab', 'abc', 'abcd', 'partition-1', 'żółw', '🐢🐢', 'x'.repeat(1000)]) {
      const expected = kafkaPartitioner({ topic: 't', partitionMetadata, message: { key, value: null } });
      expect(partitionForKey(key, 7), key).toBe(expected);
    }
  });
});

describe('a Kafka bus whose broker is down', () => {
  it('publish fails within 15 s with one retryable UNAVAILABLE line, and nothing crashes', async () => {
    const port = await closedPort();
    const url = `kafka://127.0.0.1:${port}?topicPrefix=down`;
    const logs: string[] = [];
    const bus = await openEventBus(url, { logger: capturingLogger(logs) });
    const started = Date.now();
    const err = await failure(bus.publish('entries', [{ key: 'p1', value: { schema: 1, lsn: 1 } }]));
    const elapsed = Date.now() - started;
    expect(elapsed).toBeLessThan(15_000);
    expect(isWalArchiverError(err, ErrorCodes.UNAVAILABLE), String(err)).toBe(true);
    expect(isRetryable(err)).toBe(true);
    const message = (err as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toContain(`127.0.0.1:${port}`);
    expect(logs.every((l) => !l.startsWith('error'))).toBe(true);

    const check = await failure(bus.checkConnection());
    expect(isWalArchiverError(check, ErrorCodes.UNAVAILABLE)).toBe(true);

    // A subscription reports the failure and keeps retrying until stopped.
    const errors: unknown[] = [];
    const sub = await bus.subscribe({
      topic: 'entries',
      group: 'g',
      handler: async () => undefined,
      onError: (e) => errors.push(e),
    });
    expect(errors.length).toBeGreaterThan(0);
    expect(isWalArchiverError(errors[0], ErrorCodes.UNAVAILABLE)).toBe(true);
    await sub.stop();
    await bus.close();
  }, 60_000);
});
