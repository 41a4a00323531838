import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../../contract/log.js';
import { partitionDir } from '../../../../contract/wal/entry.js';
import { verifiedKey } from '../../../../src/manifest/keys.js';
import type { LeadershipFollowOptions, StorageNode } from '../../../../src/node/storage-node.js';
import { createArchiverMetrics } from '../../../../src/pipeline/metrics.js';
import { DEFAULT_ARCHIVER_CONFIG } from '../../../../src/pipeline/partition-archiver.js';
import { Sidecar } from '../../../../src/pipeline/sidecar.js';
import { VerifiedPointExporter } from '../../../../src/pipeline/verified-point.js';
import {
  verifiedRecord,
  writeVerifiedPoint,
  readVerifiedPoint,
} from '../../../../src/restore/verified-record.js';
import type { ObjectStore } from '../../../../src/store/object-store.js';
import { openObjectStore } from '../../../../src/store/open.js';

/** The sidecar's export of each led partition's verified point, read from the archive. */

let work: string;
let store: ObjectStore;

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'verified-point-'));
  store = await openObjectStore(`file://${join(work, 'archive')}`);
});
afterEach(async () => {
  await store.close();
  await rm(work, { recursive: true, force: true });
});

async function record(partition: string, lsn: number, at: string): Promise<void> {
  const next = verifiedRecord({
    partition,
    timeline: 1,
    verified_lsn: lsn,
    mode: 'incremental',
    objects: [],
    host: 'h',
    now: new Date(at),
  });
  await writeVerifiedPoint(store, next, await readVerifiedPoint(store, partition));
}

/** The gauge's samples by partition, as /metrics serves them. */
async function samples(metrics: ReturnType<typeof createArchiverMetrics>, name: string) {
  const out: Record<string, number> = {};
  for (const line of (await metrics.registry.metrics()).split('\n')) {
    const m = new RegExp(`^${name}\\{partition="([^"]+)"\\} (\\S+)$`).exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

describe('the verified point exporter', () => {
  it('exports the recorded LSN and time of the led partitions; none for a partition without a record', async () => {
    const metrics = createArchiverMetrics();
    let leading = ['1', '2', '3'];
    const e = new VerifiedPointExporter({ store, metrics, logger: silentLogger, leading: () => leading });
    await record('1', 40, '2026-01-02T03:04:05.500Z');
    await store.create(verifiedKey('3'), Buffer.from('{"damaged'));
    await e.refreshAll();
    expect(await samples(metrics, 'wal_archiver_verified_lsn')).toEqual({ '1': 40 });
    expect(await samples(metrics, 'wal_archiver_verified_timestamp_seconds')).toEqual({
      '1': Date.parse('2026-01-02T03:04:05.500Z') / 1000,
    });

    // A newer verify moves it on; a partition verified for the first time appears.
    await record('1', 55, '2026-01-02T04:00:00Z');
    await record('2', 7, '2026-01-02T04:00:00Z');
    await e.refreshAll();
    expect(await samples(metrics, 'wal_archiver_verified_lsn')).toEqual({ '1': 55, '2': 7 });

    // A partition no longer led loses its gauges.
    leading = ['2'];
    e.forget('1');
    await e.refreshAll();
    expect(await samples(metrics, 'wal_archiver_verified_lsn')).toEqual({ '2': 7 });
    await e.stop();
  });
});

/** A storage node that reports this node (1) the leader of partition 1, in term 1, and nothing else. */
function leaderOfOne(): StorageNode {
  const fail = () => Promise.reject(new Error('not used'));
  return {
    url: 'http://node.invalid',
    partitionStatus: fail,
    snapshot: fail,
    async followLeadership(o: LeadershipFollowOptions) {
      o.onChange({ partition: '1', node: 1, leader: 1, term: 1, role: 'leader' });
      await new Promise<void>((resolve) => o.signal.addEventListener('abort', () => resolve()));
    },
  };
}

describe('the sidecar', () => {
  it('serves the verified point of a partition it leads on /metrics, read at resume and then periodically', async () => {
    await record('1', 12, '2026-01-02T03:04:05Z');
    const dataDir = join(work, 'data');
    await mkdir(partitionDir(dataDir, '1'), { recursive: true });
    const sidecar = new Sidecar({
      dataDir,
      storageNode: leaderOfOne(),
      store,
      config: DEFAULT_ARCHIVER_CONFIG,
      uploadConcurrency: 1,
      spoolDir: join(work, 'spool'),
      metricsPort: 0,
      logger: silentLogger,
      verifiedPollMs: 50,
    });
    const scrape = async () => (await fetch(`${sidecar.metricsUrl}/metrics`)).text();
    const until = async (pattern: RegExp) => {
      for (let i = 0; i < 200; i++) {
        const text = await scrape();
        if (pattern.test(text)) return text;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error(`/metrics never matched ${pattern}: ${await scrape()}`);
    };
    await sidecar.start();
    try {
      await sidecar.settled();
      const text = await until(/^wal_archiver_verified_lsn\{partition="1"\} 12$/m);
      expect(text).toMatch(/^wal_archiver_verified_timestamp_seconds\{partition="1"\} 1767323045$/m);
      await record('1', 30, '2026-01-02T05:00:00Z');
      await until(/^wal_archiver_verified_lsn\{partition="1"\} 30$/m);
    } finally {
      await sidecar.stop();
    }
  });
});
