import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';

/** Base backups one sidecar runs at once, across all its partitions, by default. */
export const DEFAULT_BACKUP_SLOTS = 2;

/**
 * A node-wide bound on base backups in flight, so thresholds crossed by many
 * partitions at once do not all snapshot the node together. Pure counting, no
 * waiting: a partition that gets no slot simply asks again on its next policy
 * round (its decision still stands then). At most one slot per partition.
 */
export class BackupSlots {
  private readonly holders = new Set<string>();

  constructor(readonly limit: number = DEFAULT_BACKUP_SLOTS) {
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `base backup slots must be a positive integer, not ${limit}`,
        { retryable: false },
      );
    }
  }

  /**
   * Takes a slot for `partition`: a release function (idempotent), or
   * undefined when every slot is taken or the partition holds one already.
   */
  tryAcquire(partition: string): (() => void) | undefined {
    if (this.holders.has(partition) || this.holders.size >= this.limit) return undefined;
    this.holders.add(partition);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holders.delete(partition);
    };
  }

  /** Whether `partition` holds a slot (a backup of it is in flight). */
  holds(partition: string): boolean {
    return this.holders.has(partition);
  }

  get inUse(): number {
    return this.holders.size;
  }

  get free(): number {
    return this.limit - this.holders.size;
  }
}
