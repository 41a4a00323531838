#!/usr/bin/env node
// `npm run bench`: build (the sources and bench/), make sure the real Kafka and MinIO are up, run the
// benchmarks against them. Not part of `npm test`.
//
//   npm run bench [-- --quick] [-- --only small,large,steady,restore,many] [-- --no-kafka] [-- --cpu-prof]
//
// Results: a table on stdout, bench/results/<date>.json and <date>.svg (git-ignored). The services are left
// running, as after `npm test`; `npm run services:down` stops them.
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
      process.stderr.write(`bench: could not run ${command}: ${error.message}\n`);
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
    process.stderr.write(`bench: ${error.message}\n`);
    return 1;
  }
  if (!existsSync(join(REPO_ROOT, 'node_modules', '.bin', 'tsc'))) {
    process.stderr.write('bench: node_modules is missing or incomplete; run `npm ci` first\n');
    return 1;
  }
  const build = await run(npx, ['--no', '--', 'tsc', '-p', 'tsconfig.bench.json']);
  if (build !== 0) {
    process.stderr.write('bench: the build failed (npx tsc -p tsconfig.bench.json)\n');
    return build;
  }
  if (process.env.WAL_TEST_NO_SERVICES !== '1') {
    const services = await run(process.execPath, [join(REPO_ROOT, 'scripts', 'services.mjs'), 'up']);
    if (services !== 0) {
      process.stderr.write('bench: the services did not start\n');
      return services;
    }
  }
  // The same addresses and credentials the tests get (an S3 endpoint set by hand keeps its own keys).
  const env = { ...process.env };
  const s3ByHand = Boolean(process.env.WAL_TEST_S3_ENDPOINT);
  for (const [name, value] of Object.entries(testEnv(config))) {
    if (name.startsWith('AWS_') && !s3ByHand) env[name] = value;
    else env[name] ??= value;
  }
  return run(process.execPath, [join(REPO_ROOT, 'dist', 'bench', 'run.js'), ...args], env);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`bench: unexpected failure: ${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
