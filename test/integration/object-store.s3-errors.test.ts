import {
  DeleteBucketCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  PutObjectCommand,
} from '@aws-sdk/client-s3';
import { afterEach, describe, expect, it } from 'vitest';
import { isWalArchiverError } from '../../contract/errors.js';
import { openObjectStore } from '../../src/store/open.js';
import { s3Url, uniqueName } from '../helpers/services.js';
import { expectCode, generatedBody, readAll } from './object-store.conformance.js';
import { createTestBucket } from './object-store.s3-helpers.js';
import type { TestBucket } from './object-store.s3-helpers.js';

describe('S3 store: errors and S3-only behaviour', () => {
  let bucket: TestBucket | undefined;
  afterEach(async () => {
    await bucket?.cleanup();
    bucket = undefined;
  });

  it('a missing bucket is BUCKET_NOT_FOUND at open, naming bucket and URL', async () => {
    const name = uniqueName('missing');
    const url = s3Url(name, 'p');
    const error = await expectCode(openObjectStore(url), 'BUCKET_NOT_FOUND');
    expect(error.message).toContain(name);
    expect(error.message).toContain(`s3://${name}/p`);
  });

  it('refused credentials are ACCESS_DENIED at open, not retryable, secret never printed', async () => {
    bucket = await createTestBucket({ objectLock: false });
    for (const credentials of [
      { accessKeyId: 'walarchiver', secretAccessKey: 'wrong-secret-value' },
      { accessKeyId: 'nobody-at-all', secretAccessKey: 'wrong-secret-value' },
    ]) {
      const error = await expectCode(openObjectStore(bucket.url, { credentials }), 'ACCESS_DENIED');
      expect(error.message).toContain(bucket.bucket);
      expect(error.message).not.toContain('wrong-secret-value');
      expect((error as Error & { retryable: boolean }).retryable).toBe(false);
    }
    // Without the bucket check, an operation names the S3 error.
    const store = await openObjectStore(bucket.url, {
      credentials: { accessKeyId: 'walarchiver', secretAccessKey: 'wrong-secret-value' },
      verifyBucket: false,
    });
    const error = await expectCode(store.create('k', Buffer.from('x')), 'ACCESS_DENIED');
    expect(error.message).toContain('SignatureDoesNotMatch');
    await store.close();
  });

  it('a bucket deleted after open gives BUCKET_NOT_FOUND on use', async () => {
    bucket = await createTestBucket({ objectLock: false });
    await bucket.admin.send(new DeleteBucketCommand({ Bucket: bucket.bucket }));
    await expectCode(bucket.store.create('k', Buffer.from('x')), 'BUCKET_NOT_FOUND');
    const keys: string[] = [];
    await expectCode(
      (async () => {
        for await (const info of bucket.store.list('')) keys.push(info.key);
      })(),
      'BUCKET_NOT_FOUND',
    );
  });

  it('keys live under the URL prefix; objects outside it are invisible', async () => {
    bucket = await createTestBucket({ objectLock: false, prefix: 'tenant/a' });
    await bucket.admin.send(
      new PutObjectCommand({ Bucket: bucket.bucket, Key: 'tenant/ab/x', Body: 'other' }),
    );
    await bucket.store.create('x', Buffer.from('mine'));
    const versions = await bucket.admin.send(new ListObjectVersionsCommand({ Bucket: bucket.bucket }));
    expect(versions.Versions?.map((v) => v.Key).sort()).toEqual(['tenant/a/x', 'tenant/ab/x']);
    const keys: string[] = [];
    for await (const info of bucket.store.list('')) keys.push(info.key);
    expect(keys).toEqual(['x']);
  });

  it('a losing multipart create leaves no upload or parts behind', async () => {
    bucket = await createTestBucket({ objectLock: false });
    await bucket.store.create('big', Buffer.from('first'));
    await expectCode(
      bucket.store.create('big', generatedBody(20 * 1024 * 1024, 'loser').stream),
      'ALREADY_EXISTS',
    );
    const uploads = await bucket.admin.send(new ListMultipartUploadsCommand({ Bucket: bucket.bucket }));
    expect(uploads.Uploads ?? []).toEqual([]);
    expect((await readAll(await bucket.store.get('big'))).toString()).toBe('first');
  });

  it('on an object-lock (versioned) bucket delete removes every version, so nothing older comes back', async () => {
    bucket = await createTestBucket({ objectLock: true });
    const v1 = await bucket.store.create('m.json', Buffer.from('v1'));
    const v2 = await bucket.store.replace('m.json', Buffer.from('v2'), { ifMatch: v1.etag });
    await bucket.store.replace('m.json', Buffer.from('v3'), { ifMatch: v2.etag });
    const before = await bucket.admin.send(new ListObjectVersionsCommand({ Bucket: bucket.bucket }));
    expect(before.Versions?.length).toBe(3);
    await bucket.store.delete('m.json');
    expect(await bucket.store.head('m.json')).toBeUndefined();
    const after = await bucket.admin.send(new ListObjectVersionsCommand({ Bucket: bucket.bucket }));
    expect(after.Versions ?? []).toEqual([]);
    expect(after.DeleteMarkers ?? []).toEqual([]);
  });

  it('a locked object keeps its only version: delete neither removes it nor hides it behind a delete marker', async () => {
    bucket = await createTestBucket({ objectLock: true });
    await bucket.store.create('seg', Buffer.from('data'), {
      retention: { mode: 'GOVERNANCE', retainUntil: new Date(Date.now() + 600_000) },
    });
    const error = await expectCode(bucket.store.delete('seg'), 'OBJECT_LOCKED');
    expect(error.message).toContain('GOVERNANCE');
    const versions = await bucket.admin.send(new ListObjectVersionsCommand({ Bucket: bucket.bucket }));
    expect(versions.Versions?.length).toBe(1);
    expect(versions.DeleteMarkers ?? []).toEqual([]);
    expect(isWalArchiverError(error) && error.retryable).toBe(false);
  });
});
