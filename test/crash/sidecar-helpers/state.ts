/**
 * State directories, the node's snapshot endpoint, and tree comparison for
 * the base backup, retention and restore protocols.
 */

import { cp, lstat, mkdir, readdir, readFile, readlink } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import { takeBaseBackup } from '../../../src/backup/take.js';
import { applyEntry } from '../../../contract/state/apply.js';
import { packState } from '../../../contract/state/snapshot.js';
import type { ObjectStore } from '../../../src/store/object-store.js';
import { entryDir, readEntry } from '../../../contract/wal/entry.js';
import { NODE, PARTITION, TERM, type Rig } from './fixtures.js';
import { HttpStorageNode } from '../../../src/node/http-node.js';

/** Applies WAL entries `from..to` to `stateDir` with the node's apply path. */
export async function applyRange(pdir: string, stateDir: string, from: number, to: number): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  for (let lsn = from; lsn <= to; lsn++) {
    const e = await readEntry(pdir, lsn);
    await applyEntry(e.manifest, { stateDir, entryDir: entryDir(pdir, lsn), lsn });
  }
}

/**
 * The node's snapshot endpoint (`GET /v1/partitions/{id}/snapshot`) serving
 * a real `packState` tar of `snapshots.get(lsn)` for the LSN `current` names.
 * Only this HTTP front is a stand-in: the tar is the node's own.
 */
export class SnapshotServer {
  readonly states = new Map<number, string>();
  current = 0;
  private server: http.Server | undefined;
  url = '';

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const m = /^\/v1\/partitions\/([^/]+)\/snapshot$/.exec(req.url ?? '');
      const dir = this.states.get(this.current);
      if (!m || m[1] !== PARTITION || dir === undefined) {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"no such partition"}');
        return;
      }
      res.writeHead(200, {
        'content-type': 'application/x-tar',
        'x-snapshot-lsn': String(this.current),
        'x-partition': PARTITION,
      });
      const tar = packState(dir);
      tar.on('error', () => res.destroy());
      tar.pipe(res);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

/** Keeps a copy of the state at `lsn` (for the snapshot server) under `<root>/snapshots/<lsn>`. */
export async function keepStateAt(
  rig: Rig,
  stateDir: string,
  lsn: number,
  server: SnapshotServer,
): Promise<string> {
  const dir = join(rig.root, 'snapshots', String(lsn));
  await cp(stateDir, dir, { recursive: true });
  server.states.set(lsn, dir);
  return dir;
}

export function backupAt(
  rig: Rig,
  store: ObjectStore,
  server: SnapshotServer,
  lsn: number,
  now?: () => Date,
): ReturnType<typeof takeBaseBackup> {
  server.current = lsn;
  return takeBaseBackup({
    store,
    storageNode: new HttpStorageNode(server.url),
    partition: PARTITION,
    node: NODE,
    term: TERM,
    trigger: 'manual',
    checkLeader: false,
    spoolDir: rig.spoolDir,
    ...(now ? { now } : {}),
  });
}

// ---- trees ----------------------------------------------------------------------------------

export type Tree = Map<string, string>;

/** A tree as path → description (type, mode, content), for byte-for-byte comparison. */
export async function readTree(dir: string): Promise<Tree | undefined> {
  const top = await lstat(dir).catch(() => undefined);
  if (!top) return undefined;
  const out: Tree = new Map();
  const walk = async (abs: string, rel: string): Promise<void> => {
    const st = await lstat(abs);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isDirectory()) {
      out.set(rel || '.', `dir ${mode}`);
      for (const name of (await readdir(abs)).sort())
        await walk(join(abs, name), rel ? `${rel}/${name}` : name);
    } else if (st.isFile()) {
      out.set(rel, `file ${mode} ${(await readFile(abs)).toString('base64')}`);
    } else if (st.isSymbolicLink()) {
      out.set(rel, `symlink ${await readlink(abs)}`);
    } else {
      out.set(rel, 'special');
    }
  };
  await walk(dir, '');
  return out;
}

/** The differences between two trees, as short lines (at most `max`). */
export function diffTrees(want: Tree, got: Tree, max = 5): string[] {
  const out: string[] = [];
  for (const [p, d] of want) {
    const g = got.get(p);
    if (g === undefined) out.push(`${p} is missing`);
    else if (g !== d) out.push(`${p} differs (${g.slice(0, 40)}… vs ${d.slice(0, 40)}…)`);
  }
  for (const p of got.keys()) if (!want.has(p)) out.push(`${p} should not be there`);
  return out.length > max ? [...out.slice(0, max), `… and ${out.length - max} more`] : out;
}

export function sameTree(a: Tree, b: Tree): boolean {
  return diffTrees(a, b, 1).length === 0;
}
