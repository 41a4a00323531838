import { describe, expect, it } from 'vitest';
import {
  GLOBAL_MANIFEST_KEY,
  baseBackupKey,
  parseBaseKey,
  parseSegmentKey,
  partitionManifestKey,
  partitionOfKey,
  segmentKey,
  segmentPrefix,
  tryParseBaseKey,
  tryParsePartitionManifestKey,
  tryParseSegmentKey,
} from '../../../../src/manifest/keys.js';
import { compareKeys } from '../../../../src/store/keys.js';
import { MemoryStore } from '../../../helpers/memory-store.js';

describe('key names', () => {
  it('follows Contract 2 with 13-character base-36 LSNs', () => {
    expect(segmentKey('7', 1, 10)).toBe('partitions/7/wal/0000000000001-000000000000a.tar.zst');
    expect(baseBackupKey('7', 36)).toBe('partitions/7/base/0000000000010.tar.zst');
    expect(partitionManifestKey('7')).toBe('partitions/7/manifest.json');
    expect(GLOBAL_MANIFEST_KEY).toBe('manifest.json');
    expect(segmentKey('p-1', 5, 5)).toBe('partitions/p-1/wal/0000000000005-0000000000005.tar.zst');
  });

  it('round-trips', () => {
    for (const [first, last] of [
      [1, 1],
      [35, 36],
      [1295, 46656],
      [Number.MAX_SAFE_INTEGER - 1, Number.MAX_SAFE_INTEGER],
    ] as const) {
      expect(parseSegmentKey(segmentKey('12', first, last))).toEqual({
        partition: '12',
        firstLsn: first,
        lastLsn: last,
      });
      expect(parseBaseKey(baseBackupKey('12', last))).toEqual({ partition: '12', lsn: last });
    }
  });

  it('refuses bad input', () => {
    expect(() => segmentKey('7', 10, 9)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => segmentKey('7', 0, 9)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => segmentKey('../x', 1, 9)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => baseBackupKey('a/b', 1)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => partitionManifestKey('')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });

  it.each([
    'partitions/7/wal/0000000000001-000000000000A.tar.zst',
    'partitions/7/wal/000000000001-000000000000a.tar.zst',
    'partitions/7/wal/0000000000001-000000000000a.tar',
    'partitions/7/wal/0000000000001-000000000000a.tar.zst.tmp',
    'partitions/7/wal/000000000000b-000000000000a.tar.zst',
    'partitions/7/wal/0000000000000-000000000000a.tar.zst',
    'partitions/7/wal/0000000000001_000000000000a.tar.zst',
    'partitions/7/wal/x/0000000000001-000000000000a.tar.zst',
    'partitions/7/base/0000000000001-000000000000a.tar.zst',
    'partitions/.7/wal/0000000000001-000000000000a.tar.zst',
    'partitions//wal/0000000000001-000000000000a.tar.zst',
    'other/7/wal/0000000000001-000000000000a.tar.zst',
    'prefix/partitions/7/wal/0000000000001-000000000000a.tar.zst',
    'partitions/7/wal/zzzzzzzzzzzzz-zzzzzzzzzzzzz.tar.zst',
  ])('rejects the segment key %s', (key) => {
    expect(tryParseSegmentKey(key)).toBeUndefined();
    expect(() => parseSegmentKey(key)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });

  it.each([
    'partitions/7/base/000000000000A.tar.zst',
    'partitions/7/base/0000000000000.tar.zst',
    'partitions/7/base/0000000000001.tar.gz',
    'partitions/7/base/0000000000001.tar.zst/x',
    'partitions/7/wal/0000000000001.tar.zst',
    'partitions/7/base/1.tar.zst',
  ])('rejects the base backup key %s', (key) => {
    expect(tryParseBaseKey(key)).toBeUndefined();
    expect(() => parseBaseKey(key)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });

  it('recognises partition manifests and the partition of a key', () => {
    expect(tryParsePartitionManifestKey('partitions/7/manifest.json')).toBe('7');
    expect(tryParsePartitionManifestKey('partitions/7/x/manifest.json')).toBeUndefined();
    expect(tryParsePartitionManifestKey('manifest.json')).toBeUndefined();
    expect(partitionOfKey('partitions/abc/wal/x')).toBe('abc');
    expect(partitionOfKey('partitions/.x/wal/x')).toBeUndefined();
  });
});

describe('key order', () => {
  // LSNs either side of base-36 digit boundaries: 9|a, z|10, zz|100, zzz|1000.
  const lsns = [1, 9, 10, 35, 36, 37, 71, 72, 1295, 1296, 1297, 46655, 46656, 2 ** 32, 2 ** 40];

  it('sorts segment and base keys in LSN order across digit boundaries', () => {
    const segments = lsns.map((l) => segmentKey('3', l, l + 1));
    expect([...segments].reverse().sort(compareKeys)).toEqual(segments);
    const bases = lsns.map((l) => baseBackupKey('3', l));
    expect([...bases].reverse().sort(compareKeys)).toEqual(bases);
    // Plain string order agrees with byte order for these ASCII names.
    expect([...segments].reverse().sort()).toEqual(segments);
  });

  it('lists objects uploaded out of order in LSN order', async () => {
    const store = new MemoryStore();
    const order = [...lsns].sort((a, b) => ((a * 7919) % 13) - ((b * 7919) % 13));
    for (const l of order) await store.create(segmentKey('3', l, l), Buffer.from(String(l)));
    const listed: number[] = [];
    for await (const obj of store.list(segmentPrefix('3'))) listed.push(parseSegmentKey(obj.key).firstLsn);
    expect(listed).toEqual(lsns);
  });
});
