import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { verifiedKey } from '../../../../src/manifest/keys.js';
import { readVerifiedPoint } from '../../../../src/restore/verified-record.js';
import {
  DEFAULT_SAMPLE,
  sampleOrder,
  verifyArchive,
  type VerifyFinding,
  type VerifyOptions,
} from '../../../../src/restore/verify.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { openObjectStore } from '../../../../src/store/open.js';
import { SegmentArchive } from '../../../helpers/verify-archive.js';

/**
 * `verify --incremental` over a real folder store: what it downloads follows
 * what is new since the verified point, plus a seeded sample of older objects.
 */

const P = '1';
let work: string;
let store: ObjectStore;
let archive: SegmentArchive;

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'verify-incr-'));
  store = await openObjectStore(`file://${join(work, 'archive')}`);
  archive = new SegmentArchive(store, work, P);
});
afterEach(async () => {
  await store.close();
  await rm(work, { recursive: true, force: true });
});

async function verify(options: Partial<VerifyOptions> = {}) {
  const findings: VerifyFinding[] = [];
  const report = await verifyArchive(store, {
    partition: P,
    scratch: join(work, 'scratch'),
    host: 'test-host',
    onFinding: (f) => findings.push(f),
    ...options,
  });
  return { report, findings };
}

/** Replaces an object's bytes by others of the same size, keeping its metadata (SHA-256 included). */
async function tamper(key: string): Promise<void> {
  const info = (await store.head(key))!;
  const chunks: Buffer[] = [];
  for await (const c of await store.get(key)) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks);
  body[body.length - 1] ^= 0xff;
  await store.delete(key);
  await store.create(key, body, { metadata: info.metadata });
}

describe('verify --incremental', () => {
  it('checks far fewer objects on a second run than on the first', async () => {
    await archive.append(20);
    const first = await verify({ incremental: { seed: 1 } });
    expect(first.report.faults).toBe(0);
    expect(first.report.checked).toBe(20);
    expect(first.report.partitions[0]!.verifiedLsn).toBe(40);

    const second = await verify({ incremental: { seed: 1 } });
    expect(second.report.faults).toBe(0);
    expect(second.report.checked).toBe(DEFAULT_SAMPLE);
    expect(second.report.partitions[0]!.incremental).toEqual({
      fresh: 0,
      sampled: DEFAULT_SAMPLE,
      total: 20,
    });
  });

  it('checks the segments archived after the verified point, and moves the point on', async () => {
    await archive.append(10);
    await verify({ incremental: { seed: 1 } });
    const added = await archive.append(3);
    const { report } = await verify({ incremental: { seed: 2, sample: 0 } });
    expect(report.partitions[0]!.incremental).toEqual({ fresh: 3, sampled: 0, total: 13 });
    expect(report.checked).toBe(3);
    const point = await readVerifiedPoint(store, P);
    expect(point.state === 'ok' && point.stored.value.verified_lsn).toBe(26);
    expect(point.state === 'ok' && point.stored.value.objects.map((o) => o.key).slice(-3)).toEqual(added);
    // A fraction of the older ones instead of a count.
    expect((await verify({ incremental: { seed: 2, fraction: 0.5 } })).report.checked).toBe(7);
  });

  it('catches a tampered old object when the seed samples it, and a full verify always does', async () => {
    const keys = await archive.append(12);
    await verify();
    const old = keys[5]!;
    await tamper(old);
    // The record still says the old object is verified: only a sample that picks it downloads it.
    const seedFor = (picked: boolean) => {
      for (let seed = 0; ; seed++) {
        if (sampleOrder(keys, seed, P).slice(0, 2).includes(old) === picked) return seed;
      }
    };
    const missed = await verify({ incremental: { seed: seedFor(false), sample: 2 } });
    expect(missed.report.faults).toBe(0);
    expect(missed.report.checked).toBe(2);

    const caught = await verify({ incremental: { seed: seedFor(true), sample: 2 } });
    expect(caught.report.faults).toBe(1);
    expect(caught.findings).toEqual([
      expect.objectContaining({ severity: 'fault', key: old, message: expect.stringMatching(/checksum/) }),
    ]);
    expect(caught.report.partitions[0]!.verifiedLsn).toBeUndefined();

    const full = await verify();
    expect(full.report.faults).toBe(1);
    expect(full.report.checked).toBe(12);
    expect(full.findings.map((f) => f.key)).toEqual([old]);
  });

  it('checks any object whose manifest record no longer matches the verified one', async () => {
    await archive.append(6);
    await verify();
    const point = await readVerifiedPoint(store, P);
    if (point.state !== 'ok') throw new Error('no record');
    // A record that remembers another SHA-256 for one object, as if the manifest had changed since.
    const objects = point.stored.value.objects.map((o, i) =>
      i === 2 ? { ...o, sha256: '0'.repeat(64) } : o,
    );
    await store.replace(verifiedKey(P), Buffer.from(JSON.stringify({ ...point.stored.value, objects })), {
      ifMatch: point.stored.etag,
    });
    const { report } = await verify({ incremental: { seed: 3, sample: 0 } });
    expect(report.partitions[0]!.incremental).toEqual({ fresh: 1, sampled: 0, total: 6 });
  });

  it('treats a damaged record as knowing nothing: checks everything, warns, rewrites it', async () => {
    await archive.append(8);
    await verify();
    const point = await readVerifiedPoint(store, P);
    if (point.state !== 'ok') throw new Error('no record');
    await store.replace(verifiedKey(P), Buffer.from('{"schema": 1, "objects": [tru'), {
      ifMatch: point.stored.etag,
    });
    const { report, findings } = await verify({ incremental: { seed: 1 } });
    expect(report.checked).toBe(8);
    expect(report.faults).toBe(0);
    expect(findings).toEqual([
      expect.objectContaining({
        severity: 'warning',
        key: verifiedKey(P),
        message: expect.stringMatching(/damaged/),
      }),
    ]);
    expect((await readVerifiedPoint(store, P)).state).toBe('ok');
    expect((await verify({ incremental: { seed: 1 } })).report.checked).toBe(DEFAULT_SAMPLE);
  });

  it('a full verify records the point, so an incremental one after it checks little', async () => {
    await archive.append(9);
    const full = await verify();
    expect(full.report.checked).toBe(9);
    expect(full.findings).toEqual([]);
    const point = await readVerifiedPoint(store, P);
    expect(point.state === 'ok' && point.stored.value).toMatchObject({
      schema: 1,
      partition: P,
      timeline: 1,
      verified_lsn: 18,
      host: 'test-host',
      mode: 'full',
    });
    expect((await verify({ incremental: { seed: 4, sample: 1 } })).report.checked).toBe(1);
  });
});
