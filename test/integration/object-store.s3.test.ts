import { createTestBucket } from './object-store.s3-helpers.js';
import { objectStoreConformance } from './object-store.conformance.js';

objectStoreConformance('s3 (MinIO)', async ({ objectLock }) => {
  const bucket = await createTestBucket({ objectLock, prefix: 'archive/prefix' });
  return { store: bucket.store, cleanup: bucket.cleanup };
});
