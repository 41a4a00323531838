#!/usr/bin/env node
// `npm test`: build, make sure the real Kafka and MinIO are up, run vitest against them.
//
//   npm test [-- <vitest arguments>]       e.g. npm test -- --project unit, npm test -- test/integration/x.test.ts
//
// The services are left running afterwards, so the next run reuses them in well under a second;
// `npm run services:down` stops them. WAL_TEST_NO_SERVICES=1 skips starting them (unit tests only, or
// services run elsewhere: point WAL_TEST_S3_ENDPOINT / WAL_TEST_KAFKA_BROKERS at them).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, ServicesError, loadConfig, testEnv } from './lib/services-config.mjs';

const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';

function run(command, args, env = process.env) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: REPO_ROOT, env, stdio: 'inherit' });
    // Ctrl-C reaches the child directly (same process group); wait for it to finish. SIGTERM is passed on.
    const ignore = () => {};
    const forward = (signal) => child.kill(signal);
    process.on('SIGINT', ignore);
    process.on('SIGTERM', forward);
    child.once('error', (error) => {
      process.stderr.write(`test: could not run ${command}: ${error.message}\n`);
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
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ServicesError)) throw error;
    process.stderr.write(`test: ${error.message}\n`);
    return 1;
  }

  if (!existsSync(join(REPO_ROOT, 'node_modules', '.bin', 'tsc'))) {
    process.stderr.write('test: node_modules is missing or incomplete; run `npm ci` first\n');
    return 1;
  }
  // `--no` keeps npx from fetching a package when the local one is missing (`npm ci` not run yet).
  const build = await run(npx, ['--no', '--', 'tsc', '-p', 'tsconfig.build.json']);
  if (build !== 0) {
    process.stderr.write('test: the build failed (npx tsc -p tsconfig.build.json)\n');
    return build;
  }

  if (process.env.WAL_TEST_NO_SERVICES !== '1') {
    const services = await run(process.execPath, [join(REPO_ROOT, 'scripts', 'services.mjs'), 'up']);
    if (services !== 0) {
      process.stderr.write('test: the services did not start (WAL_TEST_NO_SERVICES=1 runs without them)\n');
      return services;
    }
  }

  // An S3 endpoint set by hand comes with its own credentials; otherwise the tests use MinIO's, even when
  // the shell holds other AWS keys.
  const env = { ...process.env };
  const s3ByHand = Boolean(process.env.WAL_TEST_S3_ENDPOINT);
  for (const [name, value] of Object.entries(testEnv(config))) {
    if (name.startsWith('AWS_') && !s3ByHand) env[name] = value;
    else env[name] ??= value;
  }
  return run(npx, ['--no', '--', 'vitest', 'run', ...args], env);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`test: unexpected failure: ${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
