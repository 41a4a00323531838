import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyCommand } from '../../../../src/cli/restore.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { openObjectStore } from '../../../../src/store/open.js';
import { captureContext, lines, runCommand } from '../../../helpers/cli-context.js';
import { SegmentArchive } from '../../../helpers/verify-archive.js';

/** `wal-archiver verify` flags and its output lines. */

let work: string;
let store: ObjectStore;
let url: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'verify-cli-'));
  url = `file://${join(work, 'archive')}`;
  store = await openObjectStore(url);
  await new SegmentArchive(store, work, '1').append(10);
  await new SegmentArchive(store, work, '2').append(6);
});
afterAll(async () => {
  await store.close();
  await rm(work, { recursive: true, force: true });
});

async function verify(...argv: string[]) {
  const c = captureContext();
  const code = await runCommand(verifyCommand, ['--object-store', url, ...argv], c);
  return { code, out: lines(c.stdout()), err: c.stderr() };
}

describe('wal-archiver verify', () => {
  it('refuses sampling flags without --incremental, and both sample flags at once', async () => {
    expect(await verify('--sample', '3')).toMatchObject({
      code: 2,
      err: 'wal-archiver: --sample needs --incremental\n',
    });
    expect(await verify('--seed', '3')).toMatchObject({
      code: 2,
      err: 'wal-archiver: --seed needs --incremental\n',
    });
    expect(await verify('--incremental', '--sample', '1', '--sample-fraction', '0.5')).toMatchObject({
      code: 2,
      err: 'wal-archiver: give at most one of --sample N and --sample-fraction F\n',
    });
    for (const bad of ['1.5', 'half', '-0.1', ''])
      expect((await verify('--incremental', '--sample-fraction', bad)).code).toBe(2);
    expect((await verify('--incremental', '--sample', '-1')).code).toBe(2);
  });

  it('ends with one summary line; a second --incremental run checks far fewer objects', async () => {
    const full = await verify();
    expect(full.code).toBe(0);
    expect(full.out.at(-1)).toBe('verify: 2 partitions, 0 faults, 1 warnings, 16 objects checked');
    expect(full.out.filter((l) => l.startsWith('OK    partition'))).toHaveLength(2);

    const incr = await verify('--incremental', '--seed', '9', '--sample', '2');
    expect(incr.code).toBe(0);
    expect(incr.out[0]).toBe('verify: incremental, sampling 2 of the older objects per partition (--seed 9)');
    expect(incr.out.find((l) => l.includes('partition 1:'))).toMatch(
      /^OK {4}partition 1: 10 segments, 0 base backups, LSNs 1-20, [\d.]+ (B|KiB) checked \(0 new and 2 sampled of 10 objects\), verified through LSN 20$/,
    );
    expect(incr.out.at(-1)).toBe('verify: 2 partitions, 0 faults, 1 warnings, 4 objects checked');
  });
});
