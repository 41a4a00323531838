import { defineConfig } from 'vitest/config';

// `npm run test:faults` (scripts/test-faults.mjs): the fault-injection suite, run by `npm test` after
// the other suites (a separate vitest run: one seed takes minutes). It drives real processes and its
// own Kafka and MinIO.
export default defineConfig({
  test: {
    name: 'faults',
    include: ['test/faults/**/*.test.ts'],
    testTimeout: 1_200_000,
    hookTimeout: 300_000,
    fileParallelism: false,
  },
});
