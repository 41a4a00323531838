import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import {
  chmod,
  link,
  mkdir,
  mkdirSync,
  openSync,
  rename,
  renameSync,
  rm,
  rmdir,
  unlink,
  unlinkSync,
  writeFileSync,
  writeSync,
  ftruncateSync,
} from '../fs/durable-fs.js';
import { ErrorCodes, WalArchiverError } from '../errors.js';
import { fsyncDir, isNotFound, writeNewFileSynced } from '../fs/fs-atomic.js';
import type { LogEntry } from '../wal/log-entry.js';

/**
 * The partition's state machine: how a committed WAL entry changes `state/`.
 *
 * The same code applies entries on the storage node and on restore, so a
 * restored `state/` is byte-identical to the node's own.
 *
 * Layout of a state directory:
 *   repositories/<relative path>/…   the storage root: every operation path is relative to it
 *   kv-state                          the key-value state, one file, rewritten atomically
 *
 * Application is idempotent (a crash between applying and recording
 * `applied_lsn` re-applies the entry) and never writes outside the state
 * directory: every path is checked before use. Files are only ever replaced by
 * rename or link, never modified in place, so a hard-linked copy of `state/`
 * is a consistent snapshot.
 */

export const REPOSITORIES_DIR = 'repositories';
export const KV_STATE_FILE = 'kv-state';
const ZERO_OID = /^0+$/;
const FILE_MODE = 0o644;

/** The state directory of a repositories root (`<state>/repositories`). */
function stateDirOf(root: string): string {
  return dirname(root);
}

function corrupt(lsn: number, message: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `entry ${lsn}: ${message}`, { details: { lsn } });
}

/**
 * A relative path that stays below its root: no absolute paths, no `..`, no
 * empty or `.` segments, no NUL. Returns the normalised POSIX form.
 */
export function safeRelativePath(raw: string, lsn: number, what: string): string {
  if (raw === '' || raw.includes('\0') || raw.startsWith('/') || raw.includes('\\')) {
    throw corrupt(lsn, `unsafe ${what} "${raw}"`);
  }
  const segments = raw.split('/');
  if (segments.some((s) => s === '' || s === '.' || s === '..'))
    throw corrupt(lsn, `unsafe ${what} "${raw}"`);
  return posix.normalize(raw);
}

export interface ApplyOptions {
  /** The partition's `state/` directory. */
  stateDir: string;
  /** The entry's directory: staged files named in the operations are read from here. */
  entryDir: string;
  lsn: number;
  /**
   * fsync every file written (default). Restore turns it off and makes the
   * whole result durable once, before it is published as complete.
   */
  durable?: boolean;
  /**
   * Staged files already in memory (restore keeps small ones there): a link
   * to one of them writes its bytes with its mode instead.
   */
  staged?: ReadonlyMap<string, { data: Buffer; mode: number }>;
  /** Directories known to exist, shared across entries (restore): saves a mkdir per operation. */
  knownDirs?: Set<string>;
}

/** Applies one committed entry to the state directory. */
export async function applyEntry(entry: LogEntry, options: ApplyOptions): Promise<void> {
  const { stateDir, entryDir, lsn } = options;
  const durable = options.durable ?? true;
  const root = join(stateDir, REPOSITORIES_DIR);
  const known = options.knownDirs;
  const ensureDir = async (dir: string) => {
    if (known?.has(dir)) return;
    if (durable) await mkdir(dir, { recursive: true });
    else mkdirSync(dir, { recursive: true });
    known?.add(dir);
  };
  await ensureDir(root);
  let kv: Map<string, Buffer> | undefined;
  for (const op of entry.operations) {
    switch (op.kind) {
      case 'createDirectory': {
        const path = join(root, safeRelativePath(op.path.toString('utf8'), lsn, 'directory path'));
        await mkdir(path, { recursive: true });
        // mkdir's mode is filtered by the umask; the entry's mode is exact.
        await chmod(path, op.mode & 0o7777 || 0o755);
        known?.add(path);
        break;
      }
      case 'createHardLink': {
        const source = op.sourceInStorage
          ? join(root, safeRelativePath(op.sourcePath.toString('utf8'), lsn, 'link source'))
          : join(entryDir, safeRelativePath(op.sourcePath.toString('utf8'), lsn, 'link source'));
        const destination = join(
          root,
          safeRelativePath(op.destinationPath.toString('utf8'), lsn, 'link destination'),
        );
        await ensureDir(dirname(destination));
        const held = op.sourceInStorage ? undefined : options.staged?.get(op.sourcePath.toString('utf8'));
        if (held) {
          await writeHeldFile(destination, held);
          break;
        }
        try {
          await link(source, destination);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === 'ENOENT')
            throw corrupt(lsn, `link source ${op.sourcePath.toString('utf8')} is missing`);
          if (code !== 'EEXIST') throw err;
          // Re-applied after a crash: replace whatever is there with the entry's file.
          const [a, b] = await Promise.all([stat(source), stat(destination)]);
          if (a.ino !== b.ino || a.dev !== b.dev) {
            await unlink(destination);
            await link(source, destination);
          }
        }
        break;
      }
      case 'removeDirectoryEntry': {
        const path = join(root, safeRelativePath(op.path.toString('utf8'), lsn, 'removed path'));
        try {
          const info = await stat(path);
          if (info.isDirectory()) await rmdir(path);
          else await unlink(path);
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
        forgetDirsUnder(known, path);
        break;
      }
      case 'setKey':
        kv ??= await readKvState(stateDir);
        kv.set(op.key.toString('base64'), op.value);
        break;
      case 'deleteKey':
        kv ??= await readKvState(stateDir);
        kv.delete(op.key.toString('base64'));
        break;
      case 'unknown':
        throw corrupt(lsn, 'operation of an unknown kind (written by a newer version?)');
    }
  }
  if (entry.repositoryDeletion && entry.relativePath) {
    const repo = join(root, safeRelativePath(entry.relativePath, lsn, 'relative path'));
    await rm(repo, { recursive: true, force: true });
    forgetDirsUnder(known, repo);
  }
  for (const tx of entry.referenceTransactions) {
    for (const change of tx.changes)
      await applyReferenceChange(root, entry.relativePath, change, lsn, durable, ensureDir);
  }
  if (kv) await writeKvState(stateDir, kv, durable);
}

async function applyReferenceChange(
  root: string,
  relativePath: string,
  change: { referenceName: Buffer; newOid: Buffer; newTarget: Buffer },
  lsn: number,
  durable: boolean,
  ensureDir: (dir: string) => Promise<void>,
): Promise<void> {
  if (!relativePath) throw corrupt(lsn, 'reference change without a relative path');
  const repo = join(root, safeRelativePath(relativePath, lsn, 'relative path'));
  const name = safeRelativePath(change.referenceName.toString('utf8'), lsn, 'reference name');
  if (name !== 'HEAD' && !name.startsWith('refs/'))
    throw corrupt(lsn, `reference name "${name}" is not under refs/`);
  const path = join(repo, name);
  const target = change.newTarget.toString('utf8');
  const oid = change.newOid.toString('utf8');
  if (target) {
    safeRelativePath(target, lsn, 'symbolic reference target');
    await writeStateFile(stateDirOf(root), path, `ref: ${target}\n`, durable, ensureDir);
  } else if (oid === '' || ZERO_OID.test(oid)) {
    try {
      await unlink(path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  } else {
    if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(oid))
      throw corrupt(lsn, `reference ${name}: "${oid}" is not an object ID`);
    await writeStateFile(stateDirOf(root), path, `${oid}\n`, durable, ensureDir);
  }
}

/** A staged file held in memory, written where the entry links it (same bytes, same mode). */
/**
 * Held files come from restore, which writes without a sync each and makes
 * the result durable once: the small writes are synchronous, since a
 * thread-pool round trip per call would cost more than the write.
 */
async function writeHeldFile(destination: string, held: { data: Buffer; mode: number }): Promise<void> {
  try {
    writeFileSync(destination, held.data, { mode: held.mode, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // Re-applied: replace whatever is there with the entry's file (unlinking
    // first, so another name of the old file keeps its content).
    unlinkSync(destination);
    writeFileSync(destination, held.data, { mode: held.mode, flag: 'wx' });
  }
  // The mode given to writeFile is filtered by the umask; a link would keep the staged file's.
  if ((held.mode & 0o7777 & currentUmask()) !== 0) await chmod(destination, held.mode & 0o7777);
}

let umask: number | undefined;
/** The process umask, read once (restore does not change it). */
function currentUmask(): number {
  if (umask === undefined) {
    // Reading the umask means setting it; set it straight back.
    umask = process.umask(0o022);
    process.umask(umask);
  }
  return umask;
}

/**
 * Restore's write of a state file: it builds a private folder, synced once
 * and published by rename when complete, so files need no atomic replace.
 * Written synchronously in place, without truncating to zero first: on ext4
 * both a rename over a file and a truncate-and-rewrite start writeback of the
 * file at once (auto_da_alloc), which made each reference update cost a
 * disk flush.
 *
 * In place only while the file has one name: one that shares its inode with
 * another (an in-storage hard link) is replaced by a new file and a rename,
 * as the node does, so the other name keeps its content. The link count
 * comes from the fstat the size check makes anyway.
 */
function overwriteInPlace(path: string, bytes: Buffer, staging: string): void {
  let fd: number;
  try {
    fd = openSync(path, 'r+');
  } catch (err) {
    if (!isNotFound(err)) throw err;
    writeFileSync(path, bytes, { mode: FILE_MODE, flag: 'wx' });
    return;
  }
  let shared = false;
  try {
    const info = fs.fstatSync(fd);
    shared = info.nlink > 1;
    if (!shared) {
      for (let off = 0; off < bytes.length;) off += writeSync(path, fd, bytes, off, bytes.length - off, off);
      if (info.size > bytes.length) ftruncateSync(path, fd, bytes.length);
    }
  } finally {
    fs.closeSync(fd);
  }
  if (shared) {
    mkdirSync(staging, { recursive: true });
    const tmp = join(staging, `apply-${randomBytes(8).toString('hex')}.tmp`);
    writeFileSync(tmp, bytes, { mode: FILE_MODE, flag: 'wx' });
    renameSync(tmp, path);
  }
}

/** Drops cached directories at or below a removed path. */
function forgetDirsUnder(known: Set<string> | undefined, path: string): void {
  if (!known) return;
  for (const dir of known) if (dir === path || dir.startsWith(path + '/')) known.delete(dir);
}

/**
 * Replaces a file in the state atomically. The temporary file is written in
 * the partition's `staging/` (next to `state/`, cleaned when the node starts),
 * never inside `state/`, so a crash mid-write leaves nothing behind there.
 */
async function writeStateFile(
  stateDir: string,
  path: string,
  content: string | Buffer,
  durable: boolean,
  ensureDir: (dir: string) => Promise<void>,
): Promise<void> {
  await ensureDir(dirname(path));
  const bytes = typeof content === 'string' ? Buffer.from(content) : content;
  const staging = join(dirname(stateDir), 'staging');
  if (!durable) {
    overwriteInPlace(path, bytes, staging);
    return;
  }
  await ensureDir(staging);
  const tmp = join(staging, `apply-${randomBytes(8).toString('hex')}.tmp`);
  try {
    await writeNewFileSynced(tmp, bytes, { mode: FILE_MODE });
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  if (durable) await fsyncDir(dirname(path));
}

/**
 * kv-state encoding: pairs sorted by key, each `u32 key length, key, u32
 * value length, value` (big-endian). Deterministic, so equal states are
 * byte-identical files.
 */
export function encodeKvState(kv: Map<string, Buffer>): Buffer {
  const keys = [...kv.keys()].map((k) => Buffer.from(k, 'base64')).sort(Buffer.compare);
  const parts: Buffer[] = [];
  for (const key of keys) {
    const value = kv.get(key.toString('base64'))!;
    const header = Buffer.alloc(4);
    header.writeUInt32BE(key.length);
    const vHeader = Buffer.alloc(4);
    vHeader.writeUInt32BE(value.length);
    parts.push(header, key, vHeader, value);
  }
  return Buffer.concat(parts);
}

export function decodeKvState(buf: Buffer, what = KV_STATE_FILE): Map<string, Buffer> {
  const kv = new Map<string, Buffer>();
  let at = 0;
  const take = (n: number): Buffer => {
    if (at + n > buf.length) {
      throw new WalArchiverError(ErrorCodes.CORRUPT, `${what}: truncated at byte ${at}`);
    }
    const out = buf.subarray(at, at + n);
    at += n;
    return out;
  };
  while (at < buf.length) {
    const key = take(take(4).readUInt32BE());
    const value = take(take(4).readUInt32BE());
    kv.set(key.toString('base64'), Buffer.from(value));
  }
  return kv;
}

/** The key-value state; keys are base64 in the map so binary keys stay exact. */
export async function readKvState(stateDir: string): Promise<Map<string, Buffer>> {
  try {
    return decodeKvState(await readFile(join(stateDir, KV_STATE_FILE)), join(stateDir, KV_STATE_FILE));
  } catch (err) {
    if (isNotFound(err)) return new Map();
    throw err;
  }
}

async function writeKvState(stateDir: string, kv: Map<string, Buffer>, durable: boolean): Promise<void> {
  await writeStateFile(stateDir, join(stateDir, KV_STATE_FILE), encodeKvState(kv), durable, async (dir) => {
    await mkdir(dir, { recursive: true });
  });
}
