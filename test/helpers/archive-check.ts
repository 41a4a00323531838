import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { fetchSegment, type ExtractedEntry } from '../../src/archive/segment-reader.js';
import { tryParseSegmentKey, segmentPrefix } from '../../src/manifest/keys.js';
import { applyEntry } from '../../contract/state/apply.js';
import type { ObjectStore } from '../../src/store/object-store.js';
import { decodeLogEntry } from '../../contract/wal/log-entry.js';
import { decodeRaftEntry } from '../../contract/wal/raftpb.js';

/** What an archive holds for one partition, checked for coverage and consistency of overlapping copies. */
export interface ArchiveView {
  segments: string[];
  /** The first copy of every archived LSN. */
  entries: Map<number, ExtractedEntry>;
  /** The RAFT term of every archived LSN. */
  terms: Map<number, number>;
}

async function filesOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort())
    out[name] = (await readFile(join(dir, name))).toString('base64');
  return out;
}

/**
 * Downloads every segment of `partition` (checking SHA-256s), and asserts:
 * LSNs 1..commit are covered with no gap, and every LSN archived in more than
 * one segment has byte-identical copies (an uncommitted entry archived once
 * and its committed replacement archived later would differ).
 */
export async function readArchive(
  store: ObjectStore,
  partition: string,
  commit: number,
  workDir: string,
): Promise<ArchiveView> {
  const segments: string[] = [];
  for await (const o of store.list(segmentPrefix(partition))) {
    if (tryParseSegmentKey(o.key)) segments.push(o.key);
  }
  const entries = new Map<number, ExtractedEntry>();
  const terms = new Map<number, number>();
  for (const [i, key] of segments.entries()) {
    const dir = join(workDir, `p${partition}-s${i}`);
    await mkdir(dir, { recursive: true });
    for (const e of await fetchSegment(store, key, dir)) {
      const first = entries.get(e.lsn);
      if (first) {
        expect(
          await filesOf(e.dir),
          `LSN ${e.lsn} of partition ${partition}: copies in ${key} and an earlier segment`,
        ).toEqual(await filesOf(first.dir));
      } else {
        entries.set(e.lsn, e);
        const raft = decodeRaftEntry(await readFile(join(e.dir, 'RAFT')));
        expect(raft.index).toBe(e.lsn);
        terms.set(e.lsn, raft.term);
      }
    }
  }
  const missing: number[] = [];
  for (let lsn = 1; lsn <= commit; lsn++) if (!entries.has(lsn)) missing.push(lsn);
  expect(missing, `partition ${partition}: LSNs missing from the archive (commit ${commit})`).toEqual([]);
  return { segments, entries, terms };
}

/** Applies archived entries 1..to, in order, to an empty state directory. */
export async function replay(view: ArchiveView, to: number, stateDir: string): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  for (let lsn = 1; lsn <= to; lsn++) {
    const e = view.entries.get(lsn)!;
    const manifest = decodeLogEntry(await readFile(join(e.dir, 'MANIFEST')));
    await applyEntry(manifest, { stateDir, entryDir: e.dir, lsn });
  }
}
