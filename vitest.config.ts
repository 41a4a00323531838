import { defineConfig } from 'vitest/config';

// Two projects: `unit` needs no server; `integration` talks to the real Kafka
// and MinIO that scripts/test.mjs starts (their addresses come in through the
// WAL_TEST_* environment variables it sets).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          // Integration files share one Kafka and one MinIO on a 2-core machine.
          fileParallelism: false,
        },
      },
    ],
  },
});
