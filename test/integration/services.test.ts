import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { KAFKA_BROKERS, S3_ENDPOINT, uniqueName } from '../helpers/services.js';

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

function services(command: string) {
  return run(process.execPath, ['scripts/services.mjs', command], { cwd: repoRoot, timeout: 120_000 });
}

// The services are started by scripts/test.mjs before vitest runs; `down` is not exercised here because
// the other integration files share them.
describe('scripts/services.mjs with the services running', () => {
  it('`up` again reuses both services and returns quickly', async () => {
    const started = Date.now();
    const { stdout } = await services('up');
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(stdout).toMatch(/^minio: reusing MinIO already running at /m);
    expect(stdout).toMatch(/^kafka: reusing Kafka already running at /m);
    expect(stdout).not.toMatch(/started (MinIO|Kafka) \(pid/);
    expect(stdout).toMatch(
      /^s3: s3:\/\/<bucket>\?endpoint=http:\/\/127\.0\.0\.1:\d+&region=us-east-1&forcePathStyle=true/m,
    );
    expect(stdout).toMatch(/^kafka: kafka:\/\/127\.0\.0\.1:\d+\?topicPrefix=wal$/m);
  });

  it('`status` reports both running and exits 0', async () => {
    const { stdout } = await services('status');
    expect(stdout).toMatch(/^minio: running at /m);
    expect(stdout).toMatch(/^kafka: running at /m);
  });

  it('`env` prints the addresses the tests use', async () => {
    const { stdout } = await services('env');
    expect(stdout).toContain(`export WAL_TEST_S3_ENDPOINT='${S3_ENDPOINT}'`);
    expect(stdout).toContain(`export WAL_TEST_KAFKA_BROKERS='${KAFKA_BROKERS}'`);
    expect(stdout).toMatch(/^export AWS_ACCESS_KEY_ID='.+'$/m);
    expect(stdout).toMatch(/^export AWS_SECRET_ACCESS_KEY='.+'$/m);
  });

  it('MinIO answers its readiness probe', async () => {
    const response = await fetch(`${S3_ENDPOINT}/minio/health/ready`);
    expect(response.status).toBe(200);
  });

  it('the Kafka broker lets an admin client create and delete a topic', async () => {
    const topic = uniqueName('services-test');
    const admin = new Kafka({
      clientId: 'services-test',
      brokers: KAFKA_BROKERS.split(','),
      logLevel: logLevel.NOTHING,
    }).admin();
    await admin.connect();
    let deleted = false;
    try {
      const created = await admin.createTopics({
        topics: [{ topic, numPartitions: 2, replicationFactor: 1 }],
        waitForLeaders: true,
      });
      expect(created).toBe(true);
      const { topics } = await admin.fetchTopicMetadata({ topics: [topic] });
      expect(topics[0]?.partitions).toHaveLength(2);
      for (const partition of topics[0]?.partitions ?? []) expect(partition.leader).toBeGreaterThanOrEqual(0);

      await admin.deleteTopics({ topics: [topic], timeout: 10_000 });
      deleted = true;
      await expect
        .poll(async () => (await admin.listTopics()).includes(topic), { timeout: 10_000 })
        .toBe(false);
    } finally {
      if (!deleted) await admin.deleteTopics({ topics: [topic] }).catch(() => {});
      await admin.disconnect();
    }
  });
});
