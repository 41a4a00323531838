import { describe, expect, it } from 'vitest';
import {
  formatAge,
  formatBytes,
  formatDuration,
  formatGlobalManifest,
  formatPartitionManifest,
  renderTable,
} from '../../../../src/manifest/format.js';
import {
  emptyGlobalManifest,
  foldEvents,
  type GlobalManifest,
} from '../../../../src/manifest/global-manifest.js';
import { applyPartitionUpdate } from '../../../../src/manifest/partition-manifest.js';
import { T0, archivedEvent, at, backup, backupEvent, leadershipEvent, segment } from './fixtures.js';

const NOW = new Date(T0 + 2 * 3_600_000);

describe('helpers', () => {
  it('formats bytes', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(12 * 1024 * 1024)).toBe('12.0 MiB');
    expect(formatBytes(3 * 1024 ** 4)).toBe('3.0 TiB');
  });

  it('formats durations and ages', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(59.9)).toBe('59s');
    expect(formatDuration(200)).toBe('3m 20s');
    expect(formatDuration(3600)).toBe('1h');
    expect(formatDuration(7500)).toBe('2h 5m');
    expect(formatDuration(3 * 86_400 + 4 * 3600 + 5)).toBe('3d 4h');
    expect(formatAge(at(0), new Date(T0 + 90_000))).toBe('1m 30s ago');
    expect(formatAge(at(100), new Date(T0))).toBe('0s ago');
  });

  it('pads table columns', () => {
    expect(
      renderTable(
        ['A', 'BB'],
        [
          ['xyz', '1'],
          ['', '22'],
        ],
      ),
    ).toBe('A    BB\nxyz  1\n     22');
  });
});

describe('formatGlobalManifest', () => {
  const m: GlobalManifest = {
    ...foldEvents(emptyGlobalManifest(NOW), [
      { topic: 'leadership', value: leadershipEvent('10', 4, 3, { node: 3 }) },
      {
        topic: 'archived',
        value: archivedEvent('10', 1, 100, { term: 4, node: 3, committed_lsn: 107, bytes: 3 * 1024 * 1024 }),
      },
      {
        topic: 'backups',
        value: backupEvent('10', 50, { finished_at: new Date(NOW.getTime() - 300_000).toISOString() }),
      },
      { topic: 'archived', value: archivedEvent('2', 1, 9) },
      { topic: 'leadership', value: leadershipEvent('3', 6, null, { node: 1 }) },
    ]),
    version: 7,
    updated_at: new Date(NOW.getTime() - 30_000).toISOString(),
  };
  const text = formatGlobalManifest(m, { now: NOW });
  const lines = text.trimEnd().split('\n');

  it('starts with a summary and a header', () => {
    expect(lines[0]).toContain('version 7');
    expect(lines[0]).toContain('30s ago');
    expect(lines[0]).toContain('3 partitions');
    for (const h of ['PARTITION', 'LEADER', 'TERM', 'ARCHIVED LSN', 'LAG', 'LATEST BASE BACKUP', 'SIZE']) {
      expect(lines[1]).toContain(h);
    }
  });

  it('has one line per partition in natural order', () => {
    expect(lines).toHaveLength(5);
    expect(lines.slice(2).map((l) => l.split(/\s+/)[0])).toEqual(['2', '3', '10']);
  });

  it('shows leader, term, archived LSN, lag, backup age and size', () => {
    const row = lines[4] as string;
    expect(row).toMatch(/^10\s+node 3\s+4\s+100\s+7 entries, 1s\s+LSN 50, 5m ago\s+3\.0 MiB$/);
    const noLeader = lines[3] as string;
    expect(noLeader).toMatch(/^3\s+none\s+6\s+none\s+0 entries\s+none\s+0 B$/);
    expect(lines[2]).toMatch(/^2\s+node 1\s+1\s+9\s/);
  });

  it('says so when there is nothing', () => {
    expect(formatGlobalManifest(emptyGlobalManifest(NOW), { now: NOW })).toContain(
      'no partition has been archived yet',
    );
  });
});

describe('formatPartitionManifest', () => {
  const { manifest } = applyPartitionUpdate(
    undefined,
    '7',
    { node: 2, term: 5 },
    {
      segments: [segment('7', 1, 10), segment('7', 11, 20), segment('7', 30, 40)],
      backups: [
        backup('7', 10, { trigger: 'first' }),
        backup('7', 20, { taken_at: new Date(NOW.getTime() - 3_600_000).toISOString() }),
      ],
    },
    new Date(NOW.getTime() - 60_000),
  );

  it('summarises leader, range, segments, gaps and backups', () => {
    const text = formatPartitionManifest(manifest, { now: NOW });
    expect(text).toContain('partition 7');
    expect(text).toContain('leader: node 2, term 5');
    expect(text).toContain('manifest version 1');
    expect(text).toContain('(1m ago)');
    expect(text).toContain('archived: LSN 1-20 in 2 segments, 2.0 KiB (5.9 KiB before compression)');
    expect(text).toContain(`committed: ${at(1)} … ${at(20)}`);
    expect(text).toContain('segments: 3');
    expect(text).toContain('gaps: LSN 21-29');
    expect(text).toContain('base backups: 2');
    const backupLines = text.split('\n').filter((l) => l.includes('/base/'));
    expect(backupLines).toHaveLength(2);
    expect(backupLines[0]).toMatch(
      /^10\s+\S+\s+.+ ago\s+4\.9 KiB\s+first\s+[0-9a-f]{12}\s+partitions\/7\/base\//,
    );
    expect(backupLines[1]).toContain('1h ago');
    expect(text).not.toContain('/wal/');
  });

  it('lists segments on request', () => {
    const text = formatPartitionManifest(manifest, { now: NOW, segments: true });
    expect(text.split('\n').filter((l) => l.includes('/wal/'))).toHaveLength(3);
    expect(text).toContain('FIRST LSN');
  });

  it('handles an empty manifest', () => {
    const empty = applyPartitionUpdate(undefined, '9', { node: 1, term: 1 }, {}, NOW).manifest;
    const text = formatPartitionManifest(empty, { now: NOW });
    expect(text).toContain('archived: nothing yet');
    expect(text).toContain('base backups: 0');
  });
});
