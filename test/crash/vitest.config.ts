import { defineConfig } from 'vitest/config';

// The crash-point exploration (`npm run test:crash`): one file that runs every protocol in
// test/crash/protocols, printing its lines straight to stdout so they show in CI logs.
export default defineConfig({
  test: {
    include: ['test/crash/crash.test.ts'],
    root: new URL('../..', import.meta.url).pathname,
    testTimeout: 540_000,
    hookTimeout: 60_000,
    disableConsoleIntercept: true,
    fileParallelism: false,
  },
});
