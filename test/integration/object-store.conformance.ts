import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isWalArchiverError } from '../../contract/errors.js';
import type { ErrorCode } from '../../contract/errors.js';
import { compareKeys } from '../../src/store/keys.js';
import type { ObjectInfo, ObjectStore } from '../../src/store/object-store.js';

export interface ConformanceStore {
  store: ObjectStore;
  cleanup(): Promise<void>;
}

/** Makes a fresh, empty store; `objectLock` asks for one that supports retention (an object-lock bucket on S3). */
export type ConformanceFactory = (options: { objectLock: boolean }) => Promise<ConformanceStore>;

/** What a store under test can promise beyond the common contract. */
export interface ConformanceCapabilities {
  /**
   * A streamed body is written as it is read, never held whole, so memory stays bounded
   * however large the object (true of the folder and S3 stores; an in-memory store holds every object).
   */
  boundedMemory: boolean;
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export async function listKeys(store: ObjectStore, prefix: string, startAfter?: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list(prefix, startAfter === undefined ? {} : { startAfter }))
    keys.push(info.key);
  return keys;
}

export async function expectCode(work: Promise<unknown>, code: ErrorCode): Promise<Error> {
  let error: unknown;
  try {
    await work;
  } catch (err) {
    error = err;
  }
  expect(error, `expected ${code}`).toBeInstanceOf(Error);
  if (!isWalArchiverError(error, code)) {
    throw new Error(
      `expected ${code}, got ${String((error as { code?: unknown }).code)}: ${(error as Error).message}`,
    );
  }
  expect(error.message).not.toContain('\n');
  return error;
}

/** A deterministic stream of `total` bytes in chunks of `chunk`, made as it is read (never held whole). */
export function generatedBody(
  total: number,
  seed: string,
  chunk = 1024 * 1024,
): { stream: Readable; sha256: Promise<string> } {
  const hash = createHash('sha256');
  let resolve!: (v: string) => void;
  const sha256 = new Promise<string>((r) => (resolve = r));
  async function* generate(): AsyncGenerator<Buffer> {
    // AES-CTR over zeros: fast, deterministic bytes that do not compress.
    const cipher = createCipheriv(
      'aes-256-ctr',
      createHash('sha256').update(seed).digest(),
      Buffer.alloc(16),
    );
    for (let sent = 0; sent < total;) {
      const n = Math.min(chunk, total - sent);
      const buf = cipher.update(Buffer.alloc(n));
      hash.update(buf);
      sent += n;
      yield buf;
    }
    resolve(hash.digest('hex'));
  }
  return { stream: Readable.from(generate(), { objectMode: false }), sha256 };
}

async function streamSha256(stream: Readable): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

const MiB = 1024 * 1024;

/** A full garbage collection, so that memory samples count live buffers, not garbage not yet collected. */
function collectGarbage(): void {
  setFlagsFromString('--expose_gc');
  (runInNewContext('gc') as () => void)();
}

export function objectStoreConformance(
  name: string,
  factory: ConformanceFactory,
  capabilities: ConformanceCapabilities = { boundedMemory: true },
): void {
  describe(`ObjectStore conformance: ${name}`, () => {
    let ctx: ConformanceStore | undefined;
    let store: ObjectStore;

    async function fresh(objectLock: boolean): Promise<ObjectStore> {
      if (ctx !== undefined) await ctx.cleanup();
      ctx = await factory({ objectLock });
      store = ctx.store;
      return store;
    }

    beforeEach(async () => {
      await fresh(false);
    });

    afterEach(async () => {
      await ctx?.cleanup();
      ctx = undefined;
    });

    it('lists keys in ascending byte order whatever the upload order, filters by prefix, honours startAfter', async () => {
      const keys = [
        'manifest.json',
        'partitions/1/manifest.json',
        'partitions/1/wal/0000000000001-0000000000005.tar.zst',
        'partitions/1/wal/0000000000006-000000000000z.tar.zst',
        'partitions/1/wal/0000000000010-0000000000010.tar.zst',
        'partitions/1/wal/000000000000a-000000000000f.tar.zst',
        'partitions/1/base/0000000000005.tar.zst',
        'partitions/10/wal/0000000000001-0000000000002.tar.zst',
        'partitions/2/wal/0000000000001-0000000000001.tar.zst',
        // "-" < "." < "/" < "0": a folder's keys sort between its siblings.
        'x-1',
        'x.json',
        'x/1',
        'x/2/deep',
        'x0',
        'Zeta',
        'zeta',
        'caf\u00e9',
        'cafe',
      ];
      const shuffled = [...keys].sort(() => Math.random() - 0.5);
      // Make sure the upload order is not already sorted.
      shuffled.reverse();
      for (const key of shuffled) await store.create(key, Buffer.from(key));
      const expected = [...keys].sort(compareKeys);
      expect(await listKeys(store, '')).toEqual(expected);

      expect(await listKeys(store, 'partitions/1/')).toEqual(
        expected.filter((k) => k.startsWith('partitions/1/')),
      );
      expect(await listKeys(store, 'partitions/1')).toEqual(
        expected.filter((k) => k.startsWith('partitions/1')),
      );
      expect(await listKeys(store, 'partitions/1/wal/00000000000')).toEqual([
        'partitions/1/wal/0000000000001-0000000000005.tar.zst',
        'partitions/1/wal/0000000000006-000000000000z.tar.zst',
        'partitions/1/wal/000000000000a-000000000000f.tar.zst',
        'partitions/1/wal/0000000000010-0000000000010.tar.zst',
      ]);
      expect(await listKeys(store, 'partitions/3/')).toEqual([]);
      expect(await listKeys(store, 'nothing-here')).toEqual([]);

      const i = expected.indexOf('partitions/1/wal/0000000000006-000000000000z.tar.zst');
      expect(await listKeys(store, '', expected[i])).toEqual(expected.slice(i + 1));
      expect(await listKeys(store, 'partitions/', 'partitions/1/wal/0000000000007')).toEqual(
        expected.filter(
          (k) => k.startsWith('partitions/') && compareKeys(k, 'partitions/1/wal/0000000000007') > 0,
        ),
      );
      expect(await listKeys(store, '', 'x.json')).toEqual(expected.slice(expected.indexOf('x.json') + 1));
      expect(await listKeys(store, '', 'zzz')).toEqual([]);

      // list gives size and the same etag as head.
      const infos: ObjectInfo[] = [];
      for await (const info of store.list('x')) infos.push(info);
      for (const info of infos) {
        const head = await store.head(info.key);
        expect(info.size).toBe(Buffer.byteLength(info.key));
        expect(info.etag).toBe(head?.etag);
      }

      // Stopping early is allowed.
      for await (const info of store.list('')) {
        expect(info.key).toBe(expected[0]);
        break;
      }
    });

    it('reads byte ranges: offset only, offset and length, length past the end, empty ranges', async () => {
      const data = randomBytes(100_000);
      await store.create('ranges/a.bin', data);
      expect((await readAll(await store.get('ranges/a.bin'))).equals(data)).toBe(true);
      expect(
        (await readAll(await store.get('ranges/a.bin', { offset: 1234 }))).equals(data.subarray(1234)),
      ).toBe(true);
      expect(
        (await readAll(await store.get('ranges/a.bin', { offset: 1234, length: 4321 }))).equals(
          data.subarray(1234, 5555),
        ),
      ).toBe(true);
      expect(
        (await readAll(await store.get('ranges/a.bin', { length: 10 }))).equals(data.subarray(0, 10)),
      ).toBe(true);
      expect(
        (await readAll(await store.get('ranges/a.bin', { offset: 99_990, length: 1000 }))).equals(
          data.subarray(99_990),
        ),
      ).toBe(true);
      expect(
        (await readAll(await store.get('ranges/a.bin', { offset: 99_999, length: 1 }))).equals(
          data.subarray(99_999),
        ),
      ).toBe(true);
      expect((await readAll(await store.get('ranges/a.bin', { offset: 100_000 }))).length).toBe(0);
      expect((await readAll(await store.get('ranges/a.bin', { offset: 5, length: 0 }))).length).toBe(0);
      await expectCode(store.get('ranges/missing.bin'), 'NOT_FOUND');
      await expectCode(store.get('ranges/missing.bin', { offset: 3, length: 0 }), 'NOT_FOUND');
      await expectCode(store.get('ranges/a.bin', { offset: -1 }), 'INVALID_ARGUMENT');
    });

    it('round-trips metadata, size and etag through create, head and list', async () => {
      const body = Buffer.from('segment bytes');
      const metadata = {
        sha256: createHash('sha256').update(body).digest('hex'),
        'first-lsn': '0000000000001',
        'last-lsn': '000000000000a',
        partition: '7',
      };
      const created = await store.create('partitions/7/wal/0000000000001-000000000000a.tar.zst', body, {
        metadata,
        contentType: 'application/zstd',
      });
      expect(created.size).toBe(body.length);
      expect(created.metadata).toEqual(metadata);
      const head = await store.head('partitions/7/wal/0000000000001-000000000000a.tar.zst');
      expect(head).toBeDefined();
      expect(head?.key).toBe('partitions/7/wal/0000000000001-000000000000a.tar.zst');
      expect(head?.size).toBe(body.length);
      expect(head?.metadata).toEqual(metadata);
      expect(head?.etag).toBe(created.etag);
      expect(head?.etag).not.toBe('');
      expect(head?.retention).toBeUndefined();
      expect(Math.abs((head?.lastModified.getTime() ?? 0) - Date.now())).toBeLessThan(60_000);
      expect(await store.head('partitions/7/wal/missing')).toBeUndefined();
      expect(await store.head('partitions/7')).toBeUndefined();

      const other = await store.create('partitions/7/other', Buffer.from('other bytes'));
      expect(other.etag).not.toBe(created.etag);
      expect((await store.head('partitions/7/other'))?.metadata).toEqual({});
    });

    it('rejects malformed keys with INVALID_ARGUMENT', async () => {
      for (const key of [
        '',
        '/abs',
        'a//b',
        'a/',
        'a/./b',
        '../up',
        'a/../b',
        '.meta/x',
        'a/.hidden',
        'nul\u0000x',
      ]) {
        await expectCode(store.create(key, Buffer.from('x')), 'INVALID_ARGUMENT');
        await expectCode(store.head(key), 'INVALID_ARGUMENT');
      }
      await expectCode(
        store.create('ok', Buffer.from('x'), { metadata: { 'Upper-Case': 'x' } }),
        'INVALID_ARGUMENT',
      );
      expect(await listKeys(store, '')).toEqual([]);
    });

    it('conditional create: of writers racing for a key exactly one wins, and its bytes and metadata are stored', async () => {
      for (let round = 0; round < 15; round++) {
        const key = `race/${round}`;
        const writers = [0, 1, 2].map((w) => ({
          body: randomBytes(1000 + w * 37 + round),
          metadata: { writer: String(w), round: String(round) },
        }));
        const results = await Promise.allSettled(
          writers.map((w) => store.create(key, w.body, { metadata: w.metadata })),
        );
        const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
        expect(winners).toHaveLength(1);
        for (const r of results) {
          if (r.status === 'rejected')
            expect(isWalArchiverError(r.reason, 'ALREADY_EXISTS'), String(r.reason)).toBe(true);
        }
        const winner = writers[winners[0] ?? -1];
        expect((await readAll(await store.get(key))).equals(winner?.body ?? Buffer.alloc(0))).toBe(true);
        expect((await store.head(key))?.metadata).toEqual(winner?.metadata);
      }
      // A later create of an existing key loses too, and changes nothing.
      const before = await readAll(await store.get('race/0'));
      await expectCode(store.create('race/0', Buffer.from('late')), 'ALREADY_EXISTS');
      expect((await readAll(await store.get('race/0'))).equals(before)).toBe(true);
      expect(await listKeys(store, 'race/')).toHaveLength(15);
    });

    it('conditional create of large streamed (multipart) bodies racing: exactly one wins', async () => {
      for (let round = 0; round < 2; round++) {
        const key = `big-race/${round}`;
        const bodies = [0, 1].map((w) => generatedBody(20 * MiB + w, `race-${round}-${w}`));
        const results = await Promise.allSettled(
          bodies.map((b, w) => store.create(key, b.stream, { metadata: { writer: String(w) } })),
        );
        const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
        expect(winners).toHaveLength(1);
        const loser = results.find((r) => r.status === 'rejected');
        expect(isWalArchiverError((loser as PromiseRejectedResult).reason, 'ALREADY_EXISTS')).toBe(true);
        const w = winners[0] ?? -1;
        const read = await streamSha256(await store.get(key));
        expect(read.bytes).toBe(20 * MiB + w);
        expect(read.sha256).toBe(await bodies[w]?.sha256);
        expect((await store.head(key))?.metadata).toEqual({ writer: String(w) });
      }
    });

    it(`streams a 160 MiB generated body${capabilities.boundedMemory ? ' with bounded memory' : ''} and reads it back intact`, async () => {
      const total = 160 * MiB + 12345;
      const body = generatedBody(total, 'big');
      collectGarbage();
      const base = process.memoryUsage();
      let peakExternal = 0;
      let peakRss = 0;
      const sample = () => {
        collectGarbage();
        const m = process.memoryUsage();
        peakExternal = Math.max(peakExternal, m.arrayBuffers - base.arrayBuffers);
        peakRss = Math.max(peakRss, m.rss - base.rss);
      };
      const timer = setInterval(sample, 25);
      let created: ObjectInfo;
      try {
        created = await store.create('big/object.bin', body.stream, { metadata: { kind: 'big' } });
      } finally {
        clearInterval(timer);
      }
      sample();
      expect(created.size).toBe(total);
      if (capabilities.boundedMemory) {
        // Memory must not grow with the body: holding it whole would keep 160 MiB of buffers alive.
        // (lib-storage's multipart upload keeps up to about partSize x (queueSize + 5) alive, 30-62 MiB
        // with the defaults, depending on timing.)
        expect(peakExternal).toBeLessThan(96 * MiB);
        expect(peakRss).toBeLessThan(200 * MiB);
      }
      const head = await store.head('big/object.bin');
      expect(head?.size).toBe(total);
      expect(head?.metadata).toEqual({ kind: 'big' });
      expect(head?.etag).toBe(created.etag);
      const read = await streamSha256(await store.get('big/object.bin'));
      expect(read.bytes).toBe(total);
      expect(read.sha256).toBe(await body.sha256);
      const tail = await readAll(await store.get('big/object.bin', { offset: total - 10 }));
      expect(tail.length).toBe(10);
    });

    it('a stream of announced size is stored intact, races conditionally, and a wrong length is refused', async () => {
      const size = 12 * MiB + 7;
      const bodies = [0, 1].map((w) => generatedBody(size, `sized-${w}`));
      const results = await Promise.allSettled(
        bodies.map((b, w) => store.create('sized/race', b.stream, { size, metadata: { writer: String(w) } })),
      );
      const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
      expect(winners).toHaveLength(1);
      const read = await streamSha256(await store.get('sized/race'));
      expect(read.bytes).toBe(size);
      expect(read.sha256).toBe(await bodies[winners[0]!]!.sha256);
      expect((await store.head('sized/race'))?.size).toBe(size);

      for (const [announced, actual] of [
        [4096, 4000],
        [4096, 5000],
      ] as const) {
        const key = `sized/wrong-${actual}`;
        const err = await expectCode(
          store.create(key, Readable.from([randomBytes(actual)]), { size: announced }),
          'INVALID_ARGUMENT',
        );
        expect(err.message).toContain('announced');
        expect(await store.head(key)).toBeUndefined();
      }
      await expectCode(store.create('sized/negative', Buffer.from('x'), { size: -1 }), 'INVALID_ARGUMENT');
    });

    it('a body stream that fails leaves no object behind', async () => {
      for (const size of [1000, 12 * MiB]) {
        const failing = Readable.from(
          (async function* () {
            for (let sent = 0; sent < size; sent += 64 * 1024) yield randomBytes(64 * 1024);
            throw new Error('source broke');
          })(),
        );
        await expect(store.create(`broken/${size}`, failing)).rejects.toThrow();
        expect(await store.head(`broken/${size}`)).toBeUndefined();
        await expectCode(store.get(`broken/${size}`), 'NOT_FOUND');
      }
      expect(await listKeys(store, '')).toEqual([]);
      // The key is still free.
      await store.create('broken/1000', Buffer.from('fine'));
      expect((await readAll(await store.get('broken/1000'))).toString()).toBe('fine');
    });

    it('replace is a compare-and-swap: of two writers with the same etag one wins, the other gets PRECONDITION_FAILED', async () => {
      const first = await store.replace('manifest.json', Buffer.from('{"v":0}'), {
        ifMatch: undefined,
        metadata: { v: '0' },
      });
      await expectCode(
        store.replace('manifest.json', Buffer.from('{"v":"again"}'), { ifMatch: undefined }),
        'PRECONDITION_FAILED',
      );
      let etag = first.etag;
      for (let round = 1; round <= 10; round++) {
        const bodies = [0, 1].map((w) => Buffer.from(JSON.stringify({ v: round, writer: w })));
        const results = await Promise.allSettled(
          bodies.map((b, w) =>
            store.replace('manifest.json', b, { ifMatch: etag, metadata: { writer: String(w) } }),
          ),
        );
        const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
        expect(winners).toHaveLength(1);
        for (const r of results) {
          if (r.status === 'rejected')
            expect(isWalArchiverError(r.reason, 'PRECONDITION_FAILED'), String(r.reason)).toBe(true);
        }
        const w = winners[0] ?? -1;
        const won = results[w] as PromiseFulfilledResult<ObjectInfo>;
        expect(won.value.etag).not.toBe(etag);
        expect((await readAll(await store.get('manifest.json'))).equals(bodies[w] ?? Buffer.alloc(0))).toBe(
          true,
        );
        const head = await store.head('manifest.json');
        expect(head?.etag).toBe(won.value.etag);
        expect(head?.metadata).toEqual({ writer: String(w) });
        // The old etag no longer works.
        await expectCode(
          store.replace('manifest.json', Buffer.from('stale'), { ifMatch: etag }),
          'PRECONDITION_FAILED',
        );
        etag = won.value.etag;
      }
      await expectCode(
        store.replace('absent.json', Buffer.from('x'), { ifMatch: etag }),
        'PRECONDITION_FAILED',
      );
      expect(await store.head('absent.json')).toBeUndefined();
      expect(await listKeys(store, '')).toEqual(['manifest.json']);
    });

    it('delete removes the object, is idempotent, and the key can be created again', async () => {
      await store.delete('never/was');
      await store.create('d/one', Buffer.from('one'));
      await store.create('d/two', Buffer.from('two'));
      await store.delete('d/one');
      expect(await store.head('d/one')).toBeUndefined();
      await expectCode(store.get('d/one'), 'NOT_FOUND');
      expect(await listKeys(store, 'd/')).toEqual(['d/two']);
      await store.delete('d/one');
      const again = await store.create('d/one', Buffer.from('one again'));
      expect((await readAll(await store.get('d/one'))).toString()).toBe('one again');
      expect((await store.head('d/one'))?.etag).toBe(again.etag);
      // A replaced object is deleted whole: no older content comes back.
      await store.replace('d/one', Buffer.from('replaced'), { ifMatch: again.etag });
      await store.delete('d/one');
      expect(await store.head('d/one')).toBeUndefined();
      expect(await listKeys(store, 'd/')).toEqual(['d/two']);
    });

    it('object lock: an object under retention can be neither deleted nor replaced; one without can', async () => {
      const locked = await fresh(true);
      const retainUntil = new Date(Date.now() + 3600_000);
      const created = await locked.create('lock/held', Buffer.from('keep me'), {
        retention: { mode: 'GOVERNANCE', retainUntil },
        metadata: { partition: '1' },
      });
      const head = await locked.head('lock/held');
      expect(head?.retention?.mode).toBe('GOVERNANCE');
      expect(Math.abs((head?.retention?.retainUntil.getTime() ?? 0) - retainUntil.getTime())).toBeLessThan(
        1000,
      );
      await expectCode(locked.delete('lock/held'), 'OBJECT_LOCKED');
      await expectCode(
        locked.replace('lock/held', Buffer.from('overwrite'), { ifMatch: created.etag }),
        'OBJECT_LOCKED',
      );
      await expectCode(locked.create('lock/held', Buffer.from('overwrite')), 'ALREADY_EXISTS');
      expect((await readAll(await locked.get('lock/held'))).toString()).toBe('keep me');
      expect((await locked.head('lock/held'))?.etag).toBe(created.etag);
      expect(await listKeys(locked, 'lock/')).toEqual(['lock/held']);

      // A large streamed (multipart) object gets its retention too.
      const big = generatedBody(12 * MiB, 'locked-big');
      await locked.create('lock/big', big.stream, { retention: { mode: 'COMPLIANCE', retainUntil } });
      expect((await locked.head('lock/big'))?.retention?.mode).toBe('COMPLIANCE');
      await expectCode(locked.delete('lock/big'), 'OBJECT_LOCKED');
      expect((await streamSha256(await locked.get('lock/big'))).sha256).toBe(await big.sha256);

      const free = await locked.create('lock/free', Buffer.from('free'));
      expect((await locked.head('lock/free'))?.retention).toBeUndefined();
      const replaced = await locked.replace('lock/free', Buffer.from('free 2'), { ifMatch: free.etag });
      expect((await readAll(await locked.get('lock/free'))).toString()).toBe('free 2');
      expect(replaced.etag).not.toBe(free.etag);
      await locked.delete('lock/free');
      expect(await locked.head('lock/free')).toBeUndefined();
      expect(await listKeys(locked, 'lock/')).toEqual(['lock/big', 'lock/held']);
    });

    it('object lock: once retention has passed the object can be deleted', async () => {
      const locked = await fresh(true);
      await locked.create('lock/short', Buffer.from('short'), {
        retention: { mode: 'GOVERNANCE', retainUntil: new Date(Date.now() + 2000) },
      });
      await expectCode(locked.delete('lock/short'), 'OBJECT_LOCKED');
      await new Promise((r) => setTimeout(r, 3500));
      await locked.delete('lock/short');
      expect(await locked.head('lock/short')).toBeUndefined();
    });

    it('honours an aborted signal and fails after close()', async () => {
      const controller = new AbortController();
      controller.abort();
      await expectCode(store.create('aborted', Buffer.from('x'), { signal: controller.signal }), 'ABORTED');
      expect(await store.head('aborted')).toBeUndefined();
      await store.close();
      await expect(store.head('anything')).rejects.toThrow(/close/);
    });
  });
}
