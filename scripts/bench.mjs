#!/usr/bin/env node
// `npm run bench`: build (the sources and bench/), make sure the real Kafka and MinIO are up, run the
// benchmarks against them. Not part of `npm test`.
//
//   npm run bench [-- --quick] [-- --only small,steady,large,restore,many] [-- --no-kafka] [-- --cpu-prof]
//
// Results: a table on stdout, bench/results/<date>.json and <date>.svg (git-ignored). The services are left
// running, as after `npm test`; `npm run services:down` stops them.
import { join } from 'node:path';
import { exitWith, prepare, runChild } from './lib/harness.mjs';
import { REPO_ROOT } from './lib/services-config.mjs';

exitWith('bench', async (args) => {
  const ready = await prepare({ label: 'bench', tsconfig: 'tsconfig.bench.json' });
  if (!ready.env) return ready.code;
  return runChild(
    'bench',
    process.execPath,
    [join(REPO_ROOT, 'dist', 'bench', 'run.js'), ...args],
    ready.env,
  );
});
