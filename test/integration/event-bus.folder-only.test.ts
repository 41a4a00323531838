import { spawn } from 'node:child_process';
import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../contract/errors.js';
import { capturingLogger } from '../helpers/capturing-logger.js';
import type { ConsumedEvent, EventBus, Subscription } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import { subscribeTo, waitFor } from './event-bus.conformance.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const TUNING = { heartbeatMs: 200, sessionTimeoutMs: 2_000, pollMs: 100 };
let logs: string[] = [];

let dirs: string[] = [];
let buses: EventBus[] = [];
let subs: Subscription[] = [];

afterEach(async () => {
  await Promise.all(subs.map((s) => s.stop()));
  await Promise.all(buses.map((b) => b.close()));
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  dirs = [];
  logs = [];
  buses = [];
  subs = [];
});

async function folder(params = ''): Promise<{ dir: string; url: string; open: () => Promise<EventBus> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wal-events-only-'));
  dirs.push(dir);
  const url = `${pathToFileURL(dir).href}?topicPrefix=wal${params}`;
  return {
    dir,
    url,
    open: async () => {
      const bus = await openEventBus(url, {
        folder: TUNING,
        logger: capturingLogger(logs),
      });
      buses.push(bus);
      return bus;
    },
  };
}

interface Child {
  ready: Promise<void>;
  go: () => void;
  exit: Promise<{ code: number | null; stderr: string }>;
}

/** Starts a publishing child process; it loads, says ready, and publishes once `go` is called. */
function startChild(options: Record<string, unknown>): Child {
  const child = spawn(process.execPath, [path.join(here, 'event-bus.child.mjs'), JSON.stringify(options)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stderr }));
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    exit.then((r) => reject(new Error(`child exited before it was ready: ${r.stderr}`)), reject);
  });
  ready.catch(() => undefined);
  return { ready, exit, go: () => child.stdin.write('go\n') };
}

/** Events of key `k` with the given sequence numbers. */
const eventsOfK = (seqs: number[]) => seqs.map((seq) => ({ key: 'k', value: { schema: 1, seq } }));

/** Follows `entries` in group `g` from the beginning, collecting the events and the errors. */
async function collect(bus: EventBus): Promise<{ got: ConsumedEvent[]; errors: unknown[] }> {
  const got: ConsumedEvent[] = [];
  const errors: unknown[] = [];
  await subscribeTo(subs, bus, {
    group: 'g',
    onError: (e) => errors.push(e),
    handler: async (events) => void got.push(...events),
  });
  return { got, errors };
}

/** A pid that belonged to a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  const pid = child.pid!;
  await new Promise((r) => child.on('exit', r));
  return pid;
}

async function readLog(file: string): Promise<{ text: string; records: Record<string, unknown>[] }> {
  const text = await readFile(file, 'utf8');
  const lines = text.split('\n');
  expect(lines.pop()).toBe('');
  return { text, records: lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('folder event bus, across processes and crashes', () => {
  it('two OS processes appending to one topic lose and interleave nothing', async () => {
    const { dir, url } = await folder('&partitions=2');
    const keys = ['k0', 'k1', 'k2', 'k3', 'k4', 'k5'];
    const common = { url, topic: 'entries', keys, perKey: 200, batch: 2 };
    const children = [startChild({ ...common, writer: 'w1' }), startChild({ ...common, writer: 'w2' })];
    await Promise.all(children.map((c) => c.ready));
    for (const c of children) c.go();
    const results = await Promise.all(children.map((c) => c.exit));
    for (const r of results) expect(r, r.stderr).toMatchObject({ code: 0 });

    const topicDir = path.join(dir, 'wal.entries');
    let total = 0;
    const seqs = new Map<string, number[]>();
    const writersPerPartition: Set<unknown>[] = [];
    for (const p of ['0000', '0001']) {
      const { records } = await readLog(path.join(topicDir, `${p}.log`));
      const writers = new Set<unknown>();
      records.forEach((r, i) => {
        expect(r.offset).toBe(i);
        const v = r.value as { writer: string; key: string; seq: number };
        expect(r.key).toBe(v.key);
        writers.add(v.writer);
        const id = `${v.writer}/${v.key}`;
        let list = seqs.get(id);
        if (!list) seqs.set(id, (list = []));
        list.push(v.seq);
      });
      writersPerPartition.push(writers);
      total += records.length;
    }
    expect(total).toBe(2 * keys.length * 200);
    expect(seqs.size).toBe(2 * keys.length);
    const expected = Array.from({ length: 200 }, (_, i) => i);
    for (const [, list] of seqs) expect(list).toEqual(expected);
    expect(writersPerPartition.some((w) => w.size === 2)).toBe(true);
    const leftovers = (await readdir(topicDir)).filter((f) => !/^(meta\.json|\d{4}\.log)$/.test(f));
    expect(leftovers).toEqual([]);
  });

  it('ignores a torn last line, and the next append repairs it', async () => {
    const { dir, open } = await folder('&partitions=1');
    const writer = await open();
    await writer.publish('entries', eventsOfK([0, 1, 2]));
    const file = path.join(dir, 'wal.entries', '0000.log');
    await appendFile(file, '{"offset":3,"timestamp":1,"key":"k","value":{"sch');

    const reader = await open();
    const { got, errors } = await collect(reader);
    await waitFor(() => got.length >= 3, 10_000, 'the three complete records');
    await new Promise((r) => setTimeout(r, 400));
    expect(got.length).toBe(3);
    expect(errors).toEqual([]);
    expect(logs).toEqual([]);

    // Another writer (no cached tail) appends: the torn bytes go, offsets continue at 3.
    const writer2 = await open();
    await writer2.publish('entries', eventsOfK([3, 4]));
    await waitFor(() => got.length >= 5, 10_000, 'the records after the repair');
    expect(got.map((e) => [e.offset, e.value.seq])).toEqual([0, 1, 2, 3, 4].map((i) => [String(i), i]));
    const { text, records } = await readLog(file);
    expect(records.map((r) => r.offset)).toEqual([0, 1, 2, 3, 4]);
    expect(text).not.toContain('"sch\n');
    expect(errors).toEqual([]);
  });

  it('breaks a lock left by a dead process', async () => {
    const { dir, open } = await folder('&partitions=1');
    const bus = await open();
    await bus.publish('entries', [{ key: 'k', value: { schema: 1, seq: 0 } }]);
    const lockFile = path.join(dir, 'wal.entries', '0000.lock');
    await writeFile(
      lockFile,
      JSON.stringify({ pid: await deadPid(), start: null, host: os.hostname(), nonce: 'x' }),
    );
    const started = Date.now();
    const other = await open();
    await other.publish('entries', [{ key: 'k', value: { schema: 1, seq: 1 } }]);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((await readdir(path.join(dir, 'wal.entries'))).includes('0000.lock')).toBe(false);
    const { records } = await readLog(path.join(dir, 'wal.entries', '0000.log'));
    expect(records.map((r) => r.offset)).toEqual([0, 1]);
  });

  it('reports a corrupt record and does not skip past it', async () => {
    const { dir, open } = await folder('&partitions=1');
    const bus = await open();
    await bus.publish('entries', eventsOfK([0, 1, 2]));
    const file = path.join(dir, 'wal.entries', '0000.log');
    const lines = (await readFile(file, 'utf8')).split('\n');
    lines[1] = '#'.repeat(lines[1]!.length);
    await writeFile(file, lines.join('\n'));
    const { got, errors } = await collect(bus);
    await waitFor(() => errors.length >= 1, 10_000, 'the corruption to be reported');
    await new Promise((r) => setTimeout(r, 500));
    expect(isWalArchiverError(errors[0], ErrorCodes.CORRUPT)).toBe(true);
    expect(logs.some((l) => l.startsWith('error'))).toBe(true);
    expect(got.map((e) => e.offset)).toEqual([]);
  });

  it('moves partitions away from dead members: a gone process, or a heartbeat that expired', async () => {
    const { dir, open } = await folder('&partitions=4');
    const bus = await open();
    const events = Array.from({ length: 40 }, (_, i) => ({ key: `key-${i}`, value: { schema: 1, seq: i } }));
    await bus.publish('entries', events);
    const groupDir = path.join(dir, 'wal.entries', 'groups', 'g');
    await mkdir(path.join(groupDir, 'members'), { recursive: true });
    await mkdir(path.join(groupDir, 'claims'), { recursive: true });
    const gone = { memberId: 'a-gone', pid: await deadPid(), start: null, host: os.hostname() };
    const silent = { memberId: 'b-silent', pid: process.pid, start: null, host: 'another-host' };
    for (const m of [gone, silent]) {
      await writeFile(path.join(groupDir, 'members', `${m.memberId}.json`), JSON.stringify(m));
    }
    const old = new Date(Date.now() - 60_000);
    await utimes(path.join(groupDir, 'members', 'b-silent.json'), old, old);
    for (let p = 0; p < 4; p++) {
      const m = p % 2 === 0 ? gone : silent;
      await writeFile(
        path.join(groupDir, 'claims', `000${p}.json`),
        JSON.stringify({ ...m, nonce: `n${p}` }),
      );
    }
    const got = new Set<string>();
    await subscribeTo(subs, bus, {
      group: 'g',
      handler: async (batch) => batch.forEach((e) => got.add(e.key)),
    });
    await waitFor(() => got.size >= 40, 10_000, 'all partitions to move to the live member');
    const members = await readdir(path.join(groupDir, 'members'));
    expect(members.some((m) => m.startsWith('a-gone') || m.startsWith('b-silent'))).toBe(false);
  });
});
