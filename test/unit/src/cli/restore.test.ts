import { describe, expect, it } from 'vitest';
import { progressRenderer, restoreCommand, verifyCommand } from '../../../../src/cli/restore.js';
import type { RestoreProgress } from '../../../../src/restore/restore.js';
import { captureContext, runCommand } from '../../../helpers/cli-context.js';

/** A command line that the command refuses: its exit code and the one line on stderr. */
async function usage(argv: string[], command = restoreCommand): Promise<{ code: number; line: string }> {
  const c = captureContext();
  const code = await runCommand(command, argv, c);
  return { code, line: c.stderr() };
}

const store = ['--object-store', 'file:///nonexistent-archive'];

describe('restore and verify command lines', () => {
  it('needs exactly one of --partition and --all, and exactly one target', async () => {
    expect(await usage([...store, '--latest', '--target', '/tmp/x'])).toEqual({
      code: 2,
      line: 'wal-archiver: give exactly one of --partition P or --all\n',
    });
    expect(
      await usage([...store, '--partition', '1', '--all', '--latest', '--target', '/tmp/x']),
    ).toMatchObject({
      code: 2,
    });
    expect(await usage([...store, '--partition', '1', '--target', '/tmp/x'])).toEqual({
      code: 2,
      line: 'wal-archiver: give exactly one of --to-lsn N, --to-time T or --latest\n',
    });
    expect(await usage([...store, '--all', '--to-lsn', '4', '--target', '/tmp/x'])).toEqual({
      code: 2,
      line: "wal-archiver: --to-lsn names one partition's LSN: with --all use --to-time or --latest\n",
    });
  });

  it('refuses malformed values with one line', async () => {
    expect(
      (await usage([...store, '--partition', '1', '--to-time', 'noon', '--target', '/tmp/x'])).line,
    ).toMatch(/^wal-archiver: --to-time: "noon" is not a time/);
    expect((await usage([...store, '--partition', '../1', '--latest', '--target', '/tmp/x'])).line).toBe(
      'wal-archiver: flag --partition: "../1" is not a partition ID (1-64 of [A-Za-z0-9._-], starting with a letter or digit)\n',
    );
    expect((await usage([...store, '--partition', '1', '--to-lsn', '0', '--target', '/tmp/x'])).code).toBe(2);
    expect((await usage([...store, '--partition', '1', '--latest'])).line).toMatch(
      /missing required flag --target/,
    );
    expect((await usage([...store, '--partition', '../1'], verifyCommand)).code).toBe(2);
  });
});

describe('restore progress', () => {
  const p = (over: Partial<RestoreProgress>): RestoreProgress => ({
    partition: '3',
    phase: 'replay',
    targetLsn: 100,
    fromLsn: 1,
    appliedLsn: 0,
    segmentsDone: 0,
    segmentsTotal: 10,
    bytes: 0,
    ...over,
  });

  it('writes plain lines off a terminal: on each phase change, then at most one per interval', () => {
    const err = captureContext();
    let now = 0;
    const r = progressRenderer(err.ctx.stderr, { tty: false, now: () => now });
    r.update(p({ phase: 'planning' }));
    r.update(p({ appliedLsn: 10, segmentsDone: 1 }));
    r.update(p({ appliedLsn: 20, segmentsDone: 2 }));
    now = 2_500;
    r.update(p({ appliedLsn: 30, segmentsDone: 3, bytes: 2048 }));
    r.update(p({ phase: 'done', appliedLsn: 100, segmentsDone: 10 }));
    r.end();
    expect(err.stderr().split('\n').filter(Boolean)).toEqual([
      'restore: partition 3: planning, LSN 0/100, segments 0/10, 0 B',
      'restore: partition 3: replay, LSN 10/100, segments 1/10, 0 B',
      'restore: partition 3: replay, LSN 30/100, segments 3/10, 2.0 KiB',
      'restore: partition 3: done, LSN 100/100, segments 10/10, 0 B',
    ]);
  });

  it('draws one bar in place on a terminal', () => {
    const err = captureContext();
    const r = progressRenderer(err.ctx.stderr, { tty: true });
    r.update(p({ appliedLsn: 50, segmentsDone: 5 }));
    r.end();
    expect(err.stderr()).toBe(
      `\r\x1b[K[${'#'.repeat(15)}${'.'.repeat(15)}] 50% partition 3: replay, LSN 50/100, segments 5/10, 0 B\n`,
    );
  });
});
