import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../contract/errors.js';
import type {
  ConsumedEvent,
  EventBus,
  PublishEvent,
  SubscribeOptions,
  Subscription,
} from '../../contract/events/event-bus.js';
import { partitionForKey } from '../../contract/events/partitioner.js';

/**
 * One namespace on one backend (a random topic prefix, or a fresh folder):
 * every bus opened from it sees the same topics. `cleanup` removes what the
 * test created.
 */
export interface EventBusFixture {
  open(): Promise<EventBus>;
  cleanup(): Promise<void>;
}

export type EventBusFactory = () => Promise<EventBusFixture>;

export async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Subscribes `bus` (to `entries` from the beginning unless `options` say otherwise); `subs` stops it after the test. */
export async function subscribeTo(
  subs: Subscription[],
  bus: EventBus,
  options: Omit<SubscribeOptions, 'topic'> & { topic?: string },
): Promise<void> {
  subs.push(await bus.subscribe({ topic: 'entries', fromBeginning: true, ...options }));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function seqEvents(
  keys: string[],
  from: number,
  to: number,
  extra: Record<string, unknown> = {},
): PublishEvent[] {
  const out: PublishEvent[] = [];
  for (let seq = from; seq < to; seq++) {
    for (const key of keys) out.push({ key, value: { schema: 1, key, seq, ...extra } });
  }
  return out;
}

const id = (e: ConsumedEvent): string => `${e.key}:${String(e.value.seq)}`;

export function eventBusConformance(name: string, factory: EventBusFactory): void {
  describe(`EventBus conformance: ${name}`, () => {
    let fixture: EventBusFixture | undefined;
    const opened: EventBus[] = [];
    const subs: Subscription[] = [];

    async function setup(): Promise<{ open: () => Promise<EventBus> }> {
      fixture = await factory();
      const f = fixture;
      return {
        open: async () => {
          const bus = await f.open();
          opened.push(bus);
          return bus;
        },
      };
    }

    afterEach(async () => {
      await Promise.all(subs.splice(0).map((s) => s.stop()));
      await Promise.all(opened.splice(0).map((b) => b.close()));
      await fixture?.cleanup();
      fixture = undefined;
    });

    it('keeps per-key order across 10,000 events from two concurrent publishers', async () => {
      const { open } = await setup();
      const [pubA, pubB, consumer] = await Promise.all([open(), open(), open()]);
      const keysA = Array.from({ length: 10 }, (_, i) => `a-${i}`);
      const keysB = Array.from({ length: 10 }, (_, i) => `b-${i}`);
      const perKey = new Map<string, number[]>();
      let received = 0;
      const errors: unknown[] = [];
      await subscribeTo(subs, consumer, {
        group: 'order',
        onError: (e) => errors.push(e),
        handler: async (events) => {
          for (const e of events) {
            let list = perKey.get(e.key);
            if (!list) perKey.set(e.key, (list = []));
            list.push(e.value.seq as number);
            received++;
          }
        },
      });
      const publishAll = async (bus: EventBus, keys: string[]): Promise<void> => {
        // 500 events per key, in batches of 25 per key (250 events), one after another.
        for (let from = 0; from < 500; from += 25)
          await bus.publish('entries', seqEvents(keys, from, from + 25));
      };
      await Promise.all([publishAll(pubA, keysA), publishAll(pubB, keysB)]);
      await waitFor(() => received >= 10_000, 90_000, 'all 10,000 events');
      await sleep(300);
      expect(errors).toEqual([]);
      expect(received).toBe(10_000);
      expect([...perKey.keys()].sort()).toEqual([...keysA, ...keysB].sort());
      const expected = Array.from({ length: 500 }, (_, i) => i);
      for (const [, seqs] of perKey) expect(seqs).toEqual(expected);
    });

    it('resumes a restarted consumer where it left off, redelivering only the unfinished batch', async () => {
      const { open } = await setup();
      const pub = await open();
      const keys = Array.from({ length: 10 }, (_, i) => `k-${i}`);
      const all = seqEvents(keys, 0, 100);
      for (let i = 0; i < all.length; i += 100) await pub.publish('entries', all.slice(i, i + 100));

      const busA = await open();
      const handledA = new Set<string>();
      const unfinished = new Set<string>();
      const first: { sub?: Subscription } = {};
      let stopping: Promise<void> | undefined;
      let calls = 0;
      let callsAfterStop = 0;
      first.sub = await busA.subscribe({
        topic: 'entries',
        group: 'resume',
        fromBeginning: true,
        onError: () => undefined,
        handler: async (events) => {
          if (stopping) callsAfterStop++;
          if (++calls === 2) {
            // This batch is not finished: stop while it fails, so its position is not committed.
            for (const e of events) unfinished.add(id(e));
            stopping = waitFor(() => first.sub !== undefined, 10_000, 'subscribe').then(() =>
              first.sub!.stop(),
            );
            throw new Error('simulated failure in the last batch');
          }
          for (const e of events) handledA.add(id(e));
        },
      });
      await waitFor(() => stopping !== undefined, 60_000, 'the first consumer to stop itself');
      await stopping;
      await busA.close();
      expect(callsAfterStop).toBe(0);
      expect(handledA.size).toBeGreaterThan(0);
      expect(unfinished.size).toBeGreaterThan(0);

      const busB = await open();
      const seenB: string[] = [];
      await subscribeTo(subs, busB, {
        group: 'resume',
        handler: async (events) => {
          for (const e of events) seenB.push(id(e));
        },
      });
      await waitFor(() => handledA.size + new Set(seenB).size >= 1000, 60_000, 'the rest of the events');
      await sleep(500);
      const setB = new Set(seenB);
      // A fully handled prefix is never redelivered; nothing is missed; no duplicates in a clean run.
      for (const k of handledA) expect(setB.has(k), `redelivered ${k}`).toBe(false);
      for (const k of unfinished) expect(setB.has(k), `missed unfinished ${k}`).toBe(true);
      expect(setB.size).toBe(seenB.length);
      expect(handledA.size + setB.size).toBe(1000);
    });

    it('retries a failing handler: the failed batch is redelivered, never skipped', async () => {
      const { open } = await setup();
      const bus = await open();
      const seen: string[] = [];
      const errors: unknown[] = [];
      let failuresLeft = 2;
      await subscribeTo(subs, bus, {
        group: 'retry',
        onError: (e) => errors.push(e),
        handler: async (events) => {
          if (failuresLeft > 0) {
            failuresLeft--;
            throw new Error('handler failed');
          }
          for (const e of events) seen.push(id(e));
        },
      });
      await bus.publish('entries', seqEvents(['x'], 0, 20));
      await waitFor(() => seen.length >= 20, 60_000, 'the events after two handler failures');
      expect(errors.length).toBe(2);
      expect(seen).toEqual(Array.from({ length: 20 }, (_, i) => `x:${i}`));
    });

    it('shares a topic between two consumers of one group, one member per key at a time', async () => {
      const { open } = await setup();
      const [pub, busA, busB] = await Promise.all([open(), open(), open()]);
      const keys = Array.from({ length: 40 }, (_, i) => `p-${i}`);
      const byMember = { a: new Set<string>(), b: new Set<string>() };
      const inFlight = new Map<string, 'a' | 'b'>();
      const violations: string[] = [];
      const handler =
        (member: 'a' | 'b') =>
        async (events: ConsumedEvent[]): Promise<void> => {
          const batchKeys = new Set(events.map((e) => e.key));
          for (const k of batchKeys) {
            const other = inFlight.get(k);
            if (other && other !== member) violations.push(`${k} served by ${other} and ${member} at once`);
            inFlight.set(k, member);
          }
          await sleep(5);
          for (const e of events) byMember[member].add(id(e));
          for (const k of batchKeys) if (inFlight.get(k) === member) inFlight.delete(k);
        };
      await subscribeTo(subs, busA, { group: 'share', handler: handler('a') });
      await subscribeTo(subs, busB, { group: 'share', handler: handler('b') });
      let rounds = 0;
      const deadline = Date.now() + 60_000;
      while (rounds < 20 || byMember.a.size === 0 || byMember.b.size === 0) {
        if (Date.now() > deadline) break;
        await pub.publish('entries', seqEvents(keys, rounds, rounds + 1));
        rounds++;
        await sleep(50);
      }
      const total = rounds * keys.length;
      const union = (): Set<string> => new Set([...byMember.a, ...byMember.b]);
      await waitFor(() => union().size >= total, 60_000, 'every event by one of the members');
      expect(byMember.a.size).toBeGreaterThan(0);
      expect(byMember.b.size).toBeGreaterThan(0);
      expect(union().size).toBe(total);
      expect(violations).toEqual([]);
    });

    it('starts a new group at the beginning or at the end, as asked', async () => {
      const { open } = await setup();
      const [pub, consumer] = await Promise.all([open(), open()]);
      await pub.publish('entries', seqEvents(['old'], 0, 5));
      const early: string[] = [];
      const late: string[] = [];
      await subscribeTo(subs, consumer, {
        group: 'from-beginning',
        handler: async (events) => void early.push(...events.map(id)),
      });
      await subscribeTo(subs, consumer, {
        group: 'from-end',
        fromBeginning: false,
        handler: async (events) => void late.push(...events.map(id)),
      });
      // Wait until the new group's start position is fixed: a marker published now reaches it.
      let marker = 0;
      const deadline = Date.now() + 60_000;
      while (!late.some((k) => k.startsWith('marker:'))) {
        if (Date.now() > deadline) throw new Error('the from-end group never received a marker');
        await pub.publish('entries', [{ key: 'marker', value: { schema: 1, seq: marker++ } }]);
        await sleep(200);
      }
      await pub.publish('entries', seqEvents(['new'], 0, 5));
      await waitFor(
        () => late.filter((k) => k.startsWith('new:')).length >= 5,
        30_000,
        'new events (from end)',
      );
      await waitFor(
        () => early.filter((k) => k.startsWith('new:')).length >= 5,
        30_000,
        'new events (beginning)',
      );
      expect(late.filter((k) => k.startsWith('old:'))).toEqual([]);
      expect(early.filter((k) => k.startsWith('old:'))).toEqual([
        'old:0',
        'old:1',
        'old:2',
        'old:3',
        'old:4',
      ]);
      expect(late.filter((k) => k.startsWith('new:'))).toEqual(['new:0', 'new:1', 'new:2', 'new:3', 'new:4']);
    });

    it('round-trips JSON values, keys and metadata', async () => {
      const { open } = await setup();
      const bus = await open();
      const values: Record<string, unknown>[] = [
        {
          schema: 1,
          partition: 7,
          lsn: '18446744073709551615',
          term: 3,
          node: 'n1',
          committed_at: new Date(0).toISOString(),
        },
        {
          schema: 1,
          text: 'line one\nline two\r\n\t"quoted" \\ back',
          unicode: 'żółw 🐢 \u2028 \u0000',
          nested: { a: [1, 2.5, -3e-7, null, true, false, { b: [] }] },
        },
        { schema: 1, big: 'x'.repeat(200_000) },
        { schema: 1, empty: {}, arr: [], zero: 0, neg: -1 },
      ];
      const events = values.map((value, i) => ({ key: `partition-${i}`, value }));
      const got: ConsumedEvent[] = [];
      await subscribeTo(subs, bus, {
        topic: 'archived',
        group: 'json',
        handler: async (batch) => void got.push(...batch),
      });
      const before = Date.now();
      await bus.publish('archived', events);
      await waitFor(() => got.length >= events.length, 60_000, 'the JSON events');
      const byKey = new Map(got.map((e) => [e.key, e]));
      expect(got.length).toBe(events.length);
      for (const e of events) {
        const c = byKey.get(e.key)!;
        expect(c.value).toEqual(e.value);
        expect(c.topic).toBe(bus.topicName('archived'));
        expect(c.partition).toBe(partitionForKey(e.key, 4));
        expect(c.offset).toMatch(/^[0-9]+$/);
        expect(c.timestamp).toBeInstanceOf(Date);
        expect(Math.abs(c.timestamp.getTime() - before)).toBeLessThan(60_000);
      }
      expect(bus.topicName('archived').endsWith('.archived')).toBe(true);
    });

    it('rejects bad events and names before writing anything', async () => {
      const { open } = await setup();
      const bus = await open();
      const bad: [string, PublishEvent[]][] = [
        ['entries', [{ key: '', value: { schema: 1 } }]],
        ['entries', [{ key: 'k', value: [] as unknown as Record<string, unknown> }]],
        ['entries', [{ key: 'k', value: { n: 1n } as unknown as Record<string, unknown> }]],
        ['../escape', [{ key: 'k', value: { schema: 1 } }]],
      ];
      for (const [topic, events] of bad) {
        const err = await bus.publish(topic, events).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(isWalArchiverError(err, ErrorCodes.INVALID_ARGUMENT), String(err)).toBe(true);
      }
      await expect(
        bus.subscribe({ topic: 'entries', group: 'a/b', handler: async () => undefined }),
      ).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    });
  });
}
