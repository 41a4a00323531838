/**
 * `npm run test:crash`: every protocol in test/crash/protocols/*.ts, each
 * crashed at every durable operation, with and without a power cut. Prints
 * `<protocol>: N crash points, M violations` per protocol and variant, then a
 * total, and fails on any violation (each printed with its protocol, k, op
 * and path).
 *
 *   CRASH_PROTOCOL=<text>   only protocols whose name contains it
 *   CRASH_MAX_POINTS=<n>    crash points per protocol and variant (default 60; sampled evenly beyond)
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { explore, summaryLine, type CrashProtocol, type ExploreResult } from './runner.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const protocolDir = path.join(here, 'protocols');
const filter = process.env.CRASH_PROTOCOL;
const maxPoints = Number(process.env.CRASH_MAX_POINTS ?? 60);

const files = (await readdir(protocolDir)).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts')).sort();
const protocols: CrashProtocol<unknown>[] = [];
for (const f of files) {
  const mod = (await import(pathToFileURL(path.join(protocolDir, f)).href)) as {
    protocols?: CrashProtocol<unknown>[];
  };
  for (const p of mod.protocols ?? []) if (!filter || p.name.includes(filter)) protocols.push(p);
}

const results: ExploreResult[] = [];
const out = (line: string) => process.stdout.write(`${line}\n`);

afterAll(() => {
  const points = results.reduce((n, r) => n + r.points, 0);
  const bad = results.reduce((n, r) => n + r.violations.length, 0);
  out('');
  for (const r of results) out(summaryLine(r));
  out(`total: ${points} crash points, ${bad} violations`);
});

describe('crash-point exploration', () => {
  it('finds protocols', () => {
    expect(protocols.length).toBeGreaterThan(0);
  });
  for (const p of protocols) {
    for (const powerCut of [false, true]) {
      it(`${p.name}${powerCut ? ' (power cut)' : ''}`, async () => {
        const r = await explore(p, { powerCut, maxPoints });
        results.push(r);
        out(summaryLine(r));
        for (const v of r.violations) out(`  VIOLATION ${v}`);
        expect(r.violations).toEqual([]);
      });
    }
  }
});
