import { describe, expect, test } from 'vitest';
import { MemoryStorage, isLogGapError } from '../../../../storage-node/raft/storage.js';
import type { Entry } from '../../../../storage-node/raft/types.js';

function entries(from: number, to: number, term: number, size = 1): Entry[] {
  const out: Entry[] = [];
  for (let i = from; i <= to; i++) out.push({ term, index: i, type: 'normal', data: new Uint8Array(size) });
  return out;
}

describe('MemoryStorage', () => {
  test('reads back appended entries and reports the index range', () => {
    const s = new MemoryStorage([1, 2, 3]);
    expect([s.firstIndex(), s.lastIndex()]).toEqual([1, 0]);
    s.append(entries(1, 5, 1));
    expect([s.firstIndex(), s.lastIndex(), s.term(0), s.term(5)]).toEqual([1, 5, 0, 1]);
    expect(s.entries(2, 4).map((e) => e.index)).toEqual([2, 3]);
    expect(s.initialState().voters).toEqual([1, 2, 3]);
  });

  test('entries() honours maxBytes but always returns at least one entry', () => {
    const s = new MemoryStorage();
    s.append(entries(1, 5, 1, 10));
    expect(s.entries(1, 6, 25)).toHaveLength(2);
    expect(s.entries(1, 6, 1)).toHaveLength(1);
  });

  test('out-of-range reads throw errors the core recognises as gaps', () => {
    const s = new MemoryStorage();
    s.append(entries(1, 5, 1));
    s.setHardState({ term: 1, vote: 0, commit: 5 });
    s.createSnapshot(3);
    s.compact(3);
    expect([s.firstIndex(), s.term(3)]).toEqual([4, 1]);
    for (const read of [() => s.term(2), () => s.term(6), () => s.entries(3, 5), () => s.entries(4, 7)]) {
      let caught: unknown;
      try {
        read();
      } catch (err) {
        caught = err;
      }
      expect(isLogGapError(caught)).toBe(true);
    }
  });

  test('append replaces an uncommitted suffix and refuses gaps', () => {
    const s = new MemoryStorage();
    s.append(entries(1, 5, 1));
    s.setHardState({ term: 2, vote: 0, commit: 2 });
    s.append(entries(3, 4, 2));
    expect([s.lastIndex(), s.term(3), s.term(4)]).toEqual([4, 2, 2]);
    expect(() => s.append(entries(7, 8, 2))).toThrow(/gap/);
  });

  test('compaction needs a snapshot covering it; snapshots need committed entries', () => {
    const s = new MemoryStorage();
    s.append(entries(1, 5, 1));
    s.setHardState({ term: 1, vote: 0, commit: 3 });
    expect(() => s.compact(2)).toThrow(/snapshot/);
    expect(() => s.createSnapshot(4)).toThrow(/commit/);
    expect(s.createSnapshot(3)).toEqual({ index: 3, term: 1, voters: [] });
  });

  test('applySnapshot replaces the whole log', () => {
    const s = new MemoryStorage([1, 2, 3]);
    s.append(entries(1, 3, 1));
    s.applySnapshot({ index: 10, term: 4, voters: [1, 2, 3] });
    expect([s.firstIndex(), s.lastIndex(), s.term(10)]).toEqual([11, 10, 4]);
    expect(() => s.applySnapshot({ index: 9, term: 4, voters: [1, 2, 3] })).toThrow(/newer/);
    s.append(entries(11, 12, 5));
    expect(s.lastIndex()).toBe(12);
  });
});
