import { describe, expect, it } from 'vitest';

import { WalArchiverError } from '../../../../contract/errors.js';
import { ProtoWriter } from '../../../helpers/proto-writer.js';
import {
  ConfChangeTransition,
  ConfChangeType,
  EntryType,
  decodeConfChange,
  decodeConfChangeV2,
  decodeConfState,
  decodeHardState,
  decodeRaftEntry,
  emptyConfState,
  encodeConfChange,
  encodeConfChangeV2,
  encodeConfState,
  encodeHardState,
  encodeRaftEntry,
} from '../../../../contract/wal/raftpb.js';

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

describe('raftpb.Entry', () => {
  it('matches a vector worked out by hand from raft.proto', () => {
    // Type=1 varint 0 -> 08 00; Term=2 varint 5 -> 10 05;
    // Index=3 varint 70000 = 0b100_0100010_1110000 -> 18 f0 a2 04; Data=4 "hello" -> 22 05 68656c6c6f
    const bytes = hex('0800 1005 18f0a204 2205 68656c6c6f');
    const entry = { term: 5, index: 70000, type: EntryType.Normal, data: Buffer.from('hello') };
    expect(encodeRaftEntry(entry)).toEqual(bytes);
    expect(decodeRaftEntry(bytes)).toEqual(entry);
  });

  it('writes Type, Term and Index even when zero, and Data only when present', () => {
    expect(encodeRaftEntry({ term: 0, index: 0, type: 0 })).toEqual(hex('0800 1000 1800'));
    expect(encodeRaftEntry({ term: 0, index: 0, type: 0, data: Buffer.alloc(0) })).toEqual(
      hex('0800 1000 1800 2200'),
    );
    expect(decodeRaftEntry(hex('0800 1000 1800'))).toEqual({ term: 0, index: 0, type: 0 });
    expect(decodeRaftEntry(hex('0800 1000 1800 2200'))).toEqual({
      term: 0,
      index: 0,
      type: 0,
      data: Buffer.alloc(0),
    });
  });

  it('round-trips large terms and indexes, conf change types and big data', () => {
    for (const e of [
      { term: 2 ** 53 - 1, index: 2 ** 53 - 1, type: EntryType.ConfChangeV2, data: Buffer.alloc(100_000, 9) },
      { term: 1, index: 1, type: EntryType.ConfChange, data: Buffer.from([1]) },
      { term: 3, index: 2 ** 32, type: EntryType.Normal },
    ]) {
      expect(decodeRaftEntry(encodeRaftEntry(e))).toEqual(e);
    }
  });

  it('accepts fields in any order and skips unknown fields', () => {
    const w = new ProtoWriter()
      .uint(3, 9)
      .uint(2, 4)
      .uint(7, 1)
      .bytes(4, Buffer.from('d'))
      .uint(1, 1)
      .finish();
    expect(decodeRaftEntry(w)).toEqual({ term: 4, index: 9, type: 1, data: Buffer.from('d') });
  });

  it('truncations are CORRUPT unless they end on a field boundary', () => {
    const full = encodeRaftEntry({ term: 300, index: 2 ** 40, type: 0, data: Buffer.from('payload') });
    const boundaries = new Set([0, 2, 5, 12, full.length]);
    for (let len = 0; len < full.length; len++) {
      const prefix = full.subarray(0, len);
      if (boundaries.has(len)) {
        expect(() => decodeRaftEntry(prefix)).not.toThrow();
        continue;
      }
      let caught: unknown;
      try {
        decodeRaftEntry(prefix, 'RAFT');
      } catch (err) {
        caught = err;
      }
      expect(caught, `prefix ${len}`).toBeInstanceOf(WalArchiverError);
      expect((caught as WalArchiverError).code).toBe('CORRUPT');
      expect((caught as WalArchiverError).message).toMatch(/^corrupt RAFT: .* at byte \d+$/);
    }
  });
});

describe('raftpb.HardState', () => {
  it('writes all three fields, zero or not, in field order', () => {
    // term=1 -> 08 07; vote=2 -> 10 02; commit=3 varint 1234567890123 -> 18 cb 89 ec 8f f7 23
    expect(encodeHardState({ term: 7, vote: 2, commit: 1234567890123 })).toEqual(
      hex('0807 1002 18cb89ec8ff723'),
    );
    expect(encodeHardState({ term: 0, vote: 0, commit: 0 })).toEqual(hex('0800 1000 1800'));
  });

  it('round-trips and tolerates missing and unknown fields', () => {
    const hs = { term: 2 ** 50, vote: 3, commit: 99 };
    expect(decodeHardState(encodeHardState(hs))).toEqual(hs);
    expect(decodeHardState(hex('1803 2801'))).toEqual({ term: 0, vote: 0, commit: 3 });
  });

  it('rejects a wrong wire type', () => {
    expect(() => decodeHardState(hex('0a0100'))).toThrow(/wire type 2 for field term/);
  });
});

describe('raftpb.ConfState', () => {
  it('writes repeated uint64 unpacked and auto_leave always', () => {
    const cs = { voters: [1, 2, 300], learners: [4], votersOutgoing: [], learnersNext: [], autoLeave: false };
    expect(encodeConfState(cs)).toEqual(hex('0801 0802 08ac02 1004 2800'));
    expect(decodeConfState(encodeConfState(cs))).toEqual(cs);
    expect(encodeConfState(emptyConfState())).toEqual(hex('2800'));
  });

  it('reads packed repeated fields too', () => {
    expect(decodeConfState(hex('0a03 01 02 03 2204 05 ac02 06 2801'))).toEqual({
      voters: [1, 2, 3],
      learners: [],
      votersOutgoing: [],
      learnersNext: [5, 300, 6],
      autoLeave: true,
    });
  });

  it('rejects a truncated packed run', () => {
    expect(() => decodeConfState(hex('0a03 01 02 ac'))).toThrow(/truncated varint at byte 4/);
  });

  it('round-trips a joint configuration', () => {
    const cs = {
      voters: [1, 2, 3],
      learners: [7],
      votersOutgoing: [1, 2, 4],
      learnersNext: [4],
      autoLeave: true,
    };
    expect(decodeConfState(encodeConfState(cs))).toEqual(cs);
  });
});

describe('raftpb.ConfChange and ConfChangeV2', () => {
  it('ConfChange writes id, type, node_id always and context when present', () => {
    const cc = { id: 1, type: ConfChangeType.AddNode, nodeId: 3, context: Buffer.from('x') };
    expect(encodeConfChange(cc)).toEqual(hex('0801 1000 1803 220178'));
    expect(decodeConfChange(encodeConfChange(cc))).toEqual(cc);
  });

  it('ConfChangeV2 round-trips its changes', () => {
    const cc = {
      transition: ConfChangeTransition.JointExplicit,
      changes: [
        { type: ConfChangeType.AddLearnerNode, nodeId: 4 },
        { type: ConfChangeType.RemoveNode, nodeId: 2 },
      ],
    };
    expect(encodeConfChangeV2(cc)).toEqual(hex('0802 12040803 1004 12040801 1002'));
    expect(decodeConfChangeV2(encodeConfChangeV2(cc))).toEqual(cc);
  });
});
