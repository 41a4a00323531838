import type { PartitionManifest } from '../manifest/partition-manifest.js';
import type { TimelineInfo } from './history.js';

/** The LSNs a timeline's own objects can restore to, e.g. "LSNs 13-28"; "nothing archived yet". */
export function ownRange(t: TimelineInfo, m: PartitionManifest | undefined): string {
  const backups = m?.backups ?? [];
  const first = Math.min(m?.archived?.first_lsn ?? Infinity, backups[0]?.lsn ?? Infinity);
  const last = Math.max(m?.archived?.last_lsn ?? 0, backups.at(-1)?.lsn ?? 0);
  if (!Number.isFinite(first) || last < first)
    return t.timeline === 1 ? 'nothing archived yet' : 'nothing of its own yet';
  return `LSNs ${first}-${last}`;
}

/**
 * A partition's timelines as a small tree, each with its branch point and
 * the LSNs its own objects hold:
 *
 *   timeline 1  LSNs 1-24, 5 segments, 0 base backups
 *   └─ timeline 2  from timeline 1 at LSN 12 (2026-…Z, restore to …)  LSNs 12-28, …
 */
export function formatTimelineTree(
  timelines: readonly TimelineInfo[],
  manifests: ReadonlyMap<number, PartitionManifest>,
): string {
  const out: string[] = [];
  const children = (n: number) => timelines.filter((t) => t.parent === n && t.timeline !== n);
  const describe = (t: TimelineInfo): string => {
    const m = manifests.get(t.timeline);
    const n = (count: number, what: string) => `${count} ${what}${count === 1 ? '' : 's'}`;
    const counts = m
      ? `, ${n(m.segments.length, 'segment')}, ${n(m.backups.length, 'base backup')}`
      : ', no manifest';
    const branch =
      t.timeline === 1
        ? ''
        : `  from timeline ${t.parent} at LSN ${t.branchLsn} (${new Date(t.branchedAt).toISOString()}, ${t.reason})`;
    return `timeline ${t.timeline}${branch}  ${ownRange(t, m)}${counts}`;
  };
  const walk = (t: TimelineInfo, indent: string, last: boolean, root: boolean) => {
    out.push(root ? describe(t) : `${indent}${last ? '└─ ' : '├─ '}${describe(t)}`);
    const kids = children(t.timeline);
    const next = root ? '' : `${indent}${last ? '   ' : '│  '}`;
    kids.forEach((k, i) => walk(k, next, i === kids.length - 1, false));
  };
  const first = timelines.find((t) => t.timeline === 1);
  if (first) walk(first, '', true, true);
  return `${out.join('\n')}\n`;
}
