// What `npm test`, `npm run bench` and `npm run test:faults` share: run a child with signals passed on,
// check the install, build, start the services, and give the child the services' addresses.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, ServicesError, loadConfig, testEnv } from './services-config.mjs';

export const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';

/** Runs a command in the repository; resolves to its exit code. Ctrl-C reaches it directly; SIGTERM is passed on. */
export function runChild(label, command, args, env = process.env) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: REPO_ROOT, env, stdio: 'inherit' });
    const ignore = () => {};
    const forward = (signal) => child.kill(signal);
    process.on('SIGINT', ignore);
    process.on('SIGTERM', forward);
    child.once('error', (error) => {
      process.stderr.write(`${label}: could not run ${command}: ${error.message}\n`);
      resolve(1);
    });
    child.once('exit', (code, signal) => {
      process.off('SIGINT', ignore);
      process.off('SIGTERM', forward);
      resolve(code ?? (signal === 'SIGINT' ? 130 : 1));
    });
  });
}

/**
 * Checks the install, builds with `tsconfig`, and (unless `startServices` is false) starts the services
 * described by `servicesEnv`. Returns `{ code }` on failure, or `{ env, services }`: the environment for the
 * child, with the services' addresses and credentials (an S3 endpoint set by hand keeps its own keys), and a
 * function running `services.mjs <command>` for the same services.
 */
export async function prepare({ label, tsconfig, servicesEnv = process.env, startServices = true }) {
  let config;
  try {
    config = loadConfig(servicesEnv);
  } catch (error) {
    if (!(error instanceof ServicesError)) throw error;
    process.stderr.write(`${label}: ${error.message}\n`);
    return { code: 1 };
  }
  if (!existsSync(join(REPO_ROOT, 'node_modules', '.bin', 'tsc'))) {
    process.stderr.write(`${label}: node_modules is missing or incomplete; run \`npm ci\` first\n`);
    return { code: 1 };
  }
  // The WAL codecs are generated from contract/proto first (scripts/proto.mjs), so a changed schema
  // is what the build and the tests see. `--no` keeps npx from fetching a package when the local
  // one is missing (`npm ci` not run yet).
  const proto = await runChild(label, process.execPath, [join(REPO_ROOT, 'scripts', 'proto.mjs')]);
  if (proto !== 0) {
    process.stderr.write(`${label}: generating the protobuf code failed (npm run proto)\n`);
    return { code: proto };
  }
  const build = await runChild(label, npx, ['--no', '--', 'tsc', '-p', tsconfig]);
  if (build !== 0) {
    process.stderr.write(`${label}: the build failed (npx tsc -p ${tsconfig})\n`);
    return { code: build };
  }
  const services = (command) =>
    runChild(label, process.execPath, [join(REPO_ROOT, 'scripts', 'services.mjs'), command], servicesEnv);
  if (startServices) {
    const up = await services('up');
    if (up !== 0) {
      process.stderr.write(`${label}: the services did not start\n`);
      return { code: up };
    }
  }
  const env = { ...servicesEnv };
  const s3ByHand = Boolean(process.env.WAL_TEST_S3_ENDPOINT);
  for (const [name, value] of Object.entries(testEnv(config))) {
    if (name.startsWith('AWS_') && !s3ByHand) env[name] = value;
    else if (servicesEnv === process.env) env[name] ??= value;
    else env[name] = value;
  }
  return { env, services };
}

/** Runs `main(args)` and exits with its code; an unexpected failure is one line. */
export function exitWith(label, main) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error) => {
      process.stderr.write(`${label}: unexpected failure: ${error?.stack ?? error}\n`);
      process.exit(1);
    },
  );
}
