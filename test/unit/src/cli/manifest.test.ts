import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { manifestCommand, parseManifestFlags } from '../../../../src/cli/manifest.js';
import { openEventBus } from '../../../../contract/events/open.js';
import {
  GLOBAL_MANIFEST_KEY,
  GlobalManifestWriter,
  baseBackupKey,
  foldEvents,
  emptyGlobalManifest,
  readGlobalManifest,
  segmentKey,
  updatePartitionManifest,
  type GlobalManifest,
  type ManifestEvent,
} from '../../../../src/manifest/index.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { openObjectStore } from '../../../../src/store/open.js';
import { archivedEvent, backup, backupEvent, leadershipEvent, segment } from '../manifest/fixtures.js';
import { captureContext, lines, runCommand } from '../../../helpers/cli-context.js';

const events: ManifestEvent[] = [
  { topic: 'leadership', value: leadershipEvent('7', 3, 2, { node: 2 }) },
  { topic: 'archived', value: archivedEvent('7', 1, 10, { term: 3, node: 2, committed_lsn: 12 }) },
  { topic: 'backups', value: backupEvent('7', 10, { term: 3, node: 2 }) },
  { topic: 'archived', value: archivedEvent('12', 1, 4) },
];

describe('manifest flags', () => {
  const env = {};
  const url = 'file:///tmp/x';

  it('parses the documented flags with their defaults', () => {
    expect(parseManifestFlags(['--object-store', url], env)).toMatchObject({
      'object-store': url,
      json: false,
      rebuild: false,
      'dry-run': false,
      segments: false,
      idle: 5000,
    });
    expect(
      parseManifestFlags(
        ['--object-store', url, '--rebuild', '--from-events', 'file:///tmp/e', '--dry-run', '--idle', '2s'],
        env,
      ),
    ).toMatchObject({ rebuild: true, 'from-events': 'file:///tmp/e', 'dry-run': true, idle: 2000 });
    expect(parseManifestFlags([], { WAL_ARCHIVER_OBJECT_STORE: url })['object-store']).toBe(url);
  });

  it.each([
    [[], /missing required flag --object-store/],
    [['--object-store', url, '--bogus'], /unknown flag --bogus/],
    [['--object-store', url, '--from-events', 'file:///e'], /--from-events needs --rebuild/],
    [['--object-store', url, '--dry-run'], /--dry-run needs --rebuild/],
    [['--object-store', url, '--rebuild', '--partition', '7'], /takes no --partition/],
    [['--object-store', url, '--partition', '../etc'], /is not a partition ID/],
    [['--object-store', url, '--segments'], /--segments needs --partition/],
    [['--object-store', url, '--rebuild', '--idle', '1s'], /--idle needs --from-events/],
    [['--object-store', url, '--rebuild', '--from-events', 'file:///e', '--idle', 'soon'], /duration/],
    [['--object-store', url, 'extra'], /unexpected argument/],
  ])('refuses %j with one line and exit 2', async (argv, message) => {
    const c = captureContext();
    expect(await runCommand(manifestCommand, argv, c)).toBe(2);
    expect(lines(c.stderr())).toHaveLength(1);
    expect(c.stderr()).toMatch(message);
    expect(c.stdout()).toBe('');
  });

  it('refuses a malformed or unsupported object store URL as a usage error', async () => {
    for (const bad of ['ftp://host/x', 'not a url']) {
      const c = captureContext();
      expect(await runCommand(manifestCommand, ['--object-store', bad], c)).toBe(2);
      expect(lines(c.stderr())).toHaveLength(1);
      expect(c.stderr()).toMatch(/^wal-archiver: flag --object-store: object store URL/);
    }
  });

  it('prints its help', async () => {
    const c = captureContext();
    expect(await runCommand(manifestCommand, ['--help'], c)).toBe(0);
    expect(c.stdout()).toMatch(/^Usage: wal-archiver manifest --object-store URL/);
    for (const flag of ['--partition', '--json', '--rebuild', '--from-events', '--dry-run'])
      expect(c.stdout()).toContain(flag);
  });
});

describe('manifest command on a folder store', () => {
  let dir: string;
  let url: string;
  let store: ObjectStore;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'wal-cli-manifest-'));
    url = pathToFileURL(path.join(dir, 'archive')).href;
    store = await openObjectStore(url);
  });

  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function writePartitionManifests(): Promise<void> {
    await updatePartitionManifest(
      store,
      '7',
      { node: 2, term: 3 },
      {
        segments: [segment('7', 1, 10, { term: 3, node: 2 })],
        backups: [backup('7', 10, { term: 3, node: 2 })],
      },
    );
    await updatePartitionManifest(store, '12', { node: 1, term: 1 }, { segments: [segment('12', 1, 4)] });
  }

  it('prints the stored global manifest as a table, and as the JSON document', async () => {
    const written = await new GlobalManifestWriter(store).apply(events);
    const c = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url], c)).toBe(0);
    const out = lines(c.stdout());
    expect(out[0]).toMatch(/^global manifest version 1, updated .*, 2 partitions$/);
    expect(out[1]).toMatch(/^PARTITION\s+LEADER\s+TERM\s+ARCHIVED LSN\s+LAG\s+LATEST BASE BACKUP\s+SIZE$/);
    expect(out[2]).toMatch(/^7\s+node 2\s+3\s+10\s+2 entries.*LSN 10, .* ago/);
    expect(out[3]).toMatch(/^12\s+node 1\s+1\s+4\s+0 entries.*none/);
    expect(c.stderr()).toBe('');

    const j = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--json'], j)).toBe(0);
    expect(JSON.parse(j.stdout())).toEqual(written.manifest);
  });

  it('derives the table from the objects when there is no global manifest, and says so on stderr', async () => {
    await writePartitionManifests();
    const c = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url], c)).toBe(0);
    expect(lines(c.stderr())).toHaveLength(1);
    expect(c.stderr()).toMatch(
      /has no global manifest yet; showing one derived from the objects \(2 partitions/,
    );
    expect(c.stderr()).toContain('--rebuild');
    expect(c.stdout()).toMatch(/^global manifest version 0/);
    expect(lines(c.stdout()).some((l) => /^7\s+node 2\s+3\s+10\s/.test(l))).toBe(true);
    // Showing never writes.
    expect(await store.head(GLOBAL_MANIFEST_KEY)).toBeUndefined();

    const j = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--json'], j)).toBe(0);
    const doc = JSON.parse(j.stdout()) as GlobalManifest;
    expect(Object.keys(doc.partitions)).toEqual(['7', '12']);
    expect(doc.partitions['7']!.archived_lsn).toBe(10);
  });

  it('fails with one line when there is neither a global manifest nor any archived partition', async () => {
    const c = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url], c)).toBe(1);
    expect(lines(c.stderr())).toHaveLength(1);
    expect(c.stderr()).toMatch(/^wal-archiver: no global manifest and no archived partition in file:/);
    expect(c.stdout()).toBe('');
  });

  it('reports a corrupt global manifest in one line and suggests --rebuild', async () => {
    await store.create(GLOBAL_MANIFEST_KEY, Buffer.from('{"schema":1,'));
    const c = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url], c)).toBe(1);
    expect(lines(c.stderr())).toHaveLength(1);
    expect(c.stderr()).toMatch(/global manifest .* is corrupt .*run with --rebuild to replace it/);
  });

  it('shows one partition in detail, and as JSON', async () => {
    await writePartitionManifests();
    const c = captureContext();
    expect(
      await runCommand(manifestCommand, ['--object-store', url, '--partition', '7', '--segments'], c),
    ).toBe(0);
    const out = c.stdout();
    expect(out).toMatch(/^partition 7\nleader: node 2, term 3\n/);
    expect(out).toContain('archived: LSN 1-10 in 1 segment');
    expect(out).toContain(segmentKey('7', 1, 10));
    expect(out).toContain(baseBackupKey('7', 10));

    const j = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--partition', '12', '--json'], j)).toBe(
      0,
    );
    expect(JSON.parse(j.stdout())).toMatchObject({
      partition: '12',
      archived: { first_lsn: 1, last_lsn: 4 },
    });
  });

  it('fails with one line for a partition without a manifest, saying whether it has objects', async () => {
    const none = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--partition', '9'], none)).toBe(1);
    expect(lines(none.stderr())).toEqual([
      expect.stringMatching(/partition 9 has nothing archived in file:/),
    ]);

    await store.create(segmentKey('9', 1, 3), Buffer.from('x'));
    const some = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--partition', '9'], some)).toBe(1);
    expect(lines(some.stderr())).toEqual([
      expect.stringMatching(/partition 9 has 1 object in .* but no manifest/),
    ]);
  });

  it('rebuilds from the objects: a dry run stores nothing, a rebuild stores, a second one changes nothing', async () => {
    await writePartitionManifests();
    await store.create(segmentKey('20', 1, 5), Buffer.from('segment'));
    await store.create(baseBackupKey('20', 5), Buffer.from('base'), { metadata: { partition: '21' } });

    const dry = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--rebuild', '--dry-run'], dry)).toBe(0);
    expect(dry.stdout()).toMatch(
      /^rebuilt from the objects of file:.*: 3 partitions \(2 from partition manifests, 1 from object listings\), 1 problem$/m,
    );
    expect(dry.stderr()).toMatch(
      /problem: partition 20, partitions\/20\/base\/.*: metadata partition=21 contradicts/,
    );
    expect(dry.stdout()).toMatch(/dry run: nothing was stored/);
    expect(await store.head(GLOBAL_MANIFEST_KEY)).toBeUndefined();

    const real = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--rebuild'], real)).toBe(0);
    expect(real.stdout()).toMatch(/stored the global manifest, version 1/);
    const stored = await readGlobalManifest(store);
    expect(Object.keys(stored!.value.partitions)).toEqual(['7', '12', '20']);
    expect(stored!.value.partitions['20']).toMatchObject({
      archived_lsn: 5,
      latest_backup: null,
      leader: null,
    });
    expect(stored!.value.partitions['7']).toMatchObject({ leader: { node: 2, term: 3 }, archived_lsn: 10 });

    const again = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--rebuild', '--json'], again)).toBe(0);
    expect(JSON.parse(again.stdout())).toEqual(stored!.value);
    expect(again.stderr()).toMatch(/already holds all of this; nothing written/);
  });

  it('merges a rebuild into the stored manifest without losing what the events told it', async () => {
    // The projection knows the leader and the committed LSN, the objects do not.
    await new GlobalManifestWriter(store).apply(events);
    await writePartitionManifests();
    await updatePartitionManifest(
      store,
      '7',
      { node: 2, term: 3 },
      { segments: [segment('7', 11, 15, { term: 3, node: 2 })] },
    );
    const c = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--rebuild'], c)).toBe(0);
    const stored = (await readGlobalManifest(store))!.value;
    expect(stored.version).toBe(2);
    expect(stored.partitions['7']).toMatchObject({
      leader: { node: 2, term: 3 },
      archived_lsn: 15,
      committed_lsn: 15,
      latest_backup: { lsn: 10 },
    });
    expect(stored.partitions['12']).toMatchObject({ leader: { node: 1, term: 1 }, archived_lsn: 4 });
  });

  it('replaces a corrupt global manifest on --rebuild, saying so', async () => {
    await writePartitionManifests();
    await store.create(GLOBAL_MANIFEST_KEY, Buffer.from('not json'));
    const c = captureContext();
    expect(await runCommand(manifestCommand, ['--object-store', url, '--rebuild'], c)).toBe(0);
    expect(c.stderr()).toMatch(/replaced a corrupt global manifest/);
    const stored = (await readGlobalManifest(store))!.value;
    expect(stored.version).toBe(1);
    expect(Object.keys(stored.partitions)).toEqual(['7', '12']);
  });

  it('rebuilds from the events of a folder bus, skipping a malformed one', async () => {
    const busDir = path.join(dir, 'events');
    const busUrl = pathToFileURL(busDir).href;
    const bus = await openEventBus(busUrl);
    try {
      for (const e of events) await bus.publish(e.topic, [{ key: e.value.partition, value: { ...e.value } }]);
      // A duplicate and a malformed one.
      await bus.publish('archived', [{ key: '7', value: { ...events[1]!.value } }]);
      await bus.publish('archived', [{ key: '7', value: { schema: 1, partition: '7', first_lsn: 'x' } }]);
    } finally {
      await bus.close();
    }
    const c = captureContext();
    const code = await runCommand(
      manifestCommand,
      ['--object-store', url, '--rebuild', '--from-events', busUrl, '--idle', '300ms'],
      c,
    );
    expect(code).toBe(0);
    expect(c.stdout()).toMatch(/^rebuilt from 6 events of file:.*: 2 partitions, 1 malformed skipped$/m);
    expect(c.stderr()).toMatch(/skipped a malformed archived event: wal.archived event: field "first_lsn"/);
    const stored = (await readGlobalManifest(store))!.value;
    const expected = foldEvents(emptyGlobalManifest(new Date()), events);
    expect(stored.partitions).toEqual(expected.partitions);
    expect(stored.partitions['7']!.segments_count).toBe(1);
  });

  it('refuses a malformed --from-events URL as a usage error', async () => {
    const c = captureContext();
    expect(
      await runCommand(manifestCommand, ['--object-store', url, '--rebuild', '--from-events', 'mqtt://x'], c),
    ).toBe(2);
    expect(lines(c.stderr())).toEqual([
      expect.stringMatching(/^wal-archiver: flag --from-events: event bus URL/),
    ]);
  });
});
