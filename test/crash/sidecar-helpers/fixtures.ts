/**
 * Shared pieces of the sidecar-side crash protocols (archiving, base backup,
 * retention, restore): a storage-node-style partition directory written with
 * the node's own entry writer, a folder object store under the same root,
 * the archive audit the invariants are checked with, and a watcher that
 * tells a protocol's run() when the crash controller has stopped the
 * "process" (so it can stop its loops and return, leaving nothing running).
 */

import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

import { extractSegmentTar } from '../../../src/archive/segment-reader.js';
import {
  setDurableObserver,
  type DurableEvent,
  type DurableObserver,
} from '../../../contract/fs/durable-fs.js';
import { contentDigest, encodeEntryInfo } from '../../../contract/wal/entry-info.js';
import { readPartitionManifest, type PartitionManifest } from '../../../src/manifest/partition-manifest.js';
import { openObjectStore } from '../../../src/store/open.js';
import { MetadataKeys, type ObjectStore } from '../../../src/store/object-store.js';
import { partitionDir, writeEntry, writeHardState } from '../../../contract/wal/entry.js';
import { encodeLogEntry, newLogEntry, operation, referenceChange } from '../../../contract/wal/log-entry.js';
import { formatLsn, parseLsn } from '../../../contract/wal/lsn.js';
import { EntryType } from '../../../contract/wal/raftpb.js';
import { DecompressStream } from 'zstd-napi';
import { Readable } from 'node:stream';

export const PARTITION = '1';
export const NODE = 1;
export const TERM = 1;

// ---- the crash watcher -----------------------------------------------------------

/**
 * Sits in front of the installed observer (the crash controller) for the
 * length of a run(): remembers the first SimulatedCrash it threw, so run()
 * knows the process is "dead" even where the code under test swallows or
 * retries the error.
 */
export class CrashWatcher implements DurableObserver {
  error: Error | undefined;
  private readonly prev: DurableObserver | undefined;
  private active = true;

  constructor() {
    this.prev = setDurableObserver(this);
  }

  get crashed(): boolean {
    return this.error !== undefined;
  }

  before(event: DurableEvent): void {
    try {
      this.prev?.before(event);
    } catch (err) {
      if (err instanceof Error && err.name === 'SimulatedCrash') this.error ??= err;
      throw err;
    }
  }

  after(event: DurableEvent): void {
    this.prev?.after?.(event);
  }

  /** Puts the controller back in front (call before run() returns). */
  release(): void {
    if (!this.active) return;
    this.active = false;
    setDurableObserver(this.prev);
  }

  /** Releases, then rethrows the crash if there was one (what run() reports to the runner). */
  finish(): void {
    this.release();
    if (this.error) throw this.error;
  }
}

// ---- the data dir and the store ---------------------------------------------------------

export interface Rig {
  root: string;
  dataDir: string;
  pdir: string;
  archiveDir: string;
  storeUrl: string;
  spoolDir: string;
}

export async function makeRig(root: string): Promise<Rig> {
  const dataDir = join(root, 'data');
  const pdir = partitionDir(dataDir, PARTITION);
  const archiveDir = join(root, 'archive');
  const spoolDir = join(root, 'spool');
  await mkdir(pdir, { recursive: true });
  await mkdir(archiveDir, { recursive: true });
  await mkdir(spoolDir, { recursive: true });
  return { root, dataDir, pdir, archiveDir, storeUrl: `file://${archiveDir}`, spoolDir };
}

export function openStore(rig: Rig): Promise<ObjectStore> {
  return openObjectStore(rig.storeUrl);
}

/**
 * A run() against a freshly opened store, watched for the crash: closes the
 * store and puts the controller back in front whatever happens, then rethrows
 * the crash if there was one.
 */
export async function runWatched(rig: Rig, work: (store: ObjectStore) => Promise<unknown>): Promise<void> {
  const store = await openStore(rig);
  const watcher = new CrashWatcher();
  try {
    await work(store);
  } finally {
    await store.close().catch(() => undefined);
    watcher.release();
  }
  watcher.finish();
}

/** Commit times: entry `lsn` was committed at `BASE_TIME + lsn` seconds. */
export const BASE_TIME = Date.parse('2026-01-01T00:00:00Z');
export function committedAtOf(lsn: number): number {
  return BASE_TIME + lsn * 1000;
}

/**
 * Writes entries `from..to` as the node does (staged, fsynced, renamed into
 * wal/), each a reference update, a key set and a staged pack file linked
 * into the repository, then commits them in `raft/hard_state`.
 */
export async function writeWal(pdir: string, from: number, to: number, term = TERM): Promise<void> {
  for (let lsn = from; lsn <= to; lsn++) {
    const pack = Buffer.from(`pack of entry ${lsn}\n`.repeat(8 + lsn));
    const manifest = newLogEntry({
      relativePath: '@hashed/cr/as/crash.git',
      referenceTransactions: [
        { changes: [referenceChange('refs/heads/main', createHash('sha1').update(`c${lsn}`).digest('hex'))] },
      ],
      operations: [
        operation.createHardLink('1', `crash.git/objects/pack/pack-${formatLsn(lsn)}.pack`),
        operation.setKey(`key-${lsn % 3}`, `value-${lsn}`),
      ],
    });
    const info = encodeEntryInfo({
      contentSha256: contentDigest({
        manifest: encodeLogEntry(manifest),
        files: [{ name: '1', data: pack }],
      }),
      committedAt: committedAtOf(lsn),
      files: 1,
    });
    await writeEntry(pdir, lsn, {
      manifest,
      raft: { term, index: lsn, type: EntryType.Normal, data: info },
      files: [{ name: '1', data: pack }],
    });
  }
  await writeHardState(pdir, { term, vote: NODE, commit: to });
}

/** The files of each WAL entry as written (name → bytes), to compare archived entries against. */
export async function readWalFiles(pdir: string): Promise<Map<number, Map<string, Buffer>>> {
  const out = new Map<number, Map<string, Buffer>>();
  const wal = join(pdir, 'wal');
  for (const name of await readdir(wal)) {
    const lsn = parseLsn(name);
    const files = new Map<string, Buffer>();
    for (const f of await readdir(join(wal, name))) files.set(f, await readFile(join(wal, name, f)));
    out.set(lsn, files);
  }
  return out;
}

// ---- reading the archive -------------------------------------------------------------------

export async function readAll(store: ObjectStore, key: string): Promise<Buffer> {
  const body = await store.get(key);
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** The entries of a segment object: lsn → (file name → bytes). */
export async function segmentEntries(
  store: ObjectStore,
  key: string,
  scratch: string,
): Promise<Map<number, Map<string, Buffer>>> {
  const bytes = await readAll(store, key);
  const dir = join(scratch, `seg-${sha256(bytes).slice(0, 16)}-${Math.random().toString(36).slice(2)}`);
  const tarStream = Readable.from([bytes]).pipe(new DecompressStream());
  const entries = await extractSegmentTar(key, tarStream, dir, { inlineMax: Number.MAX_SAFE_INTEGER });
  const out = new Map<number, Map<string, Buffer>>();
  for (const e of entries) {
    const files = new Map<string, Buffer>();
    for (const [name, f] of e.inline) files.set(name, f.data);
    for (const name of e.files) {
      if (!files.has(name)) files.set(name, await readFile(join(e.dir, name)));
    }
    out.set(e.lsn, files);
  }
  return out;
}

function sameFiles(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (!b.get(k)?.equals(v)) return false;
  return true;
}

export interface AuditOptions {
  /** The WAL as the node wrote it: every archived entry must equal it. */
  wal?: Map<number, Map<string, Buffer>>;
  /** The archive must cover 1..coverTo with no gap (from the oldest kept backup when backups are kept). */
  coverTo?: number;
  scratch: string;
}

/**
 * The archive's invariants, as violation lines:
 * - every segment and backup record points at an object that exists, whose
 *   bytes hash to the record's SHA-256 (and match the object's metadata);
 * - the recorded segments cover `1..archived.last_lsn` (or from the oldest
 *   backup) with no gap, and `archived` is what they cover;
 * - every entry in every segment object (recorded or not) equals the WAL's,
 *   and no LSN appears with two different contents.
 */
export async function auditArchive(
  store: ObjectStore,
  o: AuditOptions,
): Promise<{ violations: string[]; manifest: PartitionManifest | undefined }> {
  const v: string[] = [];
  let manifest: PartitionManifest | undefined;
  try {
    manifest = (await readPartitionManifest(store, PARTITION))?.value;
  } catch (err) {
    v.push(`the partition manifest cannot be read: ${(err as Error).message}`);
    return { violations: v, manifest: undefined };
  }
  const records = [...(manifest?.segments ?? []), ...(manifest?.backups ?? [])];
  for (const r of records) {
    const info = await store.head(r.key);
    if (!info) {
      v.push(`the manifest names ${r.key}, which does not exist`);
      continue;
    }
    const bytes = await readAll(store, r.key).catch(() => undefined);
    if (!bytes) {
      v.push(`the manifest names ${r.key}, which cannot be read`);
      continue;
    }
    if (sha256(bytes) !== r.sha256)
      v.push(`${r.key}: its bytes hash to ${sha256(bytes)}, the manifest says ${r.sha256}`);
    if (bytes.length !== r.bytes) v.push(`${r.key}: ${bytes.length} bytes, the manifest says ${r.bytes}`);
    if (info.metadata[MetadataKeys.SHA256] !== undefined && info.metadata[MetadataKeys.SHA256] !== r.sha256) {
      v.push(
        `${r.key}: metadata SHA-256 ${info.metadata[MetadataKeys.SHA256]} differs from the manifest's ${r.sha256}`,
      );
    }
  }
  if (manifest) {
    const segs = [...manifest.segments].sort((a, b) => a.first_lsn - b.first_lsn || a.last_lsn - b.last_lsn);
    const backups = [...manifest.backups].sort((a, b) => a.lsn - b.lsn);
    const from = backups.length > 0 ? backups[0]!.lsn + 1 : 1;
    let covered = from - 1;
    for (const s of segs) {
      if (s.last_lsn < from) continue;
      if (s.first_lsn > covered + 1) {
        v.push(`gap in the archive: LSNs ${covered + 1}..${s.first_lsn - 1} are in no recorded segment`);
        break;
      }
      covered = Math.max(covered, s.last_lsn);
    }
    const archived = manifest.archived?.last_lsn ?? 0;
    if (archived > covered)
      v.push(`the manifest says archived through ${archived}, its segments cover through ${covered}`);
    if (o.coverTo !== undefined && archived < o.coverTo) {
      v.push(`the archive ends at ${archived}, not at ${o.coverTo}`);
    }
  } else if (o.coverTo !== undefined && o.coverTo > 0) {
    v.push(`no partition manifest, but LSNs 1..${o.coverTo} should be archived`);
  }
  // Every segment object, recorded or left over: its entries are the WAL's.
  const seen = new Map<number, { key: string; files: Map<string, Buffer> }>();
  for await (const obj of store.list(`partitions/${PARTITION}/wal/`)) {
    let entries;
    try {
      entries = await segmentEntries(store, obj.key, o.scratch);
    } catch (err) {
      const recorded = records.some((r) => r.key === obj.key);
      // An unrecorded leftover may be partial only if the store shows partial objects: that is a violation too.
      v.push(
        `segment object ${obj.key}${recorded ? '' : ' (unrecorded)'} cannot be read: ${(err as Error).message}`,
      );
      continue;
    }
    for (const [lsn, files] of entries) {
      const before = seen.get(lsn);
      if (before && !sameFiles(before.files, files)) {
        v.push(`LSN ${lsn} is archived twice with different content (${before.key}, ${obj.key})`);
      }
      seen.set(lsn, { key: obj.key, files });
      const want = o.wal?.get(lsn);
      if (o.wal && !want) v.push(`${obj.key} holds LSN ${lsn}, which the WAL never had`);
      else if (want && !sameFiles(want, files)) v.push(`${obj.key}: LSN ${lsn} differs from the WAL's entry`);
    }
  }
  return { violations: v, manifest };
}

export async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** Waits until `done()` or `timeoutMs`; true when done. */
export async function waitUntil(done: () => Promise<boolean> | boolean, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await done()) return true;
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}
