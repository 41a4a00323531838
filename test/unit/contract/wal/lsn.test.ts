import { describe, expect, it } from 'vitest';

import { isWalArchiverError } from '../../../../contract/errors.js';
import {
  MAX_LSN,
  formatLsn,
  parseLsn,
  parseStagedFileName,
  stagedFileName,
  stagedFileNames,
  tryParseLsn,
} from '../../../../contract/wal/lsn.js';

describe('LSN directory names', () => {
  it('formats base 36, lower case, zero-padded to 13 characters', () => {
    expect(formatLsn(1)).toBe('0000000000001');
    expect(formatLsn(9)).toBe('0000000000009');
    expect(formatLsn(10)).toBe('000000000000a');
    expect(formatLsn(35)).toBe('000000000000z');
    expect(formatLsn(36)).toBe('0000000000010');
    expect(formatLsn(36 ** 2 - 1)).toBe('00000000000zz');
    expect(formatLsn(36 ** 2)).toBe('0000000000100');
    expect(formatLsn(MAX_LSN)).toBe('002gosa7pa2gv');
    expect(formatLsn(MAX_LSN)).toHaveLength(13);
  });

  it('parses what it formats, across digit boundaries and up to 2^53-1', () => {
    const samples = [
      1,
      2,
      9,
      10,
      35,
      36,
      37,
      1295,
      1296,
      46655,
      46656,
      2 ** 31,
      2 ** 32 + 7,
      MAX_LSN - 1,
      MAX_LSN,
    ];
    for (const lsn of samples) expect(parseLsn(formatLsn(lsn))).toBe(lsn);
  });

  it('sorts names in LSN order (a sorted listing is log order)', () => {
    const lsns = [1296, 1, 36, 35, 10, 9, 1295, 37, 2 ** 40, 11, 100000, MAX_LSN];
    const byName = lsns.map(formatLsn).sort();
    expect(byName.map(parseLsn)).toEqual([...lsns].sort((a, b) => a - b));
  });

  it('rejects anything that is not a canonical LSN name', () => {
    const bad = [
      '',
      '1',
      '000000000001',
      '00000000000001',
      '000000000000A',
      '000000000000-',
      '00000000000 1',
      '0000000000000',
      'zzzzzzzzzzzzz',
      '002gosa7pa2gw',
      '002gosa7pa2h0',
      '.000000000001',
    ];
    for (const name of bad) {
      expect(tryParseLsn(name), name).toBeUndefined();
      let caught: unknown;
      try {
        parseLsn(name);
      } catch (err) {
        caught = err;
      }
      expect(isWalArchiverError(caught, 'INVALID_ARGUMENT'), name).toBe(true);
    }
  });

  it('refuses to format LSN 0, negatives, fractions and values past 2^53-1', () => {
    for (const v of [0, -1, 1.5, MAX_LSN + 1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => formatLsn(v), String(v)).toThrow(/LSN must be an integer/);
    }
  });
});

describe('staged file names', () => {
  it('counts in base 36 from 1 without padding', () => {
    const names: string[] = [];
    const gen = stagedFileNames();
    for (let i = 0; i < 40; i++) names.push(gen.next().value);
    expect(names.slice(0, 12)).toEqual(['1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c']);
    expect(names.slice(33, 40)).toEqual(['y', 'z', '10', '11', '12', '13', '14']);
    expect(stagedFileName(1296)).toBe('100');
  });

  it('parses names back and rejects non-canonical ones', () => {
    for (let n = 1; n < 3000; n += 7) expect(parseStagedFileName(stagedFileName(n))).toBe(n);
    for (const bad of ['', '0', '01', 'A', 'MANIFEST', 'RAFT', '1.tmp', '-1']) {
      expect(parseStagedFileName(bad), bad).toBeUndefined();
    }
    expect(() => stagedFileName(0)).toThrow();
  });
});
