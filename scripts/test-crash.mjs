#!/usr/bin/env node
// `npm run test:crash`: the crash-point exploration (test/crash/). Every durable step of every protocol
// in test/crash/protocols is crashed at each of its file-system operations, with and without a power cut,
// then reopened and checked. Prints `<protocol>: N crash points, M violations` lines and a total; exits
// non-zero on any violation. Needs no services.
//
//   npm run test:crash
//   CRASH_PROTOCOL='node: prune' npm run test:crash      one protocol (by a part of its name)
//   CRASH_MAX_POINTS=40 npm run test:crash              fewer crash points per protocol (sampled evenly)
import { exitWith, npx, runChild } from './lib/harness.mjs';

exitWith('test:crash', async (args) =>
  runChild('test:crash', npx, [
    '--no',
    '--',
    'vitest',
    'run',
    '--config',
    'test/crash/vitest.config.ts',
    ...args,
  ]),
);
