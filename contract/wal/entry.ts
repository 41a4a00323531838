/**
 * The on-disk layout of one partition in a storage node's data directory
 * (Contract 1), shared by the storage node (writer) and the archiver (reader).
 *
 * ```
 * <data-dir>/partitions/<partition-id>/
 *   wal/<LSN>/MANIFEST     LogEntry protobuf
 *   wal/<LSN>/RAFT         raftpb.Entry protobuf, Index == LSN; written last
 *   wal/<LSN>/1, 2, … a …  staged files (base-36 names from 1)
 *   raft/hard_state        raftpb.HardState protobuf (atomic replace)
 *   raft/conf_state        raftpb.ConfState protobuf (atomic replace)
 *   applied_lsn            decimal LSN + "\n" (atomic replace)
 *   archiver/position      decimal LSN + "\n" (atomic replace)
 *   state/                 the applied partition
 *   staging/               entries being written and entries being deleted
 * ```
 *
 * An entry directory appears in `wal/` only complete: it is built in
 * `staging/`, every file fsynced, RAFT last, then renamed into `wal/` and
 * `wal/` fsynced. Entries are removed the same way in reverse: renamed out
 * of `wal/` into `staging/`, `wal/` fsynced, then deleted. So `wal/` only ever
 * holds whole entries, and a crash leaves at most garbage in `staging/`,
 * which `cleanStaging` removes.
 *
 * `wal/` holds nothing but entry directories: names starting with a dot are
 * ignored (temporary files of other tools); any other name that is not a
 * 13-character LSN directory is reported as CORRUPT, never skipped, because
 * skipping could hide an entry.
 */

import { randomBytes } from 'node:crypto';
import fs, { promises as fsp, type Dirent } from 'node:fs';
import path from 'node:path';

import * as dfs from '../fs/durable-fs.js';
import { ErrorCodes, isWalArchiverError, WalArchiverError } from '../errors.js';
import { comparePartitionIds, isPartitionId, parsePartitionId } from '../partition-id.js';
import {
  atomicWriteFile,
  ensureDir,
  fsError,
  fsyncDir,
  fsyncFile,
  isNotFound,
  pathExists,
  writeNewFileSynced,
} from '../fs/fs-atomic.js';
import { decodeLogEntry, encodeLogEntry, type LogEntry } from './log-entry.js';
import { assertLsn, formatLsn, MAX_LSN, parseStagedFileName, stagedFileName, tryParseLsn } from './lsn.js';
import {
  assertRaftEntry,
  decodeConfState,
  decodeHardState,
  decodeRaftEntry,
  emptyConfState,
  encodeConfState,
  encodeHardState,
  encodeRaftEntry,
  type ConfState,
  type HardState,
  type RaftEntry,
} from './raftpb.js';

export const PARTITIONS_DIR = 'partitions';
export const WAL_DIR = 'wal';
export const STAGING_DIR = 'staging';
export const STATE_DIR = 'state';
export const MANIFEST_FILE = 'MANIFEST';
export const RAFT_FILE = 'RAFT';
export const RAFT_DIR = 'raft';
export const ARCHIVER_DIR = 'archiver';
export const HARD_STATE_FILE = path.join(RAFT_DIR, 'hard_state');
export const CONF_STATE_FILE = path.join(RAFT_DIR, 'conf_state');
export const APPLIED_LSN_FILE = 'applied_lsn';
export const ARCHIVER_POSITION_FILE = path.join(ARCHIVER_DIR, 'position');

// ---------------------------------------------------------------- paths

/** `<dataDir>/partitions/<partitionId>`; INVALID_ARGUMENT unless `partitionId` is a partition ID. */
export function partitionDir(dataDir: string, partitionId: string): string {
  return path.join(dataDir, PARTITIONS_DIR, parsePartitionId(partitionId));
}

/** The partition ID a partition directory stands for (its last path component). */
export function partitionIdOf(partitionDirPath: string): string {
  return path.basename(path.resolve(partitionDirPath));
}

/** The path of `name` (a layout name above) inside a partition directory. */
function inPartition(name: string): (partitionDirPath: string) => string {
  return (partitionDirPath) => path.join(partitionDirPath, name);
}

export const walDir = inPartition(WAL_DIR);
export const stagingDir = inPartition(STAGING_DIR);
export const stateDir = inPartition(STATE_DIR);
export const hardStatePath = inPartition(HARD_STATE_FILE);
export const confStatePath = inPartition(CONF_STATE_FILE);
export const appliedLsnPath = inPartition(APPLIED_LSN_FILE);
export const archiverPositionPath = inPartition(ARCHIVER_POSITION_FILE);

export function entryDir(partitionDirPath: string, lsn: number): string {
  return path.join(partitionDirPath, WAL_DIR, formatLsn(lsn));
}

/**
 * IDs of the partitions in a data directory, in partition order; none when
 * `partitions/` does not exist. Directories whose name is not a partition ID
 * (temporary ones, say) are not partitions.
 */
export async function listPartitionIds(dataDir: string): Promise<string[]> {
  const names = await listDir(path.join(dataDir, PARTITIONS_DIR));
  return names
    .filter((d) => d.isDirectory() && isPartitionId(d.name))
    .map((d) => d.name)
    .sort(comparePartitionIds);
}

/** The entries of directory `dir`; none when it does not exist. */
async function listDir(dir: string): Promise<Dirent[]> {
  try {
    return await fsp.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (isNotFound(err)) return [];
    throw fsError(err, 'list', dir);
  }
}

/** Runs one file-system step; its failure is reported as what was being done to which path. */
async function fsStep<T>(action: string, target: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    throw fsError(err, action, target);
  }
}

function corrupt(partitionDirPath: string, lsn: number | undefined, message: string, cause?: unknown) {
  const partition = partitionIdOf(partitionDirPath);
  const where = lsn === undefined ? `partition ${partition}` : `partition ${partition}, LSN ${lsn}`;
  return new WalArchiverError(ErrorCodes.CORRUPT, `${where}: ${message}`, {
    cause,
    retryable: false,
    details: { partition, ...(lsn === undefined ? {} : { lsn }) },
  });
}

// ---------------------------------------------------------------- writing entries

/** A file to stage in an entry: bytes to write, or an existing file to hard-link. */
export type StagedFileInput =
  | { name?: string; data: Uint8Array }
  | {
      name?: string;
      /** Path of an existing file on the same file system, linked (not copied) into the entry. */
      linkFrom: string;
    };

export interface WriteEntryInput {
  manifest: LogEntry;
  raft: RaftEntry;
  files?: StagedFileInput[];
}

export interface EntryFile {
  name: string;
  size: number;
}

export interface WrittenEntry {
  lsn: number;
  dir: string;
  files: EntryFile[];
  /** Bytes of MANIFEST, RAFT and the staged files together. */
  totalBytes: number;
}

function assignStagedNames(files: readonly StagedFileInput[]): string[] {
  const taken = new Set<string>();
  for (const f of files) {
    if (f.name === undefined) continue;
    if (parseStagedFileName(f.name) === undefined) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `staged file name ${JSON.stringify(f.name)} is not a base-36 sequence name (1, 2, … a, …)`,
      );
    }
    if (taken.has(f.name)) {
      throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `staged file name ${f.name} used twice`);
    }
    taken.add(f.name);
  }
  let next = 1;
  return files.map((f) => {
    if (f.name !== undefined) return f.name;
    while (taken.has(stagedFileName(next))) next++;
    const name = stagedFileName(next++);
    taken.add(name);
    return name;
  });
}

async function makeStagingEntry(partitionDirPath: string, prefix: string): Promise<string> {
  const root = stagingDir(partitionDirPath);
  await ensureDir(root);
  const dir = path.join(root, `${prefix}${randomBytes(6).toString('hex')}`);
  await fsStep('create staging directory in', root, () => dfs.mkdir(dir, { mode: 0o700 }));
  return dir;
}

/**
 * Writes the entry at `lsn` (Gitaly's order): MANIFEST, the staged files
 * `1, 2, …`, then RAFT, each fsynced, in a staging directory that is then
 * renamed to `wal/<LSN>` and `wal/` fsynced.
 *
 * `raft.index` must equal `lsn`. An entry already at `lsn` is ALREADY_EXISTS:
 * replacing an uncommitted entry takes `truncateFrom` first. The caller
 * appends in LSN order (entry `lsn - 1` written before `lsn`).
 */
export async function writeEntry(
  partitionDirPath: string,
  lsn: number,
  input: WriteEntryInput,
): Promise<WrittenEntry> {
  assertLsn(lsn);
  assertRaftEntry(input.raft);
  if (input.raft.index !== lsn) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `raft entry index ${input.raft.index} does not match LSN ${lsn}`,
      { details: { partition: partitionIdOf(partitionDirPath), lsn } },
    );
  }
  const files = input.files ?? [];
  const names = assignStagedNames(files);
  const manifestBytes = encodeLogEntry(input.manifest);
  const raftBytes = encodeRaftEntry(input.raft);

  const target = entryDir(partitionDirPath, lsn);
  if (await pathExists(target, { followLinks: false })) {
    throw new WalArchiverError(
      ErrorCodes.ALREADY_EXISTS,
      `partition ${partitionIdOf(partitionDirPath)}: an entry exists at LSN ${lsn}; truncate it first`,
      { details: { partition: partitionIdOf(partitionDirPath), lsn } },
    );
  }

  const wal = walDir(partitionDirPath);
  await ensureDir(wal);
  const staging = await makeStagingEntry(partitionDirPath, `entry-${formatLsn(lsn)}-`);
  try {
    await writeNewFileSynced(path.join(staging, MANIFEST_FILE), manifestBytes);
    let totalBytes = manifestBytes.length + raftBytes.length;
    const written: EntryFile[] = [];
    for (let i = 0; i < files.length; i++) {
      const f = files[i]!;
      const name = names[i]!;
      const dest = path.join(staging, name);
      let size: number;
      if ('data' in f) {
        await writeNewFileSynced(dest, f.data);
        size = f.data.length;
      } else {
        await fsStep(`hard-link ${f.linkFrom} to`, dest, () => dfs.link(f.linkFrom, dest));
        await fsyncFile(dest);
        size = (await fsp.stat(dest)).size;
      }
      written.push({ name, size });
      totalBytes += size;
    }
    await writeNewFileSynced(path.join(staging, RAFT_FILE), raftBytes);
    await fsyncDir(staging);
    // rename(2) replaces an empty directory silently; the check above and
    // ENOTEMPTY for a non-empty one keep an existing entry from being replaced.
    await fsStep('move entry into place at', target, () => dfs.rename(staging, target));
    await fsyncDir(wal);
    await fsyncDir(stagingDir(partitionDirPath));
    return { lsn, dir: target, files: written, totalBytes };
  } catch (err) {
    await dfs.rm(staging, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}

/** Moves one entry out of wal/ (atomically, durably) and deletes it. */
export async function removeEntry(partitionDirPath: string, lsn: number): Promise<void> {
  const source = entryDir(partitionDirPath, lsn);
  const root = stagingDir(partitionDirPath);
  await ensureDir(root);
  const trash = path.join(root, `deleted-${formatLsn(lsn)}-${randomBytes(6).toString('hex')}`);
  await fsStep('remove entry', source, () => dfs.rename(source, trash));
  await fsyncDir(walDir(partitionDirPath));
  await fsStep('delete', trash, () => dfs.rm(trash, { recursive: true, force: true }));
}

/**
 * Deletes the entry at `fromLsn` and every later entry, highest LSN first, so
 * that after a crash at any point `wal/` still holds a gap-free log. Refuses
 * (INVALID_ARGUMENT) when `fromLsn <= committedLsn`: a committed entry is
 * never replaced. Returns the LSNs removed, highest first.
 */
export async function truncateFrom(
  partitionDirPath: string,
  fromLsn: number,
  committedLsn: number,
): Promise<number[]> {
  assertLsn(fromLsn, 'truncation LSN');
  if (!Number.isSafeInteger(committedLsn) || committedLsn < 0) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `committed LSN must be a non-negative integer, got ${committedLsn}`,
    );
  }
  if (fromLsn <= committedLsn) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `partition ${partitionIdOf(partitionDirPath)}: refusing to truncate the WAL at LSN ${fromLsn}, ` +
        `at or below the committed LSN ${committedLsn}`,
      {
        retryable: false,
        details: { partition: partitionIdOf(partitionDirPath), lsn: fromLsn, committedLsn },
      },
    );
  }
  const doomed = (await listEntryLsns(partitionDirPath)).filter((l) => l >= fromLsn).reverse();
  for (const lsn of doomed) await removeEntry(partitionDirPath, lsn);
  return doomed;
}

/**
 * Deletes every entry up to and including `throughLsn`, lowest LSN first
 * (pruning after archiving/applying). Returns the LSNs removed, lowest first.
 * The caller makes sure `throughLsn` is archived and applied.
 */
export async function pruneThrough(partitionDirPath: string, throughLsn: number): Promise<number[]> {
  assertLsn(throughLsn, 'prune LSN');
  const doomed = (await listEntryLsns(partitionDirPath)).filter((l) => l <= throughLsn);
  for (const lsn of doomed) await removeEntry(partitionDirPath, lsn);
  return doomed;
}

/** Removes what a crash left in `staging/` (half-written and half-deleted entries). Call before writing. */
export async function cleanStaging(partitionDirPath: string): Promise<void> {
  const root = stagingDir(partitionDirPath);
  const names = (await listDir(root)).map((d) => d.name);
  for (const name of names) {
    const p = path.join(root, name);
    await fsStep('delete', p, () => dfs.rm(p, { recursive: true, force: true }));
  }
  if (names.length > 0) await fsyncDir(root);
}

// ---------------------------------------------------------------- reading entries

/**
 * LSNs of the entries in `wal/`, ascending; none when `wal/` does not exist.
 * Names starting with a dot are ignored; any other name that is not an LSN
 * directory is CORRUPT.
 */
export async function listEntryLsns(partitionDirPath: string): Promise<number[]> {
  const dir = walDir(partitionDirPath);
  const dirents = await listDir(dir);
  const lsns: number[] = [];
  for (const d of dirents) {
    if (d.name.startsWith('.')) continue;
    const lsn = tryParseLsn(d.name);
    if (lsn === undefined) {
      throw corrupt(partitionDirPath, undefined, `unexpected name ${JSON.stringify(d.name)} in ${dir}`);
    }
    if (!d.isDirectory())
      throw corrupt(partitionDirPath, lsn, `${path.join(dir, d.name)} is not a directory`);
    lsns.push(lsn);
  }
  return lsns.sort((a, b) => a - b);
}

export interface WalEntry {
  lsn: number;
  dir: string;
  manifest: LogEntry;
  raft: RaftEntry;
  /** Staged files (everything but MANIFEST and RAFT), in staging order. */
  files: EntryFile[];
  manifestBytes: number;
  raftBytes: number;
  /** Bytes of MANIFEST, RAFT and the staged files together. */
  totalBytes: number;
}

function compareStagedNames(a: string, b: string): number {
  const na = parseStagedFileName(a);
  const nb = parseStagedFileName(b);
  if (na !== undefined && nb !== undefined) return na - nb;
  if (na !== undefined) return -1;
  if (nb !== undefined) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

function listError(partitionDirPath: string, lsn: number, dir: string, err: unknown): WalArchiverError {
  if (isNotFound(err)) {
    return new WalArchiverError(
      ErrorCodes.NOT_FOUND,
      `partition ${partitionIdOf(partitionDirPath)}: no WAL entry at LSN ${lsn}`,
      { cause: err, details: { partition: partitionIdOf(partitionDirPath), lsn } },
    );
  }
  return fsError(err, 'list', dir);
}

/** Decodes an entry's MANIFEST and RAFT and checks RAFT's index is the entry's LSN. */
function decodeRecords(
  partitionDirPath: string,
  lsn: number,
  manifestRaw: Buffer,
  raftRaw: Buffer,
): { manifest: LogEntry; raft: RaftEntry } {
  let manifest: LogEntry;
  try {
    manifest = decodeLogEntry(manifestRaw, 'LogEntry');
  } catch (err) {
    throw corrupt(partitionDirPath, lsn, `MANIFEST: ${(err as Error).message}`, err);
  }
  let raft: RaftEntry;
  try {
    raft = decodeRaftEntry(raftRaw, 'raftpb.Entry');
  } catch (err) {
    throw corrupt(partitionDirPath, lsn, `RAFT: ${(err as Error).message}`, err);
  }
  if (raft.index !== lsn) {
    throw corrupt(partitionDirPath, lsn, `RAFT: index ${raft.index} does not match the entry's LSN`);
  }
  return { manifest, raft };
}

/** The staged files of an entry directory in staging order; anything but a regular file is CORRUPT. */
function stagedDirents(partitionDirPath: string, lsn: number, dir: string, dirents: Dirent[]): Dirent[] {
  const staged = dirents
    .filter((d) => d.name !== MANIFEST_FILE && d.name !== RAFT_FILE)
    .sort((a, b) => compareStagedNames(a.name, b.name));
  for (const d of staged) {
    if (!d.isFile()) throw corrupt(partitionDirPath, lsn, `${path.join(dir, d.name)} is not a regular file`);
  }
  return staged;
}

async function readEntryFile(partitionDirPath: string, lsn: number, file: string): Promise<Buffer> {
  try {
    return await fsp.readFile(file);
  } catch (err) {
    if (isNotFound(err))
      throw corrupt(partitionDirPath, lsn, `${path.basename(file)} is missing (${file})`, err);
    throw fsError(err, 'read', file);
  }
}

/**
 * Reads and checks the entry at `lsn`: MANIFEST and RAFT must exist and
 * decode, RAFT's index must equal `lsn`, and the directory may hold only
 * regular files. A missing entry is NOT_FOUND; anything wrong inside one is
 * CORRUPT naming the partition, the LSN and the file.
 */
export async function readEntry(partitionDirPath: string, lsn: number): Promise<WalEntry> {
  assertLsn(lsn);
  const dir = entryDir(partitionDirPath, lsn);
  let dirents: Dirent[];
  try {
    dirents = await fsp.readdir(dir, { withFileTypes: true });
  } catch (err) {
    throw listError(partitionDirPath, lsn, dir, err);
  }

  const manifestRaw = await readEntryFile(partitionDirPath, lsn, path.join(dir, MANIFEST_FILE));
  const raftRaw = await readEntryFile(partitionDirPath, lsn, path.join(dir, RAFT_FILE));
  const { manifest, raft } = decodeRecords(partitionDirPath, lsn, manifestRaw, raftRaw);

  const files: EntryFile[] = [];
  let totalBytes = manifestRaw.length + raftRaw.length;
  for (const d of stagedDirents(partitionDirPath, lsn, dir, dirents)) {
    const file = path.join(dir, d.name);
    const size = (await fsStep('stat', file, () => fsp.stat(file))).size;
    files.push({ name: d.name, size });
    totalBytes += size;
  }
  return {
    lsn,
    dir,
    manifest,
    raft,
    files,
    manifestBytes: manifestRaw.length,
    raftBytes: raftRaw.length,
    totalBytes,
  };
}

/** A file of an entry with its bytes (small files) or only its size (files streamed later). */
export interface EntryFileContent {
  name: string;
  size: number;
  mode: number;
  /** The bytes, for files up to the caller's inline limit. */
  data?: Buffer;
  path: string;
}

export interface WalEntryContent extends WalEntry {
  /** Every file in tar order (MANIFEST, staged files, RAFT). */
  content: EntryFileContent[];
}

function readSmallFileSync(file: string, fd: number, size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  let off = 0;
  while (off < size) {
    const n = fs.readSync(fd, buf, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  if (off !== size) throw new Error(`${file} is shorter than its size`);
  return buf;
}

/**
 * `readEntry` for the archiver: the same checks, but every file is read once
 * and handed back (files up to `inlineMax` bytes in memory, larger ones by
 * path and size, to be streamed). WAL entries live on the node's local disk
 * and are small; synchronous reads avoid a thread-pool round trip per file,
 * which dominated the cost of archiving small entries.
 */
export function readEntryContentSync(
  partitionDirPath: string,
  lsn: number,
  inlineMax: number,
): WalEntryContent {
  assertLsn(lsn);
  const dir = entryDir(partitionDirPath, lsn);
  let dirents: Dirent[];
  try {
    dirents = fs.readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    throw listError(partitionDirPath, lsn, dir, err);
  }
  const readOne = (name: string, whole: boolean): EntryFileContent => {
    const file = path.join(dir, name);
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (err) {
      if (isNotFound(err)) throw corrupt(partitionDirPath, lsn, `${name} is missing (${file})`, err);
      throw fsError(err, 'read', file);
    }
    try {
      const info = fs.fstatSync(fd);
      if (!info.isFile()) throw corrupt(partitionDirPath, lsn, `${file} is not a regular file`);
      const out: EntryFileContent = { name, size: info.size, mode: info.mode, path: file };
      if (whole || info.size <= inlineMax) out.data = readSmallFileSync(file, fd, info.size);
      return out;
    } catch (err) {
      if (isWalArchiverError(err)) throw err;
      throw fsError(err, 'read', file);
    } finally {
      fs.closeSync(fd);
    }
  };
  const manifestFile = readOne(MANIFEST_FILE, true);
  const raftFile = readOne(RAFT_FILE, true);
  const { manifest, raft } = decodeRecords(partitionDirPath, lsn, manifestFile.data!, raftFile.data!);
  const staged: EntryFileContent[] = [];
  let totalBytes = manifestFile.size + raftFile.size;
  for (const d of stagedDirents(partitionDirPath, lsn, dir, dirents)) {
    const f = readOne(d.name, false);
    staged.push(f);
    totalBytes += f.size;
  }
  return {
    lsn,
    dir,
    manifest,
    raft,
    files: staged.map((f) => ({ name: f.name, size: f.size })),
    manifestBytes: manifestFile.size,
    raftBytes: raftFile.size,
    totalBytes,
    content: [manifestFile, ...staged, raftFile],
  };
}

// ---------------------------------------------------------------- raft state and positions

/**
 * Reads one of the partition's small state files (hard state, positions).
 * Synchronously: they are a few bytes on the node's local disk, read on
 * every commit and for every partition at start, and an asynchronous read
 * costs four thread-pool round trips.
 */
async function readOptional(file: string): Promise<Buffer | undefined> {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw fsError(err, 'read', file);
  }
}

async function writeInPartition(file: string, data: Uint8Array | string): Promise<void> {
  await ensureDir(path.dirname(file));
  await atomicWriteFile(file, data);
}

/** The partition's raft hard state, or undefined if none was ever written (an unbootstrapped replica). */
export async function readHardState(partitionDirPath: string): Promise<HardState | undefined> {
  return readRaftState(partitionDirPath, HARD_STATE_FILE, (raw) => decodeHardState(raw, 'raftpb.HardState'));
}

/** Replaces `raft/hard_state` atomically and durably. */
export async function writeHardState(partitionDirPath: string, hs: HardState): Promise<void> {
  await writeInPartition(hardStatePath(partitionDirPath), encodeHardState(hs));
}

/** The partition's raft configuration, or undefined if none was written. */
export async function readConfState(partitionDirPath: string): Promise<ConfState | undefined> {
  return readRaftState(partitionDirPath, CONF_STATE_FILE, (raw) => decodeConfState(raw, 'raftpb.ConfState'));
}

/** A file of the partition decoded, or undefined when there is none; CORRUPT naming it when it does not decode. */
async function readRaftState<T>(
  partitionDirPath: string,
  name: string,
  decode: (raw: Buffer) => T,
): Promise<T | undefined> {
  const raw = await readOptional(path.join(partitionDirPath, name));
  if (raw === undefined) return undefined;
  try {
    return decode(raw);
  } catch (err) {
    throw corrupt(partitionDirPath, undefined, `${name}: ${(err as Error).message}`, err);
  }
}

/** Replaces `raft/conf_state` atomically and durably. */
export async function writeConfState(partitionDirPath: string, cs: ConfState): Promise<void> {
  await writeInPartition(confStatePath(partitionDirPath), encodeConfState(cs));
}

/** Writes `raft/conf_state` naming `voters` and nothing else (no learners, no joint configuration). */
export async function writeVoters(partitionDirPath: string, voters: readonly number[]): Promise<void> {
  await writeConfState(partitionDirPath, { ...emptyConfState(), voters: [...voters] });
}

/**
 * Writes `raft/snapshot`; `stamp`, when given, is the highest commit stamp of
 * the entries compacted away (an extra field readers of `{index, term, voters}`
 * ignore), and `whole: false` marks it a lower bound only (`"stamps": "partial"`:
 * some entries it covers arrived in a snapshot without their stamps).
 */
export async function writeSnapshotMeta(
  dir: string,
  meta: { index: number; term: number; voters: readonly number[] },
  stamp = 0,
  whole = true,
): Promise<void> {
  await ensureDir(path.join(dir, RAFT_DIR));
  const extra = stamp > 0 ? { stamp, ...(whole ? {} : { stamps: 'partial' }) } : {};
  await atomicWriteFile(
    path.join(dir, RAFT_DIR, 'snapshot'),
    `${JSON.stringify({ index: meta.index, term: meta.term, voters: [...meta.voters], ...extra })}\n`,
  );
}

const LSN_FILE_PATTERN = /^(0|[1-9][0-9]{0,15})\n$/;

/** The text of an LSN file: the LSN in decimal ASCII and one newline (`"42\n"`); 0 means "none yet". */
export function formatLsnFile(lsn: number): string {
  if (!Number.isSafeInteger(lsn) || lsn < 0) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `LSN must be an integer from 0 to ${MAX_LSN}, got ${lsn}`,
    );
  }
  return `${lsn}\n`;
}

/**
 * Reads an LSN file (`applied_lsn`, `archiver/position`): undefined when it
 * does not exist, CORRUPT unless it is exactly a decimal LSN and a newline.
 */
export async function readLsnFile(file: string): Promise<number | undefined> {
  const raw = await readOptional(file);
  if (raw === undefined) return undefined;
  const text = raw.toString('latin1');
  const m = LSN_FILE_PATTERN.exec(text);
  const value = m === null ? NaN : Number(m[1]);
  if (!Number.isSafeInteger(value)) {
    const shown = JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text);
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `${file}: expected a decimal LSN and a newline, found ${shown}`,
      {
        retryable: false,
        details: { path: file },
      },
    );
  }
  return value;
}

/** Replaces an LSN file atomically and durably (creating its folder if needed). */
export async function writeLsnFile(file: string, lsn: number): Promise<void> {
  await writeInPartition(file, formatLsnFile(lsn));
}

export async function readAppliedLsn(partitionDirPath: string): Promise<number | undefined> {
  return readLsnFile(appliedLsnPath(partitionDirPath));
}

export async function writeAppliedLsn(partitionDirPath: string, lsn: number): Promise<void> {
  await writeLsnFile(appliedLsnPath(partitionDirPath), lsn);
}

export async function readArchiverPosition(partitionDirPath: string): Promise<number | undefined> {
  return readLsnFile(archiverPositionPath(partitionDirPath));
}

export async function writeArchiverPosition(partitionDirPath: string, lsn: number): Promise<void> {
  await writeLsnFile(archiverPositionPath(partitionDirPath), lsn);
}
