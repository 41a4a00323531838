/** Flags several wal-archiver commands share, and their checks. */

import { UsageError } from '../../contract/cli/flags.js';
import { isPartitionId } from '../../contract/partition-id.js';

/** `--object-store URL` (or WAL_ARCHIVER_OBJECT_STORE): the archive. */
export const objectStoreFlag = {
  type: 'string',
  help: 'the archive (s3://bucket/prefix?… or file:///path)',
  value: 'URL',
  required: true,
  env: 'WAL_ARCHIVER_OBJECT_STORE',
} as const;

/** UsageError unless `--partition`, when given, is a partition ID. */
export function checkPartitionFlag(partition: string | undefined): void {
  if (partition !== undefined && !isPartitionId(partition)) {
    throw new UsageError(
      `flag --partition: "${partition}" is not a partition ID (1-64 of [A-Za-z0-9._-], starting with a letter or digit)`,
    );
  }
}
