/** Shared by the node protocols: building entries, partition directories and comparable snapshots of them. */
import { readFileSync, readdirSync, lstatSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

import { encodePayload } from '../../contract/wal/entry-info.js';
import { encodeLogEntry, newLogEntry, operation, type Operation } from '../../contract/wal/log-entry.js';
import type { Entry } from '../../storage-node/raft/index.js';

export const VOTERS = [1, 2, 3] as const;

/** A partition directory under a crash root. */
export async function partitionDir(root: string, id = '1'): Promise<string> {
  const dir = path.join(root, 'partitions', id);
  await mkdir(dir, { recursive: true });
  return dir;
}

/** A normal entry at `index`: sets key `k<index>` (or the given ops) and carries one staged file. */
export function kvEntry(index: number, term = 1, ops?: Operation[], tag = ''): Entry {
  const manifest = encodeLogEntry(
    newLogEntry({
      operations: ops ?? [operation.setKey(`k${index}`, `v${index}${tag}`)],
    }),
  );
  const files = [{ name: '1', data: Buffer.from(`file of entry ${index}${tag}, term ${term}\n`) }];
  return { index, term, type: 'normal', data: encodePayload({ manifest, files }, 1_700_000_000_000 + index) };
}

export const emptyEntry = (index: number, term = 1): Entry => ({
  index,
  term,
  type: 'empty',
  data: new Uint8Array(0),
});

/** Every regular file below `dir` with its bytes (hex), sorted by relative path; empty when missing. */
export function treeOf(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string): void => {
    let names: string[];
    try {
      names = readdirSync(d).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const p = path.join(d, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(p);
      if (st.isDirectory()) {
        out[`${r}/`] = '';
        walk(p, r);
      } else if (st.isFile()) out[r] = readFileSync(p).toString('hex');
    }
  };
  walk(dir, '');
  return out;
}

/** What differs between two trees, as short lines. */
export function treeDiff(actual: Record<string, string>, expected: Record<string, string>): string[] {
  const out: string[] = [];
  for (const k of Object.keys(expected)) {
    if (!(k in actual)) out.push(`missing ${k}`);
    else if (actual[k] !== expected[k]) out.push(`different ${k}`);
  }
  for (const k of Object.keys(actual)) if (!(k in expected)) out.push(`unexpected ${k}`);
  return out;
}

export function sameTree(a: Record<string, string>, b: Record<string, string>): boolean {
  return treeDiff(a, b).length === 0;
}
