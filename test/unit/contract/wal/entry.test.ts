import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { WalArchiverError } from '../../../../contract/errors.js';
import {
  appliedLsnPath,
  archiverPositionPath,
  cleanStaging,
  confStatePath,
  entryDir,
  hardStatePath,
  listEntryLsns,
  listPartitionIds,
  partitionDir,
  pruneThrough,
  readAppliedLsn,
  readArchiverPosition,
  readConfState,
  readEntry,
  readHardState,
  readLsnFile,
  stagingDir,
  stateDir,
  truncateFrom,
  walDir,
  writeAppliedLsn,
  writeArchiverPosition,
  writeConfState,
  writeEntry,
  writeHardState,
  writeLsnFile,
} from '../../../../contract/wal/entry.js';
import {
  encodeLogEntry,
  newLogEntry,
  operation,
  referenceChange,
} from '../../../../contract/wal/log-entry.js';
import { encodeHardState, encodeRaftEntry, type RaftEntry } from '../../../../contract/wal/raftpb.js';

let root: string;
let pdir: string;

beforeEach(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'wal-entry-'));
  pdir = partitionDir(root, 'p-7');
});

afterEach(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});

function raft(lsn: number, term = 1): RaftEntry {
  return { term, index: lsn, type: 0, data: Buffer.from(`raft-data-${lsn}`) };
}

function manifest(lsn: number) {
  return newLogEntry({
    relativePath: 'repo.git',
    referenceTransactions: [{ changes: [referenceChange('refs/heads/main', `${lsn}`.padStart(40, '0'))] }],
    operations: [
      operation.createHardLink('1', 'repo.git/objects/pack/p.pack'),
      operation.setKey('k', `${lsn}`),
    ],
  });
}

async function writeSimple(lsn: number, term = 1): Promise<void> {
  await writeEntry(pdir, lsn, {
    manifest: manifest(lsn),
    raft: raft(lsn, term),
    files: [{ data: Buffer.from(`f${lsn}`) }],
  });
}

async function errorOf(p: Promise<unknown>): Promise<WalArchiverError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(WalArchiverError);
  return caught as WalArchiverError;
}

describe('paths', () => {
  it('lays a partition out as Contract 1 says', () => {
    expect(pdir).toBe(path.join(root, 'partitions', 'p-7'));
    expect(walDir(pdir)).toBe(path.join(pdir, 'wal'));
    expect(entryDir(pdir, 36)).toBe(path.join(pdir, 'wal', '0000000000010'));
    expect(hardStatePath(pdir)).toBe(path.join(pdir, 'raft', 'hard_state'));
    expect(confStatePath(pdir)).toBe(path.join(pdir, 'raft', 'conf_state'));
    expect(appliedLsnPath(pdir)).toBe(path.join(pdir, 'applied_lsn'));
    expect(archiverPositionPath(pdir)).toBe(path.join(pdir, 'archiver', 'position'));
    expect(stateDir(pdir)).toBe(path.join(pdir, 'state'));
  });

  it('rejects partition IDs that are not a single path component', () => {
    for (const bad of ['', '.', '..', 'a/b', 'a\\b'])
      expect(() => partitionDir(root, bad)).toThrow(/invalid partition ID/);
  });

  it('lists partitions', async () => {
    expect(await listPartitionIds(root)).toEqual([]);
    await writeSimple(1);
    await fsp.mkdir(path.join(root, 'partitions', 'a-1'), { recursive: true });
    expect(await listPartitionIds(root)).toEqual(['a-1', 'p-7']);
  });
});

describe('writeEntry / readEntry', () => {
  it('writes MANIFEST, staged files and RAFT byte for byte and reads them back', async () => {
    const source = path.join(root, 'packfile');
    await fsp.writeFile(source, Buffer.alloc(5000, 3));
    const files = [
      ...Array.from({ length: 36 }, (_, i) => ({ data: Buffer.from(`content of file ${i + 1}`) })),
      { linkFrom: source },
    ];
    const written = await writeEntry(pdir, 5, { manifest: manifest(5), raft: raft(5, 3), files });

    const dir = entryDir(pdir, 5);
    expect(written.dir).toBe(dir);
    expect(written.files.map((f) => f.name).slice(0, 12)).toEqual([
      '1',
      '2',
      '3',
      '4',
      '5',
      '6',
      '7',
      '8',
      '9',
      'a',
      'b',
      'c',
    ]);
    expect(written.files.map((f) => f.name).slice(-3)).toEqual(['z', '10', '11']);

    expect(await fsp.readFile(path.join(dir, 'MANIFEST'))).toEqual(encodeLogEntry(manifest(5)));
    expect(await fsp.readFile(path.join(dir, 'RAFT'))).toEqual(encodeRaftEntry(raft(5, 3)));
    expect(await fsp.readFile(path.join(dir, 'a'))).toEqual(Buffer.from('content of file 10'));
    expect(await fsp.readFile(path.join(dir, '10'))).toEqual(Buffer.from('content of file 36'));
    expect(await fsp.readFile(path.join(dir, '11'))).toEqual(Buffer.alloc(5000, 3));
    expect((await fsp.stat(path.join(dir, '11'))).ino).toBe((await fsp.stat(source)).ino);

    const entry = await readEntry(pdir, 5);
    expect(entry.lsn).toBe(5);
    expect(entry.manifest).toEqual(manifest(5));
    expect(entry.raft).toEqual(raft(5, 3));
    expect(entry.files).toEqual(written.files);
    expect(entry.totalBytes).toBe(written.totalBytes);
    const onDisk = await fsp.readdir(dir);
    let total = 0;
    for (const name of onDisk) total += (await fsp.stat(path.join(dir, name))).size;
    expect(entry.totalBytes).toBe(total);
    expect(entry.manifestBytes + entry.raftBytes).toBe(total - entry.files.reduce((s, f) => s + f.size, 0));

    // Nothing is left behind in staging.
    expect(await fsp.readdir(stagingDir(pdir))).toEqual([]);
  });

  it('keeps explicit staged names and fills the gaps for the others', async () => {
    const written = await writeEntry(pdir, 1, {
      manifest: newLogEntry(),
      raft: raft(1),
      files: [{ data: Buffer.from('x') }, { name: '1', data: Buffer.from('y') }, { data: Buffer.from('z') }],
    });
    expect(written.files.map((f) => f.name)).toEqual(['2', '1', '3']);
    expect((await readEntry(pdir, 1)).files.map((f) => f.name)).toEqual(['1', '2', '3']);
    await expect(
      writeEntry(pdir, 2, {
        manifest: newLogEntry(),
        raft: raft(2),
        files: [{ name: 'RAFT', data: Buffer.from('') }],
      }),
    ).rejects.toThrow(/not a base-36 sequence name/);
  });

  it('refuses a RAFT index that is not the LSN, and an LSN already present', async () => {
    const e = await errorOf(writeEntry(pdir, 3, { manifest: newLogEntry(), raft: raft(4) }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    await writeSimple(3);
    const dup = await errorOf(writeEntry(pdir, 3, { manifest: newLogEntry(), raft: raft(3, 2) }));
    expect(dup.code).toBe('ALREADY_EXISTS');
    expect((await readEntry(pdir, 3)).raft.term).toBe(1);
    expect(await fsp.readdir(stagingDir(pdir))).toEqual([]);
  });

  it('cleans up the staging directory when a write fails', async () => {
    const e = await errorOf(
      writeEntry(pdir, 1, {
        manifest: newLogEntry(),
        raft: raft(1),
        files: [{ linkFrom: path.join(root, 'missing') }],
      }),
    );
    expect(e.code).toBe('NOT_FOUND');
    expect(await fsp.readdir(stagingDir(pdir))).toEqual([]);
    expect(await listEntryLsns(pdir)).toEqual([]);
  });

  it('a missing entry is NOT_FOUND', async () => {
    expect((await errorOf(readEntry(pdir, 1))).code).toBe('NOT_FOUND');
  });
});

describe('corrupt entries', () => {
  beforeEach(async () => {
    await writeSimple(7);
  });

  const file = (name: string) => path.join(entryDir(pdir, 7), name);

  it('a MANIFEST byte flipped so the framing breaks is CORRUPT, naming partition, LSN and file', async () => {
    const buf = await fsp.readFile(file('MANIFEST'));
    expect(buf[1]).toBe('repo.git'.length); // length of relative_path
    buf[1] = 0x7f;
    await fsp.writeFile(file('MANIFEST'), buf);
    const e = await errorOf(readEntry(pdir, 7));
    expect(e.code).toBe('CORRUPT');
    expect(e.message).toMatch(
      /^partition p-7, LSN 7: MANIFEST: corrupt LogEntry: length 127 exceeds .* at byte 1$/,
    );
    expect(e.details).toMatchObject({ partition: 'p-7', lsn: 7 });
  });

  it('a truncated RAFT is CORRUPT', async () => {
    const buf = await fsp.readFile(file('RAFT'));
    await fsp.writeFile(file('RAFT'), buf.subarray(0, buf.length - 3));
    const e = await errorOf(readEntry(pdir, 7));
    expect(e.code).toBe('CORRUPT');
    expect(e.message).toMatch(/^partition p-7, LSN 7: RAFT: corrupt raftpb.Entry: length \d+ exceeds/);
  });

  it('a RAFT cut before its index is CORRUPT (index mismatch)', async () => {
    const buf = await fsp.readFile(file('RAFT'));
    await fsp.writeFile(file('RAFT'), buf.subarray(0, 4));
    const e = await errorOf(readEntry(pdir, 7));
    expect(e.code).toBe('CORRUPT');
    expect(e.message).toBe("partition p-7, LSN 7: RAFT: index 0 does not match the entry's LSN");
  });

  it('a RAFT index that is not the LSN is CORRUPT', async () => {
    await fsp.writeFile(file('RAFT'), encodeRaftEntry(raft(8)));
    const e = await errorOf(readEntry(pdir, 7));
    expect(e.code).toBe('CORRUPT');
    expect(e.message).toMatch(/LSN 7: RAFT: index 8 does not match/);
  });

  it('a missing MANIFEST or RAFT is CORRUPT', async () => {
    await fsp.rm(file('RAFT'));
    expect((await errorOf(readEntry(pdir, 7))).message).toMatch(/^partition p-7, LSN 7: RAFT is missing/);
    await fsp.rm(file('MANIFEST'));
    expect((await errorOf(readEntry(pdir, 7))).message).toMatch(/^partition p-7, LSN 7: MANIFEST is missing/);
  });

  it('a directory inside an entry is CORRUPT', async () => {
    await fsp.mkdir(file('sub'));
    expect((await errorOf(readEntry(pdir, 7))).message).toMatch(/LSN 7: .*sub is not a regular file/);
  });
});

describe('listEntryLsns', () => {
  it('lists in LSN order across base-36 digit boundaries, ignoring dot names', async () => {
    expect(await listEntryLsns(pdir)).toEqual([]);
    for (const lsn of [1296, 37, 35, 1295, 36, 10, 9]) await writeSimple(lsn);
    await fsp.mkdir(path.join(walDir(pdir), '.tmp-something'));
    await fsp.writeFile(path.join(walDir(pdir), '.DS_Store'), '');
    expect(await listEntryLsns(pdir)).toEqual([9, 10, 35, 36, 37, 1295, 1296]);
  });

  it('reports a foreign name in wal/ as CORRUPT rather than skipping it', async () => {
    await writeSimple(1);
    await fsp.mkdir(path.join(walDir(pdir), '000000000000B'));
    const e = await errorOf(listEntryLsns(pdir));
    expect(e.code).toBe('CORRUPT');
    expect(e.message).toMatch(/partition p-7: unexpected name "000000000000B"/);
  });

  it('reports a file with an LSN name as CORRUPT', async () => {
    await fsp.mkdir(walDir(pdir), { recursive: true });
    await fsp.writeFile(path.join(walDir(pdir), '0000000000002'), '');
    expect((await errorOf(listEntryLsns(pdir))).message).toMatch(/LSN 2: .* is not a directory/);
  });
});

describe('truncateFrom and pruneThrough', () => {
  beforeEach(async () => {
    for (let lsn = 1; lsn <= 5; lsn++) await writeSimple(lsn);
  });

  it('removes the entry at the LSN and every later one, then a new entry can take its place', async () => {
    expect(await truncateFrom(pdir, 3, 2)).toEqual([5, 4, 3]);
    expect(await listEntryLsns(pdir)).toEqual([1, 2]);
    expect(await fsp.readdir(stagingDir(pdir))).toEqual([]);
    await writeSimple(3, 2);
    expect((await readEntry(pdir, 3)).raft.term).toBe(2);
  });

  it('refuses to truncate at or below the committed LSN, removing nothing', async () => {
    for (const [from, committed] of [
      [2, 2],
      [1, 4],
    ] as const) {
      const e = await errorOf(truncateFrom(pdir, from, committed));
      expect(e.code).toBe('INVALID_ARGUMENT');
      expect(e.message).toMatch(
        new RegExp(`refusing to truncate the WAL at LSN ${from}, at or below the committed LSN ${committed}`),
      );
    }
    expect(await listEntryLsns(pdir)).toEqual([1, 2, 3, 4, 5]);
  });

  it('truncating past the end removes nothing', async () => {
    expect(await truncateFrom(pdir, 6, 5)).toEqual([]);
    expect(await listEntryLsns(pdir)).toEqual([1, 2, 3, 4, 5]);
  });

  it('prunes from the low end', async () => {
    expect(await pruneThrough(pdir, 3)).toEqual([1, 2, 3]);
    expect(await listEntryLsns(pdir)).toEqual([4, 5]);
  });

  it('cleanStaging removes what a crash left behind', async () => {
    await fsp.mkdir(path.join(stagingDir(pdir), 'entry-0000000000006-abc'), { recursive: true });
    await fsp.writeFile(path.join(stagingDir(pdir), 'entry-0000000000006-abc', 'MANIFEST'), 'x');
    await cleanStaging(pdir);
    expect(await fsp.readdir(stagingDir(pdir))).toEqual([]);
    expect(await listEntryLsns(pdir)).toEqual([1, 2, 3, 4, 5]);
  });
});

describe('raft state files', () => {
  it('hard_state: missing is undefined; written atomically as raftpb bytes; replaced', async () => {
    expect(await readHardState(pdir)).toBeUndefined();
    await writeHardState(pdir, { term: 2, vote: 1, commit: 10 });
    expect(await fsp.readFile(hardStatePath(pdir))).toEqual(
      encodeHardState({ term: 2, vote: 1, commit: 10 }),
    );
    await writeHardState(pdir, { term: 3, vote: 2, commit: 2 ** 40 });
    expect(await readHardState(pdir)).toEqual({ term: 3, vote: 2, commit: 2 ** 40 });
    expect(await fsp.readdir(path.dirname(hardStatePath(pdir)))).toEqual(['hard_state']);
  });

  it('hard_state: undecodable content is CORRUPT naming the file', async () => {
    await writeHardState(pdir, { term: 2, vote: 1, commit: 10 });
    await fsp.writeFile(hardStatePath(pdir), Buffer.from([0x08]));
    const e = await errorOf(readHardState(pdir));
    expect(e.code).toBe('CORRUPT');
    expect(e.message).toMatch(
      /^partition p-7: raft\/hard_state: corrupt raftpb.HardState: truncated varint at byte 1$/,
    );
  });

  it('conf_state round-trips', async () => {
    expect(await readConfState(pdir)).toBeUndefined();
    const cs = { voters: [1, 2, 3], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };
    await writeConfState(pdir, cs);
    expect(await readConfState(pdir)).toEqual(cs);
  });
});

describe('LSN files', () => {
  it('are a decimal LSN and a newline', async () => {
    expect(await readAppliedLsn(pdir)).toBeUndefined();
    expect(await readArchiverPosition(pdir)).toBeUndefined();
    await writeAppliedLsn(pdir, 42);
    await writeArchiverPosition(pdir, 2 ** 53 - 1);
    expect(await fsp.readFile(appliedLsnPath(pdir), 'utf8')).toBe('42\n');
    expect(await fsp.readFile(archiverPositionPath(pdir), 'utf8')).toBe('9007199254740991\n');
    expect(await readAppliedLsn(pdir)).toBe(42);
    expect(await readArchiverPosition(pdir)).toBe(2 ** 53 - 1);
    await writeLsnFile(appliedLsnPath(pdir), 0);
    expect(await readLsnFile(appliedLsnPath(pdir))).toBe(0);
  });

  it('anything else is CORRUPT', async () => {
    const file = appliedLsnPath(pdir);
    await fsp.mkdir(pdir, { recursive: true });
    for (const bad of [
      '42',
      ' 42\n',
      '042\n',
      '4 2\n',
      '-1\n',
      '1e3\n',
      '42\n\n',
      '',
      '9007199254740992\n',
      '0x10\n',
    ]) {
      await fsp.writeFile(file, bad);
      const e = await errorOf(readLsnFile(file));
      expect(e.code, JSON.stringify(bad)).toBe('CORRUPT');
    }
  });

  it('refuses to write a negative or fractional LSN', async () => {
    await expect(writeAppliedLsn(pdir, -1)).rejects.toThrow(/LSN must be an integer/);
    await expect(writeAppliedLsn(pdir, 1.5)).rejects.toThrow(/LSN must be an integer/);
  });
});
