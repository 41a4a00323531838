import { randomBytes } from 'node:crypto';
import type { S3ClientConfig } from '@aws-sdk/client-s3';

/**
 * Where the real services of the integration tests are. scripts/test.mjs
 * starts them (scripts/services.mjs) and passes their addresses in these
 * variables; running vitest by hand after `npm run services:up` works too,
 * because the defaults are the addresses services.mjs uses.
 */
export const S3_ENDPOINT = process.env.WAL_TEST_S3_ENDPOINT ?? 'http://127.0.0.1:9000';
export const S3_REGION = process.env.WAL_TEST_S3_REGION ?? 'us-east-1';
export const KAFKA_BROKERS = process.env.WAL_TEST_KAFKA_BROKERS ?? '127.0.0.1:9092';

// The credentials scripts/services.mjs gives MinIO; the S3 store reads them
// through the standard AWS environment chain.
process.env.AWS_ACCESS_KEY_ID ??= process.env.WAL_TEST_S3_ACCESS_KEY ?? 'walarchiver';
process.env.AWS_SECRET_ACCESS_KEY ??= process.env.WAL_TEST_S3_SECRET_KEY ?? 'walarchiver-secret';

/** A name no other test (or earlier run) uses: lower-case, safe for buckets, topics and prefixes. */
export function uniqueName(label: string): string {
  return `${label}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`.toLowerCase();
}

/** An s3:// URL for a bucket and prefix on the test MinIO. */
export function s3Url(bucket: string, prefix = ''): string {
  const path = prefix ? `/${prefix}` : '';
  return `s3://${bucket}${path}?endpoint=${encodeURIComponent(S3_ENDPOINT)}&region=${S3_REGION}&forcePathStyle=true`;
}

/** A kafka:// URL for the test broker with a topic prefix of its own. */
export function kafkaUrl(topicPrefix: string): string {
  return `kafka://${KAFKA_BROKERS}?topicPrefix=${topicPrefix}`;
}

/**
 * The options of a plain S3 client of the test MinIO: for setting up and tearing down buckets and for
 * the bench's baselines, not the code under test (checksums only where S3 requires them).
 */
export function plainS3ClientConfig(): S3ClientConfig {
  return {
    endpoint: S3_ENDPOINT,
    region: S3_REGION,
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  };
}
