/**
 * What a restored partition directory carries for its sidecar (files of the
 * sidecar's `archiver/` folder, beside `archiver/position`):
 *
 *   archiver/restored.json    written by `restore`: which timeline's history it
 *                             restored, to which LSN, and the restore's id (the
 *                             same in every replica `restore --all` writes)
 *   archiver/restored-state/  the state at that LSN, hard links into `state/`
 *                             (free: state files are only ever replaced, never
 *                             changed in place), uploaded by the sidecar as the
 *                             new timeline's first base backup, then removed
 *   archiver/timeline         decimal timeline number + "\n": the timeline the
 *                             sidecar archives this partition into; written
 *                             once the timeline's history record exists
 *
 * A directory with none of them is timeline 1, as every directory was before
 * timelines.
 */

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { FieldReader } from '../../contract/events/schemas.js';
import * as dfs from '../../contract/fs/durable-fs.js';
import { atomicWriteFile, isNotFound, pathExists } from '../../contract/fs/fs-atomic.js';
import { linkTree } from '../../contract/state/snapshot.js';
import { ARCHIVER_DIR, STATE_DIR } from '../../contract/wal/entry.js';
import { tryParseTimeline } from '../manifest/keys.js';

export const RESTORED_FILE = join(ARCHIVER_DIR, 'restored.json');
export const RESTORED_STATE_DIR = join(ARCHIVER_DIR, 'restored-state');
export const TIMELINE_FILE = join(ARCHIVER_DIR, 'timeline');

export interface RestoredMarker {
  schema: 1;
  partition: string;
  /** Shared by every replica one restore wrote: the new timeline is found again by it. */
  restore_id: string;
  /** The timeline whose history was restored: the new timeline's parent. */
  parent_timeline: number;
  /** The restored LSN: the new timeline's branch point and the LSN of its first base backup. */
  branch_lsn: number;
  /** The Raft term of the entry at `branch_lsn`. */
  term: number;
  /** At least the greatest commit time of the entries up to `branch_lsn`, when known. */
  max_committed_at?: string;
  restored_at: string;
  /** What was asked for, e.g. "restore --to-time 2026-01-01T00:00:00.000Z". */
  reason: string;
}

function readText(file: string): Promise<string | undefined> {
  return readFile(file, 'utf8').catch((err: unknown) => {
    if (isNotFound(err)) return undefined;
    throw err;
  });
}

/** Writes the marker and links the restored state beside it (restore's last step before publishing). */
export async function markRestored(dir: string, marker: RestoredMarker): Promise<void> {
  await dfs.mkdir(join(dir, ARCHIVER_DIR), { recursive: true });
  await atomicWriteFile(join(dir, RESTORED_FILE), `${JSON.stringify(marker, null, 2)}\n`);
  await linkRestoredState(dir);
}

/** (Re)makes `archiver/restored-state` from `state/` (a copied replica links its own). */
export async function linkRestoredState(dir: string): Promise<void> {
  await dfs.rm(join(dir, RESTORED_STATE_DIR), { recursive: true, force: true });
  await linkTree(join(dir, STATE_DIR), join(dir, RESTORED_STATE_DIR));
}

/** The marker of a restored directory; undefined for one that was not restored; CORRUPT when malformed. */
export async function readRestoredMarker(dir: string): Promise<RestoredMarker | undefined> {
  const file = join(dir, RESTORED_FILE);
  const text = await readText(file);
  if (text === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new WalArchiverError(ErrorCodes.CORRUPT, `${file} is not JSON`, { retryable: false });
  }
  const r = new FieldReader(value, file);
  r.schema(1);
  const maxCommitted = r.has('max_committed_at') ? { max_committed_at: r.time('max_committed_at') } : {};
  return {
    schema: 1,
    partition: r.partition(),
    restore_id: r.string('restore_id'),
    parent_timeline: r.int('parent_timeline', 1),
    branch_lsn: r.lsn('branch_lsn'),
    term: r.term('term'),
    ...maxCommitted,
    restored_at: r.time('restored_at'),
    reason: r.string('reason'),
  };
}

/** The timeline the directory archives into; undefined when it names none; CORRUPT when malformed. */
export async function readTimelineFile(dir: string): Promise<number | undefined> {
  const file = join(dir, TIMELINE_FILE);
  const text = await readText(file);
  if (text === undefined) return undefined;
  const n = /^(\d+)\n$/.exec(text)?.[1];
  const timeline = n === undefined ? undefined : tryParseTimeline(n);
  if (timeline === undefined) {
    throw new WalArchiverError(ErrorCodes.CORRUPT, `${file}: expected a timeline number and a newline`, {
      retryable: false,
    });
  }
  return timeline;
}

export async function writeTimelineFile(dir: string, timeline: number): Promise<void> {
  await dfs.mkdir(join(dir, ARCHIVER_DIR), { recursive: true });
  await atomicWriteFile(join(dir, TIMELINE_FILE), `${timeline}\n`);
}

/** Whether the restored state is still waiting to be uploaded. */
export async function hasRestoredState(dir: string): Promise<boolean> {
  return pathExists(join(dir, RESTORED_STATE_DIR));
}

export async function removeRestoredState(dir: string): Promise<void> {
  await dfs.rm(join(dir, RESTORED_STATE_DIR), { recursive: true, force: true });
  await dfs.fsyncPath(join(dir, ARCHIVER_DIR), 'fsyncDir');
}
