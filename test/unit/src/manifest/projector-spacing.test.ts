import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../../contract/log.js';
import { readGlobalManifest } from '../../../../src/manifest/global-manifest.js';
import { GlobalManifestProjector } from '../../../../src/manifest/projector.js';
import { MemoryStore } from '../../../helpers/memory-store.js';
import { HandBus } from './buses.js';
import { archivedEvent, backupEvent, leadershipEvent } from './fixtures.js';

async function run(minWriteIntervalMs: number) {
  const store = new MemoryStore();
  const bus = new HandBus();
  const projector = new GlobalManifestProjector({ store, bus, logger: silentLogger, minWriteIntervalMs });
  await projector.start();
  const t0 = performance.now();
  await bus.deliver('archived', [{ ...archivedEvent('1', 1, 10) }]);
  const first = performance.now() - t0;
  // Three topics' batches arrive while the first write is recent: one write folds them all.
  await Promise.all([
    bus.deliver('archived', [{ ...archivedEvent('1', 11, 20) }]),
    bus.deliver('backups', [{ ...backupEvent('1', 15) }]),
    bus.deliver('leadership', [{ ...leadershipEvent('2', 3, 2, { node: 2 }) }]),
  ]);
  const second = performance.now() - t0;
  await projector.stop();
  return { store, first, second, writes: projector.stats.writes };
}

describe('GlobalManifestProjector write spacing', () => {
  it('folds what arrives within the interval into one write, and loses none of it', async () => {
    const { store, first, second, writes } = await run(400);
    expect(first).toBeLessThan(300);
    expect(second).toBeGreaterThanOrEqual(390);
    expect(writes).toBe(2);
    const m = (await readGlobalManifest(store))!.value;
    expect(m.version).toBe(2);
    expect(m.partitions['1']).toMatchObject({ archived_lsn: 20, latest_backup: { lsn: 15 } });
    expect(m.partitions['2']?.leader).toEqual({ node: 2, term: 3 });
  });

  it('writes each batch at once with an interval of 0', async () => {
    const { second, writes } = await run(0);
    expect(second).toBeLessThan(300);
    expect(writes).toBeGreaterThanOrEqual(2);
  });

  it('refuses a negative interval', () => {
    expect(
      () =>
        new GlobalManifestProjector({
          store: new MemoryStore(),
          bus: new HandBus(),
          minWriteIntervalMs: -1,
        }),
    ).toThrow(/minWriteIntervalMs/);
  });
});
