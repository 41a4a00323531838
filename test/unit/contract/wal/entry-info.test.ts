import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ContentDigest,
  contentDigest,
  decodeEntryInfo,
  decodePayload,
  encodeEntryInfo,
  encodePayload,
} from '../../../../contract/wal/entry-info.js';

const content = {
  manifest: randomBytes(40),
  files: [
    { name: '1', data: randomBytes(1000) },
    { name: '2', data: Buffer.alloc(0) },
  ],
};

describe('entry info', () => {
  it('round-trips EntryInfo and rejects a digest of the wrong size', () => {
    const info = { contentSha256: contentDigest(content), committedAt: 1_763_000_000_123, files: 2 };
    expect(decodeEntryInfo(encodeEntryInfo(info))).toEqual(info);
    expect(() => decodeEntryInfo(encodeEntryInfo({ ...info, contentSha256: Buffer.alloc(5) }))).toThrow(
      /32 bytes/,
    );
  });

  it('streaming digest equals the one-shot digest and notices a changed byte or boundary', () => {
    const d = new ContentDigest();
    d.beginFile('MANIFEST', content.manifest.length);
    d.update(content.manifest.subarray(0, 7));
    d.update(content.manifest.subarray(7));
    for (const f of content.files) {
      d.beginFile(f.name, f.data.length);
      d.update(f.data);
    }
    const expected = contentDigest(content);
    expect(d.digest()).toEqual(expected);
    const flipped = {
      ...content,
      files: [{ name: '1', data: Buffer.from(content.files[0]!.data) }, content.files[1]!],
    };
    flipped.files[0]!.data[500]! ^= 1;
    expect(contentDigest(flipped)).not.toEqual(expected);
    // Moving bytes from one file to the next changes the digest too.
    const moved = {
      manifest: content.manifest,
      files: [
        { name: '1', data: content.files[0]!.data.subarray(0, 999) },
        { name: '2', data: content.files[0]!.data.subarray(999) },
      ],
    };
    expect(contentDigest(moved)).not.toEqual(expected);
  });

  it('payload round-trips and rejects truncation at every length', () => {
    const bytes = encodePayload(content, 42);
    expect(decodePayload(bytes)).toEqual({ ...content, committedAt: 42 });
    for (let n = 0; n < bytes.length; n++)
      expect(() => decodePayload(bytes.subarray(0, n))).toThrow(/corrupt/);
    expect(() => decodePayload(Buffer.concat([bytes, Buffer.from([0])]))).toThrow(/trailing/);
  });
});
