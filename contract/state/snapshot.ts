import { createReadStream } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ErrorCodes, WalArchiverError } from '../errors.js';
import { chmod, createWriteStream, link, mkdir, rm } from '../fs/durable-fs.js';
import { fsyncDir, isNotFound } from '../fs/fs-atomic.js';
import { KV_STATE_FILE, REPOSITORIES_DIR } from './apply.js';

/**
 * A partition's state as a tar: `kv-state` and `fs/…` (the repositories),
 * the layout of Gitaly's partition backups. Used for base backups, for
 * bringing a lagging follower up to date, and by restore.
 *
 * Packing is deterministic (sorted names, fixed owner and mtime). Extraction
 * is defensive: it accepts only regular files and directories at safe
 * relative paths below the target, never links, devices or `..`.
 */

type TarHeader = Parameters<tar.Pack['entry']>[0];

const FS_PREFIX = 'fs';
const WAL_PREFIX = 'wal';
/** Where extractState puts shipped WAL entries, inside its target. */
export const SHIPPED_WAL_DIR = '.wal';
const FIXED_MTIME = new Date(0);

/**
 * Makes `target` a copy of `source` in which every file is a hard link:
 * cheap, and consistent as long as files in `source` are only ever replaced,
 * never modified in place (true of `state/`).
 */
export async function linkTree(source: string, target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  for (const dirent of await readdir(source, { withFileTypes: true })) {
    const from = join(source, dirent.name);
    const to = join(target, dirent.name);
    if (dirent.isDirectory()) {
      await linkTree(from, to);
      await chmod(to, (await lstat(from)).mode & 0o7777);
    } else if (dirent.isFile()) {
      await link(from, to);
    }
  }
}

async function* walk(dir: string, rel: string): AsyncGenerator<{ rel: string; path: string; dir: boolean }> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  for (const name of names) {
    const path = join(dir, name);
    const info = await lstat(path);
    const childRel = rel ? `${rel}/${name}` : name;
    if (info.isDirectory()) {
      yield { rel: childRel, path, dir: true };
      yield* walk(path, childRel);
    } else if (info.isFile()) {
      yield { rel: childRel, path, dir: false };
    }
  }
}

function addToPack(pack: tar.Pack, header: TarHeader, source?: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    if (source === undefined || Buffer.isBuffer(source)) {
      // A directory, or a file given in full (an empty one must be given as a buffer, or the pack waits for data).
      if (source === undefined) pack.entry(header, (err) => (err ? reject(err) : resolve()));
      else pack.entry(header, source, (err) => (err ? reject(err) : resolve()));
      return;
    }
    const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    pipeline(createReadStream(source), sink).catch(reject);
  });
}

export interface PackStateOptions {
  /**
   * A folder of WAL entry directories (`<LSN>/MANIFEST` …) to ship after the
   * state, as `wal/<LSN>/…`: a follower brought up to date by a snapshot keeps
   * the committed entries its sidecar may still have to archive.
   */
  walDir?: string;
}

/** Streams a tar of a state directory (`kv-state`, `fs/…`). The directory must not change meanwhile. */
export function packState(stateDir: string, options: PackStateOptions = {}): Readable {
  const pack = tar.pack();
  (async () => {
    const kvPath = join(stateDir, KV_STATE_FILE);
    try {
      const info = await lstat(kvPath);
      await addToPack(
        pack,
        { name: KV_STATE_FILE, size: info.size, mode: info.mode & 0o777, mtime: FIXED_MTIME },
        kvPath,
      );
    } catch (err) {
      if (!isNotFound(err)) throw err;
      // An empty key-value state is an empty file, so every snapshot has both parts.
      await addToPack(
        pack,
        { name: KV_STATE_FILE, size: 0, mode: 0o644, mtime: FIXED_MTIME },
        Buffer.alloc(0),
      );
    }
    await addToPack(pack, { name: `${FS_PREFIX}/`, type: 'directory', mode: 0o755, mtime: FIXED_MTIME });
    for await (const item of walk(join(stateDir, REPOSITORIES_DIR), '')) {
      const info = await lstat(item.path);
      const header: TarHeader = {
        name: `${FS_PREFIX}/${item.rel}${item.dir ? '/' : ''}`,
        type: item.dir ? 'directory' : 'file',
        mode: info.mode & 0o7777,
        mtime: FIXED_MTIME,
        uid: 0,
        gid: 0,
      };
      if (item.dir) await addToPack(pack, header);
      else await addToPack(pack, { ...header, size: info.size }, item.path);
    }
    if (options.walDir) {
      for await (const item of walk(options.walDir, '')) {
        if (item.dir) continue;
        const info = await lstat(item.path);
        const header: TarHeader = {
          name: `${WAL_PREFIX}/${item.rel}`,
          type: 'file',
          mode: info.mode & 0o777,
          mtime: FIXED_MTIME,
          uid: 0,
          gid: 0,
          size: info.size,
        };
        await addToPack(pack, header, item.path);
      }
    }
    pack.finalize();
  })().catch((err: unknown) => pack.destroy(err as Error));
  return pack as unknown as Readable;
}

function unsafe(name: string, why: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `snapshot archive: refusing "${name}": ${why}`, {
    retryable: false,
    details: { entry: name },
  });
}

/** Where an archive member goes inside a state directory, or an error for anything unsafe. */
export function stateMemberPath(name: string, allowWal = false): string {
  if (name.includes('\0') || name.includes('\\')) throw unsafe(name, 'invalid characters');
  if (name.startsWith('/')) throw unsafe(name, 'absolute path');
  const trimmed = name.replace(/\/+$/, '');
  const segments = trimmed.split('/');
  if (segments.some((s) => s === '..')) throw unsafe(name, 'path escapes the target');
  if (segments.some((s) => s === '' || s === '.')) throw unsafe(name, 'empty or "." path segment');
  const normal = posix.normalize(trimmed);
  if (normal === KV_STATE_FILE) return KV_STATE_FILE;
  if (normal === FS_PREFIX) return REPOSITORIES_DIR;
  if (normal.startsWith(`${FS_PREFIX}/`)) return `${REPOSITORIES_DIR}/${normal.slice(FS_PREFIX.length + 1)}`;
  if (allowWal && /^wal\/[0-9a-z]{13}\/(MANIFEST|RAFT|[0-9a-z]{1,13})$/.test(normal)) {
    return `${SHIPPED_WAL_DIR}/${normal.slice(WAL_PREFIX.length + 1)}`;
  }
  throw unsafe(name, 'not part of a partition state (expected kv-state or fs/…)');
}

/**
 * Extracts a state tar into `targetDir` (which must be empty or absent).
 * Only regular files and directories are accepted; links, devices and paths
 * outside the target end the extraction with a CORRUPT error.
 */
export async function extractState(
  archive: Readable,
  targetDir: string,
  options: { allowWal?: boolean } = {},
): Promise<{ files: number; bytes: number }> {
  await mkdir(join(targetDir, REPOSITORIES_DIR), { recursive: true });
  const extract = tar.extract();
  let files = 0;
  let bytes = 0;
  const done = (async () => {
    for await (const member of extract) {
      const header = member.header;
      const rel = stateMemberPath(header.name, options.allowWal ?? false);
      const dest = join(targetDir, rel);
      if (header.type === 'directory') {
        await mkdir(dest, { recursive: true });
        await chmod(dest, (header.mode ?? 0o755) & 0o7777);
        member.resume();
      } else if (header.type === 'file' || header.type === 'contiguous-file') {
        await mkdir(dirname(dest), { recursive: true });
        await pipeline(
          member,
          createWriteStream(dest, { flags: 'wx', mode: (header.mode ?? 0o644) & 0o777 }),
        );
        await chmod(dest, (header.mode ?? 0o644) & 0o777);
        files++;
        bytes += header.size ?? 0;
      } else {
        member.resume();
        throw unsafe(header.name, `${header.type ?? 'unknown'} entries are not allowed`);
      }
    }
  })();
  try {
    await Promise.all([pipeline(archive, extract), done]);
  } catch (err) {
    extract.destroy();
    throw err;
  }
  await fsyncDir(targetDir);
  return { files, bytes };
}

/** Removes a directory tree, tolerating its absence. */
export async function removeTree(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
