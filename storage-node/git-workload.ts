import { execFile, spawn } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, WalArchiverError } from '../contract/errors.js';
import { stagedFileName } from '../contract/wal/lsn.js';
import type { OperationRequest, TransactionRequest } from './api.js';

/**
 * What `storage-node load` writes: one workload per repository, which turns
 * "the next write" into a TransactionRequest and keeps the repository's
 * reference state in step with what the node acknowledged.
 *
 * A repository has at most one write in flight (the caller serialises), so
 * `next()` → `acknowledge()` / `fail()` alternate. A failed write may still
 * have been committed (a timeout after the commit); every write is therefore
 * built to be correct whether or not the one before it landed:
 *   - plain mode overwrites `refs/heads/main` and links a new blob each time;
 *   - git mode builds each commit on the last *acknowledged* commit and packs
 *     the objects between the two, so objects of a lost write are at worst
 *     unreferenced, never missing.
 */

export const MAIN_REF = 'refs/heads/main';
const LAYOUT_DIRECTORIES = ['', 'objects', 'objects/pack', 'objects/info', 'refs', 'refs/heads', 'refs/tags'];
export const BARE_CONFIG = '[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n';
/** Commit times start here (one second per write) so a seeded run gives the same object IDs. */
const EPOCH_SECONDS = 1_704_067_200;

/** Gitaly's hashed storage path of the `index`-th load repository of a partition. */
export function loadRepositoryPath(partition: string, index: number): string {
  const hex = createHash('sha256').update(`wal-archiver-load/${partition}/${index}`).digest('hex');
  return `@hashed/${hex.slice(0, 2)}/${hex.slice(2, 4)}/${hex}.git`;
}

/**
 * `size` incompressible bytes, the same for the same (seed, stream, n): AES-256-CTR
 * over zeros, keyed by the seed and the stream, with `n` as the counter block.
 */
export function pseudoRandomBytes(seed: number, stream: string, n: number, size: number): Buffer {
  const key = createHash('sha256').update(`seed:${seed}:${stream}`).digest();
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(Math.floor(n / 2 ** 32) >>> 0, 0);
  iv.writeUInt32BE(n >>> 0, 4);
  const cipher = createCipheriv('aes-256-ctr', key, iv);
  return Buffer.concat([cipher.update(Buffer.alloc(size)), cipher.final()]);
}

/** The reference state of a repository: name → object ID. */
export type RefState = Record<string, string>;

export interface PreparedWrite {
  request: TransactionRequest;
  /** The repository's full reference state once this write is applied. */
  refs: RefState;
  /** Payload bytes staged in the request (before base64). */
  bytes: number;
}

export interface RepositoryWorkload {
  readonly partition: string;
  readonly relativePath: string;
  next(): Promise<PreparedWrite>;
  /** The write from the last `next()` was committed. */
  acknowledge(): void;
  /** The write from the last `next()` failed (it may or may not have been committed). */
  fail(): void;
  close(): Promise<void>;
}

export interface WorkloadOptions {
  partition: string;
  /** Index of the repository within its partition, from 0. */
  index: number;
  size: number;
  seed: number;
}

function b64(data: Buffer | string): string {
  return (typeof data === 'string' ? Buffer.from(data) : data).toString('base64');
}

/**
 * Plain mode: each write stages one file of `size` bytes, links it to
 * `<repo>/blobs/<n>`, records `n` in the key-value state and points
 * `refs/heads/main` at a pseudo object ID.
 */
export class BlobWorkload implements RepositoryWorkload {
  readonly partition: string;
  readonly relativePath: string;
  private n = 0;
  private created = false;
  private pending = false;

  constructor(private readonly options: WorkloadOptions) {
    this.partition = options.partition;
    this.relativePath = loadRepositoryPath(options.partition, options.index);
  }

  async next(): Promise<PreparedWrite> {
    const n = ++this.n;
    const repo = this.relativePath;
    const payload = pseudoRandomBytes(this.options.seed, repo, n, this.options.size);
    const oid = createHash('sha1').update(`${this.options.seed}:${repo}:${n}`).digest('hex');
    const operations: OperationRequest[] = [];
    if (!this.created) {
      operations.push({ createDirectory: { path: repo } }, { createDirectory: { path: `${repo}/blobs` } });
    }
    operations.push(
      { createHardLink: { source: stagedFileName(1), destination: `${repo}/blobs/${n}` } },
      { setKey: { key: b64(`load/${repo}`), value: b64(JSON.stringify({ n, oid })) } },
    );
    this.pending = true;
    return {
      request: {
        relativePath: repo,
        files: [b64(payload)],
        operations,
        references: [{ name: MAIN_REF, newOid: oid }],
      },
      refs: { [MAIN_REF]: oid },
      bytes: payload.length,
    };
  }

  acknowledge(): void {
    if (this.pending) this.created = true;
    this.pending = false;
  }

  fail(): void {
    this.pending = false;
  }

  async close(): Promise<void> {}
}

export interface GitWorkloadOptions extends WorkloadOptions {
  /** Where the scratch repository is made (a fresh directory below it). */
  scratchRoot: string;
}

/** Runs git with no user or system configuration, so results do not depend on the machine. */
export async function git(
  cwd: string,
  args: string[],
  options: { input?: string | Buffer; env?: Record<string, string> } = {},
): Promise<string> {
  const env = {
    ...process.env,
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_TERMINAL_PROMPT: '0',
    LC_ALL: 'C',
    ...options.env,
  };
  const fullArgs = ['-c', 'pack.writeReverseIndex=false', '-c', 'core.fsync=none', ...args];
  if (options.input === undefined) {
    return new Promise((resolve, reject) => {
      execFile('git', fullArgs, { cwd, env, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
        if (err) reject(gitError(args, stderr || err.message, err));
        else resolve(stdout);
      });
    });
  }
  return new Promise((resolve, reject) => {
    const child = spawn('git', fullArgs, { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.once('error', (e) => reject(gitError(args, e.message, e)));
    child.once('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else reject(gitError(args, Buffer.concat(err).toString('utf8') || `exit code ${code}`));
    });
    child.stdin.on('error', () => {});
    child.stdin.end(options.input);
  });
}

function gitError(args: string[], detail: string, cause?: unknown): WalArchiverError {
  const line = detail.trim().split('\n')[0] ?? '';
  return new WalArchiverError(ErrorCodes.INTERNAL, `git ${args[0]} failed: ${line}`, {
    cause,
    retryable: false,
  });
}

/**
 * Git mode: real history. A scratch repository holds the objects; each write
 * commits a file of `size` bytes on top of the last acknowledged commit, packs
 * exactly the new objects and sends the pack and its index, linked into
 * `<repo>/objects/pack/`, with `refs/heads/main` moved to the new commit. The
 * first write (until one is acknowledged) also lays out the bare repository:
 * its directories, `config`, and HEAD as a symbolic reference.
 */
export class GitWorkload implements RepositoryWorkload {
  readonly partition: string;
  readonly relativePath: string;
  private scratch: string | undefined;
  private n = 0;
  /** The commit the node has acknowledged as `refs/heads/main`. */
  private acked: string | undefined;
  private pendingCommit: string | undefined;

  constructor(private readonly options: GitWorkloadOptions) {
    this.partition = options.partition;
    this.relativePath = loadRepositoryPath(options.partition, options.index);
  }

  /** The acknowledged tip, if any. */
  get head(): string | undefined {
    return this.acked;
  }

  private async init(): Promise<string> {
    if (this.scratch) return this.scratch;
    await mkdir(this.options.scratchRoot, { recursive: true });
    const dir = await mkdtemp(join(this.options.scratchRoot, 'scratch-'));
    await git(dir, ['init', '-q', '--initial-branch=main', '.']);
    this.scratch = dir;
    return dir;
  }

  async next(): Promise<PreparedWrite> {
    const dir = await this.init();
    const n = ++this.n;
    const repo = this.relativePath;
    const payload = pseudoRandomBytes(this.options.seed, repo, n, this.options.size);
    const blob = (await git(dir, ['hash-object', '-w', '--stdin'], { input: payload })).trim();
    const tree = (await git(dir, ['mktree'], { input: `100644 blob ${blob}\tpayload.bin\n` })).trim();
    const when = `${EPOCH_SECONDS + n} +0000`;
    const commitArgs = ['commit-tree', tree, '-m', `load write ${n} to partition ${this.partition}`];
    if (this.acked) commitArgs.push('-p', this.acked);
    const commit = (
      await git(dir, commitArgs, {
        env: {
          GIT_AUTHOR_NAME: 'wal-archiver load',
          GIT_AUTHOR_EMAIL: 'load@wal-archiver.invalid',
          GIT_AUTHOR_DATE: when,
          GIT_COMMITTER_NAME: 'wal-archiver load',
          GIT_COMMITTER_EMAIL: 'load@wal-archiver.invalid',
          GIT_COMMITTER_DATE: when,
        },
      })
    ).trim();

    const packDir = await mkdtemp(join(dir, '.git', 'load-pack-'));
    let pack: Buffer;
    let idx: Buffer;
    let packName: string;
    try {
      const revs = `${commit}\n${this.acked ? `^${this.acked}\n` : ''}`;
      const sha = (
        await git(dir, ['pack-objects', '-q', '--revs', join(packDir, 'pack')], { input: revs })
      ).trim();
      packName = `pack-${sha}`;
      [pack, idx] = await Promise.all([
        readFile(join(packDir, `${packName}.pack`)),
        readFile(join(packDir, `${packName}.idx`)),
      ]);
    } finally {
      await rm(packDir, { recursive: true, force: true });
    }

    const files: Buffer[] = [];
    const operations: OperationRequest[] = [];
    const references: NonNullable<TransactionRequest['references']> = [];
    const stage = (data: Buffer, destination: string) => {
      files.push(data);
      operations.push({ createHardLink: { source: stagedFileName(files.length), destination } });
    };
    if (!this.acked) {
      for (const d of LAYOUT_DIRECTORIES)
        operations.push({ createDirectory: { path: d ? `${repo}/${d}` : repo } });
      stage(Buffer.from(BARE_CONFIG), `${repo}/config`);
      references.push({ name: 'HEAD', newTarget: MAIN_REF });
    }
    stage(pack, `${repo}/objects/pack/${packName}.pack`);
    stage(idx, `${repo}/objects/pack/${packName}.idx`);
    references.push({ name: MAIN_REF, newOid: commit });
    this.pendingCommit = commit;
    return {
      request: { relativePath: repo, files: files.map((f) => b64(f)), operations, references },
      refs: { [MAIN_REF]: commit },
      bytes: files.reduce((sum, f) => sum + f.length, 0),
    };
  }

  acknowledge(): void {
    if (this.pendingCommit) this.acked = this.pendingCommit;
    this.pendingCommit = undefined;
  }

  fail(): void {
    this.pendingCommit = undefined;
  }

  async close(): Promise<void> {
    if (this.scratch) await rm(this.scratch, { recursive: true, force: true });
    this.scratch = undefined;
  }
}

export function createWorkload(
  options: WorkloadOptions & { git: boolean; scratchRoot: string },
): RepositoryWorkload {
  return options.git ? new GitWorkload(options) : new BlobWorkload(options);
}
