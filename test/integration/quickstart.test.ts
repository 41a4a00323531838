import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { readPartitionManifest } from '../../src/manifest/partition-manifest.js';
import { openObjectStore } from '../../src/store/open.js';
import { LOAD_DEFAULTS } from '../../storage-node/load.js';

const BIN = fileURLToPath(new URL('../../bin/wal-archiver.js', import.meta.url));
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

/**
 * `npm start` as a new user sees it: the terminal shows no warnings, the
 * workload writes for as long as the quickstart runs (past the load
 * command's default duration), and each base backup is logged once.
 */
function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('quickstart', () => {
  it('writes until stopped, prints no warning, logs each base backup once', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'quickstart-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const runMs = LOAD_DEFAULTS.durationMs + 8_000;
    const started = Date.now();
    const child = spawn(
      process.execPath,
      [BIN, 'quickstart', '--dir', dir, '--base-port', '7960', '--partitions', '2', '--rate', '60'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '--trace-warnings' } },
    );
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    cleanups.push(async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    });
    await new Promise((r) => setTimeout(r, runMs));
    // Ctrl-C, as the screen says.
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(stdout).toContain('Press Ctrl-C to stop');
    expect(stderr).not.toMatch(/Warning/);

    // Entries committed after the load command's default duration: the workload was still writing.
    const store = await openObjectStore(pathToFileURL(join(dir, 'archive')).href);
    cleanups.push(() => store.close());
    let lastCommit = 0;
    for (const p of ['1', '2']) {
      const m = (await readPartitionManifest(store, p))?.value;
      for (const s of m?.segments ?? []) lastCommit = Math.max(lastCommit, Date.parse(s.last_committed_at));
    }
    expect(lastCommit - started).toBeGreaterThan(LOAD_DEFAULTS.durationMs + 2_000);

    const log = await readFile(join(dir, 'quickstart.log'), 'utf8');
    const taken = log
      .split('\n')
      .filter((l) => l.includes('"base backup taken"'))
      .map((l) => (JSON.parse(l.slice(l.indexOf('{'))) as { key?: string }).key);
    expect(taken.length).toBeGreaterThan(0);
    expect(taken.every((k) => typeof k === 'string')).toBe(true);
    expect(new Set(taken).size).toBe(taken.length);

    // The quickstart's archive passes a restore drill, as its closing screen suggests.
    const drill = await runCli(['drill', '--object-store', pathToFileURL(join(dir, 'archive')).href]);
    expect(drill.code, drill.stderr).toBe(0);
    for (const p of ['1', '2'])
      expect(drill.stdout).toMatch(new RegExp(`^drill: partition ${p} timeline 1 OK`, 'm'));
  }, 120_000);
});
