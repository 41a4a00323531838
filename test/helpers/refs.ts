import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { WriteRecord } from '../../storage-node/load.js';

/** The refs of each repository in a restored state directory (those that have any). */
export async function refsIn(
  stateDir: string,
  repositories: string[],
): Promise<Record<string, Record<string, string>>> {
  const out: Record<string, Record<string, string>> = {};
  for (const repo of repositories) {
    const dir = join(stateDir, 'repositories', repo);
    const refs: Record<string, string> = {};
    const walk = async (d: string, name: string) => {
      for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
        if (e.isDirectory()) await walk(join(d, e.name), `${name}/${e.name}`);
        else refs[`${name}/${e.name}`] = (await readFile(join(d, e.name), 'utf8')).trim();
      }
    };
    await walk(join(dir, 'refs'), 'refs');
    if (Object.keys(refs).length > 0) out[repo] = refs;
  }
  return out;
}

/** What the record says every repository's refs are once the partition is at `lsn`. */
export function expectedRefs(
  writes: WriteRecord[],
  partition: string,
  lsn: number,
): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const w of writes) if (w.partition === partition && w.lsn <= lsn) out[w.relativePath] = w.refs;
  return out;
}
