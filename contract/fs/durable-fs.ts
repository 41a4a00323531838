/**
 * The one file-system layer every durable step goes through: each call that
 * changes what is on disk (create, write, fsync, rename, link, unlink, mkdir,
 * rm, truncate, sync of a whole tree) is made here and nowhere else.
 *
 * In production this is a thin pass-through to `node:fs`. A test installs an
 * observer (`setDurableObserver`) that sees every operation before it runs
 * (and may throw to stop the process there, as a crash would) and after it
 * ran (to follow which data and directory entries an fsync made durable, so
 * that a power cut can be simulated by dropping what was not). Reads are not
 * observed: they change nothing.
 *
 * `path` is the file or folder the operation changes; `dest` the second one
 * for rename, link and copy. For handle operations `path` is the path the
 * handle was opened with.
 */

import fs, { promises as fsp, type MakeDirectoryOptions, type Mode, type RmOptions } from 'node:fs';

export type DurableOp =
  /** A file is created (open with a create flag, or a write stream). */
  | 'create'
  /** Bytes are written to a file (through a handle, writeFile or appendFile). */
  | 'write'
  /** A file's length is changed. */
  | 'truncate'
  /** A file's data and metadata are made durable. */
  | 'fsync'
  /** A directory's entries are made durable. */
  | 'fsyncDir'
  /** Everything written below `path` (its whole file system) is made durable. */
  | 'syncfs'
  | 'rename'
  | 'link'
  | 'copy'
  | 'unlink'
  | 'mkdir'
  /** A file or a whole tree is removed. */
  | 'rm'
  | 'rmdir'
  | 'chmod';

export interface DurableEvent {
  op: DurableOp;
  path: string;
  dest?: string;
}

export interface DurableObserver {
  /** Called before the operation; throwing stops it (and is what the caller sees). */
  before(event: DurableEvent): void;
  /** Called after the operation succeeded. */
  after?(event: DurableEvent): void;
}

let observer: DurableObserver | undefined;

/** Installs (or with `undefined` removes) the observer of durable operations; returns the previous one. */
export function setDurableObserver(next: DurableObserver | undefined): DurableObserver | undefined {
  const prev = observer;
  observer = next;
  return prev;
}

function pathOf(p: fs.PathLike): string {
  return typeof p === 'string' ? p : p instanceof URL ? p.pathname : p.toString();
}

async function observed<T>(event: DurableEvent, run: () => Promise<T>): Promise<T> {
  const o = observer;
  if (!o) return run();
  o.before(event);
  const result = await run();
  o.after?.(event);
  return result;
}

function observedSync<T>(event: DurableEvent, run: () => T): T {
  const o = observer;
  if (!o) return run();
  o.before(event);
  const result = run();
  o.after?.(event);
  return result;
}

function createsFile(flags: string | number | undefined): boolean {
  if (flags === undefined) return false;
  if (typeof flags === 'number') return (flags & fs.constants.O_CREAT) !== 0;
  return /[wax+]/.test(flags) && flags !== 'r+' && flags !== 'rs+';
}

/** A file handle whose changing calls are observed; read with `raw` (or `read`/`stat`). */
export class DurableFileHandle {
  constructor(
    readonly raw: fsp.FileHandle,
    readonly path: string,
  ) {}

  get fd(): number {
    return this.raw.fd;
  }

  write(
    data: Uint8Array,
    offset?: number,
    length?: number,
    position?: number | null,
  ): Promise<{ bytesWritten: number; buffer: Uint8Array }> {
    return observed({ op: 'write', path: this.path }, () =>
      this.raw.write(data, offset, length, position ?? null),
    );
  }

  writeString(text: string): Promise<{ bytesWritten: number; buffer: string }> {
    return observed({ op: 'write', path: this.path }, () => this.raw.write(text));
  }

  writev(buffers: NodeJS.ArrayBufferView[], position?: number): Promise<fs.WriteVResult> {
    return observed({ op: 'write', path: this.path }, () => this.raw.writev(buffers, position));
  }

  truncate(len?: number): Promise<void> {
    return observed({ op: 'truncate', path: this.path }, () => this.raw.truncate(len));
  }

  sync(): Promise<void> {
    return observed({ op: 'fsync', path: this.path }, () => this.raw.sync());
  }

  datasync(): Promise<void> {
    return observed({ op: 'fsync', path: this.path }, () => this.raw.datasync());
  }

  read(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number | null,
  ): Promise<fs.promises.FileReadResult<Uint8Array>> {
    return this.raw.read(buffer, offset, length, position);
  }

  stat(): Promise<fs.Stats> {
    return this.raw.stat();
  }

  close(): Promise<void> {
    return this.raw.close();
  }
}

// ---- promise API --------------------------------------------------------------

/** Opens a file; opening to create is observed as `create`. */
export async function open(
  file: fs.PathLike,
  flags: string | number = 'r',
  mode?: Mode,
): Promise<DurableFileHandle> {
  const p = pathOf(file);
  const run = () => fsp.open(file, flags, mode);
  const raw = createsFile(flags) ? await observed({ op: 'create', path: p }, run) : await run();
  return new DurableFileHandle(raw, p);
}

export function writeFile(
  file: fs.PathLike,
  data: string | Uint8Array,
  options?: fs.WriteFileOptions,
): Promise<void> {
  return observed({ op: 'write', path: pathOf(file) }, () => fsp.writeFile(file, data, options));
}

export function appendFile(
  file: fs.PathLike,
  data: string | Uint8Array,
  options?: fs.WriteFileOptions,
): Promise<void> {
  return observed({ op: 'write', path: pathOf(file) }, () => fsp.appendFile(file, data, options));
}

export function truncate(file: fs.PathLike, len?: number): Promise<void> {
  return observed({ op: 'truncate', path: pathOf(file) }, () => fsp.truncate(file, len));
}

export function rename(from: fs.PathLike, to: fs.PathLike): Promise<void> {
  return observed({ op: 'rename', path: pathOf(from), dest: pathOf(to) }, () => fsp.rename(from, to));
}

export function link(existing: fs.PathLike, newPath: fs.PathLike): Promise<void> {
  return observed({ op: 'link', path: pathOf(existing), dest: pathOf(newPath) }, () =>
    fsp.link(existing, newPath),
  );
}

export function copyFile(from: fs.PathLike, to: fs.PathLike, mode?: number): Promise<void> {
  return observed({ op: 'copy', path: pathOf(from), dest: pathOf(to) }, () => fsp.copyFile(from, to, mode));
}

export function unlink(file: fs.PathLike): Promise<void> {
  return observed({ op: 'unlink', path: pathOf(file) }, () => fsp.unlink(file));
}

export function mkdir(
  dir: fs.PathLike,
  options?: MakeDirectoryOptions & { recursive?: boolean },
): Promise<string | undefined> {
  return observed({ op: 'mkdir', path: pathOf(dir) }, () => fsp.mkdir(dir, options));
}

export function rm(target: fs.PathLike, options?: RmOptions): Promise<void> {
  return observed({ op: 'rm', path: pathOf(target) }, () => fsp.rm(target, options));
}

export function rmdir(dir: fs.PathLike): Promise<void> {
  return observed({ op: 'rmdir', path: pathOf(dir) }, () => fsp.rmdir(dir));
}

export function chmod(target: fs.PathLike, mode: Mode): Promise<void> {
  return observed({ op: 'chmod', path: pathOf(target) }, () => fsp.chmod(target, mode));
}

/** fsyncs an existing file or directory opened read-only (the fsync of a folder's entries is `fsyncDir`). */
export async function fsyncPath(target: string, op: 'fsync' | 'fsyncDir'): Promise<void> {
  await observed({ op, path: target }, async () => {
    const handle = await fsp.open(target, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  });
}

/** Makes the whole file system holding `dir` durable (`sync -f`); returns false where that is not available. */
export function syncfs(dir: string, run: () => Promise<boolean>): Promise<boolean> {
  return observed({ op: 'syncfs', path: dir }, run);
}

/** A write stream to a new file (scratch and spool files); its creation is observed, its chunks are not. */
export function createWriteStream(
  file: string,
  options?: Parameters<typeof fs.createWriteStream>[1],
): fs.WriteStream {
  return observedSync({ op: 'create', path: file }, () => fs.createWriteStream(file, options));
}

// ---- synchronous API (the apply path writes small files synchronously) --------

export function writeFileSync(file: string, data: string | Uint8Array, options?: fs.WriteFileOptions): void {
  observedSync({ op: 'write', path: file }, () => fs.writeFileSync(file, data, options));
}

export function openSync(file: string, flags: string | number, mode?: Mode): number {
  return createsFile(flags)
    ? observedSync({ op: 'create', path: file }, () => fs.openSync(file, flags, mode))
    : fs.openSync(file, flags, mode);
}

/** Writes to a file descriptor opened with `openSync`; `file` names it for the observer. */
export function writeSync(
  file: string,
  fd: number,
  data: Uint8Array,
  offset: number,
  length: number,
  position: number | null,
): number {
  return observedSync({ op: 'write', path: file }, () => fs.writeSync(fd, data, offset, length, position));
}

export function ftruncateSync(file: string, fd: number, len: number): void {
  observedSync({ op: 'truncate', path: file }, () => fs.ftruncateSync(fd, len));
}

export function fsyncSync(file: string, fd: number): void {
  observedSync({ op: 'fsync', path: file }, () => fs.fsyncSync(fd));
}

export function renameSync(from: string, to: string): void {
  observedSync({ op: 'rename', path: from, dest: to }, () => fs.renameSync(from, to));
}

export function linkSync(existing: string, newPath: string): void {
  observedSync({ op: 'link', path: existing, dest: newPath }, () => fs.linkSync(existing, newPath));
}

export function unlinkSync(file: string): void {
  observedSync({ op: 'unlink', path: file }, () => fs.unlinkSync(file));
}

export function mkdirSync(
  dir: string,
  options?: MakeDirectoryOptions & { recursive?: boolean },
): string | undefined {
  return observedSync({ op: 'mkdir', path: dir }, () => fs.mkdirSync(dir, options));
}

export function rmSync(target: string, options?: RmOptions): void {
  observedSync({ op: 'rm', path: target }, () => fs.rmSync(target, options));
}
