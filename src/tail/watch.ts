import { join } from 'node:path';
import chokidar, { type FSWatcher } from 'chokidar';

/**
 * Tells a partition's archiver when its hard state changes (a new commit
 * LSN), using chokidar on `raft/` of the partitions this node leads only: an
 * idle partition costs one inotify watch and no work, whatever their number.
 */
export class CommitWatcher {
  private readonly watcher: FSWatcher;
  private readonly watched = new Map<string, string>();

  constructor(
    private readonly dataDir: string,
    private readonly onCommit: (partition: string) => void,
  ) {
    this.watcher = chokidar.watch([], {
      ignoreInitial: true,
      depth: 0,
      // The node replaces hard_state by rename; report it at once rather than
      // waiting to merge the unlink and add into one change.
      atomic: false,
      persistent: true,
    });
    const fire = (path: string) => {
      if (!path.endsWith('hard_state')) return;
      const partition = this.partitionOf(path);
      if (partition) this.onCommit(partition);
    };
    this.watcher.on('add', fire);
    this.watcher.on('change', fire);
  }

  private partitionOf(path: string): string | undefined {
    const m = /partitions[\\/]([^\\/]+)[\\/]raft[\\/]hard_state$/.exec(path);
    return m && this.watched.has(m[1]!) ? m[1] : undefined;
  }

  add(partition: string): void {
    if (this.watched.has(partition)) return;
    const dir = join(this.dataDir, 'partitions', partition, 'raft');
    this.watched.set(partition, dir);
    this.watcher.add(dir);
  }

  remove(partition: string): void {
    const dir = this.watched.get(partition);
    if (!dir) return;
    this.watched.delete(partition);
    this.watcher.unwatch(dir);
  }

  async close(): Promise<void> {
    await this.watcher.close();
  }
}
