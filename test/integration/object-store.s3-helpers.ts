import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  ListObjectVersionsCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { openObjectStore } from '../../src/store/open.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { plainS3ClientConfig, s3Url, uniqueName } from '../helpers/services.js';

/** A client of its own for setting up and tearing down test buckets (not the code under test). */
export function adminClient(): S3Client {
  return new S3Client(plainS3ClientConfig());
}

/** Deletes every version of every object (bypassing GOVERNANCE retention), then the bucket. */
export async function removeBucket(client: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const out = await client.send(new ListObjectVersionsCommand({ Bucket: bucket }));
    const all = [...(out.Versions ?? []), ...(out.DeleteMarkers ?? [])];
    if (all.length === 0) break;
    for (const v of all) {
      await client.send(
        new DeleteObjectCommand({
          Bucket: bucket,
          Key: v.Key,
          VersionId: v.VersionId,
          BypassGovernanceRetention: true,
        }),
      );
    }
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

export interface TestBucket {
  bucket: string;
  url: string;
  store: ObjectStore;
  admin: S3Client;
  cleanup(): Promise<void>;
}

export async function createTestBucket(options: {
  objectLock: boolean;
  prefix?: string;
}): Promise<TestBucket> {
  const admin = adminClient();
  const bucket = uniqueName(options.objectLock ? 'wal-lock' : 'wal-store');
  await admin.send(
    new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: options.objectLock }),
  );
  const url = s3Url(bucket, options.prefix ?? '');
  const store = await openObjectStore(url);
  return {
    bucket,
    url,
    store,
    admin,
    cleanup: async () => {
      await store.close();
      // COMPLIANCE-mode objects cannot be removed before they expire; their bucket stays behind.
      await removeBucket(admin, bucket).catch(() => undefined);
      admin.destroy();
    },
  };
}
