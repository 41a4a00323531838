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
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, ServicesError, loadConfig, testEnv } from './lib/services-config.mjs';

const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';

function run(command, args, env = process.env) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: REPO_ROOT, env, stdio: 'inherit' });
    const ignore = () => {};
    const forward = (signal) => child.kill(signal);
    process.on('SIGINT', ignore);
    process.on('SIGTERM', forward);
    child.once('error', (error) => {
      process.stderr.write(`test:faults: could not run ${command}: ${error.message}\n`);
      resolve(1);
    });
    child.once('exit', (code, signal) => {
      process.off('SIGINT', ignore);
      process.off('SIGTERM', forward);
      resolve(code ?? (signal === 'SIGINT' ? 130 : 1));
    });
  });
}

async function main(args) {
  const servicesEnv = {
    ...process.env,
    WAL_SERVICES_DIR: process.env.WAL_FAULTS_SERVICES_DIR ?? join(REPO_ROOT, '.services', 'faults'),
    WAL_SERVICES_S3_PORT: process.env.WAL_FAULTS_S3_PORT ?? '19394',
    WAL_SERVICES_S3_CONSOLE_PORT: process.env.WAL_FAULTS_S3_CONSOLE_PORT ?? '19395',
    WAL_SERVICES_KAFKA_PORT: process.env.WAL_FAULTS_KAFKA_PORT ?? '19396',
    WAL_SERVICES_KAFKA_CONTROLLER_PORT: process.env.WAL_FAULTS_KAFKA_CONTROLLER_PORT ?? '19397',
  };
  let config;
  try {
    config = loadConfig(servicesEnv);
  } catch (error) {
    if (!(error instanceof ServicesError)) throw error;
    process.stderr.write(`test:faults: ${error.message}\n`);
    return 1;
  }
  if (!existsSync(join(REPO_ROOT, 'node_modules', '.bin', 'tsc'))) {
    process.stderr.write('test:faults: node_modules is missing or incomplete; run `npm ci` first\n');
    return 1;
  }
  const build = await run(npx, ['--no', '--', 'tsc', '-p', 'tsconfig.build.json']);
  if (build !== 0) {
    process.stderr.write('test:faults: the build failed (npx tsc -p tsconfig.build.json)\n');
    return build;
  }
  const services = (command) =>
    run(process.execPath, [join(REPO_ROOT, 'scripts', 'services.mjs'), command], servicesEnv);
  const up = await services('up');
  if (up !== 0) {
    process.stderr.write('test:faults: the services did not start\n');
    return up;
  }
  const env = { ...servicesEnv };
  for (const [name, value] of Object.entries(testEnv(config))) env[name] = value;
  env.WAL_FAULTS_SERVICES_ENV = JSON.stringify({
    WAL_SERVICES_DIR: servicesEnv.WAL_SERVICES_DIR,
    WAL_SERVICES_S3_PORT: servicesEnv.WAL_SERVICES_S3_PORT,
    WAL_SERVICES_S3_CONSOLE_PORT: servicesEnv.WAL_SERVICES_S3_CONSOLE_PORT,
    WAL_SERVICES_KAFKA_PORT: servicesEnv.WAL_SERVICES_KAFKA_PORT,
    WAL_SERVICES_KAFKA_CONTROLLER_PORT: servicesEnv.WAL_SERVICES_KAFKA_CONTROLLER_PORT,
  });
  let code;
  try {
    code = await run(
      npx,
      ['--no', '--', 'vitest', 'run', '--config', 'vitest.faults.config.ts', ...args],
      env,
    );
  } finally {
    if (process.env.FAULT_KEEP_SERVICES !== '1') await services('down');
  }
  return code;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`test:faults: unexpected failure: ${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
