/**
 * The crash controller: a durable-fs observer that counts the durable
 * operations made on paths under `root`, stops the "process" at the
 * `crashAt`-th one (that operation and every later one throw SimulatedCrash,
 * so nothing more reaches the disk), and can then simulate a power cut.
 *
 * The power-cut model follows inode identities (inode number and birth time,
 * so a reused inode number is a new file):
 * - the tree under `root` when `install()` is called is durable;
 * - an fsync of a file makes its current bytes durable;
 * - an fsync of a directory makes its current entries (name → inode) durable;
 * - a syncfs makes everything below its path durable.
 * `powerCut()` rebuilds the tree under `root` from that durable view: each
 * directory lists its durable entries (its last fsynced listing; for a
 * directory not fsynced since the start, its starting listing, or nothing if
 * it did not exist at the start but its parent durably names it); each file
 * holds its last fsynced bytes, else its starting bytes, else nothing. Two
 * durable names of one inode come back as hard links of one file.
 */

import fs from 'node:fs';
import path from 'node:path';

import { setDurableObserver, type DurableEvent, type DurableObserver } from '../../contract/fs/durable-fs.js';

/** What every durable operation throws once the controller has crashed. */
export class SimulatedCrash extends Error {
  /** Looks like a failed system call to the code under test, as the operation did fail. */
  readonly code = 'ECRASHED';
  constructor(message = 'simulated crash') {
    super(message);
    this.name = 'SimulatedCrash';
  }
}

export interface CrashControllerOptions {
  /** Only operations on paths under root are counted and crashed; others pass through. */
  root: string;
  /** 1-based index of the counted operation at which to crash (that operation does not happen). */
  crashAt?: number;
}

type Kind = 'file' | 'dir' | 'symlink';

interface Entry {
  id: string;
  kind: Kind;
}

interface FileData {
  bytes: Buffer;
  mode: number;
}

function idOf(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.birthtimeNs}`;
}

function kindOf(st: fs.BigIntStats): Kind | undefined {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  return undefined;
}

function lstat(p: string): fs.BigIntStats | undefined {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch {
    return undefined;
  }
}

export class CrashController implements DurableObserver {
  readonly root: string;
  readonly crashAt: number | undefined;
  /** Every counted operation that ran (before the crash). */
  readonly events: DurableEvent[] = [];
  /** The operation that was stopped, once crashed. */
  crashEvent: DurableEvent | undefined;

  private counted = 0;
  private isCrashed = false;
  private prev: DurableObserver | undefined;
  private installed = false;
  private rootId = '';
  private readonly startDirs = new Map<string, Map<string, Entry>>();
  private readonly startFiles = new Map<string, FileData>();
  private readonly startLinks = new Map<string, string>();
  private readonly durableDirs = new Map<string, Map<string, Entry>>();
  private readonly durableFiles = new Map<string, FileData>();
  private readonly durableLinks = new Map<string, string>();
  private crashWaiters: Array<() => void> = [];

  constructor(opts: CrashControllerOptions) {
    this.root = path.resolve(opts.root);
    this.crashAt = opts.crashAt;
  }

  /** How many counted operations ran. */
  get count(): number {
    return this.counted;
  }

  get crashed(): boolean {
    return this.isCrashed;
  }

  /** Resolves once the controller has crashed (never, if it does not). */
  whenCrashed(): Promise<void> {
    if (this.isCrashed) return Promise.resolve();
    return new Promise((resolve) => this.crashWaiters.push(resolve));
  }

  /** Starts observing: takes the tree under root as durable. */
  install(): void {
    if (this.installed) return;
    const st = lstat(this.root);
    if (!st?.isDirectory()) throw new Error(`crash controller: root ${this.root} is not a directory`);
    this.rootId = idOf(st);
    this.capture(this.root, st, this.startDirs, this.startFiles, this.startLinks);
    this.prev = setDurableObserver(this);
    this.installed = true;
  }

  /** Stops observing and restores the previous observer. */
  uninstall(): void {
    if (!this.installed) return;
    setDurableObserver(this.prev);
    this.prev = undefined;
    this.installed = false;
  }

  private under(p: string | undefined): boolean {
    if (p === undefined) return false;
    const abs = path.resolve(p);
    return abs === this.root || abs.startsWith(this.root + path.sep);
  }

  before(event: DurableEvent): void {
    if (!this.under(event.path) && !this.under(event.dest)) {
      this.prev?.before(event);
      return;
    }
    if (this.isCrashed) throw new SimulatedCrash(`crashed: ${event.op} ${event.path} refused`);
    const index = this.counted + 1;
    if (this.crashAt !== undefined && index >= this.crashAt) {
      this.isCrashed = true;
      this.crashEvent = event;
      const waiters = this.crashWaiters;
      this.crashWaiters = [];
      for (const w of waiters) w();
      throw new SimulatedCrash(`simulated crash at op ${index}: ${event.op} ${event.path}`);
    }
    this.counted = index;
    this.events.push({ ...event });
  }

  after(event: DurableEvent): void {
    if (!this.under(event.path) && !this.under(event.dest)) {
      this.prev?.after?.(event);
      return;
    }
    // An operation that started before the crash may finish after it: it reached the disk.
    const p = path.resolve(event.path);
    if (event.op === 'fsync') {
      const st = lstat(p);
      if (st?.isFile()) this.durableFiles.set(idOf(st), { bytes: fs.readFileSync(p), mode: Number(st.mode) });
    } else if (event.op === 'fsyncDir') {
      const st = lstat(p);
      if (st?.isDirectory()) this.durableDirs.set(idOf(st), this.listing(p));
    } else if (event.op === 'syncfs') {
      // syncfs makes the whole file system durable: all of root, not only below the path.
      const st = lstat(this.root);
      if (st) this.capture(this.root, st, this.durableDirs, this.durableFiles, this.durableLinks);
    }
  }

  private listing(dir: string): Map<string, Entry> {
    const out = new Map<string, Entry>();
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return out;
    }
    for (const name of names) {
      const st = lstat(path.join(dir, name));
      const kind = st && kindOf(st);
      if (st && kind) out.set(name, { id: idOf(st), kind });
    }
    return out;
  }

  private capture(
    p: string,
    st: fs.BigIntStats,
    dirs: Map<string, Map<string, Entry>>,
    files: Map<string, FileData>,
    links: Map<string, string>,
  ): void {
    const id = idOf(st);
    if (st.isDirectory()) {
      const list = this.listing(p);
      dirs.set(id, list);
      for (const name of list.keys()) {
        const child = path.join(p, name);
        const cst = lstat(child);
        if (cst) this.capture(child, cst, dirs, files, links);
      }
    } else if (st.isFile()) {
      files.set(id, { bytes: fs.readFileSync(p), mode: Number(st.mode) });
    } else if (st.isSymbolicLink()) {
      links.set(id, fs.readlinkSync(p));
    }
  }

  /** The durable listing of a directory (see the header). */
  private durableListing(id: string): Map<string, Entry> {
    return this.durableDirs.get(id) ?? this.startDirs.get(id) ?? new Map();
  }

  /**
   * A power cut after the crash: rebuilds the tree under root from what was
   * durable. Call after the crash, before reopening; uses node:fs directly.
   */
  async powerCut(): Promise<void> {
    if (!this.rootId) throw new Error('crash controller: powerCut() before install()');
    // Build the durable tree in memory first, then replace what is on disk.
    const written = new Map<string, string>();
    for (const name of fs.readdirSync(this.root)) {
      fs.rmSync(path.join(this.root, name), { recursive: true, force: true });
    }
    const build = (dirId: string, dirPath: string, depth: number): void => {
      if (depth > 64) return;
      for (const [name, entry] of this.durableListing(dirId)) {
        const target = path.join(dirPath, name);
        if (entry.kind === 'dir') {
          fs.mkdirSync(target);
          build(entry.id, target, depth + 1);
        } else if (entry.kind === 'symlink') {
          const to = this.durableLinks.get(entry.id) ?? this.startLinks.get(entry.id);
          if (to !== undefined) fs.symlinkSync(to, target);
        } else {
          const first = written.get(entry.id);
          if (first !== undefined) {
            fs.linkSync(first, target);
            continue;
          }
          const data = this.durableFiles.get(entry.id) ?? this.startFiles.get(entry.id);
          fs.writeFileSync(target, data?.bytes ?? Buffer.alloc(0));
          if (data) fs.chmodSync(target, data.mode & 0o7777);
          written.set(entry.id, target);
        }
      }
    };
    build(this.rootId, this.root, 0);
    await Promise.resolve();
  }
}
