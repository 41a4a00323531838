import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CompressStream, decompress } from 'zstd-napi';
import { ErrorCodes } from '../../../../contract/errors.js';
import { SegmentWriter, spoolSegment, type SegmentEntry } from '../../../../src/archive/segment-writer.js';

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

  it('writes the same tar bytes as tar-stream (segments stay identical to earlier ones)', async () => {
    const entries: SegmentEntry[] = [];
    let lsn = 34;
    for (const size of [0, 1, 511, 512, 513, 70_000, 1024 * 1024 + 3]) {
      const e = await makeEntry(lsn++, {
        MANIFEST: randomBytes(40),
        '1': randomBytes(size),
        RAFT: randomBytes(9),
      });
      await chmod(join(e.dir, '1'), 0o640);
      entries.push(e);
    }
    const seg = await spoolSegment(entries, join(root, 'spool'));
    const ours = Buffer.from(decompress(await readFile(seg.path)));

    const pack = tar.pack();
    const chunks: Buffer[] = [];
    pack.on('data', (c: unknown) => chunks.push(c as Buffer));
    const ended = new Promise<void>((r) => pack.on('end', () => r()));
    for (const e of entries) {
      pack.entry({ name: `${e.name}/`, type: 'directory', mode: 0o755, mtime: new Date(0) });
      for (const f of e.files) {
        const path = join(e.dir, f);
        const info = await stat(path);
        pack.entry(
          {
            name: `${e.name}/${f}`,
            size: info.size,
            mode: info.mode & 0o777,
            mtime: new Date(0),
            uid: 0,
            gid: 0,
          },
          await readFile(path),
        );
      }
    }
    pack.finalize();
    await ended;
    const theirs = Buffer.concat(chunks);
    expect(ours.length).toBe(theirs.length);
    expect(ours.equals(theirs)).toBe(true);
    // And the object itself: the same tar through a zstd stream fed in other chunk sizes.
    const z = new CompressStream({ compressionLevel: 3, checksumFlag: true });
    const out: Buffer[] = [];
    z.on('data', (c: Buffer) => out.push(c));
    const done = new Promise<void>((r) => z.on('end', () => r()));
    for (let i = 0; i < theirs.length; i += 5000) z.write(theirs.subarray(i, i + 5000));
    z.end();
    await done;
    expect(createHash('sha256').update(Buffer.concat(out)).digest('hex')).toBe(seg.sha256);
  });

  it('SegmentWriter appends entries held in memory and refuses a size that does not match', async () => {
    const w = await SegmentWriter.open(join(root, 'spool'), 7);
    const entry = { lsn: 7, name: '0000000000007', dir: '', files: ['MANIFEST', 'RAFT'] };
    await w.append(entry, [
      { name: 'MANIFEST', mode: 0o644, size: 3, data: Buffer.from('abc') },
      { name: 'RAFT', mode: 0o644, size: 1, data: Buffer.from('r') },
    ]);
    await expect(
      w.append({ ...entry, lsn: 9, name: '0000000000009' }, [
        { name: 'MANIFEST', mode: 0o644, size: 1, data: Buffer.from('x') },
      ]),
    ).rejects.toThrow(/contiguous/);
    await expect(
      w.append({ ...entry, lsn: 8, name: '0000000000008' }, [
        { name: 'MANIFEST', mode: 0o644, size: 5, data: Buffer.from('x') },
      ]),
    ).rejects.toMatchObject({ code: ErrorCodes.CORRUPT });
    await w.discard();
    expect(await readdir(join(root, 'spool'))).toEqual([]);
  });
});
