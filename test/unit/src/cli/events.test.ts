import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  EntryDeduplicator,
  classifyEvent,
  eventsCommand,
  eventsGroup,
  formatEventJson,
  formatEventLine,
  parseEventsFlags,
} from '../../../../src/cli/events.js';
import type { ConsumedEvent, EventBus } from '../../../../contract/events/event-bus.js';
import { openEventBus } from '../../../../contract/events/open.js';
import type { WalEntryEvent } from '../../../../contract/events/schemas.js';
import { archivedEvent, at, backupEvent, leadershipEvent } from '../manifest/fixtures.js';
import { captureContext, lines, runCommand } from '../../../helpers/cli-context.js';

function entry(partition: string, lsn: number, extra: Partial<WalEntryEvent> = {}): WalEntryEvent {
  return {
    schema: 1,
    partition,
    lsn,
    term: 2,
    node: 1,
    bytes: 2048,
    refs: [{ name: 'refs/heads/main', new_oid: 'ab'.repeat(20) }],
    committed_at: at(lsn),
    ...extra,
  };
}

function consumed(topic: string, value: object, extra: Partial<ConsumedEvent> = {}): ConsumedEvent {
  const v = value as Record<string, unknown>;
  return {
    topic: `wal.${topic}`,
    key: typeof v.partition === 'string' ? v.partition : 'k',
    value: v,
    partition: 1,
    offset: '42',
    timestamp: new Date('2025-06-01T00:00:00.000Z'),
    ...extra,
  };
}

describe('events flags', () => {
  it('parses the documented flags with their defaults', () => {
    expect(parseEventsFlags(['--events', 'file:///tmp/e'], {})).toMatchObject({
      events: 'file:///tmp/e',
      topic: 'entries',
      'from-beginning': false,
      json: false,
      duplicates: false,
    });
    expect(
      parseEventsFlags(['--topic', 'all', '--from-beginning', '--partition', '7', '--json', '--count', '3'], {
        WAL_ARCHIVER_EVENTS: 'kafka://127.0.0.1:9092',
      }),
    ).toMatchObject({ events: 'kafka://127.0.0.1:9092', topic: 'all', partition: '7', count: 3 });
  });

  it.each([
    [[], /missing required flag --events/],
    [
      ['--events', 'file:///e', '--topic', 'entry'],
      /--topic: "entry" is not one of entries, archived, backups, leadership, all/,
    ],
    [['--events', 'file:///e', '--count', '0'], /--count: must be at least 1/],
    [['--events', 'file:///e', '--count', 'many'], /--count: must be a whole number/],
    [['--events', 'file:///e', '--partition', '-x'], /is not a partition ID/],
    [['--events', 'file:///e', '--group', 'g'], /unknown flag --group/],
    [['--events', 'mqtt://broker'], /flag --events: event bus URL has unsupported scheme/],
    [['--events', 'kafka://'], /flag --events: event bus URL names no broker/],
  ])('refuses %j with one line and exit 2', async (argv, message) => {
    const c = captureContext();
    expect(await runCommand(eventsCommand, argv, c)).toBe(2);
    expect(lines(c.stderr())).toHaveLength(1);
    expect(c.stderr()).toMatch(message);
    expect(c.stdout()).toBe('');
  });

  it('documents the fresh consumer group and the deduplication in its help', async () => {
    const c = captureContext();
    expect(await runCommand(eventsCommand, ['--help'], c)).toBe(0);
    const text = c.stdout();
    expect(text).toMatch(/^Usage: wal-archiver events --events URL/);
    expect(text).toMatch(/fresh consumer group/);
    expect(text).toMatch(/deduplicates by \(partition, LSN\)/);
  });

  it('makes a new group name for every run', () => {
    const a = eventsGroup();
    const b = eventsGroup();
    expect(a).not.toBe(b);
    expect(a).toMatch(/^wal-archiver-events-[A-Za-z0-9._-]+$/);
  });
});

describe('event formatting', () => {
  it('shows an entry with its LSN, term, size and refs', () => {
    const line = formatEventLine(
      classifyEvent(
        consumed(
          'entries',
          entry('7', 12, {
            refs: [
              { name: 'refs/heads/main', new_oid: 'ab'.repeat(20) },
              { name: 'refs/heads/old', new_oid: '0'.repeat(40) },
              { name: 'HEAD', new_oid: '', new_target: 'refs/heads/main' },
              { name: 'refs/tags/v1', new_oid: 'cd'.repeat(20) },
            ],
          }),
        ),
      ),
    );
    expect(line).toBe(
      `${at(12)} entries    partition 7 lsn 12 term 2 node 1 2.0 KiB refs refs/heads/main=abababababab ` +
        'refs/heads/old=(deleted) HEAD=→refs/heads/main (+1 more)',
    );
  });

  it('shows segments, base backups and leadership changes', () => {
    expect(
      formatEventLine(classifyEvent(consumed('archived', archivedEvent('3', 1, 10, { committed_lsn: 12 })))),
    ).toBe(
      `${at(11)} archived   partition 3 lsn 1-10 (10 entries) 1000 B term 1 node 1 committed 12 ` +
        'key partitions/3/wal/0000000000001-000000000000a.tar.zst',
    );
    expect(formatEventLine(classifyEvent(consumed('backups', backupEvent('3', 10))))).toMatch(
      new RegExp(
        `^${at(12)} backups    partition 3 lsn 10 4.9 KiB trigger size term 1 node 1 sha256 [0-9a-f]{12} key partitions/3/base/000000000000a.tar.zst$`,
      ),
    );
    expect(formatEventLine(classifyEvent(consumed('leadership', leadershipEvent('3', 5, 2))))).toBe(
      `${at(5)} leadership partition 3 leader node 2 term 5 (node 2 is leader)`,
    );
    expect(
      formatEventLine(classifyEvent(consumed('leadership', leadershipEvent('3', 6, null, { node: 4 })))),
    ).toBe(`${at(6)} leadership partition 3 no leader term 6 (node 4 is candidate)`);
  });

  it('shows a malformed event as such, with where it is on the bus', () => {
    const e = classifyEvent(consumed('entries', { schema: 1, partition: '9', lsn: 0 }, { offset: '17' }));
    expect(e.error).toMatch(/field "lsn"/);
    expect(formatEventLine(e)).toBe(
      '2025-06-01T00:00:00.000Z entries    partition 9 MALFORMED at bus partition 1 offset 17: ' +
        'wal.entries event: field "lsn" must be an integer ≥ 1 (got 0)',
    );
    const json = JSON.parse(formatEventJson(e)) as Record<string, unknown>;
    expect(json).toMatchObject({ topic: 'wal.entries', offset: '17', bus_partition: 1, value: { lsn: 0 } });
    expect(json.malformed).toMatch(/field "lsn"/);
    // A value of another schema version is malformed too, not a crash.
    expect(formatEventLine(classifyEvent(consumed('backups', { schema: 2, partition: 'x' })))).toMatch(
      /partition x MALFORMED .*field "schema" is not a supported version/,
    );
  });

  it('prints the event as delivered in JSON', () => {
    const value = entry('7', 1);
    expect(JSON.parse(formatEventJson(classifyEvent(consumed('entries', value))))).toEqual({
      topic: 'wal.entries',
      key: '7',
      bus_partition: 1,
      offset: '42',
      timestamp: '2025-06-01T00:00:00.000Z',
      value,
    });
  });

  it('deduplicates entries by (partition, LSN), and nothing else', () => {
    const d = new EntryDeduplicator();
    const seen = (topic: string, value: object) => d.accept(classifyEvent(consumed(topic, value)));
    expect(seen('entries', entry('1', 1))).toBe(true);
    expect(seen('entries', entry('1', 2))).toBe(true);
    expect(seen('entries', entry('2', 1))).toBe(true);
    expect(seen('entries', entry('1', 2))).toBe(false);
    expect(seen('entries', entry('1', 1))).toBe(false);
    expect(seen('entries', entry('1', 3))).toBe(true);
    expect(seen('archived', archivedEvent('1', 1, 3))).toBe(true);
    expect(seen('archived', archivedEvent('1', 1, 3))).toBe(true);
    expect(seen('entries', { schema: 1, partition: '1', lsn: 'x' })).toBe(true);
  });
});

describe('events command on a folder bus', () => {
  let dir: string;
  let url: string;
  let bus: EventBus;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'wal-cli-events-'));
    url = pathToFileURL(path.join(dir, 'events')).href;
    bus = await openEventBus(url);
  });

  afterEach(async () => {
    await bus.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function publishSample(): Promise<void> {
    await bus.publish('entries', [
      { key: '1', value: { ...entry('1', 1) } },
      { key: '1', value: { ...entry('1', 2) } },
      { key: '2', value: { ...entry('2', 1) } },
    ]);
    // A redelivery and a malformed event.
    await bus.publish('entries', [{ key: '1', value: { ...entry('1', 2) } }]);
    await bus.publish('entries', [{ key: '2', value: { schema: 1, partition: '2', lsn: -1 } }]);
    await bus.publish('entries', [{ key: '1', value: { ...entry('1', 3) } }]);
    await bus.publish('archived', [{ key: '1', value: { ...archivedEvent('1', 1, 3) } }]);
    await bus.publish('leadership', [{ key: '2', value: { ...leadershipEvent('2', 4, 3) } }]);
  }

  it('prints N events from the beginning, deduplicated, and exits', async () => {
    await publishSample();
    const c = captureContext();
    expect(await runCommand(eventsCommand, ['--events', url, '--from-beginning', '--count', '5'], c)).toBe(0);
    const out = lines(c.stdout());
    expect(out).toHaveLength(5);
    const lsns = out.map((l) => /partition (\S+) (?:lsn (\d+)|MALFORMED)/.exec(l)!.slice(1).join(':'));
    // Per-partition order is kept; bus partitions may interleave.
    expect(lsns.filter((x) => x.startsWith('1:'))).toEqual(['1:1', '1:2', '1:3']);
    expect(lsns.filter((x) => x.startsWith('2:'))).toEqual(['2:1', '2:']);
    expect(out.filter((l) => l.includes('MALFORMED'))).toHaveLength(1);
    expect(c.stderr()).toMatch(
      /following wal\.entries on file:.* from the beginning \(consumer group wal-archiver-events-/,
    );
  });

  it('shows redeliveries with --duplicates, JSON lines with --json, one partition with --partition', async () => {
    await publishSample();
    const dup = captureContext();
    expect(
      await runCommand(
        eventsCommand,
        ['--events', url, '--from-beginning', '--count', '6', '--duplicates'],
        dup,
      ),
    ).toBe(0);
    expect(lines(dup.stdout()).filter((l) => / partition 1 lsn 2 /.test(l))).toHaveLength(2);

    const json = captureContext();
    expect(
      await runCommand(
        eventsCommand,
        ['--events', url, '--from-beginning', '--count', '3', '--json', '--partition', '1'],
        json,
      ),
    ).toBe(0);
    const parsed = lines(json.stdout()).map((l) => JSON.parse(l) as { key: string; value: { lsn: number } });
    expect(parsed.map((p) => [p.key, p.value.lsn])).toEqual([
      ['1', 1],
      ['1', 2],
      ['1', 3],
    ]);
  });

  it('follows every topic with --topic all', async () => {
    await publishSample();
    const c = captureContext();
    expect(
      await runCommand(
        eventsCommand,
        ['--events', url, '--from-beginning', '--topic', 'all', '--count', '7'],
        c,
      ),
    ).toBe(0);
    const topics = lines(c.stdout()).map((l) => l.split(/\s+/)[1]);
    expect(topics.filter((t) => t === 'entries')).toHaveLength(5);
    expect(topics).toContain('archived');
    expect(topics).toContain('leadership');
  });

  it('uses a fresh group per run, so runs never take events from each other or from other groups', async () => {
    await publishSample();
    const sidecar: ConsumedEvent[] = [];
    const sub = await bus.subscribe({
      topic: 'entries',
      group: 'wal-archiver-indexer',
      fromBeginning: true,
      handler: async (batch) => {
        sidecar.push(...batch);
      },
    });
    try {
      for (let i = 0; i < 2; i++) {
        const c = captureContext();
        expect(
          await runCommand(eventsCommand, ['--events', url, '--from-beginning', '--count', '5'], c),
        ).toBe(0);
        expect(lines(c.stdout())).toHaveLength(5);
      }
      const deadline = Date.now() + 10_000;
      while (sidecar.length < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(sidecar).toHaveLength(6);
    } finally {
      await sub.stop();
    }
    const groups = await readdir(path.join(dir, 'events', 'wal.entries', 'groups'));
    expect(groups.filter((g) => g.startsWith('wal-archiver-events-'))).toHaveLength(2);
  });

  it('follows new events from now on until interrupted, then exits 0', async () => {
    await publishSample();
    const controller = new AbortController();
    const c = captureContext({ signal: controller.signal });
    const running = runCommand(eventsCommand, ['--events', url], c);
    const deadline = Date.now() + 10_000;
    while (!c.stderr().includes('following') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    await bus.publish('entries', [{ key: '5', value: { ...entry('5', 9) } }]);
    while (!c.stdout().includes('partition 5') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    controller.abort();
    expect(await running).toBe(0);
    // Only the event published after it started.
    expect(lines(c.stdout())).toEqual([expect.stringMatching(/entries {4}partition 5 lsn 9 /)]);
  });

  it('exits 1 with one line when interrupted before --count events arrived', async () => {
    await bus.publish('entries', [{ key: '1', value: { ...entry('1', 1) } }]);
    const controller = new AbortController();
    const c = captureContext({ signal: controller.signal });
    const running = runCommand(eventsCommand, ['--events', url, '--from-beginning', '--count', '3'], c);
    const deadline = Date.now() + 10_000;
    while (!c.stdout().includes('lsn 1') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    controller.abort();
    expect(await running).toBe(1);
    expect(lines(c.stdout())).toHaveLength(1);
    expect(c.stderr()).toMatch(/stopped after 1 of 3 events\n$/);
  });
});
