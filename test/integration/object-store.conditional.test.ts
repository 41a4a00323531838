import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { isWalArchiverError } from '../../contract/errors.js';
import { PROBE_PREFIX, verifyConditionalWrites } from '../../src/store/conditional-check.js';
import { openObjectStore } from '../../src/store/open.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { S3_ENDPOINT, S3_REGION } from '../helpers/services.js';
import { ConditionalProxy } from '../helpers/s3-conditional-proxy.js';
import { expectCode, readAll } from './object-store.conformance.js';
import { createTestBucket } from './object-store.s3-helpers.js';
import type { TestBucket } from './object-store.s3-helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function setup(): Promise<{ bucket: TestBucket; proxy: ConditionalProxy; url: string }> {
  const bucket = await createTestBucket({ objectLock: false, prefix: 'arch' });
  cleanups.push(() => bucket.cleanup());
  const proxy = new ConditionalProxy(new URL(S3_ENDPOINT), undefined, S3_REGION);
  await proxy.start();
  cleanups.push(() => proxy.stop());
  const url = `s3://${bucket.bucket}/arch?endpoint=${encodeURIComponent(proxy.endpoint)}&region=${S3_REGION}&forcePathStyle=true`;
  return { bucket, proxy, url };
}

async function open(url: string): Promise<ObjectStore> {
  const store = await openObjectStore(url);
  cleanups.push(() => store.close());
  return store;
}

async function keysOf(store: ObjectStore): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list('')) keys.push(info.key);
  return keys;
}

/** Runs the CLI as a child process (the proxy lives in this one); resolves when it exits or `until` matches stderr. */
function cli(
  args: string[],
  until?: RegExp,
): Promise<{ code: number | null; stderr: string; matched: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'wal-archiver.js'), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, WAL_ARCHIVER_LOG_LEVEL: 'error' },
    });
    let stderr = '';
    let matched = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      if (until && !matched && until.test(stderr)) {
        matched = true;
        child.kill('SIGTERM');
      }
    });
    child.stdout.resume();
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr: stderr.trim(), matched });
    });
  });
}

const REFUSAL = /does not honour conditional writes/;

/** `wal-archiver run` archiving to `url`, beside a node that is never reached. */
function sidecarRun(dataDir: string, url: string): string[] {
  return [
    'run',
    '--data-dir',
    dataDir,
    '--node-url',
    'http://127.0.0.1:9',
    '--object-store',
    url,
    '--metrics-port',
    '0',
  ];
}

describe('S3 store: conditional writes proven at start', () => {
  it('a server honouring If-None-Match and If-Match passes the probe, which leaves nothing behind', async () => {
    const { bucket, proxy, url } = await setup();
    const store = await open(url);
    await verifyConditionalWrites(store);
    expect(proxy.conditional.length).toBeGreaterThanOrEqual(3);
    expect(await keysOf(bucket.store)).toEqual([]);
  });

  it('a server ignoring the conditions is refused in one line naming the URL, and the probe is cleaned up', async () => {
    const { bucket, proxy, url } = await setup();
    proxy.stripConditions = true;
    const store = await open(url);
    const error = await verifyConditionalWrites(store).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(isWalArchiverError(error)).toBe(true);
    const message = (error as Error).message;
    expect(message).toMatch(REFUSAL);
    expect(message).toContain(`s3://${bucket.bucket}/arch`);
    expect(message).toContain('If-None-Match');
    expect(message.split('\n')).toHaveLength(1);
    expect((error as { retryable: boolean }).retryable).toBe(false);
    expect(await keysOf(bucket.store)).toEqual([]);
  });

  it('a server ignoring only If-Match is refused too', async () => {
    const { bucket, url } = await setup();
    const store = await open(url);
    // A store whose creates are conditional but whose replaces are not.
    const onlyCreate: ObjectStore = Object.create(store) as ObjectStore;
    onlyCreate.replace = async (key, body, options) => {
      const current = await store.head(key);
      return store.replace(key, body, { ...options, ifMatch: current?.etag });
    };
    const error = await expectCode(verifyConditionalWrites(onlyCreate), 'INTERNAL');
    expect(error.message).toContain('If-Match');
    expect(await keysOf(bucket.store)).toEqual([]);
  });

  it('run, backup, retention and manifest --rebuild refuse to write through it: one line, exit 1', async () => {
    const { bucket, proxy, url } = await setup();
    proxy.stripConditions = true;
    const dataDir = await mkdtemp(join(tmpdir(), 'wal-cond-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const runs = [
      sidecarRun(dataDir, url),
      ['backup', '--object-store', url, '--node-url', 'http://127.0.0.1:9', '--partition', '1'],
      ['retention', '--object-store', url, '--all', '--keep-count', '1'],
      ['manifest', '--object-store', url, '--rebuild'],
    ];
    for (const args of runs) {
      const r = await cli(args);
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(1);
      expect(r.stderr.split('\n'), args[0]).toHaveLength(1);
      expect(r.stderr).toMatch(REFUSAL);
      expect(r.stderr).toContain(`s3://${bucket.bucket}/arch`);
      expect(r.stderr).not.toContain('walarchiver-secret');
    }
    expect(await keysOf(bucket.store)).toEqual([]);
  });

  it('run starts through a server that honours them', async () => {
    const { url } = await setup();
    const dataDir = await mkdtemp(join(tmpdir(), 'wal-cond-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const r = await cli(sidecarRun(dataDir, url), /archiving to s3:/);
    expect(r.matched, r.stderr).toBe(true);
    expect(r.code).toBe(0);
  });

  it('a 409 ConditionalRequestConflict is retried, never read as "already exists" or "changed"', async () => {
    const { bucket, proxy, url } = await setup();
    const store = await open(url);
    proxy.conflicts = 1;
    const created = await store.create('m.json', Buffer.from('v1'));
    expect(proxy.conflictsSent).toBe(1);
    expect((await readAll(await store.get('m.json'))).toString()).toBe('v1');

    proxy.conflicts = 1;
    const replaced = await store.replace('m.json', Buffer.from('v2'), { ifMatch: created.etag });
    expect(proxy.conflictsSent).toBe(2);
    expect((await store.head('m.json'))?.etag).toBe(replaced.etag);

    proxy.conflicts = 1;
    await store.replace('fresh.json', Buffer.from('f'), { ifMatch: undefined });
    expect(proxy.conflictsSent).toBe(3);

    // After the retry, a real condition failure is still one.
    proxy.conflicts = 1;
    await expectCode(store.create('m.json', Buffer.from('again')), 'ALREADY_EXISTS');
    expect(proxy.conflictsSent).toBe(4);

    // A streamed body cannot be sent twice from the store: retryable UNAVAILABLE for the caller's loop.
    proxy.conflicts = 1;
    const stream = await expectCode(
      store.create('seg', Readable.from([Buffer.from('segment')]), { size: 7 }),
      'UNAVAILABLE',
    );
    expect(isWalArchiverError(stream) && stream.retryable).toBe(true);
    expect(await bucket.store.head('seg')).toBeUndefined();

    // Conflicts that outlast the attempts: retryable UNAVAILABLE, never ALREADY_EXISTS.
    proxy.conflicts = 1000;
    const lasting = await expectCode(store.create('other', Buffer.from('x')), 'UNAVAILABLE');
    expect(isWalArchiverError(lasting) && lasting.retryable).toBe(true);
    proxy.conflicts = 0;
    expect(await bucket.store.head('other')).toBeUndefined();
    expect(PROBE_PREFIX).toBe('wal-archiver-probe/');
  });
});
