#!/usr/bin/env node
// `npm test`: build, make sure the real Kafka and MinIO are up, run vitest against them, then the
// crash-point exploration (`npm run test:crash`, no services), then the fault-injection suite
// (`npm run test:faults`, its own MinIO and Kafka, about 8 minutes).
//
//   npm test                                all of it (what CI runs)
//   npm test [-- <vitest arguments>]        vitest only, e.g. npm test -- --project unit,
//                                           npm test -- test/integration/x.test.ts
//
// The services are left running afterwards, so the next run reuses them in well under a second;
// `npm run services:down` stops them. WAL_TEST_NO_SERVICES=1 skips starting them (unit tests only, or
// services run elsewhere: point WAL_TEST_S3_ENDPOINT / WAL_TEST_KAFKA_BROKERS at them).
import { exitWith, npx, prepare, runChild } from './lib/harness.mjs';

exitWith('test', async (args) => {
  const ready = await prepare({
    label: 'test',
    tsconfig: 'tsconfig.build.json',
    startServices: process.env.WAL_TEST_NO_SERVICES !== '1',
  });
  if (!ready.env) return ready.code;
  const code = await runChild('test', npx, ['--no', '--', 'vitest', 'run', ...args], ready.env);
  if (code !== 0 || args.length > 0) return code;
  process.stdout.write('test: the crash-point exploration (npm run test:crash)\n');
  const crash = await runChild('test', process.execPath, ['scripts/test-crash.mjs']);
  if (crash !== 0) return crash;
  process.stdout.write('test: the fault-injection suite (npm run test:faults)\n');
  return runChild('test', process.execPath, ['scripts/test-faults.mjs']);
});
