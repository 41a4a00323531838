#!/usr/bin/env node
// TypeScript from the WAL's protobuf schemas (contract/proto/*.proto → contract/proto/gen/), with
// buf and protoc-gen-es from node_modules: no system protoc, no network. The generated code is
// committed; CI checks it is current.
//
//   npm run proto          regenerate contract/proto/gen/
//   npm run proto:check    regenerate into a temporary folder and compare; exits 1, naming each
//                          stale file, when the committed code differs (part of `npm run lint`)
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const GEN = 'contract/proto/gen';

function generate(outputBase) {
  const env = {
    ...process.env,
    PATH: `${path.join(root, 'node_modules', '.bin')}${path.delimiter}${process.env.PATH}`,
  };
  const args = ['generate', ...(outputBase === undefined ? [] : ['--output', outputBase])];
  const run = spawnSync('buf', args, { cwd: root, env, stdio: 'inherit' });
  if (run.error) throw run.error;
  if (run.status !== 0) process.exit(run.status ?? 1);
}

/** Files under `dir`, as paths relative to it. */
function list(dir, prefix = '') {
  let entries;
  try {
    entries = readdirSync(path.join(dir, prefix), { withFileTypes: true });
  } catch (err) {
    if (err.code === 'ENOENT') return [];
    throw err;
  }
  return entries.flatMap((e) =>
    e.isDirectory() ? list(dir, path.join(prefix, e.name)) : [path.join(prefix, e.name)],
  );
}

if (!process.argv.includes('--check')) {
  generate(undefined);
  process.exit(0);
}

const temp = mkdtempSync(path.join(tmpdir(), 'wal-archiver-proto-'));
try {
  generate(temp);
  const fresh = path.join(temp, GEN);
  const committed = path.join(root, GEN);
  const files = [...new Set([...list(fresh), ...list(committed)])].sort();
  const stale = files.filter((f) => {
    const read = (dir) => {
      try {
        return readFileSync(path.join(dir, f));
      } catch {
        return undefined;
      }
    };
    const a = read(fresh);
    const b = read(committed);
    return a === undefined || b === undefined || !a.equals(b);
  });
  for (const f of stale) {
    process.stderr.write(`proto:check: ${path.join(GEN, f)} is stale; run \`npm run proto\` and commit it\n`);
  }
  process.exitCode = stale.length === 0 ? 0 : 1;
} finally {
  rmSync(temp, { recursive: true, force: true });
}
