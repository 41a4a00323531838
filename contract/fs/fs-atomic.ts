/**
 * Durable local file writes, shared by every part that persists state on disk.
 *
 * - `atomicWriteFile`: write a temporary file in the same folder, fsync it,
 *   rename it over the target, fsync the folder. A reader sees the old content
 *   or the new content, never a mix, and after a crash the new content is there
 *   once the call has returned.
 * - `writeNewFileSynced`: create a file that must not exist yet and fsync it
 *   (the caller fsyncs the folder once it has created all its files).
 * - `fsyncDir` / `ensureDir`: make directory entries durable.
 * - `pathExists` / `pathKind`: what is at a path (a missing one is no error).
 *
 * File system errors come back as WalArchiverError: ENOENT as NOT_FOUND,
 * EEXIST as ALREADY_EXISTS, anything else as INTERNAL, each naming the path.
 */

import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';

import * as dfs from './durable-fs.js';
import { ErrorCodes, WalArchiverError, type ErrorCode } from '../errors.js';

export interface AtomicWriteOptions {
  /** File mode of the new file (default 0o644, before the umask). */
  mode?: number;
}

const DEFAULT_FILE_MODE = 0o644;
const DEFAULT_DIR_MODE = 0o755;

function errnoCode(err: unknown): string | undefined {
  if (err !== null && typeof err === 'object' && 'code' in err) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/** Wraps a Node file system error in a WalArchiverError naming what was being done and to which path. */
export function fsError(err: unknown, action: string, target: string): WalArchiverError {
  if (err instanceof WalArchiverError) return err;
  const errno = errnoCode(err);
  let code: ErrorCode = ErrorCodes.INTERNAL;
  if (errno === 'ENOENT') code = ErrorCodes.NOT_FOUND;
  else if (errno === 'EEXIST' || errno === 'ENOTEMPTY') code = ErrorCodes.ALREADY_EXISTS;
  const reason = err instanceof Error ? err.message : String(err);
  return new WalArchiverError(code, `${action} ${target}: ${reason}`, {
    cause: err,
    details: { path: target, errno },
  });
}

/** Whether an error (raw or wrapped) says the path does not exist. */
export function isNotFound(err: unknown): boolean {
  if (err instanceof WalArchiverError) return err.code === ErrorCodes.NOT_FOUND;
  return errnoCode(err) === 'ENOENT';
}

/**
 * Whether a path exists; a missing path is false, any other stat error is
 * thrown. `followLinks: false` asks about the path itself (a dangling link exists).
 */
export async function pathExists(p: string, options: { followLinks?: boolean } = {}): Promise<boolean> {
  return (await pathKind(p, options)) !== 'missing';
}

/**
 * What is at a path: a directory, nothing, or something else; any stat error
 * but ENOENT is thrown. `followLinks: false` asks about the path itself.
 */
export async function pathKind(
  p: string,
  options: { followLinks?: boolean } = {},
): Promise<'directory' | 'missing' | 'other'> {
  try {
    const st = await (options.followLinks === false ? fsp.lstat(p) : fsp.stat(p));
    return st.isDirectory() ? 'directory' : 'other';
  } catch (err) {
    if (isNotFound(err)) return 'missing';
    throw fsError(err, 'stat', p);
  }
}

/** fsyncs a directory so that entries created, renamed or removed in it survive a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  try {
    await dfs.fsyncPath(dir, 'fsyncDir');
  } catch (err) {
    // Windows cannot open or fsync a directory; its rename is durable enough there.
    if (process.platform === 'win32' && ['EISDIR', 'EPERM', 'EACCES'].includes(errnoCode(err) ?? '')) return;
    throw fsError(err, 'fsync directory', dir);
  }
}

/** fsyncs an existing file's data and metadata. */
export async function fsyncFile(file: string): Promise<void> {
  try {
    await dfs.fsyncPath(file, 'fsync');
  } catch (err) {
    throw fsError(err, 'fsync file', file);
  }
}

/**
 * Creates a directory (and any missing parents) and makes each newly created
 * level durable by fsyncing its parent. Returns whether anything was created.
 */
export async function ensureDir(dir: string, mode = DEFAULT_DIR_MODE): Promise<boolean> {
  const abs = path.resolve(dir);
  const missing: string[] = [];
  for (let cur = abs; ; cur = path.dirname(cur)) {
    const kind = await pathKind(cur);
    if (kind === 'directory') break;
    if (kind === 'other') {
      throw new WalArchiverError(ErrorCodes.INTERNAL, `create directory ${abs}: ${cur} is not a directory`, {
        details: { path: cur },
      });
    }
    missing.push(cur);
    if (path.dirname(cur) === cur) break;
  }
  if (missing.length === 0) return false;
  for (const level of missing.reverse()) {
    try {
      await dfs.mkdir(level, { mode });
    } catch (err) {
      // Another writer may have created it in the meantime; that is fine.
      if (errnoCode(err) !== 'EEXIST') throw fsError(err, 'create directory', level);
    }
    await fsyncDir(path.dirname(level));
  }
  return true;
}

async function writeAllAndSync(handle: dfs.DurableFileHandle, data: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < data.length) {
    const { bytesWritten } = await handle.write(data, offset, data.length - offset);
    offset += bytesWritten;
  }
  await handle.sync();
}

/**
 * Creates `file`, which must not exist, writes `data` and fsyncs the file. The
 * folder is not fsynced: the caller does that once, after its last file.
 */
export async function writeNewFileSynced(
  file: string,
  data: Uint8Array,
  options: AtomicWriteOptions = {},
): Promise<void> {
  let handle: dfs.DurableFileHandle | undefined;
  try {
    handle = await dfs.open(file, 'wx', options.mode ?? DEFAULT_FILE_MODE);
    await writeAllAndSync(handle, data);
  } catch (err) {
    throw fsError(err, 'write', file);
  } finally {
    await handle?.close();
  }
}

/** Name of the temporary file atomicWriteFile uses next to `file`; it starts with a dot and ends with `.tmp`. */
export function tempNameFor(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
}

/**
 * Replaces `file` atomically and durably with `data`: temporary file in the
 * same folder, fsync, rename, fsync the folder. The folder must exist.
 */
export async function atomicWriteFile(
  file: string,
  data: Uint8Array | string,
  options: AtomicWriteOptions = {},
): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const tmp = tempNameFor(file);
  try {
    await writeNewFileSynced(tmp, bytes, options);
    try {
      await dfs.rename(tmp, file);
    } catch (err) {
      throw fsError(err, 'rename into place', file);
    }
  } catch (err) {
    await dfs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  await fsyncDir(path.dirname(file));
}

/**
 * Makes everything written below `dir` durable at once: `syncfs` of its file
 * system through `sync -f`, or, where that is not available, an fsync of
 * every file and folder below it. Used to publish a large result (a restore)
 * whose pieces were written without a sync each.
 */
export async function syncTree(dir: string): Promise<void> {
  const { execFile } = await import('node:child_process');
  const viaSyncfs = await dfs.syncfs(
    dir,
    () =>
      new Promise<boolean>((resolve) => {
        execFile('sync', ['-f', dir], (err) => resolve(!err));
      }),
  );
  if (viaSyncfs) return;
  const walk = async (d: string): Promise<void> => {
    for (const dirent of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, dirent.name);
      if (dirent.isDirectory()) await walk(p);
      else if (dirent.isFile()) await fsyncFile(p);
    }
    await fsyncDir(d);
  };
  await walk(dir);
}
