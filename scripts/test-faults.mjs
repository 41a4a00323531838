#!/usr/bin/env node
// `npm run test:faults`: build, start a MinIO and a Kafka of this suite's own (other ports, other state
// folder, so stopping Kafka for a fault disturbs no other test run), run the fault-injection suite.
//
//   npm run test:faults                          the fixed seed set, full-length faults (about 10 minutes)
//   FAULT_SEED=123 npm run test:faults           one seed, e.g. to replay a failure (the line printed)
//   FAULT_SCALE=0.2 npm run test:faults          shorter outages and fewer kills, for a quick local run
//
// The services run from .services/faults (git-ignored) on ports 19394-19397 (WAL_FAULTS_*_PORT override
// them) and are stopped afterwards; FAULT_KEEP_SERVICES=1 leaves them running for the next run.
import { join } from 'node:path';
import { exitWith, npx, prepare, runChild } from './lib/harness.mjs';
import { REPO_ROOT } from './lib/services-config.mjs';

exitWith('test:faults', async (args) => {
  // Services of its own, on other ports: the suite stops and starts them as faults.
  const servicesEnv = {
    ...process.env,
    WAL_SERVICES_DIR: process.env.WAL_FAULTS_SERVICES_DIR ?? join(REPO_ROOT, '.services', 'faults'),
    WAL_SERVICES_S3_PORT: process.env.WAL_FAULTS_S3_PORT ?? '19394',
    WAL_SERVICES_S3_CONSOLE_PORT: process.env.WAL_FAULTS_S3_CONSOLE_PORT ?? '19395',
    WAL_SERVICES_KAFKA_PORT: process.env.WAL_FAULTS_KAFKA_PORT ?? '19396',
    WAL_SERVICES_KAFKA_CONTROLLER_PORT: process.env.WAL_FAULTS_KAFKA_CONTROLLER_PORT ?? '19397',
  };
  const ready = await prepare({ label: 'test:faults', tsconfig: 'tsconfig.build.json', servicesEnv });
  if (!ready.env) return ready.code;
  const env = {
    ...ready.env,
    WAL_FAULTS_SERVICES_ENV: JSON.stringify({
      WAL_SERVICES_DIR: servicesEnv.WAL_SERVICES_DIR,
      WAL_SERVICES_S3_PORT: servicesEnv.WAL_SERVICES_S3_PORT,
      WAL_SERVICES_S3_CONSOLE_PORT: servicesEnv.WAL_SERVICES_S3_CONSOLE_PORT,
      WAL_SERVICES_KAFKA_PORT: servicesEnv.WAL_SERVICES_KAFKA_PORT,
      WAL_SERVICES_KAFKA_CONTROLLER_PORT: servicesEnv.WAL_SERVICES_KAFKA_CONTROLLER_PORT,
    }),
  };
  try {
    return await runChild(
      'test:faults',
      npx,
      ['--no', '--', 'vitest', 'run', '--config', 'vitest.faults.config.ts', ...args],
      env,
    );
  } finally {
    if (process.env.FAULT_KEEP_SERVICES !== '1') await ready.services('down');
  }
});
