/**
 * Text views of the manifests for `wal-archiver manifest`: a table of every
 * partition (global manifest) and a detail view of one partition. Pure: the
 * clock is passed in.
 */

import { comparePartitionIds } from '../../contract/partition-id.js';
import { type GlobalManifest, type GlobalPartitionEntry } from './global-manifest.js';
import { archivedSegments, contiguousRuns, type PartitionManifest } from './partition-manifest.js';

export interface FormatOptions {
  /** "Now", for ages. */
  now: Date;
}

export interface PartitionFormatOptions extends FormatOptions {
  /** List every segment, not only the summary. */
  segments?: boolean;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Bytes for a person: `0 B`, `512 B`, `1.5 KiB`, `12.0 MiB`. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

/** A duration for a person, two units at most: `45s`, `3m 20s`, `2h 5m`, `3d 4h`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const parts: [number, string][] = [
    [Math.floor(s / 86_400), 'd'],
    [Math.floor((s % 86_400) / 3_600), 'h'],
    [Math.floor((s % 3_600) / 60), 'm'],
    [s % 60, 's'],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  const shown = parts.slice(first, first + 2).filter(([n]) => n > 0);
  return shown.map(([n, u]) => `${n}${u}`).join(' ');
}

/** How long ago an ISO time was: `3m 20s ago`; a time ahead of `now` shows as `0s ago`. */
export function formatAge(iso: string, now: Date): string {
  return `${formatDuration((now.getTime() - Date.parse(iso)) / 1000)} ago`;
}

/** Columns padded to their widest cell, two spaces apart, no trailing blanks. */
export function renderTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function leaderCells(e: GlobalPartitionEntry): [string, string] {
  if (!e.leader) return ['unknown', '-'];
  return [e.leader.node === null ? 'none' : `node ${e.leader.node}`, String(e.leader.term)];
}

function lagCell(e: GlobalPartitionEntry): string {
  const entries = `${e.lag_entries} ${e.lag_entries === 1 ? 'entry' : 'entries'}`;
  return e.lag_seconds === undefined ? entries : `${entries}, ${formatDuration(e.lag_seconds)}`;
}

export const GLOBAL_TABLE_HEADER = [
  'PARTITION',
  'LEADER',
  'TERM',
  'ARCHIVED LSN',
  'LAG',
  'LATEST BASE BACKUP',
  'SIZE',
] as const;

/** The global manifest as a table, one partition a line, after a one-line summary. */
export function formatGlobalManifest(m: GlobalManifest, options: FormatOptions): string {
  const ids = Object.keys(m.partitions).sort(comparePartitionIds);
  const summary =
    `global manifest version ${m.version}, updated ${m.updated_at} (${formatAge(m.updated_at, options.now)}), ` +
    `${ids.length} ${ids.length === 1 ? 'partition' : 'partitions'}`;
  if (ids.length === 0) return `${summary}\nno partition has been archived yet\n`;
  const rows = ids.map((id) => {
    const e = m.partitions[id] as GlobalPartitionEntry;
    const [leader, term] = leaderCells(e);
    const backup = e.latest_backup
      ? `LSN ${e.latest_backup.lsn}, ${formatAge(e.latest_backup.taken_at, options.now)}`
      : 'none';
    return [
      id,
      leader,
      term,
      e.archived_lsn === 0 ? 'none' : String(e.archived_lsn),
      lagCell(e),
      backup,
      formatBytes(e.archived_bytes),
    ];
  });
  return `${summary}\n${renderTable(GLOBAL_TABLE_HEADER, rows)}\n`;
}

/** One partition's manifest: leader, archived range, segment summary, gaps, and its base backups. */
export function formatPartitionManifest(m: PartitionManifest, options: PartitionFormatOptions): string {
  const out: string[] = [];
  out.push(`partition ${m.partition}`);
  out.push(`leader: ${m.leader ? `node ${m.leader.node}, term ${m.leader.term}` : 'unknown'}`);
  out.push(
    `manifest version ${m.version}, updated ${m.updated_at} (${formatAge(m.updated_at, options.now)})`,
  );

  if (!m.archived) {
    out.push('archived: nothing yet');
  } else {
    const inRange = archivedSegments(m);
    const bytes = inRange.reduce((n, s) => n + s.bytes, 0);
    const raw = inRange.reduce((n, s) => n + s.raw_bytes, 0);
    const first = inRange[0];
    const last = inRange[inRange.length - 1];
    out.push(
      `archived: LSN ${m.archived.first_lsn}-${m.archived.last_lsn} in ${inRange.length} ` +
        `${inRange.length === 1 ? 'segment' : 'segments'}, ${formatBytes(bytes)} (${formatBytes(raw)} before compression)`,
    );
    if (first && last) {
      out.push(`committed: ${first.first_committed_at} … ${last.last_committed_at}`);
    }
  }
  out.push(`segments: ${m.segments.length}`);
  const runs = contiguousRuns(m.segments);
  if (runs.length > 1) {
    const gaps = runs
      .slice(1)
      .map((r, i) => `LSN ${(runs[i] as { last_lsn: number }).last_lsn + 1}-${r.first_lsn - 1}`);
    out.push(`gaps: ${gaps.join(', ')} (segments past a gap are not restorable until it is filled)`);
  }
  if (options.segments && m.segments.length > 0) {
    out.push(
      renderTable(
        ['FIRST LSN', 'LAST LSN', 'ENTRIES', 'SIZE', 'TERM', 'NODE', 'ARCHIVED', 'KEY'],
        m.segments.map((s) => [
          String(s.first_lsn),
          String(s.last_lsn),
          String(s.entries),
          formatBytes(s.bytes),
          String(s.term),
          String(s.node),
          s.archived_at,
          s.key,
        ]),
      ),
    );
  }
  out.push(`base backups: ${m.backups.length}`);
  if (m.backups.length > 0) {
    out.push(
      renderTable(
        ['LSN', 'TAKEN', 'AGE', 'SIZE', 'TRIGGER', 'SHA256', 'KEY'],
        m.backups.map((b) => [
          String(b.lsn),
          b.taken_at,
          formatAge(b.taken_at, options.now),
          formatBytes(b.bytes),
          b.trigger,
          b.sha256.slice(0, 12),
          b.key,
        ]),
      ),
    );
  }
  return `${out.join('\n')}\n`;
}
