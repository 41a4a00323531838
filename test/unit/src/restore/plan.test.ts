import { describe, expect, it } from 'vitest';
import { isWalArchiverError } from '../../../../contract/errors.js';
import { baseBackupKey, segmentKey } from '../../../../src/manifest/keys.js';
import type { BackupRecord, PartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import {
  BEFORE_ARCHIVE,
  archiveFromManifest,
  archiveFromObjects,
  chooseBackup,
  coverRange,
  parseTimeTarget,
  planRestore,
  resolveTarget,
  type ArchiveSegment,
  type EntryTime,
  type PartitionArchive,
} from '../../../../src/restore/plan.js';
import { backup } from '../manifest/fixtures.js';

const P = '7';
const T0 = Date.parse('2025-01-01T00:00:00.000Z');
/** The manual base backup at LSN 4 that the manifests of these tests record. */
const backupAt4 = (over: Partial<BackupRecord>): BackupRecord =>
  backup(P, 4, { bytes: 5, sha256: 'd'.repeat(64), trigger: 'manual', term: 2, ...over });
/** Entry n is committed at T0 + 10·n ms; entry 5 is a new leader's empty entry (no time). */
function timeOf(lsn: number): number {
  return lsn === 5 ? 0 : T0 + lsn * 10;
}

function seg(first: number, last: number, withTimes = true): ArchiveSegment {
  const at = (l: number) => timeOf(l) || timeOf(l - 1);
  return {
    key: segmentKey(P, first, last),
    firstLsn: first,
    lastLsn: last,
    sha256: 'a'.repeat(64),
    bytes: 100,
    ...(withTimes
      ? { firstCommittedAt: at(first), lastCommittedAt: at(last), maxCommittedAt: at(last) }
      : {}),
  };
}

function archive(segments: ArchiveSegment[], backups: number[] = []): PartitionArchive {
  return archiveFromObjects(P, [
    ...segments.map((s) => ({ key: s.key, size: s.bytes, metadata: { sha256: s.sha256! } })),
    ...backups.map((lsn) => ({ key: baseBackupKey(P, lsn), size: 10, metadata: { sha256: 'b'.repeat(64) } })),
  ]);
}

function withTimes(a: PartitionArchive, segments: ArchiveSegment[]): PartitionArchive {
  return { ...a, source: 'manifest', segments };
}

/** A reader of entry times that records which segments it had to read. */
function reader() {
  const read: string[] = [];
  const fn = async (s: ArchiveSegment): Promise<EntryTime[]> => {
    read.push(s.key);
    const out: EntryTime[] = [];
    for (let l = s.firstLsn; l <= s.lastLsn; l++) out.push({ lsn: l, committedAt: timeOf(l) });
    return out;
  };
  return { read, fn };
}

async function expectError(p: Promise<unknown> | (() => unknown), pattern: RegExp, code = 'NOT_FOUND') {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(isWalArchiverError(err), String(err)).toBe(true);
  expect((err as Error).message).toMatch(pattern);
  expect((err as { code: string }).code).toBe(code);
  return err as Error & { details: Record<string, unknown> };
}

describe('restore planning: targets', () => {
  const segments = [seg(1, 10), seg(11, 20), seg(21, 30)];
  const a = withTimes(archive(segments), segments);

  it('--latest is the last archived LSN', async () => {
    expect(await resolveTarget(a, { kind: 'latest' }, reader().fn)).toBe(30);
  });

  it('an LSN target is taken as it is, and one beyond the archive is refused naming the last segment', async () => {
    expect(await resolveTarget(a, { kind: 'lsn', lsn: 17 }, reader().fn)).toBe(17);
    await expectError(
      resolveTarget(a, { kind: 'lsn', lsn: 31 }, reader().fn),
      /partition 7: LSN 31 is beyond the archive, which ends at LSN 30 \(last segment partitions\/7\/wal\/000000000000l-000000000000u\.tar\.zst\)/,
    );
  });

  it('a time maps to the last entry committed at or before it, reading only the one segment it falls in', async () => {
    const r = reader();
    expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 137) }, r.fn)).toBe(13);
    expect(r.read).toEqual([segments[1]!.key]);
  });

  it('a time exactly at an entry commit includes it; a time between two entries stops before the later', async () => {
    expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 140) }, reader().fn)).toBe(14);
    expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 149) }, reader().fn)).toBe(14);
  });

  it('a time at a segment boundary skips the segments before it and reads only the one after', async () => {
    const r = reader();
    expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 205) }, r.fn)).toBe(20);
    expect(r.read).toEqual([segments[2]!.key]);
    expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 10_000) }, r.fn)).toBe(30);
  });

  it('an entry without a commit time goes with the entries before it', async () => {
    expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 45) }, reader().fn)).toBe(5);
  });

  it('a time before the first archived entry is refused, naming the LSN and the segment', async () => {
    const err = await expectError(
      resolveTarget(a, { kind: 'time', time: new Date(T0 + 5) }, reader().fn),
      /partition 7: 2025-01-01T00:00:00\.005Z is before the first archived entry \(LSN 1; the first commit time is 2025-01-01T00:00:00\.010Z, at LSN 1; in partitions\/7\/wal\/0000000000001-000000000000a\.tar\.zst/,
    );
    expect(err.details.reason).toBe(BEFORE_ARCHIVE);
  });

  it('a leading empty entry, recorded with an approximate later time, goes with the first timed entry', async () => {
    // LSN 1 is a new leader's empty entry in a segment of its own; the
    // archiver recorded its boundary time as the upload time, after LSN 2.
    const times = new Map([
      [1, 0],
      [2, T0 + 20],
      [3, T0 + 30],
    ]);
    const segments = [
      { ...seg(1, 1, false), firstCommittedAt: T0 + 500, lastCommittedAt: T0 + 500 },
      { ...seg(2, 3, false), firstCommittedAt: T0 + 20, lastCommittedAt: T0 + 30 },
    ];
    const b = withTimes(archive(segments), segments);
    const read = async (s: ArchiveSegment) =>
      [...times]
        .filter(([l]) => l >= s.firstLsn && l <= s.lastLsn)
        .map(([lsn, committedAt]) => ({ lsn, committedAt }));
    expect(await resolveTarget(b, { kind: 'time', time: new Date(T0 + 25) }, read)).toBe(2);
    await expectError(
      resolveTarget(b, { kind: 'time', time: new Date(T0 + 15) }, read),
      /before the first archived entry \(LSN 1; the first commit time is 2025-01-01T00:00:00\.020Z, at LSN 2;/,
    );
  });

  it('without boundary times (no manifest) the segments are read in order until the time is passed', async () => {
    const plain = [seg(1, 10, false), seg(11, 20, false), seg(21, 30, false)];
    const r = reader();
    expect(await resolveTarget(archive(plain), { kind: 'time', time: new Date(T0 + 155) }, r.fn)).toBe(15);
    expect(r.read).toEqual([plain[0]!.key, plain[1]!.key]);
  });

  it('overlapping segments (after a handoff) are walked without reading an LSN twice', async () => {
    const over = [seg(1, 10), seg(8, 20), seg(21, 30)];
    const o = withTimes(archive(over), over);
    expect(o.archived).toEqual({ firstLsn: 1, lastLsn: 30 });
    expect(await resolveTarget(o, { kind: 'time', time: new Date(T0 + 125) }, reader().fn)).toBe(12);
  });

  it('parses ISO 8601 with a zone and Unix milliseconds, and nothing else', () => {
    expect(parseTimeTarget('2025-01-01T00:00:00.137Z')?.getTime()).toBe(T0 + 137);
    expect(parseTimeTarget('2025-01-01T01:00:00+01:00')?.getTime()).toBe(T0);
    expect(parseTimeTarget(String(T0))?.getTime()).toBe(T0);
    expect(parseTimeTarget('2025-01-01 00:00')).toBeUndefined();
    expect(parseTimeTarget('2025-01-01T00:00:00')).toBeUndefined();
    expect(parseTimeTarget('yesterday')).toBeUndefined();
  });
});

describe('restore planning: backups and segments', () => {
  it('replays from LSN 1 when there is no base backup', () => {
    const p = planRestore(archive([seg(1, 10), seg(11, 20)]), 15);
    expect(p.backup).toBeUndefined();
    expect(p.fromLsn).toBe(1);
    expect(p.segments.map((s) => [s.firstLsn, s.lastLsn])).toEqual([
      [1, 10],
      [11, 20],
    ]);
  });

  it('uses the newest base backup at or before the target and only the segments after it', () => {
    const a = archive([seg(1, 10), seg(11, 20), seg(21, 30)], [8, 12, 25]);
    expect(chooseBackup(a, 24)?.lsn).toBe(12);
    const p = planRestore(a, 24);
    expect(p.backup?.lsn).toBe(12);
    expect(p.fromLsn).toBe(13);
    expect(p.segments.map((s) => s.firstLsn)).toEqual([11, 21]);
    const exact = planRestore(a, 25);
    expect(exact.backup?.lsn).toBe(25);
    expect(exact.segments).toEqual([]);
    expect(planRestore(a, 5).backup).toBeUndefined();
  });

  it('coverRange picks the fewest segments, overlapping ones too, and reports a gap', async () => {
    const a = archive([seg(1, 10), seg(5, 20), seg(21, 21), seg(22, 40)]);
    expect(coverRange(a, 3, 40, 'the test').map((s) => [s.firstLsn, s.lastLsn])).toEqual([
      [1, 10],
      [5, 20],
      [21, 21],
      [22, 40],
    ]);
    expect(coverRange(a, 6, 21, 'the test').map((s) => s.firstLsn)).toEqual([5, 21]);
    await expectError(() => coverRange(a, 30, 41, 'the test'), /no segment holds LSN 41/);
  });

  it('a backup lets the restore start after segments retention removed', () => {
    const a = archive([seg(11, 20), seg(21, 30)], [10]);
    expect(planRestore(a, 30).segments.map((s) => s.firstLsn)).toEqual([11, 21]);
  });

  it('a gap is refused naming the LSN and the segments around it', async () => {
    const a = archive([seg(1, 10), seg(13, 20)]);
    expect(a.archived).toEqual({ firstLsn: 1, lastLsn: 20 });
    await expectError(
      () => planRestore(a, 15),
      /partition 7: gap in the archive: no segment holds LSN 11, needed for LSNs 1-15 .*the segment before ends at LSN 10 \(partitions\/7\/wal\/0000000000001-000000000000a\.tar\.zst\), the next one starts at LSN 13/,
    );
    await expectError(() => planRestore(a, 21), /LSN 21 is beyond the archive, which ends at LSN 20/);
    await expectError(
      resolveTarget(a, { kind: 'time', time: new Date(T0 + 1000) }, reader().fn),
      /gap in the archive: no segment holds LSN 11/,
    );
  });

  it('without a backup, an archive that does not start at LSN 1 cannot be restored', async () => {
    const a = archive([seg(5, 10)]);
    await expectError(
      () => planRestore(a, 8),
      /no segment holds LSN 1, needed for LSNs 1-8 \(there is no base backup/,
    );
  });

  it('an empty archive is refused', async () => {
    await expectError(resolveTarget(archive([]), { kind: 'latest' }, reader().fn), /nothing is archived/);
  });

  it('an LSN below 1 is a usage error', async () => {
    await expectError(() => planRestore(archive([seg(1, 3)]), 0), /at least 1/, 'INVALID_ARGUMENT');
  });

  it('reads boundary times and checksums from the manifest', () => {
    const m: PartitionManifest = {
      schema: 1,
      partition: P,
      leader: { node: 1, term: 2 },
      version: 3,
      archived: { first_lsn: 1, last_lsn: 10 },
      segments: [
        {
          key: segmentKey(P, 1, 10),
          first_lsn: 1,
          last_lsn: 10,
          entries: 10,
          bytes: 99,
          raw_bytes: 200,
          sha256: 'c'.repeat(64),
          first_committed_at: new Date(T0).toISOString(),
          last_committed_at: new Date(T0 + 90).toISOString(),
          archived_at: new Date(T0 + 100).toISOString(),
          term: 2,
          node: 1,
        },
      ],
      backups: [backupAt4({ taken_at: new Date(T0).toISOString() })],
      published_lsn: 0,
      updated_at: new Date(T0).toISOString(),
    };
    const a = archiveFromManifest(m);
    expect(a.segments[0]).toMatchObject({
      firstCommittedAt: T0,
      lastCommittedAt: T0 + 90,
      sha256: 'c'.repeat(64),
    });
    expect(a.backups[0]).toMatchObject({ lsn: 4, term: 2 });
    expect(planRestore(a, 9).backup?.lsn).toBe(4);
  });
});

describe('restore planning: time targets with commit stamps that do not grow with the LSN', () => {
  // LSN 4 was stamped by a leader whose clock was ahead; LSNs 5-8 by the next
  // one, behind it; LSN 9 is that leader's empty entry (no stamp).
  const stamps = [10, 20, 30, 80, 40, 50, 60, 70, 0, 90, 100, 110].map((ms) => (ms ? T0 + ms : 0));
  const stampOf = (lsn: number) => stamps[lsn - 1]!;
  const N = stamps.length;
  /** The rule, by brute force: the highest L with every stamped entry up to L at or before t. */
  const expected = (t: number) => {
    let answer = 0;
    for (let l = 1; l <= N; l++) {
      if (stampOf(l) > t) break;
      answer = l;
    }
    return answer;
  };
  const read = async (s: ArchiveSegment): Promise<EntryTime[]> => {
    const out: EntryTime[] = [];
    for (let l = s.firstLsn; l <= s.lastLsn; l++) out.push({ lsn: l, committedAt: stampOf(l) });
    return out;
  };
  /** Segments of 1…N ending after each LSN in `ends` (and at N). */
  const segmentation = (ends: number[]) => {
    const cuts = [...new Set([...ends, N])].sort((a, b) => a - b);
    let first = 1;
    return cuts.map((last) => {
      const s: ArchiveSegment = { ...seg(first, last, false) };
      const lsns = Array.from({ length: last - first + 1 }, (_, i) => first + i);
      const timed = lsns.map(stampOf).filter((x) => x > 0);
      first = last + 1;
      return { s, firstAt: stampOf(s.firstLsn), lastAt: stampOf(s.lastLsn), max: Math.max(0, ...timed) };
    });
  };
  const segmentations = [
    [],
    [5],
    [4],
    [3],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    [2, 6, 9],
    [4, 8],
    [3, 5, 10],
  ];
  const times = [5, 10, 35, 45, 65, 75, 79, 80, 85, 95, 200].map((ms) => T0 + ms);

  it('gives the same LSN for every segmentation, from old records, new records and the objects alone', async () => {
    for (const ends of segmentations) {
      const segs = segmentation(ends);
      const objects = archive(segs.map((x) => x.s));
      // Records written before the greatest time was recorded: first and last only.
      const old = withTimes(
        objects,
        segs.map((x) => ({ ...x.s, firstCommittedAt: x.firstAt, lastCommittedAt: x.lastAt })),
      );
      // Records with the greatest commit time.
      const recorded = withTimes(
        objects,
        segs.map((x) => ({
          ...x.s,
          firstCommittedAt: x.firstAt,
          lastCommittedAt: x.lastAt,
          ...(x.max ? { maxCommittedAt: x.max } : {}),
        })),
      );
      // The objects alone, with the greatest time in their metadata.
      const listed = archiveFromObjects(
        P,
        segs.map((x) => ({
          key: x.s.key,
          size: 1,
          metadata: {
            sha256: 'a'.repeat(64),
            ...(x.max ? { 'max-committed-at': new Date(x.max).toISOString() } : {}),
          },
        })),
      );
      for (const t of times) {
        const want = expected(t);
        for (const [name, view] of [
          ['objects', objects],
          ['old records', old],
          ['records', recorded],
          ['listed', listed],
        ] as const) {
          const got = await resolveTarget(view, { kind: 'time', time: new Date(t) }, read).then(
            (l) => l,
            (err: Error) => (isWalArchiverError(err) && err.details.reason === BEFORE_ARCHIVE ? 0 : -1),
          );
          expect(got, `segments ending at ${String(ends)}, ${name}, T0+${t - T0} ms`).toBe(want);
        }
      }
    }
  });

  it('never applies an entry stamped after the time: 65 ms stops before LSN 4 (80 ms) though LSNs 5-7 are earlier', async () => {
    const segs = segmentation([5]);
    const old = withTimes(
      archive(segs.map((x) => x.s)),
      segs.map((x) => ({ ...x.s, firstCommittedAt: x.firstAt, lastCommittedAt: x.lastAt })),
    );
    // The first segment ends at LSN 5, stamped 40 ms: its last time is before 65 ms, its LSN 4 is not.
    expect(await resolveTarget(old, { kind: 'time', time: new Date(T0 + 65) }, read)).toBe(3);
    expect(await resolveTarget(old, { kind: 'time', time: new Date(T0 + 85) }, read)).toBe(9);
  });

  it('skips a segment unread only when its greatest commit time is at or before the time', async () => {
    const segs = segmentation([5]);
    const recorded = withTimes(
      archive(segs.map((x) => x.s)),
      segs.map((x) => ({ ...x.s, maxCommittedAt: x.max })),
    );
    const seen: string[] = [];
    const spy = async (s: ArchiveSegment) => {
      seen.push(s.key);
      return read(s);
    };
    expect(await resolveTarget(recorded, { kind: 'time', time: new Date(T0 + 85) }, spy)).toBe(9);
    expect(seen).toEqual([segs[1]!.s.key]);
  });

  it('reads the greatest commit time from the manifest record', () => {
    const a = archiveFromManifest({
      schema: 1,
      partition: P,
      leader: null,
      version: 1,
      archived: { first_lsn: 1, last_lsn: 5 },
      segments: [
        {
          key: segmentKey(P, 1, 5),
          first_lsn: 1,
          last_lsn: 5,
          entries: 5,
          bytes: 1,
          raw_bytes: 1,
          sha256: 'c'.repeat(64),
          first_committed_at: new Date(T0 + 10).toISOString(),
          last_committed_at: new Date(T0 + 40).toISOString(),
          max_committed_at: new Date(T0 + 80).toISOString(),
          archived_at: new Date(T0 + 100).toISOString(),
          term: 1,
          node: 1,
        },
      ],
      backups: [],
      published_lsn: 0,
      updated_at: new Date(T0).toISOString(),
    });
    expect(a.segments[0]?.maxCommittedAt).toBe(T0 + 80);
  });
});

describe('restore planning: time targets after retention', () => {
  // Retention removed the segments up to LSN 10; the kept backup at LSN 10 was taken at T0+105.
  const segments = [seg(11, 20), seg(21, 30)];
  const listed = archiveFromObjects(P, [
    ...segments.map((s) => ({ key: s.key, size: s.bytes, metadata: { sha256: s.sha256! } })),
    {
      key: baseBackupKey(P, 10),
      size: 10,
      metadata: { sha256: 'b'.repeat(64) },
      lastModified: new Date(T0 + 105),
    },
  ]);
  const recorded = { ...withTimes(listed, segments), backups: listed.backups.map((b) => ({ ...b })) };

  it('a time just after the oldest kept backup restores to its LSN, from the manifest and from the objects', async () => {
    for (const a of [recorded, listed]) {
      expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 107) }, reader().fn)).toBe(10);
      expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 115) }, reader().fn)).toBe(11);
      expect(planRestore(a, 10).backup?.lsn).toBe(10);
    }
  });

  it('a time before the oldest kept backup is still refused, naming the backup', async () => {
    await expectError(
      resolveTarget(recorded, { kind: 'time', time: new Date(T0 + 95) }, reader().fn),
      /before the first archived entry \(LSN 11;.*the oldest base backup, LSN 10, was taken at 2025-01-01T00:00:00\.105Z/,
    );
  });

  it('a time after the backup LSN was committed but before the backup was taken restores to its LSN when the backup says so', async () => {
    // Entry 10 was committed at T0+100; the backup finished at T0+105.
    const bounded = archiveFromObjects(P, [
      ...segments.map((s) => ({ key: s.key, size: s.bytes, metadata: { sha256: s.sha256! } })),
      {
        key: baseBackupKey(P, 10),
        size: 10,
        metadata: { sha256: 'b'.repeat(64), 'max-committed-at': new Date(T0 + 100).toISOString() },
        lastModified: new Date(T0 + 105),
      },
    ]);
    const boundedRecorded = {
      ...withTimes(bounded, segments),
      backups: bounded.backups.map((b) => ({ ...b })),
    };
    for (const a of [boundedRecorded, bounded]) {
      expect(await resolveTarget(a, { kind: 'time', time: new Date(T0 + 102) }, reader().fn)).toBe(10);
      await expectError(
        resolveTarget(a, { kind: 'time', time: new Date(T0 + 95) }, reader().fn),
        /the oldest base backup, LSN 10, was taken at 2025-01-01T00:00:00\.105Z \(its entries all committed by 2025-01-01T00:00:00\.100Z\)/,
      );
    }
    // Without the bound the same time is refused: nothing says entry 10 was committed by then.
    await expectError(
      resolveTarget(recorded, { kind: 'time', time: new Date(T0 + 102) }, reader().fn),
      /before the first archived entry/,
    );
  });

  it('reads when each backup was taken, and what its entries were committed by, from the manifest', () => {
    const a = archiveFromManifest({
      schema: 1,
      partition: P,
      leader: null,
      version: 1,
      archived: null,
      segments: [],
      backups: [
        backupAt4({
          taken_at: new Date(T0 + 7).toISOString(),
          max_committed_at: new Date(T0 + 4).toISOString(),
        }),
      ],
      published_lsn: 0,
      updated_at: new Date(T0).toISOString(),
    });
    expect(a.backups[0]?.takenAt).toBe(T0 + 7);
    expect(a.backups[0]?.maxCommittedAt).toBe(T0 + 4);
  });
});
