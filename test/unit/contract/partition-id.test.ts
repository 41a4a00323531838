import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { comparePartitionIds, isPartitionId, parsePartitionId } from '../../../contract/partition-id.js';
import { listPartitionIds, partitionDir } from '../../../contract/wal/entry.js';
import { partitionManifestKey, tryParsePartitionManifestKey } from '../../../src/manifest/keys.js';
import { startSingleNode } from '../../helpers/single-node.js';

/** IDs the manifest keys cannot hold. */
const UNREPRESENTABLE = [
  '',
  '.',
  '..',
  'a/b',
  'a\\b',
  '-1',
  '.hidden',
  '_x',
  'a b',
  'é',
  '1'.padEnd(65, '0'),
  'x'.repeat(65),
];
const REPRESENTABLE = ['1', '007', 'p-7', 'a.b_c-d', 'Z', '1'.padEnd(64, '0')];

let root: string;
beforeEach(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'partition-id-'));
});
afterEach(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});

describe('PartitionId', () => {
  it('accepts exactly what the manifest keys can hold', () => {
    for (const id of REPRESENTABLE) {
      expect(isPartitionId(id)).toBe(true);
      expect(parsePartitionId(id)).toBe(id);
      expect(tryParsePartitionManifestKey(partitionManifestKey(id))).toBe(id);
    }
    for (const id of UNREPRESENTABLE) {
      expect(isPartitionId(id)).toBe(false);
      expect(() => parsePartitionId(id)).toThrow(/invalid partition ID/);
      expect(() => partitionManifestKey(id)).toThrow(/invalid partition ID/);
    }
    expect(isPartitionId(7)).toBe(false);
  });

  it('orders numeric IDs by value, before the others, which sort by code unit', () => {
    const ids = ['b', '10', 'A', '9', '010', 'a-1', '2'];
    expect([...ids].sort(comparePartitionIds)).toEqual(['2', '9', '010', '10', 'A', 'a-1', 'b']);
  });

  it('orders partition IDs naturally', () => {
    expect(['10', 'b', '2', '01', 'a', '1'].sort(comparePartitionIds)).toEqual([
      '01',
      '1',
      '2',
      '10',
      'a',
      'b',
    ]);
  });

  it('the data directory refuses a partition directory the manifest keys cannot hold', () => {
    for (const id of UNREPRESENTABLE) expect(() => partitionDir(root, id)).toThrow(/invalid partition ID/);
    for (const id of REPRESENTABLE) expect(partitionDir(root, id)).toBe(path.join(root, 'partitions', id));
  });

  it('lists a data directory in the one order, skipping what is not a partition ID', async () => {
    for (const name of ['10', '9', 'b', '2', '.tmp', 'a b', 'x'.repeat(65)])
      await fsp.mkdir(path.join(root, 'partitions', name), { recursive: true });
    expect(await listPartitionIds(root)).toEqual(['2', '9', '10', 'b']);
  });

  it('the storage node opens only partitions the manifest keys can hold, and lists them in the one order', async () => {
    for (const name of ['10', '1'.padEnd(65, '0'), 'a b'])
      await fsp.mkdir(path.join(root, 'partitions', name), { recursive: true });
    const node = await startSingleNode(root);
    try {
      const statuses = (await (await fetch(`${node.url}/v1/partitions`)).json()) as Array<{
        partition: string;
      }>;
      expect(statuses.map((s) => s.partition)).toEqual(['1', '2', '10']);
    } finally {
      await node.stop();
    }
  });
});
