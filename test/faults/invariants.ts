import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ConsumedEvent } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import { fetchSegment, type ExtractedEntry } from '../../src/archive/segment-reader.js';
import { segmentPrefix, tryParseSegmentKey } from '../../src/manifest/keys.js';
import { restorePartition } from '../../src/restore/restore.js';
import { applyEntry } from '../../contract/state/apply.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { entryDir, listEntryLsns, partitionDir } from '../../contract/wal/entry.js';
import { decodeLogEntry } from '../../contract/wal/log-entry.js';
import { decodeRaftEntry } from '../../contract/wal/raftpb.js';
import { treeDigest, waitFor } from '../helpers/node-cluster.js';
import { uniqueName } from '../helpers/services.js';
import type { RunReport } from './harness.js';

/** Entries a cut-off leader appended after it was cut off: never committed, so never to be archived or published. */
export interface StaleEntries {
  partition: string;
  node: number;
  term: number;
  fromLsn: number;
  toLsn: number;
}

interface ArchivedPartition {
  entries: Map<number, ExtractedEntry>;
  terms: Map<number, number>;
  /** The commit read after the archive was: nothing archived may lie past it. */
  upper: number;
}

async function filesOf(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const name of (await readdir(dir)).sort()) out.set(name, await readFile(join(dir, name)));
  return out;
}

function sameFiles(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  if (a.size !== b.size) return false;
  for (const [name, bytes] of a) if (!b.get(name)?.equals(bytes)) return false;
  return true;
}

/** A node's `state/` of a partition as a digest; undefined (a violation) when it cannot be read. */
async function nodeState(
  report: RunReport,
  dataDir: string,
  partition: string,
  node: number,
): Promise<Record<string, string> | undefined> {
  try {
    return await treeDigest(join(partitionDir(dataDir, partition), 'state'));
  } catch (err) {
    report.check(false, `partition ${partition}: node ${node}'s state/ cannot be read: ${String(err)}`);
    return undefined;
  }
}

function diffDigests(a: Record<string, string>, b: Record<string, string>): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => a[k] !== b[k]);
}

/**
 * Downloads every segment of a partition and checks: coverage of 1..commit
 * with no gap, nothing archived past the commit, every overlapping copy
 * byte-identical, every RAFT index its LSN.
 */
export async function checkArchive(
  report: RunReport,
  store: ObjectStore,
  partition: string,
  commit: number,
  work: string,
  commitNow: () => Promise<number>,
): Promise<ArchivedPartition> {
  const keys: string[] = [];
  for await (const o of store.list(segmentPrefix(partition))) if (tryParseSegmentKey(o.key)) keys.push(o.key);
  // Read after the listing: an entry archived by then was committed by then (a new leader may commit
  // an empty entry after the workload stopped, so `commit` alone is no upper bound).
  const upper = Math.max(commit, await commitNow());
  const entries = new Map<number, ExtractedEntry>();
  const terms = new Map<number, number>();
  for (const [i, key] of keys.entries()) {
    const dir = join(work, `p${partition}-s${i}`);
    await mkdir(dir, { recursive: true });
    let extracted: ExtractedEntry[];
    try {
      extracted = await fetchSegment(store, key, dir);
    } catch (err) {
      report.check(false, `partition ${partition}: segment ${key} does not read back: ${String(err)}`);
      continue;
    }
    for (const e of extracted) {
      const raft = decodeRaftEntry(await readFile(join(e.dir, 'RAFT')));
      report.check(
        raft.index === e.lsn,
        `partition ${partition}: ${key} holds LSN ${e.lsn} with RAFT index ${raft.index}`,
      );
      report.check(
        e.lsn <= upper,
        `partition ${partition}: ${key} archived LSN ${e.lsn} (term ${raft.term}) beyond the commit ${upper}`,
      );
      const first = entries.get(e.lsn);
      if (first) {
        report.check(
          sameFiles(await filesOf(e.dir), await filesOf(first.dir)),
          `partition ${partition}: LSN ${e.lsn} differs between ${key} and an earlier segment`,
        );
      } else {
        entries.set(e.lsn, e);
        terms.set(e.lsn, raft.term);
      }
    }
  }
  const missing: number[] = [];
  for (let lsn = 1; lsn <= commit; lsn++) if (!entries.has(lsn)) missing.push(lsn);
  report.check(
    missing.length === 0,
    `partition ${partition}: ${missing.length} LSNs of 1..${commit} missing from the archive (first ${missing.slice(0, 10).join(', ')})`,
  );
  return { entries, terms, upper };
}

/** Every entry still in a node's WAL at or below the commit equals, byte for byte, the archived one. */
export async function checkAgainstWal(
  report: RunReport,
  archive: ArchivedPartition,
  partition: string,
  commit: number,
  nodeDirs: string[],
): Promise<number> {
  let compared = 0;
  for (const [i, dataDir] of nodeDirs.entries()) {
    const pdir = partitionDir(dataDir, partition);
    for (const lsn of await listEntryLsns(pdir)) {
      if (lsn > commit) continue;
      const archived = archive.entries.get(lsn);
      if (!archived) continue;
      let onNode: Map<string, Buffer>;
      try {
        onNode = await filesOf(entryDir(pdir, lsn));
      } catch {
        continue; // pruned while listing
      }
      compared++;
      report.check(
        sameFiles(onNode, await filesOf(archived.dir)),
        `partition ${partition}: archived LSN ${lsn} differs from node ${i + 1}'s committed entry`,
      );
    }
  }
  return compared;
}

/** No entry a cut-off leader appended is archived (the entry at that LSN must be of another term). */
export function checkStaleNotArchived(
  report: RunReport,
  archive: ArchivedPartition,
  stale: StaleEntries,
): void {
  for (let lsn = stale.fromLsn; lsn <= stale.toLsn; lsn++) {
    const term = archive.terms.get(lsn);
    report.check(
      term !== stale.term,
      `partition ${stale.partition}: LSN ${lsn} archived with term ${stale.term}, the term of node ${stale.node}'s uncommitted entries`,
    );
  }
}

/** Replays archived entries 1..commit into an empty folder and compares it with each node's state. */
export async function checkReplay(
  report: RunReport,
  archive: ArchivedPartition,
  partition: string,
  commit: number,
  nodeDirs: string[],
  work: string,
): Promise<void> {
  const stateDir = join(work, `replay-${partition}`);
  await mkdir(stateDir, { recursive: true });
  for (let lsn = 1; lsn <= commit; lsn++) {
    const e = archive.entries.get(lsn);
    if (!e) return; // reported as a gap
    const manifest = decodeLogEntry(await readFile(join(e.dir, 'MANIFEST')));
    await applyEntry(manifest, { stateDir, entryDir: e.dir, lsn });
  }
  const replayed = await treeDigest(stateDir);
  for (const [i, dataDir] of nodeDirs.entries()) {
    const onNode = await nodeState(report, dataDir, partition, i + 1);
    if (!onNode) continue;
    const differing = diffDigests(replayed, onNode);
    report.check(
      differing.length === 0,
      `partition ${partition}: replayed archive differs from node ${i + 1}'s state at ${differing.slice(0, 5).join(', ')}`,
    );
  }
  await rm(stateDir, { recursive: true, force: true });
}

/** Restores the partition to its latest archived LSN and compares `state/` with each node's. */
export async function checkRestore(
  report: RunReport,
  store: ObjectStore,
  partition: string,
  commit: number,
  upper: number,
  nodeDirs: string[],
  work: string,
): Promise<void> {
  const targetDir = join(work, `restore-${partition}`, 'partitions', partition);
  try {
    const result = await restorePartition({
      store,
      partition,
      target: { kind: 'latest' },
      targetDir,
      voters: [1, 2, 3],
    });
    report.check(
      result.targetLsn >= commit && result.targetLsn <= upper,
      `partition ${partition}: restore --latest reached LSN ${result.targetLsn}, the commit is ${commit}..${upper}`,
    );
  } catch (err) {
    report.check(false, `partition ${partition}: restore --latest failed: ${String(err)}`);
    return;
  }
  const restored = await treeDigest(join(targetDir, 'state'));
  for (const [i, dataDir] of nodeDirs.entries()) {
    const onNode = await nodeState(report, dataDir, partition, i + 1);
    if (!onNode) continue;
    const differing = diffDigests(restored, onNode);
    report.check(
      differing.length === 0,
      `partition ${partition}: restored state differs from node ${i + 1}'s at ${differing.slice(0, 5).join(', ')}`,
    );
  }
  await rm(join(work, `restore-${partition}`), { recursive: true, force: true });
}

/**
 * Reads wal.entries from the beginning: every LSN 1..commit is published, the
 * first appearance of each LSN follows the one before it, every event carries
 * the committed entry's term, and no event is past the commit or of a
 * cut-off leader's uncommitted entries.
 */
export async function checkEntryEvents(
  report: RunReport,
  eventsUrl: string,
  commits: Map<string, number>,
  terms: Map<string, Map<number, number>>,
  stale: StaleEntries[],
  commitsNow: () => Promise<Map<string, number>>,
): Promise<number> {
  const bus = await openEventBus(eventsUrl);
  const byPartition = new Map<string, ConsumedEvent[]>([...commits.keys()].map((p) => [p, []]));
  const distinct = (p: string) => new Set(byPartition.get(p)!.map((e) => e.value.lsn as number)).size;
  const complete = () => [...commits].every(([p, c]) => distinct(p) >= c);
  const sub = await bus.subscribe({
    topic: 'entries',
    group: uniqueName('faults-check'),
    fromBeginning: true,
    handler: async (events) => {
      for (const e of events) byPartition.get(e.key)?.push(e);
    },
  });
  try {
    await waitFor('every entry event', async () => (complete() ? true : undefined), 90_000, 250).catch(
      () => undefined,
    );
  } finally {
    await sub.stop();
    await bus.close();
  }
  // Read after the events were: no event may be past the commit as it stands now.
  const upper = await commitsNow();
  let count = 0;
  for (const [p, commit] of commits) {
    const limit = Math.max(commit, upper.get(p) ?? 0);
    const events = byPartition.get(p)!;
    count += events.length;
    report.check(
      distinct(p) >= commit,
      `partition ${p}: ${distinct(p)} distinct LSNs on wal.entries, the commit is ${commit}`,
    );
    const firsts: number[] = [];
    const seen = new Set<number>();
    let wrongTerm = 0;
    let pastCommit = 0;
    let staleSeen = 0;
    for (const e of events) {
      const lsn = e.value.lsn as number;
      const term = e.value.term as number;
      if (lsn > limit) pastCommit++;
      else if (lsn <= commit && term !== terms.get(p)?.get(lsn)) wrongTerm++;
      for (const s of stale)
        if (s.partition === p && lsn >= s.fromLsn && lsn <= s.toLsn && term === s.term) staleSeen++;
      if (!seen.has(lsn)) {
        seen.add(lsn);
        firsts.push(lsn);
      }
    }
    report.check(
      pastCommit === 0,
      `partition ${p}: ${pastCommit} events on wal.entries past the commit ${limit}`,
    );
    report.check(
      wrongTerm === 0,
      `partition ${p}: ${wrongTerm} events on wal.entries with another term than the archived entry`,
    );
    report.check(
      staleSeen === 0,
      `partition ${p}: ${staleSeen} events of a cut-off leader's uncommitted entries`,
    );
    const outOfOrder = firsts.findIndex((lsn, i) => lsn !== i + 1);
    report.check(
      outOfOrder === -1,
      `partition ${p}: wal.entries first shows LSN ${firsts[outOfOrder]} where LSN ${outOfOrder + 1} was due`,
    );
  }
  return count;
}
