import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as dfs from '../contract/fs/durable-fs.js';
import { ErrorCodes, WalArchiverError } from '../contract/errors.js';
import {
  atomicWriteFile,
  ensureDir,
  fsError,
  fsyncDir,
  isNotFound,
  pathExists,
  syncTree,
} from '../contract/fs/fs-atomic.js';
import { SHIPPED_WAL_DIR } from '../contract/state/snapshot.js';
import { readAppliedLsn, STATE_DIR, writeAppliedLsn } from '../contract/wal/entry.js';
import { tryParseLsn } from '../contract/wal/lsn.js';
import type { SnapshotMeta } from './raft/index.js';
import { resetWalToSnapshot, writeSnapshotMeta } from './wal-storage.js';

/**
 * Installing a snapshot a leader shipped, as a protocol that survives a crash
 * at any step.
 *
 * The snapshot arrives in `snapshot-incoming/<name>/` (the state, and the
 * leader's unarchived WAL entries in its `.wal/`). Installing it changes four
 * things that must agree: `state/`, `applied_lsn`, `raft/snapshot` and `wal/`.
 *
 * 1. The incoming copy is made durable, then the intent `raft/install` is
 *    written atomically (index, term, voters and the names of the staged
 *    directories). From here on the install is decided: open rolls forward.
 * 2. `.wal/` is moved out of the incoming copy to `snapshot-wal-<id>`.
 * 3. `state/` is moved to `state.old-<id>`, then the incoming copy to `state/`.
 * 4. `raft/snapshot` is written, `wal/` is reset to the shipped entries
 *    (every other entry removed, then the shipped ones moved in), and
 *    `applied_lsn` is written.
 * 5. The intent is removed; then the old state and the staging folders go.
 *
 * Each step checks what is on disk before it acts, so running the whole
 * sequence again after a crash (`recoverInstall` on open) finishes it. Without
 * an intent, whatever a crash left is removed only when `state/` is there, so
 * what is removed is never the only copy of the state.
 */

export const INSTALL_INTENT_FILE = join('raft', 'install');
export const INCOMING_DIR = 'snapshot-incoming';
const OLD_STATE_PREFIX = `${STATE_DIR}.old-`;
const SHIPPED_PREFIX = 'snapshot-wal-';

export interface InstallIntent {
  index: number;
  term: number;
  voters: number[];
  /** The incoming copy, relative to the partition directory (`snapshot-incoming/<name>`). */
  incoming: string;
  /** Where `.wal/` of the incoming copy goes (`snapshot-wal-<id>`). */
  shipped: string;
  /** Where the replaced `state/` goes (`state.old-<id>`). */
  old: string;
  /** LSNs of the shipped entries, ascending (at or below `index`). */
  shippedLsns: number[];
}

function corrupt(dir: string, message: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, `${dir}: ${message}`, { retryable: false });
}

async function rmTree(p: string): Promise<void> {
  if (!(await pathExists(p))) return;
  await dfs.rm(p, { recursive: true, force: true });
}

/** Renames `from` to `to` (both relative to `dir`) and makes both folders' entries durable. */
async function renameDurably(dir: string, from: string, to: string): Promise<void> {
  try {
    await dfs.rename(join(dir, from), join(dir, to));
  } catch (err) {
    throw fsError(err, `rename ${from} to`, join(dir, to));
  }
  await fsyncDir(dirname(join(dir, to)));
  if (dirname(join(dir, from)) !== dirname(join(dir, to))) await fsyncDir(dirname(join(dir, from)));
}

export function readInstallIntent(dir: string): InstallIntent | undefined {
  const file = join(dir, INSTALL_INTENT_FILE);
  let raw: string;
  try {
    raw = readFileSync(file, 'utf8');
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw fsError(err, 'read', file);
  }
  let v: Partial<InstallIntent>;
  try {
    v = JSON.parse(raw) as Partial<InstallIntent>;
  } catch (err) {
    throw corrupt(file, `not JSON: ${(err as Error).message}`);
  }
  const safeName = (s: unknown, prefix: string) =>
    typeof s === 'string' && s.startsWith(prefix) && !s.includes('..') && !s.includes('\0');
  if (
    !Number.isSafeInteger(v.index) ||
    !Number.isSafeInteger(v.term) ||
    !Array.isArray(v.voters) ||
    !Array.isArray(v.shippedLsns) ||
    !v.shippedLsns.every((l) => Number.isSafeInteger(l)) ||
    !safeName(v.incoming, `${INCOMING_DIR}/`) ||
    !safeName(v.shipped, SHIPPED_PREFIX) ||
    !safeName(v.old, OLD_STATE_PREFIX)
  ) {
    throw corrupt(file, 'expected {index, term, voters, incoming, shipped, old, shippedLsns}');
  }
  return v as InstallIntent;
}

/**
 * Step 1: makes the incoming copy durable and records the intent to install
 * it. Returns the intent; `finishInstall` carries it out.
 */
export async function beginInstall(
  dir: string,
  meta: SnapshotMeta,
  incomingDir: string,
  id: string,
  /** `synced`: the caller already made the incoming copy durable (`syncTree`), outside its locks. */
  options: { synced?: boolean } = {},
): Promise<InstallIntent> {
  const rel = incomingDir.startsWith(`${dir}/`) ? incomingDir.slice(dir.length + 1) : undefined;
  if (!rel?.startsWith(`${INCOMING_DIR}/`))
    throw new WalArchiverError(ErrorCodes.INTERNAL, `${incomingDir} is not in ${join(dir, INCOMING_DIR)}`);
  let shippedLsns: number[] = [];
  try {
    shippedLsns = (await readdir(join(incomingDir, SHIPPED_WAL_DIR)))
      .map((n) => tryParseLsn(n))
      .filter((l): l is number => l !== undefined && l <= meta.index)
      .sort((a, b) => a - b);
  } catch (err) {
    if (!isNotFound(err)) throw fsError(err, 'list', join(incomingDir, SHIPPED_WAL_DIR));
  }
  // What the intent names must survive a crash before the first rename relies on it.
  if (!options.synced) await syncTree(incomingDir);
  await fsyncDir(join(dir, INCOMING_DIR));
  await fsyncDir(dir);
  const intent: InstallIntent = {
    index: meta.index,
    term: meta.term,
    voters: [...meta.voters],
    incoming: rel,
    shipped: `${SHIPPED_PREFIX}${id}`,
    old: `${OLD_STATE_PREFIX}${id}`,
    shippedLsns,
  };
  await ensureDir(join(dir, 'raft'));
  await atomicWriteFile(join(dir, INSTALL_INTENT_FILE), `${JSON.stringify(intent)}\n`);
  return intent;
}

/** Steps 2 to 5; idempotent, so it also finishes an install a crash cut short. */
export async function finishInstall(dir: string, intent: InstallIntent): Promise<void> {
  const incoming = join(dir, intent.incoming);
  const state = join(dir, STATE_DIR);
  // 2. The shipped WAL out of the incoming copy (before that copy becomes state/).
  if (await pathExists(join(incoming, SHIPPED_WAL_DIR))) {
    if (await pathExists(join(dir, intent.shipped))) {
      // Moved already, but the move out of the incoming copy was not durable when the power went:
      // the name left behind is a second copy of what the intent's folder holds.
      await rmTree(join(incoming, SHIPPED_WAL_DIR));
      await fsyncDir(incoming);
    } else await renameDurably(dir, join(intent.incoming, SHIPPED_WAL_DIR), intent.shipped);
  }
  // 3. The state swap. While the incoming copy exists it has not become state/ yet.
  if (await pathExists(incoming)) {
    if ((await pathExists(state)) && (await pathExists(join(dir, intent.old)))) {
      // state/ went to the old name first, so a state/ beside it is the incoming copy already
      // renamed in; the incoming name survived only because its folder was not yet synced.
      await rmTree(incoming);
      await fsyncDir(dirname(incoming));
    } else {
      if (await pathExists(state)) await renameDurably(dir, STATE_DIR, intent.old);
      await renameDurably(dir, intent.incoming, STATE_DIR);
    }
  } else if (!(await pathExists(state))) {
    throw corrupt(
      dir,
      `snapshot install at LSN ${intent.index}: neither ${STATE_DIR}/ nor ${intent.incoming}/ exists`,
    );
  }
  // 4. The Raft log and the WAL start after the snapshot; applied_lsn says the state's LSN.
  const meta = { index: intent.index, term: intent.term, voters: intent.voters };
  await writeSnapshotMeta(dir, meta);
  await resetWalToSnapshot(dir, meta.index, join(dir, intent.shipped), intent.shippedLsns);
  if ((await readAppliedLsn(dir)) !== meta.index) await writeAppliedLsn(dir, meta.index);
  // 5. Done: forget the intent, then remove what is no longer needed.
  await dfs.unlink(join(dir, INSTALL_INTENT_FILE));
  await fsyncDir(join(dir, 'raft'));
  await rmTree(join(dir, intent.old));
  await rmTree(join(dir, intent.shipped));
}

export interface RecoveredInstall {
  /** The index of an install a crash cut short and that was finished now. */
  finished?: number;
  /** Shipped WAL folders kept because no intent says they are copies (they may hold unarchived entries). */
  kept: string[];
}

/**
 * On open: finishes an install whose intent is on disk; otherwise removes
 * only what a crash left that is provably not the only copy of anything.
 */
export async function recoverInstall(dir: string): Promise<RecoveredInstall> {
  const intent = readInstallIntent(dir);
  if (intent) {
    await finishInstall(dir, intent);
    await rmTree(join(dir, INCOMING_DIR));
    return { finished: intent.index, kept: [] };
  }
  const names = await readdir(dir).catch((err: unknown) => {
    if (isNotFound(err)) return [] as string[];
    throw fsError(err, 'list', dir);
  });
  const state = join(dir, STATE_DIR);
  if (!(await pathExists(state))) {
    // No intent and no state/: a crash of an install from before the intent
    // existed, between moving state/ away and the new one in. The old state is
    // the one applied_lsn describes: put it back.
    const old = names.filter((n) => n.startsWith(OLD_STATE_PREFIX)).sort();
    if (old.length > 1) throw corrupt(dir, `no ${STATE_DIR}/ and several ${OLD_STATE_PREFIX}* folders`);
    if (old.length === 1) await renameDurably(dir, old[0]!, STATE_DIR);
  }
  const kept: string[] = [];
  if (!(await pathExists(state))) return { kept };
  for (const name of names) {
    const p = join(dir, name);
    if (name.startsWith(OLD_STATE_PREFIX) || name === INCOMING_DIR || name === 'snapshots') await rmTree(p);
    else if (name.startsWith(SHIPPED_PREFIX)) {
      // An install that finished moves every shipped entry into wal/; one that is not empty is kept.
      if ((await readdir(p).catch(() => [] as string[])).length === 0) await rmTree(p);
      else kept.push(name);
    }
  }
  return { kept };
}
