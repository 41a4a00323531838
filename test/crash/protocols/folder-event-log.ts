/**
 * The folder event log (contract/events/folder-bus.ts), the event bus of `file://`
 * URLs: a run appends a batch to a topic partition, then a consumer group
 * member reads it and commits its offset.
 *
 * The log starts with records 0..2, read and committed by group `g`. After a
 * crash at any op (and after a power cut), a fresh bus on the same folder must:
 * - read the log from the beginning as consecutive offsets from 0 with no
 *   corruption reported: records 0..2 whole, then the batch whole or not at
 *   all (a torn tail is cut by the next append); an uncrashed run shows it;
 * - take a further append, even though the crashed writer may have left its lock;
 * - give group `g` every record after its committed offset, none twice from it
 *   and none skipped: the committed offset never passes what the crashed
 *   member had handled, and never goes back before the setup's 3;
 * - do all that within a bound (a claim or member file the crashed consumer
 *   left does not stall the group beyond its session timeout).
 */

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import type { ConsumedEvent } from '../../../contract/events/event-bus.js';
import { silentLogger } from '../../../contract/log.js';
import { FolderEventBus } from '../../../contract/events/folder-bus.js';
import type { CrashOutcome, CrashProtocol } from '../runner.js';

const TOPIC = 'entries';
const GROUP = 'g';
const KEY = '1';
const TUNING = { heartbeatMs: 50, sessionTimeoutMs: 400, pollMs: 20, logger: silentLogger };
/** Long enough for a crashed member's session to run out several times over. */
const BOUND_MS = 8_000;

interface Ctx {
  url: string;
  root: string;
  /** Offsets the run's consumer handled (its handler returned). */
  handled: number[];
  /** Offsets group `n` handled in the run. */
  newGroupHandled: number[];
  /** The run's publish to a topic it created resolved. */
  freshPublished: boolean;
  bus?: FolderEventBus;
}

function record(n: number) {
  return { key: KEY, value: { schema: 1, n } };
}

function openBus(url: string): FolderEventBus {
  return new FolderEventBus(`${url}?partitions=1`, TUNING);
}

/** Subscribes `group` and collects until `until` says stop (or the bound runs out). */
async function consume(
  bus: FolderEventBus,
  group: string,
  fromBeginning: boolean,
  until: (got: ConsumedEvent[]) => boolean,
  errors: string[],
  handled?: number[],
): Promise<ConsumedEvent[]> {
  const got: ConsumedEvent[] = [];
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  const sub = await bus.subscribe({
    topic: TOPIC,
    group,
    fromBeginning,
    handler: async (events) => {
      got.push(...events);
      if (handled) handled.push(...events.map((e) => Number(e.offset)));
      if (until(got)) resolve();
    },
    onError: (err) => errors.push((err as Error).message),
  });
  if (until(got)) resolve();
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([done, new Promise<void>((r) => (timer = setTimeout(r, BOUND_MS)))]);
  clearTimeout(timer);
  await sub.stop();
  return got;
}

async function committedOffset(root: string, group = GROUP): Promise<number | undefined> {
  try {
    const text = await readFile(join(root, 'wal.entries', 'groups', group, 'offsets', '0000.json'), 'utf8');
    return (JSON.parse(text) as { offset: number }).offset;
  } catch {
    return undefined;
  }
}

export const protocols: CrashProtocol<Ctx>[] = [
  {
    name: 'folder event log: append and offset commit',
    async setup(root) {
      const dir = join(root, 'bus');
      const url = pathToFileURL(dir).href;
      const bus = openBus(url);
      try {
        await bus.publish(TOPIC, [record(0), record(1), record(2)]);
        const errors: string[] = [];
        const got = await consume(bus, GROUP, true, (g) => g.length >= 3, errors);
        if (got.length !== 3 || errors.length)
          throw new Error(`setup: consumed ${got.length}, ${errors.join('; ')}`);
      } finally {
        await bus.close();
      }
      return { url, root: dir, handled: [], newGroupHandled: [], freshPublished: false };
    },
    async run(ctx) {
      const bus = openBus(ctx.url);
      ctx.bus = bus;
      // A group that joins now starts at the end of the log, and must not lose that place.
      let newGroupDone!: () => void;
      const newGroupGot = new Promise<void>((r) => (newGroupDone = r));
      const n = await bus.subscribe({
        topic: TOPIC,
        group: 'n',
        handler: async (events) => {
          ctx.newGroupHandled.push(...events.map((e) => Number(e.offset)));
          if (ctx.newGroupHandled.length >= 2) newGroupDone();
        },
      });
      await bus.publish(TOPIC, [record(3), record(4)]);
      await newGroupGot;
      await n.stop();
      // A topic this run creates: once publish resolves, its record is durable.
      await bus.publish('fresh', [record(0)]);
      ctx.freshPublished = true;
      const errors: string[] = [];
      const got = await consume(bus, GROUP, false, (g) => g.length >= 2, errors, ctx.handled);
      if (errors.length) throw new Error(errors[0]);
      if (got.length < 2) throw new Error(`consumed ${got.length} of 2`);
      await bus.close();
    },
    async abandon(ctx) {
      await ctx.bus?.close().catch(() => undefined);
    },
    async check(ctx, outcome: CrashOutcome) {
      const v: string[] = [];
      const started = Date.now();
      const before = await committedOffset(ctx.root);
      if (before === undefined) v.push('group g has no committed offset');
      else if (before < 3) v.push(`group g's committed offset went back to ${before}`);
      else if (before > 3 + ctx.handled.length)
        v.push(`group g committed offset ${before}, past the ${ctx.handled.length} records it handled`);

      const bus = openBus(ctx.url);
      try {
        const errors: string[] = [];
        // An append after the crash: it must go in behind whatever the crash left, as the next offset.
        try {
          await bus.publish(TOPIC, [record(5)], { signal: AbortSignal.timeout(BOUND_MS) });
        } catch (err) {
          v.push(`an append after the crash did not complete: ${(err as Error).message}`);
          return v;
        }
        const all = await consume(
          bus,
          'audit',
          true,
          (g) => g.some((e) => (e.value as { n: number }).n === 5),
          errors,
        );
        const offsets = all.map((e) => Number(e.offset));
        const ns = all.map((e) => (e.value as { n: number }).n);
        for (const e of errors) v.push(`reading the log: ${e}`);
        if (offsets.some((o, i) => o !== i)) v.push(`offsets ${JSON.stringify(offsets)} are not 0, 1, 2…`);
        const want = ns.length === 6 ? [0, 1, 2, 3, 4, 5] : [0, 1, 2, 5];
        if (JSON.stringify(ns) !== JSON.stringify(want))
          v.push(
            `the log holds records ${JSON.stringify(ns)}: not 0..2, the batch whole or not at all, then 5`,
          );
        if (!outcome.crashed && ns.length !== 6) v.push(`an uncrashed run's batch is not in the log`);
        if (ctx.handled.some((o) => o >= ns.length - 1))
          v.push(`the consumer handled offsets ${JSON.stringify(ctx.handled)} the log no longer holds`);

        const last = ns.length - 1;
        const from = Math.min(before ?? 3, last);
        const rest = await consume(
          bus,
          GROUP,
          false,
          (g) => g.some((e) => Number(e.offset) === last),
          errors,
        );
        const restOffsets = rest.map((e) => Number(e.offset));
        const wantRest = Array.from({ length: last + 1 - from }, (_, i) => from + i);
        if (JSON.stringify(restOffsets) !== JSON.stringify(wantRest))
          v.push(
            `group g got offsets ${JSON.stringify(restOffsets)} after committing ${before}, not ${JSON.stringify(wantRest)}`,
          );

        // Group n joined at the end of the log (offset 3). Once it has handled a record, its start
        // position was committed before: that commit must survive, or a restart skips what followed.
        const nCommitted = await committedOffset(ctx.root, 'n');
        if (ctx.newGroupHandled.length > 0 && (nCommitted === undefined || nCommitted < 3))
          v.push(
            `group n handled ${JSON.stringify(ctx.newGroupHandled)} but its committed offset is ${nCommitted}`,
          );
        if (nCommitted !== undefined) {
          const due = new Set<number>();
          for (let o = nCommitted; o <= last; o++) if (!ctx.newGroupHandled.includes(o)) due.add(o);
          const missing = (got: ConsumedEvent[]) =>
            [...due].filter((o) => !got.some((e) => Number(e.offset) === o));
          const resumed = await consume(bus, 'n', false, (g) => missing(g).length === 0, errors);
          if (missing(resumed).length > 0)
            v.push(
              `group n, committed at ${nCommitted}, skips offsets ${JSON.stringify(missing(resumed))} (handled ${JSON.stringify(ctx.newGroupHandled)})`,
            );
        }
        if (ctx.freshPublished) {
          const fresh = await new Promise<ConsumedEvent[]>((resolve, reject) => {
            const got: ConsumedEvent[] = [];
            let timer: NodeJS.Timeout | undefined;
            bus
              .subscribe({
                topic: 'fresh',
                group: 'audit',
                fromBeginning: true,
                handler: async (events) => {
                  got.push(...events);
                },
              })
              .then((sub) => {
                timer = setTimeout(() => sub.stop().then(() => resolve(got), reject), 500);
              }, reject);
            void timer;
          });
          if (fresh.length !== 1)
            v.push(`a record published to a new topic is gone: the topic holds ${fresh.length}`);
        }
      } finally {
        await bus.close().catch(() => undefined);
      }
      const took = Date.now() - started;
      if (took > BOUND_MS) v.push(`the check took ${took} ms: something the crash left stalls the log`);
      return v;
    },
  },
];
