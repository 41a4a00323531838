import { stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { join, resolve } from 'node:path';
import { FSWatcher } from 'chokidar';

/**
 * How long after the last `change` chokidar reported for a partition the
 * watcher looks at `raft/hard_state` itself: twice chokidar's 50 ms
 * throttle of repeated `change` events on one path.
 */
export const TRAILING_CHECK_MS = 100;

interface Watched {
  /** The hard-state file this partition's archiver follows. */
  file: string;
  /** chokidar watches `file` (otherwise it is looked for every `retryMs`). */
  watching: boolean;
  /** Identity (inode and change time) of the hard state last reported. */
  seen?: string;
  retry?: NodeJS.Timeout;
  check?: NodeJS.Timeout;
}

/**
 * Tells a partition's archiver when its hard state changes (a new commit
 * LSN). One chokidar watcher, shared by every partition this node leads,
 * watches each partition's `raft/hard_state`: one inotify watch a partition,
 * and no work while it is idle, whatever their number. A notification
 * carries no LSN: the archiver reads the Commit from the file itself.
 *
 * The node replaces the hard state by rename, and chokidar re-opens its
 * watch on the new file after each replacement. It throttles a path's
 * repeated `change` events (50 ms, leading edge) and its own handling of a
 * watch event (5 ms): the last commit of a quick burst goes unreported, and
 * a replacement inside the 5 ms leaves its watch on the replaced file, so
 * no later commit would be seen either. So after the last reported change
 * the watcher looks at the file once more (`TRAILING_CHECK_MS`), and while
 * it keeps finding a file chokidar did not report, it reports it, watches
 * the current file anew and looks again.
 *
 * A hard state that does not exist yet (or goes away: a partition removed
 * or restored) is looked for again every `retryMs`; the archiver's own idle
 * poll remains the safety net.
 */
export class CommitWatcher {
  private readonly dataDir: string;
  private readonly watched = new Map<string, Watched>();
  private readonly byFile = new Map<string, string>();
  private readonly chokidar: FSWatcher;
  private closed = false;

  constructor(
    dataDir: string,
    private readonly onCommit: (partition: string) => void,
    private readonly retryMs = 1_000,
  ) {
    this.dataDir = resolve(dataDir);
    this.chokidar = new FSWatcher({
      // As fs.watch was used before: the watches never keep the process alive.
      persistent: false,
      ignoreInitial: true,
      // Only `raft/hard_state` itself is watched (not its folder), and it is replaced by rename:
      // an unlink is the file gone, reported at once.
      atomic: false,
      awaitWriteFinish: false,
      usePolling: false,
    });
    this.chokidar.on('change', (file: string, st?: Stats) => this.changed(file, st));
    this.chokidar.on('add', (file: string, st?: Stats) => this.changed(file, st));
    this.chokidar.on('unlink', (file: string) => this.gone(file));
    // A watch that fails is found by the trailing check or the retry; never an unhandled 'error'.
    this.chokidar.on('error', () => undefined);
  }

  add(partition: string): void {
    if (this.closed || this.watched.has(partition)) return;
    const file = join(this.dataDir, 'partitions', partition, 'raft', 'hard_state');
    this.watched.set(partition, { file, watching: false });
    this.byFile.set(file, partition);
    void this.look(partition, false);
  }

  remove(partition: string): void {
    const w = this.watched.get(partition);
    if (!w) return;
    this.watched.delete(partition);
    this.byFile.delete(w.file);
    if (w.watching) this.chokidar.unwatch(w.file);
    clearTimeout(w.retry);
    clearTimeout(w.check);
  }

  /** How many partitions are watched, and how many of those wait for their hard state to appear. */
  counts(): { watched: number; waiting: number } {
    let waiting = 0;
    for (const w of this.watched.values()) if (!w.watching) waiting++;
    return { watched: this.watched.size, waiting };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.watched.values()) {
      clearTimeout(w.retry);
      clearTimeout(w.check);
    }
    this.watched.clear();
    this.byFile.clear();
    await this.chokidar.close();
  }

  /** chokidar reported the hard state replaced. */
  private changed(file: string, st: Stats | undefined): void {
    const partition = this.byFile.get(file);
    const w = partition === undefined ? undefined : this.watched.get(partition);
    if (!w || !w.watching || this.closed) return;
    if (st) w.seen = identity(st);
    this.onCommit(partition!);
    this.trail(partition!, w);
  }

  /** chokidar found the hard state gone and no longer watches it. */
  private gone(file: string): void {
    const partition = this.byFile.get(file);
    const w = partition === undefined ? undefined : this.watched.get(partition);
    if (!w || !w.watching || this.closed) return;
    this.unwatched(partition!, w);
  }

  /** (Re)arms the look at the file after the last reported change. */
  private trail(partition: string, w: Watched): void {
    clearTimeout(w.check);
    w.check = setTimeout(() => void this.recheck(partition, w), TRAILING_CHECK_MS);
    w.check.unref();
  }

  private async recheck(partition: string, w: Watched): Promise<void> {
    w.check = undefined;
    let st: Stats;
    try {
      st = await stat(w.file);
    } catch {
      if (this.watched.get(partition) === w && w.watching) this.unwatched(partition, w);
      return;
    }
    if (this.watched.get(partition) !== w || !w.watching || this.closed) return;
    const now = identity(st);
    if (now === w.seen) return;
    // Replaced since the last change chokidar reported: report it, and watch the current file.
    w.seen = now;
    this.chokidar.unwatch(w.file);
    this.chokidar.add(w.file);
    this.onCommit(partition);
    this.trail(partition, w);
  }

  private unwatched(partition: string, w: Watched): void {
    w.watching = false;
    w.seen = undefined;
    clearTimeout(w.check);
    w.check = undefined;
    this.chokidar.unwatch(w.file);
    this.onCommit(partition);
    this.later(partition, w);
  }

  /** Watches the hard state if it exists, or looks again in `retryMs`. */
  private async look(partition: string, notify: boolean): Promise<void> {
    const w = this.watched.get(partition);
    if (!w || this.closed) return;
    w.retry = undefined;
    let st: Stats | undefined;
    try {
      st = await stat(w.file);
    } catch {
      st = undefined;
    }
    if (this.watched.get(partition) !== w || this.closed) return;
    if (!st) return this.later(partition, w);
    w.watching = true;
    w.seen = identity(st);
    this.chokidar.add(w.file);
    // The file appeared since the last look, or was replaced before the watch began: look once more.
    this.trail(partition, w);
    if (notify) this.onCommit(partition);
  }

  private later(partition: string, w: Watched): void {
    if (this.closed) return;
    w.retry = setTimeout(() => void this.look(partition, true), this.retryMs);
    w.retry.unref();
  }
}

/** The file, not its content: the node replaces it by rename, so each hard state is a new inode (or a new change time). */
function identity(st: Stats): string {
  return `${st.ino}:${st.ctimeMs}`;
}
