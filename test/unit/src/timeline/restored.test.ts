import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../../../contract/errors.js';
import {
  RESTORED_FILE,
  RESTORED_STATE_DIR,
  TIMELINE_FILE,
  hasRestoredState,
  linkRestoredState,
  markRestored,
  readRestoredMarker,
  readTimelineFile,
  removeRestoredState,
  writeTimelineFile,
  type RestoredMarker,
} from '../../../../src/timeline/restored.js';

const MARKER: RestoredMarker = {
  schema: 1,
  partition: '7',
  restore_id: 'r-1',
  parent_timeline: 1,
  branch_lsn: 40,
  term: 3,
  max_committed_at: '2026-01-01T00:00:00.000Z',
  restored_at: '2026-01-01T00:01:00.000Z',
  reason: 'restore --to-lsn 40',
};

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'restored-'));
  await mkdir(join(dir, 'state', 'refs'), { recursive: true });
  await writeFile(join(dir, 'state', 'HEAD'), 'ref: main\n');
  await writeFile(join(dir, 'state', 'refs', 'main'), 'abc\n');
});
afterEach(() => rm(dir, { recursive: true, force: true }));

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

describe('restored partition markers', () => {
  it('a directory never restored has no marker, no timeline file, no restored state', async () => {
    expect(await readRestoredMarker(dir)).toBeUndefined();
    expect(await readTimelineFile(dir)).toBeUndefined();
    expect(await hasRestoredState(dir)).toBe(false);
  });

  it('markRestored writes the marker and hard-links the state beside it', async () => {
    await markRestored(dir, MARKER);
    expect(await readRestoredMarker(dir)).toEqual(MARKER);
    expect(await hasRestoredState(dir)).toBe(true);
    const linked = join(dir, RESTORED_STATE_DIR, 'refs', 'main');
    expect(await readFile(linked, 'utf8')).toBe('abc\n');
    expect((await stat(linked)).ino).toBe((await stat(join(dir, 'state', 'refs', 'main'))).ino);
    // Marking again (a restore run twice) remakes the links rather than failing on them.
    await writeFile(join(dir, 'state', 'NEW'), 'x');
    await markRestored(dir, MARKER);
    expect(await readFile(join(dir, RESTORED_STATE_DIR, 'NEW'), 'utf8')).toBe('x');
    await linkRestoredState(dir);
    await removeRestoredState(dir);
    expect(await hasRestoredState(dir)).toBe(false);
    await removeRestoredState(dir);
    expect(await readRestoredMarker(dir)).toEqual(MARKER);
  });

  it('a marker without max_committed_at reads back without it', async () => {
    const { max_committed_at: _, ...rest } = MARKER;
    await markRestored(dir, rest);
    expect(await readRestoredMarker(dir)).toEqual(rest);
  });

  it('a damaged marker is CORRUPT, naming the file', async () => {
    await markRestored(dir, MARKER);
    await writeFile(join(dir, RESTORED_FILE), '{"schema": 1');
    let err = await rejection(readRestoredMarker(dir));
    expect(isWalArchiverError(err, ErrorCodes.CORRUPT)).toBe(true);
    expect(err.message).toBe(`${join(dir, RESTORED_FILE)} is not JSON`);
    await writeFile(join(dir, RESTORED_FILE), JSON.stringify({ ...MARKER, branch_lsn: -1 }));
    err = await rejection(readRestoredMarker(dir));
    expect(isWalArchiverError(err, ErrorCodes.CORRUPT)).toBe(true);
    expect(err.message).toContain('branch_lsn');
  });

  it('the timeline file round-trips and refuses anything but a timeline number and a newline', async () => {
    await writeTimelineFile(dir, 3);
    expect(await readFile(join(dir, TIMELINE_FILE), 'utf8')).toBe('3\n');
    expect(await readTimelineFile(dir)).toBe(3);
    for (const text of ['3', '0\n', '03\n', 'x\n', '3\n\n', '', '1234567890\n']) {
      await writeFile(join(dir, TIMELINE_FILE), text);
      const err = await rejection(readTimelineFile(dir));
      expect(isWalArchiverError(err, ErrorCodes.CORRUPT), JSON.stringify(text)).toBe(true);
      expect(err.message).toContain('expected a timeline number and a newline');
    }
  });
});
