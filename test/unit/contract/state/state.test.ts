import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyEntry, decodeKvState, encodeKvState, readKvState } from '../../../../contract/state/apply.js';
import { extractState, linkTree, packState } from '../../../../contract/state/snapshot.js';
import { syncTree } from '../../../../contract/fs/fs-atomic.js';
import { newLogEntry, operation, referenceChange } from '../../../../contract/wal/log-entry.js';
import { treeDigest } from '../../../helpers/node-cluster.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'state-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const OID = 'a'.repeat(40);

async function stageEntry(lsn: number, files: Buffer[]): Promise<string> {
  const dir = join(root, 'wal', String(lsn));
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < files.length; i++) await writeFile(join(dir, String(i + 1)), files[i]!);
  return dir;
}

describe('applyEntry', () => {
  it('applies every operation kind and reference changes, idempotently', async () => {
    const state = join(root, 'state');
    const pack = randomBytes(1000);
    const entryDir = await stageEntry(1, [pack]);
    const entry = newLogEntry({
      relativePath: 'repo.git',
      operations: [
        operation.createDirectory('repo.git', 0o755),
        operation.createDirectory('repo.git/objects/pack', 0o750),
        operation.createHardLink('1', 'repo.git/objects/pack/p.pack'),
        operation.setKey('k1', 'v1'),
        operation.setKey(Buffer.from([0, 255]), 'binary'),
        operation.setKey('gone', 'x'),
        operation.deleteKey('gone'),
      ],
      referenceTransactions: [
        {
          changes: [referenceChange('refs/heads/main', OID), referenceChange('HEAD', '', 'refs/heads/main')],
        },
      ],
    });
    await applyEntry(entry, { stateDir: state, entryDir, lsn: 1 });
    const once = await treeDigest(state);
    await applyEntry(entry, { stateDir: state, entryDir, lsn: 1 });
    expect(await treeDigest(state)).toEqual(once);
    expect(await readFile(join(state, 'repositories/repo.git/objects/pack/p.pack'))).toEqual(pack);
    expect((await stat(join(state, 'repositories/repo.git/objects/pack'))).mode & 0o777).toBe(0o750);
    expect(await readFile(join(state, 'repositories/repo.git/refs/heads/main'), 'utf8')).toBe(`${OID}\n`);
    expect(await readFile(join(state, 'repositories/repo.git/HEAD'), 'utf8')).toBe('ref: refs/heads/main\n');
    const kv = await readKvState(state);
    expect([...kv.keys()].length).toBe(2);
    expect(kv.get(Buffer.from('k1').toString('base64'))?.toString()).toBe('v1');

    // A zero OID deletes the reference; removing a directory entry removes the file.
    const del = newLogEntry({
      relativePath: 'repo.git',
      operations: [operation.removeDirectoryEntry('repo.git/objects/pack/p.pack')],
      referenceTransactions: [{ changes: [referenceChange('refs/heads/main', '0'.repeat(40))] }],
    });
    await applyEntry(del, { stateDir: state, entryDir, lsn: 2 });
    await expect(stat(join(state, 'repositories/repo.git/refs/heads/main'))).rejects.toThrow();
    await expect(stat(join(state, 'repositories/repo.git/objects/pack/p.pack'))).rejects.toThrow();
  });

  it('applying without a sync per file (restore) gives the same state', async () => {
    const entryDir = await stageEntry(1, [randomBytes(100)]);
    const entry = newLogEntry({
      relativePath: 'r.git',
      operations: [
        operation.createDirectory('r.git', 0o755),
        operation.createHardLink('1', 'r.git/x'),
        operation.setKey('k', 'v'),
      ],
      referenceTransactions: [{ changes: [referenceChange('refs/heads/main', OID)] }],
    });
    await applyEntry(entry, { stateDir: join(root, 'a', 'state'), entryDir, lsn: 1 });
    await applyEntry(entry, { stateDir: join(root, 'b', 'state'), entryDir, lsn: 1, durable: false });
    expect(await treeDigest(join(root, 'b', 'state'))).toEqual(await treeDigest(join(root, 'a', 'state')));
    await syncTree(join(root, 'b'));
    await expect(syncTree(join(root, 'missing'))).rejects.toThrow();
  });

  it('a write to one of two names sharing an inode leaves the other name as the node does', async () => {
    const OID2 = 'b'.repeat(40);
    const entryDir = await stageEntry(1, []);
    const entries = [
      newLogEntry({
        relativePath: 'r.git',
        operations: [operation.createDirectory('r.git', 0o755)],
        referenceTransactions: [{ changes: [referenceChange('refs/heads/main', OID)] }],
      }),
      // An in-storage hard link: the write API accepts one between any two paths.
      newLogEntry({
        relativePath: 'r.git',
        operations: [operation.createHardLink('r.git/refs/heads/main', 'r.git/refs/heads/copy', true)],
      }),
      newLogEntry({
        relativePath: 'r.git',
        referenceTransactions: [{ changes: [referenceChange('refs/heads/main', OID2)] }],
      }),
      newLogEntry({
        relativePath: 'r.git',
        referenceTransactions: [{ changes: [referenceChange('refs/heads/main', OID)] }],
      }),
    ];
    const node = join(root, 'node', 'state');
    const restored = join(root, 'restored', 'state');
    const knownDirs = new Set<string>();
    for (const [i, entry] of entries.entries()) {
      await applyEntry(entry, { stateDir: node, entryDir, lsn: i + 1 });
      await applyEntry(entry, { stateDir: restored, entryDir, lsn: i + 1, durable: false, knownDirs });
      expect(await treeDigest(restored), `after LSN ${i + 1}`).toEqual(await treeDigest(node));
    }
    const refs = join(restored, 'repositories', 'r.git', 'refs', 'heads');
    expect(await readFile(join(refs, 'copy'), 'utf8')).toBe(`${OID}\n`);
    expect(await readFile(join(refs, 'main'), 'utf8')).toBe(`${OID}\n`);
    expect((await stat(join(refs, 'main'))).nlink).toBe(1);
    expect((await stat(join(refs, 'copy'))).nlink).toBe(1);
  });

  it('a file with one name is still rewritten in place on restore (same inode)', async () => {
    const entryDir = await stageEntry(1, []);
    const state = join(root, 'restored', 'state');
    const ref = (oid: string) =>
      newLogEntry({
        relativePath: 'r.git',
        referenceTransactions: [{ changes: [referenceChange('HEAD', oid)] }],
      });
    await applyEntry(ref(OID), { stateDir: state, entryDir, lsn: 1, durable: false });
    const head = join(state, 'repositories', 'r.git', 'HEAD');
    const before = await stat(head);
    await applyEntry(ref('c'.repeat(40)), { stateDir: state, entryDir, lsn: 2, durable: false });
    expect((await stat(head)).ino).toBe(before.ino);
    expect(await readFile(head, 'utf8')).toBe(`${'c'.repeat(40)}\n`);
  });

  it.each([
    ['../escape', 'link destination'],
    ['/etc/passwd', 'link destination'],
    ['a/../../b', 'link destination'],
  ])('refuses the unsafe path %s', async (path) => {
    const entryDir = await stageEntry(1, [Buffer.from('x')]);
    const entry = newLogEntry({ operations: [operation.createHardLink('1', path)] });
    await expect(applyEntry(entry, { stateDir: join(root, 'state'), entryDir, lsn: 7 })).rejects.toThrow(
      /entry 7: unsafe/,
    );
  });

  it('reports a missing staged file as corruption naming the LSN', async () => {
    const entryDir = await stageEntry(1, []);
    const entry = newLogEntry({ operations: [operation.createHardLink('1', 'repo.git/x')] });
    await expect(applyEntry(entry, { stateDir: join(root, 'state'), entryDir, lsn: 9 })).rejects.toThrow(
      /entry 9: link source 1 is missing/,
    );
  });

  it('kv-state encoding is deterministic and detects truncation', () => {
    const a = new Map([
      [Buffer.from('b').toString('base64'), Buffer.from('2')],
      [Buffer.from('a').toString('base64'), Buffer.from('1')],
    ]);
    const b = new Map([...a.entries()].reverse());
    expect(encodeKvState(a)).toEqual(encodeKvState(b));
    const bytes = encodeKvState(a);
    expect(decodeKvState(bytes)).toEqual(a);
    expect(() => decodeKvState(bytes.subarray(0, bytes.length - 1))).toThrow(/truncated/);
  });
});

describe('state snapshots', () => {
  it('pack → extract gives a byte-identical state, and a link copy is a consistent snapshot', async () => {
    const state = join(root, 'state');
    const entryDir = await stageEntry(1, [randomBytes(300_000), randomBytes(10)]);
    await applyEntry(
      newLogEntry({
        relativePath: 'r.git',
        operations: [
          operation.createDirectory('r.git', 0o755),
          operation.createHardLink('1', 'r.git/objects/big'),
          operation.createHardLink('2', 'r.git/objects/small'),
          operation.setKey('k', 'v'),
        ],
        referenceTransactions: [{ changes: [referenceChange('refs/heads/main', OID)] }],
      }),
      { stateDir: state, entryDir, lsn: 1 },
    );
    const copy = join(root, 'copy');
    await linkTree(state, copy);
    // Changing the live state afterwards (as apply does: by replacing files) leaves the copy alone.
    await applyEntry(
      newLogEntry({
        relativePath: 'r.git',
        referenceTransactions: [{ changes: [referenceChange('refs/heads/main', 'b'.repeat(40))] }],
      }),
      { stateDir: state, entryDir, lsn: 2 },
    );
    expect(await readFile(join(copy, 'repositories/r.git/refs/heads/main'), 'utf8')).toBe(`${OID}\n`);
    const before = await treeDigest(copy);
    const restored = join(root, 'restored');
    await extractState(packState(copy), restored);
    expect(await treeDigest(restored)).toEqual(before);

    // With the WAL tail shipped alongside (a follower catching up), entries land in .wal/ and nothing else changes.
    const wal = join(root, 'wal-tail');
    await mkdir(join(wal, '0000000000001'), { recursive: true });
    await writeFile(join(wal, '0000000000001', 'MANIFEST'), 'm');
    await writeFile(join(wal, '0000000000001', 'RAFT'), 'r');
    const withWal = join(root, 'with-wal');
    await extractState(packState(copy, { walDir: wal }), withWal, { allowWal: true });
    expect(await readFile(join(withWal, '.wal', '0000000000001', 'RAFT'), 'utf8')).toBe('r');
    await rm(join(withWal, '.wal'), { recursive: true });
    expect(await treeDigest(withWal)).toEqual(before);
  });

  it('packs a state with no kv-state (a partition that never set a key) as an empty kv-state', async () => {
    const state = join(root, 'no-kv');
    await mkdir(join(state, 'repositories', 'r.git'), { recursive: true });
    await writeFile(join(state, 'repositories', 'r.git', 'HEAD'), 'ref: refs/heads/main\n');
    const out = join(root, 'no-kv-out');
    await extractState(packState(state), out);
    expect(await readFile(join(out, 'kv-state'))).toEqual(Buffer.alloc(0));
    expect(await readFile(join(out, 'repositories', 'r.git', 'HEAD'), 'utf8')).toBe('ref: refs/heads/main\n');
  });

  async function hostile(build: (pack: tar.Pack) => void): Promise<Readable> {
    const pack = tar.pack();
    build(pack);
    pack.finalize();
    return pack as unknown as Readable;
  }

  it.each([
    ['a path escaping the target', (p: tar.Pack) => p.entry({ name: 'fs/../../evil', size: 1 }, 'x')],
    ['an absolute path', (p: tar.Pack) => p.entry({ name: '/tmp/evil', size: 1 }, 'x')],
    ['a symlink', (p: tar.Pack) => p.entry({ name: 'fs/link', type: 'symlink', linkname: '/etc' })],
    [
      'a hard link',
      (p: tar.Pack) => p.entry({ name: 'fs/hard', type: 'link', linkname: '../../etc/passwd' }),
    ],
    [
      'a device',
      (p: tar.Pack) => p.entry({ name: 'fs/dev', type: 'character-device', devmajor: 1, devminor: 3 }),
    ],
    ['a member outside kv-state and fs/', (p: tar.Pack) => p.entry({ name: 'etc/passwd', size: 1 }, 'x')],
    [
      'WAL entries where none are expected',
      (p: tar.Pack) => p.entry({ name: 'wal/0000000000001/MANIFEST', size: 1 }, 'x'),
    ],
  ])('refuses %s and writes nothing outside the target', async (_what, build) => {
    const target = join(root, 'target');
    await expect(extractState(await hostile(build), target)).rejects.toThrow(/snapshot archive: refusing/);
    expect(await readdir(root)).toEqual(['target']);
  });
});
