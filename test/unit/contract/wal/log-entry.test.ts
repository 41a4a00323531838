import { describe, expect, it } from 'vitest';

import { WalArchiverError } from '../../../../contract/errors.js';
import {
  decodeLogEntry,
  encodeLogEntry,
  listReferenceChanges,
  newLogEntry,
  operation,
  referenceChange,
  type LogEntry,
} from '../../../../contract/wal/log-entry.js';
import { ProtoWriter } from '../../../helpers/proto-writer.js';

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

function sample(): LogEntry {
  return newLogEntry({
    relativePath: '@hashed/ab/cd/abcd.git',
    referenceTransactions: [
      {
        changes: [
          referenceChange('refs/heads/main', '1234567890abcdef1234567890abcdef12345678'),
          referenceChange('HEAD', '', 'refs/heads/main'),
        ],
      },
      { changes: [] },
    ],
    repositoryDeletion: {},
    housekeeping: { packRefs: { prunedRefs: [Buffer.from('refs/heads/a'), Buffer.from('refs/tags/v1')] } },
    operations: [
      operation.createHardLink('1', 'storage/repo/objects/pack/p.pack'),
      operation.createHardLink('x', 'y', true),
      operation.removeDirectoryEntry('repo/refs/heads/old'),
      operation.createDirectory('repo/refs', 0o755),
      operation.setKey('kv/key', Buffer.from([0, 1, 255])),
      operation.deleteKey('kv/gone'),
      operation.setKey('', ''),
    ],
    metadata: { raftTerm: 300, raftType: 1 },
  });
}

// The same message in protobuf text form, encoded with `protoc --encode=gitaly.LogEntry` against the
// field numbers of Gitaly's proto/log.proto:
//   relative_path: "@hashed/ab/cd/abcd.git"
//   reference_transactions { changes { reference_name: "refs/heads/main" new_oid: "1234…5678" }
//                            changes { reference_name: "HEAD" new_target: "refs/heads/main" } }
//   reference_transactions { }
//   repository_deletion { }
//   housekeeping { pack_refs { pruned_refs: "refs/heads/a" pruned_refs: "refs/tags/v1" } }
//   operations { create_hard_link { source_path: "1" destination_path: "storage/repo/objects/pack/p.pack" } }
//   operations { create_hard_link { source_path: "x" source_in_storage: true destination_path: "y" } }
//   operations { remove_directory_entry { path: "repo/refs/heads/old" } }
//   operations { create_directory { path: "repo/refs" mode: 493 } }
//   operations { set_key { key: "kv/key" value: "\000\001\377" } }
//   operations { delete_key { key: "kv/gone" } }
//   operations { set_key { } }
//   metadata { raft_term: 300 raft_type: 1 }
const SAMPLE_BYTES = hex(`
0a16406861736865642f61622f63642f616263642e67697412560a3b0a0f726566732f68656164732f6d61696e122831
3233343536373839306162636465663132333435363738393061626364656631323334353637380a170a04484541441a
0f726566732f68656164732f6d61696e120032004a1e0a1c0a0c726566732f68656164732f610a0c726566732f746167
732f763152270a250a01311a2073746f726167652f7265706f2f6f626a656374732f7061636b2f702e7061636b520a0a
080a017810011a0179521712150a137265706f2f726566732f68656164732f6f6c6452101a0e0a097265706f2f726566
7310ed03520f220d0a066b762f6b657912030001ff520b2a090a076b762f676f6e65520222005a0508ac021001`);

describe('LogEntry', () => {
  it('encodes exactly as the reference protobuf encoder does', () => {
    expect(encodeLogEntry(sample()).toString('hex')).toBe(SAMPLE_BYTES.toString('hex'));
  });

  it('decodes the reference bytes into the model', () => {
    expect(decodeLogEntry(SAMPLE_BYTES)).toEqual(sample());
  });

  it('uses the field numbers of gitaly/proto/log.proto', () => {
    const one = (e: Partial<LogEntry>) => encodeLogEntry(newLogEntry(e)).toString('hex');
    expect(one({ relativePath: 'r' })).toBe('0a0172'); // relative_path = 1
    expect(one({ referenceTransactions: [{ changes: [] }] })).toBe('1200'); // reference_transactions = 2
    expect(one({ repositoryDeletion: {} })).toBe('3200'); // repository_deletion = 6
    expect(one({ housekeeping: {} })).toBe('4a00'); // housekeeping = 9
    expect(one({ metadata: { raftTerm: 0, raftType: 0 } })).toBe('5a00'); // metadata = 11
    // operations = 10 (tag 0x52); oneof cases 1…5 (tags 0x0a, 0x12, 0x1a, 0x22, 0x2a)
    expect(one({ operations: [operation.createHardLink('', '')] })).toBe('52020a00');
    expect(one({ operations: [operation.removeDirectoryEntry('')] })).toBe('52021200');
    expect(one({ operations: [operation.createDirectory('', 0)] })).toBe('52021a00');
    expect(one({ operations: [operation.setKey('', '')] })).toBe('52022200');
    expect(one({ operations: [operation.deleteKey('')] })).toBe('52022a00');
    // Change: reference_name = 1, new_oid = 2, new_target = 3
    expect(one({ referenceTransactions: [{ changes: [referenceChange('a', 'b', 'c')] }] })).toBe(
      '120b0a090a01611201621a0163',
    );
  });

  it('an empty entry is zero bytes and decodes back', () => {
    expect(encodeLogEntry(newLogEntry()).length).toBe(0);
    expect(decodeLogEntry(Buffer.alloc(0))).toEqual(newLogEntry());
  });

  it('round-trips every operation kind and field', () => {
    const e = sample();
    expect(decodeLogEntry(encodeLogEntry(e))).toEqual(e);
    const big = newLogEntry({
      relativePath: 'ünïcode/repo.git',
      operations: [
        operation.createDirectory('d', 0o40755),
        operation.setKey(Buffer.alloc(1000, 1), Buffer.alloc(5000, 2)),
      ],
      metadata: { raftTerm: 2 ** 53 - 1, raftType: 2 },
    });
    expect(decodeLogEntry(encodeLogEntry(big))).toEqual(big);
  });

  it('keeps unknown fields at every level and writes them back', () => {
    const w = new ProtoWriter();
    w.string(1, 'repo.git');
    w.message(2, (tx) => {
      tx.message(1, (c) => c.bytes(1, Buffer.from('refs/heads/x')).bytes(2, Buffer.from('ab')).uint(9, 77));
      tx.uint(5, 1);
    });
    w.message(7, (m) => m.uint(1, 2)); // repository_creation in other schema versions
    w.message(9, (hk) => {
      hk.message(1, (p) => p.bytes(1, Buffer.from('refs/heads/y')));
      hk.message(2, (repack) => repack.string(1, 'pack-1.pack')); // Housekeeping.repack in older versions
    });
    w.message(10, (op) =>
      op.message(1, (l) => l.bytes(1, Buffer.from('1')).bytes(3, Buffer.from('d')).uint(7, 3)),
    );
    w.message(10, (op) => op.message(6, (f) => f.bytes(1, Buffer.from('future')))); // a oneof case added later
    w.message(11, (md) => md.uint(1, 4).uint(3, 9));
    w.tag(99, 0).raw(hex('80808080808080808001')); // 2^63: beyond a number, skipped and kept as raw bytes
    w.tag(100, 5).raw(hex('01020304'));
    const original = w.finish();

    const decoded = decodeLogEntry(original);
    expect(decoded.relativePath).toBe('repo.git');
    expect(listReferenceChanges(decoded)).toEqual([{ name: 'refs/heads/x', newOid: 'ab' }]);
    expect(decoded.referenceTransactions[0]!.changes[0]!.unknownFields).toEqual(hex('484d'));
    expect(decoded.housekeeping?.packRefs?.prunedRefs).toEqual([Buffer.from('refs/heads/y')]);
    expect(decoded.operations[0]).toMatchObject({ kind: 'createHardLink', unknownFields: hex('3803') });
    expect(decoded.operations[1]!.kind).toBe('unknown');
    expect(decoded.metadata).toMatchObject({ raftTerm: 4, raftType: 0 });
    // Unknown fields of the top-level message come back in order (7, 99, 100) after the known ones.
    expect(encodeLogEntry(decoded).length).toBe(original.length);
    expect(decodeLogEntry(encodeLogEntry(decoded))).toEqual(decoded);
  });

  it('re-encodes bytes written in field order unchanged, unknown fields included', () => {
    const w = new ProtoWriter();
    w.string(1, 'repo.git');
    w.message(10, (op) =>
      op.message(4, (s) => s.bytes(1, Buffer.from('k')).bytes(2, Buffer.from('v')).uint(3, 1)),
    );
    w.message(11, (md) =>
      md
        .uint(1, 4)
        .uint(2, 0 + 1)
        .uint(3, 9),
    );
    w.uint(12, 5);
    const original = w.finish();
    expect(encodeLogEntry(decodeLogEntry(original))).toEqual(original);
  });

  it('merges a message field that occurs twice; a different oneof case replaces the earlier one', () => {
    const w = new ProtoWriter();
    w.message(11, (md) => md.uint(1, 5));
    w.message(11, (md) => md.uint(2, 2));
    w.message(10, (op) => {
      op.message(1, (l) => l.bytes(1, Buffer.from('src')));
      op.message(1, (l) => l.bytes(3, Buffer.from('dst')));
    });
    w.message(10, (op) => {
      op.message(1, (l) => l.bytes(1, Buffer.from('src')));
      op.message(5, (d) => d.bytes(1, Buffer.from('k')));
    });
    const decoded = decodeLogEntry(w.finish());
    expect(decoded.metadata).toEqual({ raftTerm: 5, raftType: 2 });
    expect(decoded.operations).toEqual([operation.createHardLink('src', 'dst'), operation.deleteKey('k')]);
  });

  it('rejects wrong wire types for known fields', () => {
    const bad = new ProtoWriter().uint(1, 5).finish(); // relative_path as a varint
    expect(() => decodeLogEntry(bad)).toThrow(
      /wire type 0 for field relative_path \(1\), expected 2 at byte 0/,
    );
    const badMode = new ProtoWriter()
      .message(10, (op) => op.message(3, (d) => d.bytes(2, Buffer.from('x'))))
      .finish();
    expect(() => decodeLogEntry(badMode)).toThrow(
      /LogEntry.Operation.CreateDirectory: wire type 2 for field mode/,
    );
  });

  it('every truncation of a valid entry is CORRUPT or a valid shorter entry, never another error', () => {
    // The top-level fields, encoded one by one: cutting at their boundaries leaves a valid message.
    const parts = [
      encodeLogEntry(newLogEntry({ relativePath: 'repo.git' })),
      ...sample().referenceTransactions.map((tx) =>
        encodeLogEntry(newLogEntry({ referenceTransactions: [tx] })),
      ),
      encodeLogEntry(newLogEntry({ housekeeping: sample().housekeeping! })),
      ...sample().operations.map((op) => encodeLogEntry(newLogEntry({ operations: [op] }))),
      encodeLogEntry(newLogEntry({ metadata: { raftTerm: 2 ** 40, raftType: 1 } })),
    ];
    const full = Buffer.concat(parts);
    const boundaries = new Set<number>([0]);
    let at = 0;
    for (const p of parts) boundaries.add((at += p.length));
    for (let len = 0; len < full.length; len++) {
      const prefix = full.subarray(0, len);
      if (boundaries.has(len)) {
        expect(() => decodeLogEntry(prefix), `prefix ${len}`).not.toThrow();
        continue;
      }
      let caught: unknown;
      try {
        decodeLogEntry(prefix);
      } catch (err) {
        caught = err;
      }
      expect(caught, `prefix ${len}`).toBeInstanceOf(WalArchiverError);
      expect((caught as WalArchiverError).code).toBe('CORRUPT');
      expect((caught as WalArchiverError).message).toMatch(/at byte \d+$/);
    }
  });

  it('flipped bytes give CORRUPT or some entry, never another error', () => {
    const base = encodeLogEntry(sample());
    for (let i = 0; i < base.length; i++) {
      for (const flip of [0x01, 0x80, 0xff]) {
        const buf = Buffer.from(base);
        buf[i] = buf[i]! ^ flip;
        try {
          decodeLogEntry(buf);
        } catch (err) {
          expect(err, `byte ${i} ^ ${flip}`).toBeInstanceOf(WalArchiverError);
          expect((err as WalArchiverError).code).toBe('CORRUPT');
        }
      }
    }
  });

  it('lists reference changes as text for events', () => {
    expect(listReferenceChanges(sample())).toEqual([
      { name: 'refs/heads/main', newOid: '1234567890abcdef1234567890abcdef12345678' },
      { name: 'HEAD', newOid: '', newTarget: 'refs/heads/main' },
    ]);
  });
});
