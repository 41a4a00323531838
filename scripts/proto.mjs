#!/usr/bin/env node
// TypeScript from the WAL's protobuf schemas (contract/proto/**/*.proto → contract/proto/gen/), with
// buf and protoc-gen-es from node_modules: no system protoc, no network. The generated code is not
// committed: the build makes it (`npm ci` runs `prepare`, `npm run build` and `npm test` run this
// first), so it can never drift from the schemas.
//
//   npm run proto          regenerate contract/proto/gen/
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const env = {
  ...process.env,
  PATH: `${path.join(root, 'node_modules', '.bin')}${path.delimiter}${process.env.PATH}`,
};
const run = spawnSync('buf', ['generate'], { cwd: root, env, stdio: 'inherit' });
if (run.error) {
  process.stderr.write(`proto: cannot run buf from node_modules/.bin (${run.error.message}); run npm ci\n`);
  process.exit(1);
}
process.exitCode = run.status ?? 1;
