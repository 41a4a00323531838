import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openEventBus } from '../../contract/events/open.js';
import type { ConsumedEvent, EventBus, Subscription } from '../../contract/events/event-bus.js';
import {
  entryDir,
  listEntryLsns,
  partitionDir,
  RAFT_FILE,
  readHardState,
  writeArchiverPosition,
} from '../../contract/wal/entry.js';
import { decodeRaftEntry } from '../../contract/wal/raftpb.js';
import { startLocalCluster, type StartedCluster } from '../../storage-node/cluster.js';
import { DEFAULT_ELECTION_TICK, DEFAULT_TICK_MS } from '../../storage-node/node.js';
import { kafkaUrl, uniqueName } from '../helpers/services.js';
import { leaderOf, statusOf, treeDigest, waitFor, writeMany } from '../helpers/node-cluster.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function cluster(
  partitions: number,
  basePort: number,
  extra: { events?: string; faults?: boolean; archiver?: boolean } = {},
) {
  const dataDir = await mkdtemp(join(tmpdir(), 'storage-node-'));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  const c: StartedCluster = await startLocalCluster({
    nodes: 3,
    partitions,
    dataDir,
    basePort,
    ...(extra.events ? { events: extra.events } : {}),
    ...(extra.archiver === false ? { archiver: false } : {}),
    extraArgs: extra.faults ? ['--fault-injection'] : [],
  });
  cleanups.push(() => c.stop());
  return { ...c, dataDir };
}

/**
 * How long a new leader may take after the old one died, from the node's own
 * configuration: a follower campaigns after a randomised timeout in
 * [electionTick, 2 × electionTick) ticks; a split vote takes a second round.
 */
const ELECTION_BOUND_MS = 2 * (2 * DEFAULT_ELECTION_TICK * DEFAULT_TICK_MS);

describe('storage-node cluster', () => {
  it('survives SIGKILL of a leader: new leader within two election timeouts, announced on wal.leadership, the dead node catches up byte for byte', async () => {
    const prefix = uniqueName('sn');
    const bus: EventBus = await openEventBus(kafkaUrl(prefix));
    cleanups.push(() => bus.close());
    const leadership: ConsumedEvent[] = [];
    const sub: Subscription = await bus.subscribe({
      topic: 'leadership',
      group: uniqueName('test'),
      fromBeginning: true,
      handler: async (events) => void leadership.push(...events),
    });
    cleanups.push(() => sub.stop());

    // No sidecar here: the nodes prune by Raft alone, so the restarted node may need a snapshot.
    const c = await cluster(2, 7310, { events: kafkaUrl(prefix), archiver: false });
    const partitions = ['1', '2'];
    const firstLeader = await leaderOf(c.urls, '1');
    await writeMany(c.urls, partitions, 1000, 24, 'a');

    const before = await statusOf(c.urls[firstLeader - 1]!, '1');
    const killedAt = Date.now();
    await c.cluster.node(firstLeader).kill('SIGKILL');
    const survivors = c.urls.filter((_, i) => i !== firstLeader - 1);
    const newLeader = await leaderOf(survivors, '1', [firstLeader]);
    const elapsed = Date.now() - killedAt;
    expect(elapsed, `new leader after ${elapsed} ms`).toBeLessThan(ELECTION_BOUND_MS);
    expect(newLeader).not.toBe(firstLeader);

    // The new leader announced itself on wal.leadership, in a later term.
    const announced = await waitFor('the leadership event', async () =>
      leadership.find(
        (e) =>
          e.key === '1' &&
          e.value.role === 'leader' &&
          e.value.node === newLeader &&
          (e.value.term as number) > before.term,
      ),
    );
    expect(announced.topic).toBe(`${prefix}.leadership`);

    await writeMany(survivors, partitions, 1000, 24, 'b');
    await c.cluster.node(firstLeader).restart();

    // Every node reaches the same applied LSN, with identical state.
    for (const p of partitions) {
      const target = (await statusOf(c.urls[(await leaderOf(c.urls, p)) - 1]!, p)).committed;
      await waitFor(
        `node ${firstLeader} to catch up on partition ${p}`,
        async () => {
          const all = await Promise.all(c.urls.map((u) => statusOf(u, p)));
          return all.every((s) => s.applied >= target) ? true : undefined;
        },
        60_000,
      );
      const trees = await Promise.all(
        [1, 2, 3].map((n) => treeDigest(join(partitionDir(join(c.dataDir, `node-${n}`), p), 'state'))),
      );
      expect(Object.keys(trees[0]!).length).toBeGreaterThan(500);
      expect(trees[1]).toEqual(trees[0]);
      expect(trees[2]).toEqual(trees[0]);
    }
  });

  it('replaces a cut-off leader\u2019s uncommitted entries on disk once it rejoins', async () => {
    const c = await cluster(1, 7320, { faults: true });
    // Pin the WAL (as a sidecar does) so entries stay on disk to be inspected.
    for (const n of [1, 2, 3])
      await writeArchiverPosition(partitionDir(join(c.dataDir, `node-${n}`), '1'), 0);
    const oldLeader = await leaderOf(c.urls, '1');
    await writeMany(c.urls, ['1'], 20, 4, 'committed');
    const oldUrl = c.urls[oldLeader - 1]!;
    const oldDir = partitionDir(join(c.dataDir, `node-${oldLeader}`), '1');
    const committedBefore = (await readHardState(oldDir))!.commit;

    // Cut the leader off, then write to it: it appends, but can never commit.
    await fetch(`${oldUrl}/v1/faults`, { method: 'POST', body: JSON.stringify({ isolate: true }) });
    await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        fetch(`${oldUrl}/v1/partitions/1/transactions`, {
          method: 'POST',
          body: JSON.stringify({
            operations: [{ setKey: { key: Buffer.from(`lost-${i}`).toString('base64'), value: '' } }],
          }),
          signal: AbortSignal.timeout(300),
        }).catch(() => undefined),
      ),
    );
    const uncommitted = await waitFor('uncommitted entries on the cut-off leader', async () => {
      const hs = (await readHardState(oldDir))!;
      const above = (await listEntryLsns(oldDir)).filter((l) => l > hs.commit);
      return above.length >= 5 ? above : undefined;
    });
    expect(uncommitted[0]).toBe(committedBefore + 1);
    const oldTerm = decodeRaftEntry(await readFile(join(entryDir(oldDir, uncommitted[0]!), RAFT_FILE))).term;

    // The others elect a new leader and commit different entries at those LSNs.
    const others = c.urls.filter((u) => u !== oldUrl);
    const newLeader = await leaderOf(others, '1', [oldLeader]);
    await writeMany(others, ['1'], 30, 4, 'winner');
    const newDir = partitionDir(join(c.dataDir, `node-${newLeader}`), '1');

    await fetch(`${oldUrl}/v1/faults`, { method: 'POST', body: JSON.stringify({ isolate: false }) });
    const target = (await statusOf(others[0]!, '1')).committed;
    await waitFor(
      'the old leader to catch up',
      async () => ((await statusOf(oldUrl, '1')).applied >= target ? true : undefined),
      30_000,
    );

    for (const lsn of uncommitted) {
      const [mine, theirs] = await Promise.all([
        readFile(join(entryDir(oldDir, lsn), RAFT_FILE)),
        readFile(join(entryDir(newDir, lsn), RAFT_FILE)),
      ]);
      expect(mine.equals(theirs), `RAFT at LSN ${lsn} equals the new leader's`).toBe(true);
      expect(decodeRaftEntry(mine).term).toBeGreaterThan(oldTerm);
    }
    expect(await treeDigest(join(oldDir, 'state'))).toEqual(await treeDigest(join(newDir, 'state')));
  });
});
