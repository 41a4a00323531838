import { watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';

/**
 * Tells a partition's archiver when its hard state changes (a new commit
 * LSN), with one inotify watch (`fs.watch`) on `raft/` of each partition this
 * node leads: an idle partition costs one watch and no work, whatever their
 * number. Every event is passed on; none is merged or throttled, so the last
 * of a quick run of commits is never missed (the archiver re-reads the hard
 * state, so extra notifications cost one small read).
 *
 * A `raft/` that does not exist yet (or goes away) is looked for again every
 * `retryMs`; the archiver's own idle poll remains the safety net.
 */
export class CommitWatcher {
  private readonly watched = new Map<string, { watcher?: FSWatcher; retry?: NodeJS.Timeout }>();
  private closed = false;

  constructor(
    private readonly dataDir: string,
    private readonly onCommit: (partition: string) => void,
    private readonly retryMs = 1_000,
  ) {}

  add(partition: string): void {
    if (this.closed || this.watched.has(partition)) return;
    this.watched.set(partition, {});
    this.open(partition, false);
  }

  remove(partition: string): void {
    const w = this.watched.get(partition);
    if (!w) return;
    this.watched.delete(partition);
    w.watcher?.close();
    if (w.retry) clearTimeout(w.retry);
  }

  /** How many partitions are watched, and how many of those wait for their `raft/` to appear. */
  counts(): { watched: number; waiting: number } {
    let waiting = 0;
    for (const w of this.watched.values()) if (!w.watcher) waiting++;
    return { watched: this.watched.size, waiting };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const partition of [...this.watched.keys()]) this.remove(partition);
  }

  private open(partition: string, notify: boolean): void {
    const entry = this.watched.get(partition);
    if (!entry || this.closed) return;
    entry.retry = undefined;
    const dir = join(this.dataDir, 'partitions', partition, 'raft');
    try {
      const watcher = watch(dir, { persistent: false }, (_event, name) => {
        if (name === null || name === 'hard_state') this.onCommit(partition);
      });
      watcher.on('error', () => {
        // The folder went away (a partition removed or restored): look for it again.
        watcher.close();
        if (this.watched.get(partition) !== entry) return;
        entry.watcher = undefined;
        this.later(partition, entry);
      });
      entry.watcher = watcher;
      // A folder that appeared since the last look may already hold a new hard state.
      if (notify) this.onCommit(partition);
    } catch {
      this.later(partition, entry);
    }
  }

  private later(partition: string, entry: { retry?: NodeJS.Timeout }): void {
    if (this.closed) return;
    entry.retry = setTimeout(() => this.open(partition, true), this.retryMs);
    entry.retry.unref();
  }
}
