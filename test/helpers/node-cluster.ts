import { createHash } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { PartitionStatus, TransactionRequest } from '../../storage-node/api.js';
import { WriteClient } from '../../storage-node/load.js';

/** Helpers for tests that run real storage-node processes (see storage-node/cluster.ts). */

export async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return (await res.json()) as T;
}

export async function statusOf(url: string, partition: string): Promise<PartitionStatus> {
  return getJson<PartitionStatus>(`${url}/v1/partitions/${partition}`);
}

/** Polls until `check` returns a value (not undefined), or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 30_000,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The leader of a partition as every reachable node agrees on it. */
export async function leaderOf(
  urls: readonly string[],
  partition: string,
  exclude: number[] = [],
): Promise<number> {
  return waitFor(`a leader of partition ${partition}`, async () => {
    for (const url of urls) {
      const s = await statusOf(url, partition).catch(() => undefined);
      if (s && s.role === 'leader' && !exclude.includes(s.node)) return s.node;
    }
    return undefined;
  });
}

/**
 * `workers` writers, each cycling over `partitions` with the transaction `request` makes until stopped
 * (a failed write, e.g. during a failover, is counted and skipped), pausing `pauseMs` between its writes.
 */
export function writeUntilStopped(o: {
  urls: string[];
  partitions: string[];
  workers: number;
  attempts: number;
  requestTimeoutMs: number;
  pauseMs?: number;
  request: (partition: string, worker: number, i: number) => TransactionRequest;
}) {
  let stopped = false;
  let ok = 0;
  let failed = 0;
  const client = new WriteClient({
    urls: o.urls,
    attempts: o.attempts,
    requestTimeoutMs: o.requestTimeoutMs,
    backoff: { initialMs: 50, maxMs: 500 },
  });
  const done = Promise.all(
    Array.from({ length: o.workers }, async (_, w) => {
      for (let i = 0; !stopped; i++) {
        const p = o.partitions[(w + i) % o.partitions.length]!;
        await client.write(p, o.request(p, w, i)).then(
          () => ok++,
          () => failed++,
        );
        if (o.pauseMs) await new Promise<void>((r) => setTimeout(r, o.pauseMs));
      }
    }),
  );
  return {
    get written() {
      return ok;
    },
    async stop() {
      stopped = true;
      await done;
      client.close();
      return { ok, failed };
    },
  };
}

/** Writes `count` small transactions spread over `partitions`, `concurrency` at a time; returns the LSNs. */
export async function writeMany(
  urls: string[],
  partitions: string[],
  count: number,
  concurrency = 16,
  label = 'k',
): Promise<Map<string, number[]>> {
  const client = new WriteClient({
    urls,
    attempts: 20,
    requestTimeoutMs: 10_000,
    backoff: { initialMs: 50, maxMs: 500 },
  });
  const lsns = new Map<string, number[]>(partitions.map((p) => [p, []]));
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (let i = next++; i < count; i = next++) {
          const partition = partitions[i % partitions.length]!;
          const request: TransactionRequest = {
            relativePath: `repo-${partition}.git`,
            files: [Buffer.from(`${label}-${i}`).toString('base64')],
            operations: [
              { createDirectory: { path: `repo-${partition}.git` } },
              { createDirectory: { path: `repo-${partition}.git/blobs` } },
              { createHardLink: { source: '1', destination: `repo-${partition}.git/blobs/${label}-${i}` } },
              {
                setKey: {
                  key: Buffer.from(`${label}-${i}`).toString('base64'),
                  value: Buffer.from(String(i)).toString('base64'),
                },
              },
            ],
            references: [
              { name: 'refs/heads/main', newOid: createHash('sha1').update(`${label}-${i}`).digest('hex') },
            ],
          };
          const { response } = await client.write(partition, request);
          lsns.get(partition)!.push(response.lsn);
        }
      }),
    );
  } finally {
    client.close();
  }
  return lsns;
}

/** Every file and directory below `dir` with mode and content hash: equal trees are byte-identical. */
export async function treeDigest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const visit = async (d: string, rel: string) => {
    for (const name of (await readdir(d)).sort()) {
      const p = join(d, name);
      const info = await lstat(p);
      const r = rel ? `${rel}/${name}` : name;
      if (info.isDirectory()) {
        out[`${r}/`] = (info.mode & 0o7777).toString(8);
        await visit(p, r);
      } else {
        out[r] = `${(info.mode & 0o777).toString(8)} ${createHash('sha256')
          .update(await readFile(p))
          .digest('hex')}`;
      }
    }
  };
  await visit(dir, '');
  return out;
}
