import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyEntry, readKvState } from '../../../contract/state/apply.js';
import { buildTransaction, type TransactionRequest } from '../../../storage-node/api.js';
import {
  BARE_CONFIG,
  BlobWorkload,
  GitWorkload,
  loadRepositoryPath,
  MAIN_REF,
  pseudoRandomBytes,
  type RefState,
} from '../../../storage-node/git-workload.js';

const run = promisify(execFile);
const gitEnv = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null', LC_ALL: 'C' };

async function gitIn(gitDir: string, ...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run('git', ['--git-dir', gitDir, ...args], { env: gitEnv });
}

let root: string;
let state: string;
let lsn: number;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'load-git-'));
  state = join(root, 'state');
  lsn = 0;
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** What a node does with a request: validate it into a MANIFEST and staged files, stage them, apply. */
async function commit(request: TransactionRequest): Promise<number> {
  const { manifest, files } = buildTransaction(JSON.parse(JSON.stringify(request)));
  lsn++;
  const entryDir = join(root, 'wal', String(lsn));
  await mkdir(entryDir, { recursive: true });
  for (const f of files) await writeFile(join(entryDir, f.name), f.data);
  await applyEntry(manifest, { stateDir: state, entryDir, lsn });
  return lsn;
}

async function looseRefs(repoDir: string): Promise<RefState> {
  const out: RefState = {};
  const { stdout } = await gitIn(repoDir, 'for-each-ref', '--format=%(refname) %(objectname)');
  for (const line of stdout.trim().split('\n').filter(Boolean)) {
    const [name, oid] = line.split(' ');
    out[name!] = oid!;
  }
  return out;
}

describe('relative paths', () => {
  it('are Gitaly hashed paths, distinct per partition and index, stable', () => {
    const p = loadRepositoryPath('1', 0);
    expect(p).toMatch(/^@hashed\/([0-9a-f]{2})\/([0-9a-f]{2})\/\1\2[0-9a-f]{60}\.git$/);
    expect(loadRepositoryPath('1', 0)).toBe(p);
    expect(new Set([p, loadRepositoryPath('1', 1), loadRepositoryPath('2', 0)]).size).toBe(3);
  });
});

describe('pseudoRandomBytes', () => {
  it('is deterministic per (seed, stream, n) and incompressible', async () => {
    const a = pseudoRandomBytes(7, 'r', 1, 65536);
    expect(a.equals(pseudoRandomBytes(7, 'r', 1, 65536))).toBe(true);
    expect(a.equals(pseudoRandomBytes(8, 'r', 1, 65536))).toBe(false);
    expect(a.equals(pseudoRandomBytes(7, 'r', 2, 65536))).toBe(false);
    expect(a.equals(pseudoRandomBytes(7, 's', 1, 65536))).toBe(false);
    const { gzipSync } = await import('node:zlib');
    expect(gzipSync(a).length).toBeGreaterThan(a.length * 0.99);
  });
});

describe('git workload', () => {
  it('builds transactions that, applied with applyEntry, give a repository passing git fsck --full', async () => {
    const workload = new GitWorkload({ partition: '3', index: 0, size: 2000, seed: 42, scratchRoot: root });
    const records: Array<{ lsn: number; refs: RefState }> = [];
    try {
      for (let i = 0; i < 6; i++) {
        const { request, refs, bytes } = await workload.next();
        expect(bytes).toBeGreaterThan(2000);
        expect(request.references).toContainEqual({ name: MAIN_REF, newOid: refs[MAIN_REF] });
        // Only the first write lays out the repository.
        expect(request.references!.some((r) => r.name === 'HEAD')).toBe(i === 0);
        records.push({ lsn: await commit(request), refs });
        workload.acknowledge();
      }
    } finally {
      await workload.close();
    }

    const repoDir = join(state, 'repositories', workload.relativePath);
    expect(await readFile(join(repoDir, 'HEAD'), 'utf8')).toBe('ref: refs/heads/main\n');
    expect(await readFile(join(repoDir, 'config'), 'utf8')).toBe(BARE_CONFIG);
    for (const d of ['objects/info', 'refs/tags'])
      expect((await stat(join(repoDir, d))).isDirectory()).toBe(true);

    const fsck = await gitIn(repoDir, 'fsck', '--full', '--strict', '--no-dangling');
    expect(fsck.stderr).not.toMatch(/error|missing|broken/i);

    const log = (await gitIn(repoDir, 'log', '--format=%H %P %s', 'HEAD')).stdout.trim().split('\n');
    expect(log).toHaveLength(6);
    expect(log[0]!.split(' ')[0]).toBe(records.at(-1)!.refs[MAIN_REF]);
    // The root commit has no parent; each other commit's parent is the one recorded before it.
    expect(log.at(-1)).toMatch(/^[0-9a-f]{40} {2}load write 1 to partition 3$/);
    const recorded = records.map((r) => r.refs[MAIN_REF]!).reverse();
    expect(log.map((l) => l.split(' ').slice(0, 2))).toEqual(
      recorded.map((oid, i) => [oid, recorded[i + 1] ?? '']),
    );

    expect(await looseRefs(repoDir)).toEqual(records.at(-1)!.refs);
    const packs = (await gitIn(repoDir, 'count-objects', '-v')).stdout;
    expect(packs).toMatch(/^packs: 6$/m);
    // The payload of the last commit is the seeded bytes.
    const blob = await run('git', ['--git-dir', repoDir, 'cat-file', 'blob', 'HEAD:payload.bin'], {
      env: gitEnv,
      encoding: 'buffer',
    });
    expect(Buffer.from(blob.stdout).equals(pseudoRandomBytes(42, workload.relativePath, 6, 2000))).toBe(true);
  });

  it('is deterministic for a seed', async () => {
    const heads: string[][] = [];
    for (const scratch of ['a', 'b']) {
      const w = new GitWorkload({
        partition: '1',
        index: 0,
        size: 100,
        seed: 9,
        scratchRoot: join(root, scratch),
      });
      const oids: string[] = [];
      for (let i = 0; i < 3; i++) {
        oids.push((await w.next()).refs[MAIN_REF]!);
        w.acknowledge();
      }
      await w.close();
      heads.push(oids);
    }
    expect(heads[0]).toEqual(heads[1]);
  });

  it('a failed write leaves no hole: the next commit builds on the last acknowledged one', async () => {
    const workload = new GitWorkload({ partition: '1', index: 2, size: 512, seed: 1, scratchRoot: root });
    const repoDir = join(state, 'repositories', workload.relativePath);
    try {
      // The first write is lost entirely: the layout must come again with the next one.
      await workload.next();
      workload.fail();
      let w = await workload.next();
      expect(w.request.references!.some((r) => r.name === 'HEAD')).toBe(true);
      await commit(w.request);
      workload.acknowledge();
      const first = w.refs[MAIN_REF]!;

      // Lost before reaching the node.
      await workload.next();
      workload.fail();
      // Committed, but the client saw a failure (a timeout after the commit).
      w = await workload.next();
      await commit(w.request);
      workload.fail();

      w = await workload.next();
      expect(w.request.references!.some((r) => r.name === 'HEAD')).toBe(false);
      await commit(w.request);
      workload.acknowledge();

      await gitIn(repoDir, 'fsck', '--full', '--strict');
      const log = (await gitIn(repoDir, 'log', '--format=%H', MAIN_REF)).stdout.trim().split('\n');
      expect(log).toEqual([w.refs[MAIN_REF], first]);
      expect(workload.head).toBe(w.refs[MAIN_REF]);
    } finally {
      await workload.close();
    }
  });

  it('two repositories of one partition are independent', async () => {
    const a = new GitWorkload({ partition: '1', index: 0, size: 64, seed: 1, scratchRoot: root });
    const b = new GitWorkload({ partition: '1', index: 1, size: 64, seed: 1, scratchRoot: root });
    for (let i = 0; i < 3; i++) {
      for (const w of [a, b]) {
        await commit((await w.next()).request);
        w.acknowledge();
      }
    }
    for (const w of [a, b]) {
      const dir = join(state, 'repositories', w.relativePath);
      await gitIn(dir, 'fsck', '--full');
      expect((await gitIn(dir, 'rev-list', '--count', MAIN_REF)).stdout.trim()).toBe('3');
      await w.close();
    }
  });
});

describe('blob workload', () => {
  it('builds requests that validate and apply: a blob of S bytes, a key, refs/heads/main', async () => {
    const workload = new BlobWorkload({ partition: '2', index: 0, size: 3000, seed: 5 });
    const repo = workload.relativePath;
    let last: RefState = {};
    for (let n = 1; n <= 3; n++) {
      const { request, refs, bytes } = await workload.next();
      expect(bytes).toBe(3000);
      const { manifest, files } = buildTransaction(JSON.parse(JSON.stringify(request)));
      expect(manifest.relativePath).toBe(repo);
      expect(files).toHaveLength(1);
      expect(files[0]!.data.length).toBe(3000);
      // Directories are created until the first write is acknowledged.
      expect(manifest.operations.some((o) => o.kind === 'createDirectory')).toBe(n === 1);
      await commit(request);
      workload.acknowledge();
      last = refs;
    }
    const repoDir = join(state, 'repositories', repo);
    expect((await readFile(join(repoDir, 'blobs', '3'))).equals(pseudoRandomBytes(5, repo, 3, 3000))).toBe(
      true,
    );
    expect((await readFile(join(repoDir, MAIN_REF), 'utf8')).trim()).toBe(last[MAIN_REF]);
    expect(last[MAIN_REF]).toMatch(/^[0-9a-f]{40}$/);
    const kv = await readKvState(state);
    const value = kv.get(Buffer.from(`load/${repo}`).toString('base64'));
    expect(JSON.parse(value!.toString())).toEqual({ n: 3, oid: last[MAIN_REF] });
  });
});
