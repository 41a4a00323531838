import { describe, expect, it } from 'vitest';
import {
  GLOBAL_MANIFEST_KEY,
  MAX_TIMELINE,
  baseBackupKey,
  baseBackupPrefix,
  historyKey,
  isTimeline,
  splitTimelineKey,
  timelinePrefix,
  timelinesPrefix,
  tryParseHistoryKey,
  tryParseTimeline,
  verifiedKey,
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

describe('timeline keys', () => {
  it('timeline 1 is the layout before timelines; timeline N lives in timelines/<N>/', () => {
    expect(segmentKey('7', 1, 10, 1)).toBe(segmentKey('7', 1, 10));
    expect(segmentKey('7', 1, 10, 2)).toBe(
      'partitions/7/timelines/2/wal/0000000000001-000000000000a.tar.zst',
    );
    expect(baseBackupKey('7', 36, 3)).toBe('partitions/7/timelines/3/base/0000000000010.tar.zst');
    expect(partitionManifestKey('7', 12)).toBe('partitions/7/timelines/12/manifest.json');
    expect(segmentPrefix('7', 2)).toBe('partitions/7/timelines/2/wal/');
    expect(baseBackupPrefix('7', 2)).toBe('partitions/7/timelines/2/base/');
    expect(timelinePrefix('7')).toBe('partitions/7/');
    expect(timelinePrefix('7', 2)).toBe('partitions/7/timelines/2/');
    expect(timelinesPrefix('7')).toBe('partitions/7/timelines/');
  });

  it('parses a key of its own timeline only', () => {
    const s2 = segmentKey('7', 5, 9, 2);
    const b2 = baseBackupKey('7', 5, 2);
    expect(tryParseSegmentKey(s2, 2)).toEqual({ partition: '7', firstLsn: 5, lastLsn: 9 });
    expect(tryParseBaseKey(b2, 2)).toEqual({ partition: '7', lsn: 5 });
    expect(tryParseSegmentKey(s2)).toBeUndefined();
    expect(tryParseSegmentKey(s2, 3)).toBeUndefined();
    expect(tryParseBaseKey(b2)).toBeUndefined();
    expect(tryParseSegmentKey(segmentKey('7', 5, 9), 2)).toBeUndefined();
    expect(tryParseBaseKey(baseBackupKey('7', 5), 2)).toBeUndefined();
    expect(tryParsePartitionManifestKey(partitionManifestKey('7', 2), 2)).toBe('7');
    expect(tryParsePartitionManifestKey(partitionManifestKey('7', 2))).toBeUndefined();
    expect(tryParsePartitionManifestKey(partitionManifestKey('7'), 2)).toBeUndefined();
    expect(() => parseSegmentKey(s2)).toThrow(/not a segment key/);
    expect(() => parseBaseKey(b2, 1)).toThrow(/not a base backup key/);
    expect(partitionOfKey(s2)).toBe('7');
  });

  it('splits keys by timeline and refuses "timelines/1" and malformed numbers', () => {
    expect(splitTimelineKey('partitions/7/timelines/2/wal/x')).toEqual({
      partition: '7',
      timeline: 2,
      rest: ['wal', 'x'],
    });
    expect(splitTimelineKey('partitions/7/wal/x')).toEqual({
      partition: '7',
      timeline: 1,
      rest: ['wal', 'x'],
    });
    for (const n of ['1', '0', '02', '-2', 'x', '', '1234567890', '2.0'])
      expect(splitTimelineKey(`partitions/7/timelines/${n}/wal/x`)).toBeUndefined();
  });

  it('refuses timeline numbers that are not integers from 1 to MAX_TIMELINE', () => {
    for (const n of [0, -1, 1.5, Number.NaN, MAX_TIMELINE + 1, Number.MAX_SAFE_INTEGER + 2]) {
      expect(isTimeline(n)).toBe(false);
      expect(() => segmentKey('7', 1, 2, n)).toThrow(/timeline .* is not an integer from 1/);
      expect(() => partitionManifestKey('7', n)).toThrow(/is not an integer from 1/);
      expect(() => verifiedKey('7', n)).toThrow(/is not an integer from 1/);
    }
    expect(isTimeline(MAX_TIMELINE)).toBe(true);
    expect(timelinePrefix('7', MAX_TIMELINE)).toBe(`partitions/7/timelines/${MAX_TIMELINE}/`);
    expect(tryParseTimeline('7')).toBe(7);
    for (const t of ['0', '07', ' 7', '7 ', '1e3', '1234567890']) expect(tryParseTimeline(t)).toBeUndefined();
  });

  it('history and verified keys', () => {
    expect(historyKey('7', 2)).toBe('partitions/7/timelines/2/history.json');
    expect(() => historyKey('7', 1)).toThrow(/timeline 1 has no history record/);
    expect(tryParseHistoryKey(historyKey('7', 2))).toEqual({ partition: '7', timeline: 2 });
    expect(tryParseHistoryKey('partitions/7/history.json')).toBeUndefined();
    expect(tryParseHistoryKey('partitions/7/timelines/2/wal/history.json')).toBeUndefined();
    expect(tryParseHistoryKey('partitions/7/timelines/1/history.json')).toBeUndefined();
    expect(verifiedKey('7')).toBe('partitions/7/verified.json');
    expect(verifiedKey('7', 3)).toBe('partitions/7/timelines/3/verified.json');
  });
});
