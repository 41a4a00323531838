import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { isWalArchiverError } from '../../../../contract/errors.js';
import type { ErrorCode } from '../../../../contract/errors.js';
import { openObjectStore } from '../../../../src/store/open.js';
import { parseS3Url } from '../../../../src/store/s3-store.js';

async function openError(url: string, code: ErrorCode, options = {}): Promise<string> {
  let error: unknown;
  try {
    const store = await openObjectStore(url, options);
    await store.close();
  } catch (err) {
    error = err;
  }
  if (!isWalArchiverError(error, code)) {
    throw new Error(`expected ${code} for ${url}, got ${String(error)}`);
  }
  expect(error.message).not.toContain('\n');
  expect(error.message).not.toMatch(/\n\s+at /);
  return error.message;
}

describe('openObjectStore: bad input gives one clear line naming the masked URL', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('rejects malformed and empty URLs', async () => {
    expect(await openError('not a url', 'INVALID_ARGUMENT')).toContain('not a url');
    expect(await openError('', 'INVALID_ARGUMENT')).toMatch(/empty/);
    expect(await openError('s3://', 'INVALID_ARGUMENT')).toMatch(/bucket/);
  });

  it('rejects unknown schemes, naming the supported ones', async () => {
    const message = await openError('gs://bucket/prefix', 'UNSUPPORTED_SCHEME');
    expect(message).toContain('gs:');
    expect(message).toContain('s3://');
    expect(message).toContain('file://');
    await openError('kafka://127.0.0.1:9092', 'UNSUPPORTED_SCHEME');
  });

  it('rejects bad s3 URLs: bucket name, unknown parameter, endpoint, credentials in the URL', async () => {
    expect(await openError('s3://Bad_Bucket/x', 'INVALID_ARGUMENT')).toContain('Bad_Bucket');
    expect(await openError('s3://bucket/x?endpiont=http://127.0.0.1:9000', 'INVALID_ARGUMENT')).toContain(
      'endpiont',
    );
    expect(await openError('s3://bucket/x?endpoint=ftp://h', 'INVALID_ARGUMENT')).toContain('ftp://h');
    expect(
      await openError('s3://bucket/x?endpoint=http://h&forcePathStyle=maybe', 'INVALID_ARGUMENT'),
    ).toContain('forcePathStyle');
    const withSecret = await openError('s3://AKIA:topsecret@bucket/x', 'INVALID_ARGUMENT');
    expect(withSecret).not.toContain('topsecret');
    expect(withSecret).toContain('***');
    const secretParam = await openError('s3://bucket/x?secret=topsecret', 'INVALID_ARGUMENT');
    expect(secretParam).not.toContain('topsecret');
    expect(await openError('s3://bucket/a/%2E%2Fb', 'INVALID_ARGUMENT')).toContain('prefix');
  });

  it('parses bucket, prefix, region and path style', () => {
    const loc = parseS3Url('s3://my-bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1');
    expect(loc).toEqual({
      bucket: 'my-bucket',
      prefix: 'some/prefix/',
      endpoint: 'http://127.0.0.1:9000',
      region: 'eu-west-1',
      forcePathStyle: true,
    });
    expect(parseS3Url('s3://my-bucket?region=us-east-1').prefix).toBe('');
    expect(parseS3Url('s3://my-bucket/p/?region=us-east-1&forcePathStyle=false').forcePathStyle).toBe(false);
  });

  it('reports an unreachable endpoint as UNAVAILABLE within seconds, retryable', async () => {
    const url = 's3://bucket/prefix?endpoint=http://127.0.0.1:1&region=us-east-1&forcePathStyle=true';
    const started = Date.now();
    let error: unknown;
    try {
      await openObjectStore(url, { credentials: { accessKeyId: 'id', secretAccessKey: 'never-printed' } });
    } catch (err) {
      error = err;
    }
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(isWalArchiverError(error, 'UNAVAILABLE')).toBe(true);
    const e = error as Error & { retryable: boolean };
    expect(e.retryable).toBe(true);
    expect(e.message).toContain('s3://bucket/prefix');
    expect(e.message).toContain('127.0.0.1:1');
    expect(e.message).toContain('ECONNREFUSED');
    expect(e.message).not.toContain('never-printed');
    expect(e.message).not.toContain('\n');
  });

  it('file URLs: a folder whose parent is missing is BUCKET_NOT_FOUND; a host or parameters are refused', async () => {
    const parent = await mkdtemp(path.join(tmpdir(), 'wal-url-'));
    dirs.push(parent);
    const missing = pathToFileURL(path.join(parent, 'no', 'such', 'folder')).href;
    expect(await openError(missing, 'BUCKET_NOT_FOUND')).toContain(missing);
    await openError('file://otherhost/var/archive', 'INVALID_ARGUMENT');
    await openError(`${pathToFileURL(parent).href}?x=1`, 'INVALID_ARGUMENT');
    // The folder itself may be missing when its parent exists: it is created on the first write.
    const store = await openObjectStore(pathToFileURL(path.join(parent, 'new')).href);
    expect(store.url).toContain('/new');
    expect(await store.head('nothing')).toBeUndefined();
    await store.close();
  });
});
