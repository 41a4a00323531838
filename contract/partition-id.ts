/**
 * Partition IDs: the one rule for what names a partition, and the one order
 * partitions are listed in, for the node, the sidecar and the archive.
 *
 * The rule is what the object keys can hold (`partitions/<id>/…`, Contract 2):
 * 1–64 of [A-Za-z0-9._-], starting with a letter or digit — so an ID is one
 * path component on disk and in the store, never `.`, `..` or hidden.
 */

import { ErrorCodes, WalArchiverError } from './errors.js';

/** A partition ID that passed {@link isPartitionId}: cluster-wide, one path component. */
export type PartitionId = string;

const PARTITION_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** What {@link parsePartitionId} tells a caller an ID must look like. */
export const PARTITION_ID_RULE = 'use 1-64 of [A-Za-z0-9._-], starting with a letter or digit';

/** Whether `id` is a partition ID: 1–64 of [A-Za-z0-9._-], starting with a letter or digit. */
export function isPartitionId(id: unknown): id is PartitionId {
  return typeof id === 'string' && PARTITION_ID.test(id);
}

/** `id` as a partition ID; INVALID_ARGUMENT (not retryable) unless it is one. */
export function parsePartitionId(id: unknown): PartitionId {
  if (!isPartitionId(id)) {
    throw new WalArchiverError(
      ErrorCodes.INVALID_ARGUMENT,
      `invalid partition ID ${JSON.stringify(id)}: ${PARTITION_ID_RULE}`,
      { retryable: false, details: { partition: id } },
    );
  }
  return id;
}

/** Partition IDs in natural order: numeric IDs by value, before any other ID, which sort by code unit. */
export function comparePartitionIds(a: string, b: string): number {
  const an = /^\d+$/.test(a);
  const bn = /^\d+$/.test(b);
  if (an && bn) {
    const x = a.replace(/^0+(?=\d)/, '');
    const y = b.replace(/^0+(?=\d)/, '');
    if (x.length !== y.length) return x.length - y.length;
    if (x !== y) return x < y ? -1 : 1;
  } else if (an !== bn) {
    return an ? -1 : 1;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

/** `ids` sorted in partition order (a new array). */
export function sortPartitionIds<T extends string>(ids: Iterable<T>): T[] {
  return [...ids].sort(comparePartitionIds);
}
