import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { spoolSegment, type SegmentEntry } from '../../src/pipeline/segment.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'segment-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function makeEntry(lsn: number, files: Record<string, Buffer>): Promise<SegmentEntry> {
  const name = lsn.toString(36).padStart(13, '0');
  const dir = join(root, 'wal', name);
  await mkdir(dir, { recursive: true });
  for (const [file, data] of Object.entries(files)) await writeFile(join(dir, file), data);
  return { lsn, name, dir, files: Object.keys(files) };
}

describe('spoolSegment', () => {
  it('writes a tar.zst that standard zstd and tar open, byte for byte', async () => {
    const entries: SegmentEntry[] = [];
    const contents = new Map<string, Buffer>();
    for (let lsn = 35; lsn <= 38; lsn++) {
      const files = {
        MANIFEST: randomBytes(50),
        RAFT: randomBytes(20),
        '1': randomBytes(70_000),
        '2': Buffer.alloc(0),
      };
      entries.push(await makeEntry(lsn, files));
      for (const [f, d] of Object.entries(files)) contents.set(`${entries.at(-1)!.name}/${f}`, d);
    }
    const seg = await spoolSegment(entries, join(root, 'spool'));
    expect(seg).toMatchObject({ firstLsn: 35, lastLsn: 38, entries: 4 });
    const bytes = await readFile(seg.path);
    expect(seg.bytes).toBe(bytes.length);
    const out = join(root, 'out');
    await mkdir(out);
    execFileSync('sh', ['-c', `zstd -q -d -c "${seg.path}" | tar -x -C "${out}"`]);
    for (const [rel, data] of contents) expect((await readFile(join(out, rel))).equals(data), rel).toBe(true);
    // Names sort in LSN order across the base-36 digit boundary (z → 10).
    expect(entries.map((e) => e.name)).toEqual([...entries.map((e) => e.name)].sort());
  });

  it('is deterministic: the same entries give the same bytes and digest', async () => {
    const e = [await makeEntry(1, { MANIFEST: Buffer.from('m'), RAFT: Buffer.from('r') })];
    const a = await spoolSegment(e, join(root, 'spool'));
    const b = await spoolSegment(e, join(root, 'spool'));
    expect(a.path).not.toBe(b.path);
    expect(a.sha256).toBe(b.sha256);
  });

  it('refuses gaps, and reports a file that changes size while packed as corruption', async () => {
    const e1 = await makeEntry(1, { MANIFEST: Buffer.from('m') });
    const e3 = await makeEntry(3, { MANIFEST: Buffer.from('m') });
    await expect(spoolSegment([e1, e3], join(root, 'spool'))).rejects.toThrow(/contiguous/);
    const e2 = await makeEntry(2, { MANIFEST: Buffer.from('x') });
    await expect(
      spoolSegment([e2], join(root, 'spool'), {
        inspect: {
          beginFile: () => {},
          file: () => {},
          entryDone: () => {
            throw Object.assign(new Error('digest mismatch'), { code: ErrorCodes.CORRUPT });
          },
        },
      }),
    ).rejects.toThrow('digest mismatch');
    const missing = { ...e1, files: ['MANIFEST', 'RAFT'] };
    await expect(spoolSegment([missing], join(root, 'spool'))).rejects.toThrow();
    // Nothing half-written is left behind to be mistaken for a segment.
    expect(await readdir(join(root, 'spool'))).toEqual([]);
  });
});
