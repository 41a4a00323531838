import { createHash, randomBytes } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as dfs from '../../contract/fs/durable-fs.js';
import type { DurableFileHandle } from '../../contract/fs/durable-fs.js';
import { hostname } from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, WalArchiverError, throwIfAborted } from '../../contract/errors.js';
import { fsyncDir, pathKind } from '../../contract/fs/fs-atomic.js';
import { sleep } from '../../contract/retry.js';
import { maskUrl, parseServiceUrl } from '../../contract/url.js';
import {
  compareKeys,
  isRetained,
  validateCreateOptions,
  validateKey,
  validatePrefix,
  validateRange,
} from './keys.js';
import { changedError, goneError, lockedError, notFoundError, storeError } from './store-errors.js';
import type { Body, ObjectInfo, ObjectStore, Retention } from './object-store.js';
import type { CallOptions, CreateOptions, GetOptions, ListOptions, ReplaceOptions } from './object-store.js';

/** How long a replace or delete waits for another writer's lock on the same key. */
export const DEFAULT_LOCK_TIMEOUT_MS = 30_000;
/** A lock older than this is stale even if its owner looks alive (locks are held for milliseconds). */
export const DEFAULT_LOCK_STALE_MS = 60_000;

export interface FolderStoreOptions {
  lockTimeoutMs?: number;
  lockStaleMs?: number;
  /** The clock retention is checked against. */
  now?: () => Date;
  /** For tests: runs inside a replace after its precondition was checked, just before its commit point. */
  beforeCommit?: (key: string) => Promise<void>;
}

/** Names inside the root that are the store's own, never keys (keys have no segment starting with "."). */
const TMP_DIR = '.tmp';
const META_DIR = '.meta';
const LOCK_DIR = '.locks';
const VERSIONS_DIR = '.versions';
const VERSION_NAME = /^[0-9]+$/;
const KEY_CONFLICT = 'key conflicts with another key (a folder store cannot hold both "a" and "a/b")';
/** A file in `.tmp/` untouched for this long was left by a crashed writer. */
const TMP_STALE_MS = 24 * 3_600_000;

interface MetaFile {
  version: 1;
  key: string;
  size: number;
  sha256: string;
  etag: string;
  createdAt: string;
  metadata: Record<string, string>;
  contentType?: string;
  retention?: { mode: Retention['mode']; retainUntil: string };
}

interface Current {
  stat: BigIntStats;
  meta: MetaFile;
  metaPath: string;
  /** The file holding the current bytes: the version file, or `<root>/K` for an object never replaced. */
  file: string;
  /** Its version: 0 for `<root>/K` alone, n for `.versions/K.v/<n>`. */
  gen: number;
}

interface Staged {
  tmpPath: string;
  metaPath: string;
  meta: MetaFile;
}

interface LockContent {
  pid: number;
  host: string;
  nonce: string;
  at: number;
}

/** Nonces of the locks this process holds, to tell its own locks from a crashed predecessor's with the same pid. */
const heldLocks = new Set<string>();

/**
 * The errno of a file system error, also when fs-atomic wrapped it
 * (`fsyncDir`): the store classifies by errno, whoever raised it.
 */
function errno(err: unknown): string | undefined {
  const raw = unwrapFsError(err);
  return typeof raw === 'object' && raw !== null && 'code' in raw
    ? String((raw as { code: unknown }).code)
    : undefined;
}

/** The Node error inside a WalArchiverError that fs-atomic made of it (it records the errno), else `err`. */
function unwrapFsError(err: unknown): unknown {
  return err instanceof WalArchiverError && typeof err.details?.errno === 'string' ? err.cause : err;
}

function oneLine(text: string): string {
  return text.split('\n')[0] ?? '';
}

function randomName(): string {
  return randomBytes(12).toString('hex');
}

async function ignoreMissing(work: Promise<unknown>): Promise<void> {
  try {
    await work;
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
}

async function writeAll(fh: DurableFileHandle, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done);
    done += bytesWritten;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errno(err) === 'EPERM';
  }
}

/**
 * A `file:///path` object store. The object with key K is the plain file
 * `<root>/K`, so standard tools can read the archive. Its metadata lives in
 * `<root>/.meta/K.<inode>.json`, written (and fsynced) before the data file is
 * hard-linked into place: the link is the commit point, so data and metadata
 * appear together, and a create racing another loses with EEXIST.
 *
 * A replace commits by hard-linking its staged file as the object's next
 * version, `<root>/.versions/K.v/<n+1>`, where n is the version whose ETag it
 * checked: the link fails with EEXIST when any other replace from version n
 * committed first, so two replaces from the same ETag can never both win,
 * whatever the lock, a stall or a clock did. Reads resolve the newest version
 * (`<root>/K` alone is version 0, the layout of objects never replaced); the
 * replace then renames the new version over `<root>/K` and removes the
 * versions it superseded. The per-key lock only keeps writers from colliding.
 */
export class FolderStore implements ObjectStore {
  readonly url: string;
  readonly root: string;
  private readonly lockTimeoutMs: number;
  private readonly lockStaleMs: number;
  private readonly now: () => Date;
  private readonly beforeCommit: ((key: string) => Promise<void>) | undefined;
  private rootReady = false;
  private tmpSwept = false;
  private closed = false;

  private constructor(url: string, root: string, options: FolderStoreOptions) {
    this.url = url;
    this.root = root;
    this.lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
    this.lockStaleMs = options.lockStaleMs ?? DEFAULT_LOCK_STALE_MS;
    this.now = options.now ?? (() => new Date());
    this.beforeCommit = options.beforeCommit;
  }

  /**
   * Opens a folder store. The folder is created on the first write when its
   * parent exists; when neither exists, the URL is most likely wrong and this
   * fails with BUCKET_NOT_FOUND.
   */
  static async open(rawUrl: string, options: FolderStoreOptions = {}): Promise<FolderStore> {
    const parsed = parseServiceUrl(rawUrl, 'object store');
    const url = maskUrl(rawUrl);
    if (parsed.protocol !== 'file:') {
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `object store ${url}: not a file: URL`, {
        retryable: false,
      });
    }
    if (parsed.host !== '' && parsed.host !== 'localhost') {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `object store ${url}: file URLs name a local folder, not host "${parsed.host}" (use file:///path)`,
        { retryable: false },
      );
    }
    if (parsed.search !== '' || parsed.hash !== '') {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `object store ${url}: file URLs take no parameters`,
        {
          retryable: false,
        },
      );
    }
    let root: string;
    try {
      root = path.resolve(fileURLToPath(parsed));
    } catch (cause) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `object store ${url}: ${oneLine(String(cause))}`,
        {
          cause,
          retryable: false,
        },
      );
    }
    const store = new FolderStore(url, root, options);
    const kind = await pathKind(root).catch((err: unknown) => {
      throw store.fail('open', undefined, err);
    });
    if (kind === 'other') {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `object store ${url}: ${root} is not a folder`,
        {
          retryable: false,
        },
      );
    }
    if (kind === 'directory') store.rootReady = true;
    else await store.checkParent();
    return store;
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ObjectInfo> {
    this.checkOpen();
    validatePrefix(prefix, this.url);
    const startAfter = options.startAfter;
    const slash = prefix.lastIndexOf('/');
    const dirKey = slash >= 0 ? prefix.slice(0, slash) : '';
    const namePrefix = prefix.slice(slash + 1);
    yield* this.walk(dirKey, namePrefix, startAfter, options.signal);
  }

  private async *walk(
    dirKey: string,
    namePrefix: string,
    startAfter: string | undefined,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<ObjectInfo> {
    throwIfAborted(signal);
    const dir = dirKey === '' ? this.root : this.dataPath(dirKey);
    let names: { name: string; dir: boolean; sortKey: Buffer }[];
    try {
      const entries = await fs.readdir(dir, { withFileTypes: true });
      names = [];
      for (const entry of entries) {
        if (entry.name.startsWith('.') || !entry.name.startsWith(namePrefix)) continue;
        let isDir = entry.isDirectory();
        if (!isDir && !entry.isFile()) {
          const st = await fs.stat(path.join(dir, entry.name)).catch(() => undefined);
          if (st === undefined) continue;
          isDir = st.isDirectory();
          if (!isDir && !st.isFile()) continue;
        }
        // A folder sorts as its name plus "/", which is where its keys sort.
        names.push({
          name: entry.name,
          dir: isDir,
          sortKey: Buffer.from(isDir ? `${entry.name}/` : entry.name),
        });
      }
    } catch (err) {
      if (['ENOENT', 'ENOTDIR'].includes(errno(err) ?? '')) return;
      throw this.fail('list', dirKey, err);
    }
    names.sort((a, b) => Buffer.compare(a.sortKey, b.sortKey));
    for (const entry of names) {
      const key = dirKey === '' ? entry.name : `${dirKey}/${entry.name}`;
      if (entry.dir) {
        const sub = `${key}/`;
        if (startAfter !== undefined && !startAfter.startsWith(sub) && compareKeys(sub, startAfter) < 0)
          continue;
        yield* this.walk(key, '', startAfter, signal);
        continue;
      }
      if (startAfter !== undefined && compareKeys(key, startAfter) <= 0) continue;
      const current = await this.lookup(key, 'list');
      if (current !== undefined) yield this.info(key, current);
    }
  }

  async head(key: string, options: CallOptions = {}): Promise<ObjectInfo | undefined> {
    this.checkOpen();
    validateKey(key, this.url);
    throwIfAborted(options.signal);
    const current = await this.lookup(key, 'head');
    return current === undefined ? undefined : this.info(key, current);
  }

  async get(key: string, options: GetOptions = {}): Promise<Readable> {
    this.checkOpen();
    validateKey(key, this.url);
    validateRange(options.offset, options.length, this.url);
    throwIfAborted(options.signal);
    let fh: FileHandle | undefined;
    for (let attempt = 0; fh === undefined; attempt++) {
      const current = await this.lookup(key, 'get');
      if (current === undefined) throw notFoundError(this.url, 'get', key);
      try {
        fh = await fs.open(current.file, 'r');
      } catch (err) {
        // A newer replace may have removed the version just resolved: resolve again.
        if (errno(err) === 'ENOENT' && attempt < 5) continue;
        if (['ENOENT', 'ENOTDIR', 'EISDIR'].includes(errno(err) ?? ''))
          throw notFoundError(this.url, 'get', key);
        throw this.fail('get', key, err);
      }
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw notFoundError(this.url, 'get', key);
      const start = options.offset ?? 0;
      const stop = options.length === undefined ? st.size : Math.min(st.size, start + options.length);
      if (stop <= start) {
        await fh.close();
        return Readable.from([]);
      }
      return fh.createReadStream({ start, end: stop - 1, signal: options.signal });
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err instanceof WalArchiverError ? err : this.fail('get', key, err);
    }
  }

  /** The checks a create or replace starts with, then its body staged under tmp/. */
  private async checkAndStage(key: string, body: Body, options: CreateOptions): Promise<Staged> {
    this.checkOpen();
    validateKey(key, this.url);
    validateCreateOptions(options, this.url);
    throwIfAborted(options.signal);
    await this.ensureRoot();
    return this.stage(key, body, options);
  }

  async create(key: string, body: Body, options: CreateOptions = {}): Promise<ObjectInfo> {
    const staged = await this.checkAndStage(key, body, options);
    try {
      // A key whose <root>/K is gone while versions remain is an unfinished delete: it still exists.
      if ((await this.newestVersion(key, 'create')) !== undefined)
        throw storeError(this.url, ErrorCodes.ALREADY_EXISTS, 'create', key, 'object already exists');
      await this.linkInto(key, staged, 'create');
    } catch (err) {
      await this.discard(staged);
      throw err;
    }
    await ignoreMissing(dfs.unlink(staged.tmpPath));
    return this.stagedInfo(key, staged);
  }

  async replace(key: string, body: Buffer, options: ReplaceOptions): Promise<ObjectInfo> {
    const staged = await this.checkAndStage(key, body, options);
    let committed = false;
    try {
      const release = await this.lock(key, options.signal);
      try {
        const current = await this.lookup(key, 'replace');
        if (options.ifMatch === undefined) {
          if (current !== undefined)
            throw storeError(
              this.url,
              ErrorCodes.PRECONDITION_FAILED,
              'replace',
              key,
              'object exists already',
            );
          await this.beforeCommit?.(key);
          await this.linkInto(key, staged, 'replace');
          committed = true;
        } else {
          if (current === undefined) {
            throw goneError(this.url, 'replace', key);
          }
          if (isRetained(this.retentionOf(current.meta), this.now()))
            throw lockedError(this.url, 'replace', key, current.meta.retention);
          if (current.meta.etag !== options.ifMatch) {
            throw changedError(this.url, 'replace', key);
          }
          await this.beforeCommit?.(key);
          await this.commitVersion(key, current, staged);
          committed = true;
          await this.publish(key);
          await this.prune(key, current.gen + 1, current);
        }
      } finally {
        await release();
      }
    } catch (err) {
      if (!committed) await this.discard(staged);
      throw err instanceof WalArchiverError ? err : this.fail('replace', key, err);
    }
    await ignoreMissing(dfs.unlink(staged.tmpPath));
    return this.stagedInfo(key, staged);
  }

  async delete(key: string, options: CallOptions = {}): Promise<void> {
    this.checkOpen();
    validateKey(key, this.url);
    throwIfAborted(options.signal);
    if ((await this.lookup(key, 'delete')) === undefined) return;
    const release = await this.lock(key, options.signal);
    try {
      const current = await this.lookup(key, 'delete');
      if (current === undefined) return;
      if (isRetained(this.retentionOf(current.meta), this.now()))
        throw lockedError(this.url, 'delete', key, current.meta.retention);
      // <root>/K first: until the versions go too, the object still reads as its newest version.
      const target = this.dataPath(key);
      await ignoreMissing(dfs.unlink(target));
      await fsyncDir(path.dirname(target));
      const versions = this.versionsPath(key);
      const grave = path.join(this.root, TMP_DIR, `${randomName()}.deleted`);
      await this.ensureDir(path.dirname(grave), key);
      let moved = true;
      try {
        await dfs.rename(versions, grave);
      } catch (err) {
        if (!['ENOENT', 'ENOTDIR'].includes(errno(err) ?? '')) throw err;
        moved = false;
      }
      if (moved) {
        await fsyncDir(path.dirname(versions));
        for (const name of await fs.readdir(grave).catch(() => [] as string[])) {
          if (!VERSION_NAME.test(name)) continue;
          const st = await fs.stat(path.join(grave, name), { bigint: true }).catch(() => undefined);
          if (st !== undefined) await ignoreMissing(dfs.unlink(this.metaPath(key, st)));
        }
        await dfs.rm(grave, { recursive: true, force: true });
      }
      await ignoreMissing(dfs.unlink(current.metaPath));
    } catch (err) {
      throw err instanceof WalArchiverError ? err : this.fail('delete', key, err);
    } finally {
      await release();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  // ---- staging and committing ----

  /** Writes the body to a temporary file and the metadata beside it, both fsynced. */
  private async stage(key: string, body: Body, options: CreateOptions): Promise<Staged> {
    const tmpDir = path.join(this.root, TMP_DIR);
    await this.ensureDir(tmpDir, key);
    const tmpPath = path.join(tmpDir, `${randomName()}.data`);
    const metaTmp = path.join(tmpDir, `${randomName()}.meta`);
    let metaPath: string | undefined;
    try {
      const hash = createHash('sha256');
      let size = 0;
      const fh = await dfs.open(tmpPath, 'wx', 0o644);
      try {
        if (body instanceof Uint8Array) {
          hash.update(body);
          await writeAll(fh, body);
          size = body.length;
        } else {
          for await (const chunk of body) {
            throwIfAborted(options.signal);
            const buf: Buffer = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
            hash.update(buf);
            await writeAll(fh, buf);
            size += buf.length;
          }
        }
        throwIfAborted(options.signal);
        if (options.size !== undefined && options.size !== size) {
          throw storeError(
            this.url,
            ErrorCodes.INVALID_ARGUMENT,
            'create',
            key,
            `the body has ${size} bytes, not the ${options.size} announced`,
          );
        }
        // Read-only under retention, made durable with the data by the fsync below.
        if (options.retention !== undefined) await dfs.chmod(tmpPath, 0o444);
        await fh.sync();
      } finally {
        await fh.close();
      }
      const st = await fs.stat(tmpPath, { bigint: true });
      const sha256 = hash.digest('hex');
      const meta: MetaFile = {
        version: 1,
        key,
        size,
        sha256,
        etag: sha256.slice(0, 32),
        createdAt: this.now().toISOString(),
        metadata: { ...(options.metadata ?? {}) },
        ...(options.contentType !== undefined ? { contentType: options.contentType } : {}),
        ...(options.retention !== undefined
          ? {
              retention: {
                mode: options.retention.mode,
                retainUntil: options.retention.retainUntil.toISOString(),
              },
            }
          : {}),
      };
      const mfh = await dfs.open(metaTmp, 'wx', 0o644);
      try {
        await writeAll(mfh, Buffer.from(JSON.stringify(meta)));
        await mfh.sync();
      } finally {
        await mfh.close();
      }
      metaPath = this.metaPath(key, st);
      await this.ensureDir(path.dirname(metaPath), key);
      await dfs.rename(metaTmp, metaPath);
      await fsyncDir(path.dirname(metaPath));
      return { tmpPath, metaPath, meta };
    } catch (err) {
      await ignoreMissing(dfs.unlink(tmpPath)).catch(() => undefined);
      await ignoreMissing(dfs.unlink(metaTmp)).catch(() => undefined);
      if (metaPath !== undefined) await ignoreMissing(dfs.unlink(metaPath)).catch(() => undefined);
      if (err instanceof WalArchiverError) throw err;
      throw this.fail(options.signal?.aborted ? 'create (aborted)' : 'write', key, err);
    }
  }

  /** The commit point of a create: hard-link the staged file to its key, failing if the key exists. */
  private async linkInto(key: string, staged: Staged, op: 'create' | 'replace'): Promise<void> {
    const target = this.dataPath(key);
    await this.ensureDir(path.dirname(target), key);
    try {
      await dfs.link(staged.tmpPath, target);
    } catch (err) {
      const code = errno(err);
      if (code === 'EEXIST') {
        const st = await fs.lstat(target).catch(() => undefined);
        if (st?.isDirectory()) throw this.conflict(op, key);
        if (op === 'create')
          throw storeError(this.url, ErrorCodes.ALREADY_EXISTS, op, key, 'object already exists');
        throw storeError(this.url, ErrorCodes.PRECONDITION_FAILED, op, key, 'object exists already');
      }
      if (code === 'ENOTDIR') throw this.conflict(op, key);
      throw this.fail(op, key, err);
    }
    await fsyncDir(path.dirname(target));
  }

  /**
   * The commit point of a replace: the staged file becomes version `gen` of
   * the key by a hard link that fails when that version exists, i.e. when
   * another replace from the same starting version committed first.
   */
  private async commitVersion(key: string, current: Current, staged: Staged): Promise<void> {
    const dir = this.versionsPath(key);
    const gen = current.gen + 1;
    // Only the first replace creates the folder: a replace from version n > 0
    // whose folder is gone was overtaken by a delete. The first checks that
    // the <root>/K it read is still there (not deleted, not deleted and
    // created anew) right before its link.
    if (gen === 1) {
      const now = await fs.stat(current.file, { bigint: true }).catch(() => undefined);
      if (now?.ino !== current.stat.ino) {
        throw changedError(this.url, 'replace', key);
      }
      await this.ensureDir(dir, key);
    }
    try {
      await dfs.link(staged.tmpPath, path.join(dir, String(gen)));
    } catch (err) {
      if (['EEXIST', 'ENOENT', 'ENOTDIR'].includes(errno(err) ?? '')) {
        throw changedError(this.url, 'replace', key);
      }
      throw err;
    }
    await fsyncDir(dir);
  }

  /** Makes `<root>/K` the newest version (a new name linked and renamed over it), until no newer one appears. */
  private async publish(key: string): Promise<void> {
    const target = this.dataPath(key);
    for (let attempt = 0; attempt < 5; attempt++) {
      const newest = await this.newestVersion(key, 'replace');
      if (newest === undefined) return;
      const file = path.join(this.versionsPath(key), String(newest));
      const tmp = path.join(this.root, TMP_DIR, `${randomName()}.publish`);
      try {
        await dfs.link(file, tmp);
      } catch (err) {
        if (errno(err) === 'ENOENT') continue; // superseded and pruned meanwhile
        throw err;
      }
      try {
        await this.ensureDir(path.dirname(target), key);
        await dfs.rename(tmp, target);
      } finally {
        await ignoreMissing(dfs.unlink(tmp)).catch(() => undefined);
      }
      await fsyncDir(path.dirname(target));
      if ((await this.newestVersion(key, 'replace')) === newest) return;
    }
  }

  /**
   * Removes the versions older than `gen`, which a durable newer version
   * supersedes, and the metadata of files no name refers to any more.
   */
  private async prune(key: string, gen: number, previous: Current): Promise<void> {
    const dir = this.versionsPath(key);
    const visible = await fs.stat(this.dataPath(key), { bigint: true }).catch(() => undefined);
    const newest = await fs.stat(path.join(dir, String(gen)), { bigint: true }).catch(() => undefined);
    const inUse = (ino: bigint) => ino === visible?.ino || ino === newest?.ino;
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      if (!VERSION_NAME.test(name) || Number(name) >= gen) continue;
      const file = path.join(dir, name);
      const st = await fs.stat(file, { bigint: true }).catch(() => undefined);
      await ignoreMissing(dfs.unlink(file));
      if (st !== undefined && !inUse(st.ino)) await ignoreMissing(dfs.unlink(this.metaPath(key, st)));
    }
    await fsyncDir(dir);
    if (!inUse(previous.stat.ino)) await ignoreMissing(dfs.unlink(previous.metaPath));
  }

  private async discard(staged: Staged): Promise<void> {
    await ignoreMissing(dfs.unlink(staged.tmpPath)).catch(() => undefined);
    await ignoreMissing(dfs.unlink(staged.metaPath)).catch(() => undefined);
  }

  // ---- reading ----

  /** The current object of a key with its metadata, or undefined: its newest version, else `<root>/K`. */
  private async lookup(key: string, op: string): Promise<Current | undefined> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const gen = await this.newestVersion(key, op);
      const target = gen === undefined ? this.dataPath(key) : path.join(this.versionsPath(key), String(gen));
      let st: BigIntStats;
      try {
        st = await fs.stat(target, { bigint: true });
      } catch (err) {
        if (['ENOENT', 'ENOTDIR'].includes(errno(err) ?? '')) {
          if (gen === undefined) return undefined;
          continue; // superseded by a newer version and pruned meanwhile
        }
        throw this.fail(op, key, err);
      }
      if (!st.isFile()) return undefined;
      const found = await this.readMeta(key, st, op, target);
      if (found !== undefined) return { stat: st, ...found, file: target, gen: gen ?? 0 };
      // A replace may have swapped the file and removed the old metadata between the stat and the read.
      const again = await fs.stat(target, { bigint: true }).catch(() => undefined);
      if (again === undefined) continue;
      if (again.ino === st.ino && (await this.newestVersion(key, op)) === gen) {
        throw storeError(
          this.url,
          ErrorCodes.CORRUPT,
          op,
          key,
          'object has no metadata file in .meta/',
          false,
        );
      }
    }
    throw storeError(this.url, ErrorCodes.UNAVAILABLE, op, key, 'object keeps changing while being read');
  }

  /** The number of the key's newest version in `.versions/K.v/`, or undefined when it has none. */
  private async newestVersion(key: string, op: string): Promise<number | undefined> {
    let names: string[];
    try {
      names = await fs.readdir(this.versionsPath(key));
    } catch (err) {
      if (['ENOENT', 'ENOTDIR'].includes(errno(err) ?? '')) return undefined;
      throw this.fail(op, key, err);
    }
    let newest: number | undefined;
    for (const name of names) {
      if (!VERSION_NAME.test(name)) continue;
      const n = Number(name);
      if (newest === undefined || n > newest) newest = n;
    }
    return newest;
  }

  private async readMeta(
    key: string,
    st: BigIntStats,
    op: string,
    file: string,
  ): Promise<{ meta: MetaFile; metaPath: string } | undefined> {
    const exact = this.metaPath(key, st);
    const meta = await this.parseMeta(exact, key, op);
    if (meta !== undefined) return { meta, metaPath: exact };
    // The folder may have been copied (cp, rsync, tar), which changes inode
    // numbers: fall back to the metadata files of the key, matched by size and,
    // if several match, by content hash.
    const dir = path.dirname(exact);
    const base = path.basename(this.dataPath(key));
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch {
      return undefined;
    }
    const candidates: { meta: MetaFile; metaPath: string }[] = [];
    for (const name of names) {
      if (!name.startsWith(`${base}.`) || !/^\.\d+(-\d+)?\.json$/.test(name.slice(base.length))) continue;
      const metaPath = path.join(dir, name);
      const candidate = await this.parseMeta(metaPath, key, op);
      if (candidate !== undefined && candidate.size === Number(st.size))
        candidates.push({ meta: candidate, metaPath });
    }
    if (candidates.length <= 1) return candidates[0];
    const sha256 = await this.hashFile(key, op, file);
    return candidates.find((c) => c.meta.sha256 === sha256);
  }

  private async parseMeta(metaPath: string, key: string, op: string): Promise<MetaFile | undefined> {
    let text: string;
    try {
      text = await fs.readFile(metaPath, 'utf8');
    } catch (err) {
      if (errno(err) === 'ENOENT') return undefined;
      throw this.fail(op, key, err);
    }
    try {
      const meta = JSON.parse(text) as MetaFile;
      if (meta.version !== 1 || typeof meta.etag !== 'string' || typeof meta.size !== 'number')
        throw new Error('bad shape');
      return meta;
    } catch {
      throw storeError(
        this.url,
        ErrorCodes.CORRUPT,
        op,
        key,
        `metadata file ${metaPath} is not valid`,
        false,
      );
    }
  }

  private async hashFile(key: string, op: string, file: string): Promise<string> {
    const hash = createHash('sha256');
    try {
      const fh = await fs.open(file, 'r');
      for await (const chunk of fh.createReadStream()) hash.update(chunk as Buffer);
    } catch (err) {
      throw this.fail(op, key, err);
    }
    return hash.digest('hex');
  }

  private retentionOf(meta: MetaFile): Retention | undefined {
    return meta.retention === undefined
      ? undefined
      : { mode: meta.retention.mode, retainUntil: new Date(meta.retention.retainUntil) };
  }

  private info(key: string, current: Current): ObjectInfo {
    const retention = this.retentionOf(current.meta);
    return {
      key,
      size: Number(current.stat.size),
      etag: current.meta.etag,
      lastModified: new Date(current.meta.createdAt),
      metadata: { ...current.meta.metadata },
      ...(retention !== undefined ? { retention } : {}),
    };
  }

  private stagedInfo(key: string, staged: Staged): ObjectInfo {
    const retention = this.retentionOf(staged.meta);
    return {
      key,
      size: staged.meta.size,
      etag: staged.meta.etag,
      lastModified: new Date(staged.meta.createdAt),
      metadata: { ...staged.meta.metadata },
      ...(retention !== undefined ? { retention } : {}),
    };
  }

  // ---- locking ----

  /**
   * A per-key lock shared by every process using the folder: a lock file
   * linked into place (atomic, content included) naming its owner. A lock whose
   * owner died (same host, pid gone) or that is older than lockStaleMs is
   * broken by renaming it away and checking that what was renamed is the stale
   * lock that was seen.
   */
  private async lock(key: string, signal?: AbortSignal): Promise<() => Promise<void>> {
    const lockPath = path.join(this.root, LOCK_DIR, ...key.split('/')) + '.lock';
    await this.ensureDir(path.dirname(lockPath), key);
    const content: LockContent = { pid: process.pid, host: hostname(), nonce: randomName(), at: Date.now() };
    const mine = `${lockPath}.${content.nonce}`;
    await dfs.writeFile(mine, JSON.stringify(content), { flag: 'wx' });
    const deadline = Date.now() + this.lockTimeoutMs;
    try {
      for (let attempt = 0; ; attempt++) {
        throwIfAborted(signal);
        try {
          await dfs.link(mine, lockPath);
          heldLocks.add(content.nonce);
          break;
        } catch (err) {
          if (errno(err) !== 'EEXIST') throw this.fail('lock', key, err);
        }
        const holder = await this.readLock(lockPath);
        if (holder !== undefined && this.isStale(holder)) {
          await this.breakLock(lockPath, holder.nonce);
          continue;
        }
        if (Date.now() > deadline) {
          throw storeError(this.url, ErrorCodes.UNAVAILABLE, 'lock', key, `another writer holds ${lockPath}`);
        }
        await sleep(Math.min(50, 1 + attempt * 2) + Math.random() * 5);
      }
    } finally {
      await ignoreMissing(dfs.unlink(mine)).catch(() => undefined);
    }
    return async () => {
      heldLocks.delete(content.nonce);
      const holder = await this.readLock(lockPath).catch(() => undefined);
      if (holder?.nonce === content.nonce) await ignoreMissing(dfs.unlink(lockPath));
    };
  }

  private async readLock(lockPath: string): Promise<LockContent | undefined> {
    try {
      return JSON.parse(await fs.readFile(lockPath, 'utf8')) as LockContent;
    } catch {
      return undefined;
    }
  }

  private isStale(holder: LockContent): boolean {
    if (Date.now() - holder.at > this.lockStaleMs) return true;
    if (holder.host !== hostname()) return false;
    if (holder.pid === process.pid) return !heldLocks.has(holder.nonce);
    return !pidAlive(holder.pid);
  }

  private async breakLock(lockPath: string, staleNonce: string): Promise<void> {
    const grave = `${lockPath}.broken-${randomName()}`;
    try {
      await dfs.rename(lockPath, grave);
    } catch (err) {
      if (errno(err) === 'ENOENT') return;
      throw err;
    }
    const taken = await this.readLock(grave);
    if (taken?.nonce !== staleNonce) {
      // Another process broke the stale lock and a live owner took it in between: put it back.
      await dfs.link(grave, lockPath).catch(() => undefined);
    }
    await ignoreMissing(dfs.unlink(grave));
  }

  // ---- paths and folders ----

  private dataPath(key: string): string {
    return path.join(this.root, ...key.split('/'));
  }

  private versionsPath(key: string): string {
    return `${path.join(this.root, VERSIONS_DIR, ...key.split('/'))}.v`;
  }

  /**
   * The metadata file of the data file `st`: named by its inode and, where the file system keeps
   * one, its birth time, so a reused inode number (a folder copied or restored from a backup frees
   * the old numbers) never names the metadata of another file.
   */
  private metaPath(key: string, st: { ino: bigint; birthtimeNs: bigint }): string {
    const id = st.birthtimeNs > 0n ? `${st.ino}-${st.birthtimeNs}` : st.ino.toString();
    return `${path.join(this.root, META_DIR, ...key.split('/'))}.${id}.json`;
  }

  private async checkParent(): Promise<void> {
    const parent = path.dirname(this.root);
    const st = await fs.stat(parent).catch(() => undefined);
    if (st === undefined || !st.isDirectory()) {
      throw new WalArchiverError(
        ErrorCodes.BUCKET_NOT_FOUND,
        `object store ${this.url}: folder ${this.root} does not exist, nor does its parent ${parent}`,
        { retryable: false },
      );
    }
  }

  private async ensureRoot(): Promise<void> {
    if (!this.tmpSwept) {
      this.tmpSwept = true;
      await this.sweepTmp();
    }
    if (this.rootReady) return;
    try {
      await dfs.mkdir(this.root);
      await fsyncDir(path.dirname(this.root));
    } catch (err) {
      if (errno(err) === 'ENOENT') await this.checkParent();
      if (errno(err) !== 'EEXIST') throw this.fail('create folder', undefined, err);
    }
    this.rootReady = true;
  }

  /**
   * Removes what crashed writers left in `.tmp/` (staged bodies, publish links,
   * deleted version folders), once per store, when untouched for
   * TMP_STALE_MS: a stage being written is touched at every write, and a
   * leftover never blocks a write anyway (every name is random), it only takes
   * space.
   */
  private async sweepTmp(): Promise<void> {
    const dir = path.join(this.root, TMP_DIR);
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    const before = Date.now() - TMP_STALE_MS;
    for (const name of names) {
      const file = path.join(dir, name);
      const st = await fs.lstat(file).catch(() => undefined);
      if (st === undefined || st.mtimeMs > before) continue;
      await dfs.rm(file, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** mkdir -p, fsyncing every folder it creates and the one it was created in. */
  private async ensureDir(dir: string, key: string): Promise<void> {
    let first: string | undefined;
    try {
      first = await dfs.mkdir(dir, { recursive: true });
    } catch (err) {
      if (['ENOTDIR', 'EEXIST'].includes(errno(err) ?? '')) throw this.conflict('create', key);
      throw this.fail('create folder', key, err);
    }
    if (first === undefined) return;
    let cur = dir;
    const chain: string[] = [];
    while (cur.length >= first.length) {
      chain.push(cur);
      cur = path.dirname(cur);
    }
    chain.push(path.dirname(first));
    for (const d of chain) await fsyncDir(d);
  }

  // ---- errors ----

  private checkOpen(): void {
    if (this.closed) {
      throw new WalArchiverError(ErrorCodes.INTERNAL, `object store ${this.url}: used after close()`, {
        retryable: false,
      });
    }
  }

  private conflict(op: string, key: string): WalArchiverError {
    return storeError(this.url, ErrorCodes.INVALID_ARGUMENT, op, key, KEY_CONFLICT, false);
  }

  private fail(op: string, key: string | undefined, given: unknown): WalArchiverError {
    const err = unwrapFsError(given);
    if (err instanceof WalArchiverError) return err;
    const code = errno(err);
    const what = oneLine(err instanceof Error ? err.message : String(err));
    const where = key === undefined ? `${op}` : `${op} "${key}"`;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      return new WalArchiverError(ErrorCodes.ACCESS_DENIED, `object store ${this.url}: ${where}: ${what}`, {
        cause: err,
        retryable: false,
      });
    }
    if (err instanceof Error && err.name === 'AbortError') {
      return new WalArchiverError(ErrorCodes.ABORTED, `object store ${this.url}: ${where}: aborted`, {
        cause: err,
        retryable: false,
      });
    }
    const transient = ['EIO', 'ENOSPC', 'EMFILE', 'ENFILE', 'EAGAIN', 'EBUSY', 'EDQUOT'].includes(code ?? '');
    return new WalArchiverError(
      transient ? ErrorCodes.UNAVAILABLE : ErrorCodes.INTERNAL,
      `object store ${this.url}: ${where}: ${what}`,
      {
        cause: err,
        retryable: transient,
      },
    );
  }
}
