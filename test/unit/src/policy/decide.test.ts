import { describe, expect, it } from 'vitest';
import { isWalArchiverError } from '../../../../contract/errors.js';
import { applyPartitionUpdate, type PartitionManifest } from '../../../../src/manifest/partition-manifest.js';
import {
  BackupSlots,
  DEFAULT_THRESHOLDS,
  decide,
  policyStateFromManifest,
  resolveThresholds,
  type Decision,
  type PolicyState,
  type Thresholds,
} from '../../../../src/policy/index.js';
import { T0, backup, segment } from '../manifest/fixtures.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const NOW = T0 + 10 * 24 * HOUR;

const thresholds: Thresholds = {
  maxBytes: 1000,
  maxEntries: 50,
  maxAge: 6 * HOUR,
  minInterval: 10 * MIN,
  retryAfter: 2 * MIN,
};

/** A leader with some WAL since a backup taken an hour ago: below every threshold. */
const base: PolicyState = {
  walBytesSinceBackup: 100,
  walEntriesSinceBackup: 5,
  lastBackupAt: NOW - HOUR,
  lastBackupLsn: 40,
  archivedLsn: 45,
  backupRunning: false,
  leading: true,
  manualRequested: false,
};

const backupFor = (reason: string): Decision => ({ action: 'backup', reason }) as Decision;
const noneFor = (why: string): Decision => ({ action: 'none', why }) as Decision;

describe('decide', () => {
  // [name, state over the base, decision, now (NOW unless given)]
  const table: Array<[string, Partial<PolicyState>, Decision, number?]> = [
    ['below every threshold', {}, noneFor('below-thresholds')],
    ['size reached exactly', { walBytesSinceBackup: 1000 }, backupFor('size')],
    ['size passed', { walBytesSinceBackup: 5000 }, backupFor('size')],
    ['one byte short of size', { walBytesSinceBackup: 999 }, noneFor('below-thresholds')],
    ['entries reached', { walEntriesSinceBackup: 50 }, backupFor('entries')],
    ['size wins over entries', { walBytesSinceBackup: 1000, walEntriesSinceBackup: 50 }, backupFor('size')],
    [
      'entries win over age',
      { walEntriesSinceBackup: 50, lastBackupAt: NOW - 7 * HOUR },
      backupFor('entries'),
    ],
    ['age reached exactly', { lastBackupAt: NOW - 6 * HOUR }, backupFor('age')],
    ['one ms short of age', { lastBackupAt: NOW - 6 * HOUR + 1 }, noneFor('below-thresholds')],
    ['the clock moved on to the age', {}, backupFor('age'), NOW + 5 * HOUR],
    ['clock went backwards: no elapsed time', { lastBackupAt: NOW + HOUR }, noneFor('min-interval')],
    [
      'age reached but nothing changed',
      { lastBackupAt: NOW - 30 * HOUR, archivedLsn: 40 },
      noneFor('unchanged'),
    ],
    [
      'size reached but nothing changed',
      { walBytesSinceBackup: 5000, archivedLsn: 40 },
      noneFor('unchanged'),
    ],
    [
      'backup LSN ahead of the archive (snapshot at applied LSN)',
      { archivedLsn: 38, lastBackupAt: NOW - 30 * HOUR },
      noneFor('unchanged'),
    ],
    ['not leading', { walBytesSinceBackup: 5000, leading: false }, noneFor('not-leader')],
    ['one already running', { walBytesSinceBackup: 5000, backupRunning: true }, noneFor('running')],
    [
      'first backup of an archived partition',
      { lastBackupAt: undefined, lastBackupLsn: 0, archivedLsn: 1 },
      backupFor('first'),
    ],
    [
      'first backup ignores min interval and thresholds',
      { lastBackupAt: undefined, lastBackupLsn: 0, walBytesSinceBackup: 0, walEntriesSinceBackup: 1 },
      backupFor('first'),
    ],
    [
      'nothing archived yet',
      { lastBackupAt: undefined, lastBackupLsn: 0, archivedLsn: 0 },
      noneFor('nothing-archived'),
    ],
    [
      'size reached inside min interval',
      { walBytesSinceBackup: 5000, lastBackupAt: NOW - 9 * MIN },
      noneFor('min-interval'),
    ],
    [
      'size reached just after min interval',
      { walBytesSinceBackup: 5000, lastBackupAt: NOW - 10 * MIN },
      backupFor('size'),
    ],
    ['manual', { manualRequested: true }, backupFor('manual')],
    ['manual inside min interval', { manualRequested: true, lastBackupAt: NOW - MIN }, backupFor('manual')],
    ['manual with nothing new', { manualRequested: true, archivedLsn: 40 }, backupFor('manual')],
    ['manual on a follower', { manualRequested: true, leading: false }, noneFor('not-leader')],
    ['manual while one runs', { manualRequested: true, backupRunning: true }, noneFor('running')],
    ['failed a minute ago', { walBytesSinceBackup: 5000, lastFailureAt: NOW - MIN }, noneFor('retry-later')],
    [
      'failed long enough ago',
      { walBytesSinceBackup: 5000, lastFailureAt: NOW - 2 * MIN },
      backupFor('size'),
    ],
    [
      'first backup failed a minute ago',
      { lastBackupAt: undefined, lastBackupLsn: 0, lastFailureAt: NOW - MIN },
      noneFor('retry-later'),
    ],
    ['manual right after a failure', { manualRequested: true, lastFailureAt: NOW - 1 }, backupFor('manual')],
  ];
  it.each(table)('%s', (_name, overrides, expected, now = NOW) => {
    expect(decide({ ...base, ...overrides }, now, thresholds)).toEqual(expected);
  });

  it('without minInterval, a threshold triggers right after a backup', () => {
    const { minInterval: _drop, ...noMin } = thresholds;
    expect(decide({ ...base, walBytesSinceBackup: 1000, lastBackupAt: NOW }, NOW, noMin)).toEqual(
      backupFor('size'),
    );
  });

  it('an infinite threshold never triggers', () => {
    const off = { ...thresholds, maxBytes: Infinity, maxEntries: Infinity, maxAge: Infinity };
    expect(decide({ ...base, walBytesSinceBackup: 1e15, lastBackupAt: T0 }, NOW, off)).toEqual(
      noneFor('below-thresholds'),
    );
  });

  it('a steady stream of WAL triggers one size backup per maxBytes (a simulated clock)', () => {
    let state: PolicyState = { ...base, walBytesSinceBackup: 0, walEntriesSinceBackup: 0, lastBackupAt: T0 };
    const triggered: number[] = [];
    for (let minute = 1; minute <= 120; minute++) {
      const now = T0 + minute * MIN;
      state = {
        ...state,
        walBytesSinceBackup: state.walBytesSinceBackup + 100,
        archivedLsn: state.archivedLsn + 1,
      };
      const d = decide(state, now, { ...thresholds, maxEntries: Infinity });
      if (d.action === 'backup') {
        expect(d.reason).toBe('size');
        triggered.push(minute);
        state = {
          ...state,
          walBytesSinceBackup: 0,
          lastBackupAt: now,
          lastBackupLsn: state.archivedLsn,
        };
      }
    }
    // 100 bytes a minute and 1000 to trigger: every 10 minutes.
    expect(triggered).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
  });
});

describe('resolveThresholds', () => {
  it('applies a partition override on top of the defaults', () => {
    const overrides = { '7': { maxBytes: 10, maxAge: HOUR } };
    expect(resolveThresholds(thresholds, overrides, '7')).toEqual({
      ...thresholds,
      maxBytes: 10,
      maxAge: HOUR,
    });
    expect(resolveThresholds(thresholds, overrides, '8')).toEqual(thresholds);
  });

  it('takes a Map and fills unset optional values from the exported defaults', () => {
    const t = resolveThresholds(
      { maxBytes: 1, maxEntries: 2, maxAge: 3 },
      new Map([['1', { minInterval: 0 }]]),
      '1',
    );
    expect(t).toEqual({
      maxBytes: 1,
      maxEntries: 2,
      maxAge: 3,
      minInterval: 0,
      retryAfter: DEFAULT_THRESHOLDS.retryAfter,
    });
  });

  it('does not read inherited properties as overrides', () => {
    expect(resolveThresholds(thresholds, {}, 'constructor')).toEqual(thresholds);
  });

  it.each([
    ['zero bytes', { maxBytes: 0 }],
    ['negative age', { maxAge: -1 }],
    ['NaN entries', { maxEntries: Number.NaN }],
    ['negative min interval', { minInterval: -5 }],
  ])('refuses %s', (_name, bad) => {
    let caught: unknown;
    try {
      resolveThresholds(thresholds, { '3': bad }, '3');
    } catch (err) {
      caught = err;
    }
    expect(isWalArchiverError(caught, 'INVALID_ARGUMENT')).toBe(true);
    expect((caught as Error).message).toContain('partition 3');
  });

  it('has defaults that decide sensibly', () => {
    expect(decide({ ...base, walBytesSinceBackup: 2 * 1024 ** 3 }, NOW, DEFAULT_THRESHOLDS)).toEqual(
      backupFor('size'),
    );
    expect(decide(base, NOW, DEFAULT_THRESHOLDS)).toEqual(noneFor('below-thresholds'));
  });
});

describe('policyStateFromManifest', () => {
  function manifest(update: Parameters<typeof applyPartitionUpdate>[3]): PartitionManifest {
    return applyPartitionUpdate(undefined, '5', { node: 1, term: 1 }, update, new Date(NOW)).manifest;
  }
  const live = { leading: true, backupRunning: false, manualRequested: false };

  it('counts the WAL after the latest backup, pro rata for a straddling segment', () => {
    const m = manifest({
      segments: [segment('5', 1, 10), segment('5', 11, 20), segment('5', 21, 30)],
      backups: [backup('5', 5), backup('5', 15)],
    });
    const s = policyStateFromManifest(m, live);
    // LSNs 16-30: half of 11-20 and all of 21-30, 300 raw bytes per entry.
    expect(s).toMatchObject({
      walEntriesSinceBackup: 15,
      walBytesSinceBackup: 15 * 300,
      lastBackupLsn: 15,
      lastBackupAt: Date.parse(backup('5', 15).taken_at),
      archivedLsn: 30,
    });
  });

  it('counts overlapping segments once', () => {
    const m = manifest({ segments: [segment('5', 1, 10), segment('5', 5, 12), segment('5', 11, 14)] });
    const s = policyStateFromManifest(m, live);
    expect(s.walEntriesSinceBackup).toBe(14);
    expect(s.walBytesSinceBackup).toBe(14 * 300);
    expect(s.lastBackupAt).toBeUndefined();
    expect(decide(s, NOW, thresholds)).toEqual(backupFor('first'));
  });

  it('knows an empty or missing manifest has nothing to back up', () => {
    const s = policyStateFromManifest(undefined, live);
    expect(s).toMatchObject({ archivedLsn: 0, lastBackupLsn: 0, walBytesSinceBackup: 0 });
    expect(decide(s, NOW, thresholds)).toEqual(noneFor('nothing-archived'));
  });
});

describe('BackupSlots', () => {
  it('bounds backups in flight across partitions, one per partition', () => {
    const slots = new BackupSlots(2);
    const r1 = slots.tryAcquire('1');
    expect(r1).toBeTypeOf('function');
    expect(slots.tryAcquire('1')).toBeUndefined();
    const r2 = slots.tryAcquire('2');
    expect(r2).toBeTypeOf('function');
    expect(slots.tryAcquire('3')).toBeUndefined();
    expect(slots.inUse).toBe(2);
    expect(slots.holds('2')).toBe(true);
    r1!();
    r1!();
    expect(slots.inUse).toBe(1);
    expect(slots.free).toBe(1);
    expect(slots.tryAcquire('3')).toBeTypeOf('function');
    expect(slots.tryAcquire('1')).toBeUndefined();
  });

  it('refuses a limit that is not a positive integer', () => {
    expect(() => new BackupSlots(0)).toThrow(/positive integer/);
    expect(() => new BackupSlots(1.5)).toThrow(/positive integer/);
  });
});
