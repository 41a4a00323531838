import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { commit, makeEntry, writeWalEntry } from '../../../../bench/harness.js';
import { DEFAULT_ARCHIVER_CONFIG } from '../../../../src/pipeline/partition-archiver.js';
import { CommitWatcher, TRAILING_CHECK_MS } from '../../../../src/tail/watch.js';
import { archivedThrough, archiverRig, eventually } from './rig.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const AGE_MS = 300;
/** Reading, packing and recording one small segment in a folder store, on a busy machine. */
const RECORD_MS = 1_500;

describe('a burst of commits', () => {
  it('is archived through its last commit within the segment age, burst after burst', async () => {
    const config = { segmentMaxAgeMs: AGE_MS, idlePollMs: DEFAULT_ARCHIVER_CONFIG.idlePollMs };
    // Only a commit notification can wake the archive loop in time: its idle poll is far longer.
    const within = config.segmentMaxAgeMs + TRAILING_CHECK_MS + RECORD_MS;
    expect(within * 10).toBeLessThan(config.idlePollMs);
    const rig = await archiverRig(cleanups, 'commit-burst');
    await commit(rig.dir, 1, 0);
    // As the sidecar wires them: notifications from the watcher wake the partition's archiver.
    const { archiver } = rig.make(config);
    const watcher = new CommitWatcher(dirname(dirname(rig.dir)), () => archiver.notify());
    cleanups.push(() => watcher.close());
    watcher.add('1');
    archiver.start();
    let lsn = 0;
    for (let burst = 1; burst <= 3; burst++) {
      // As the node commits under load: each entry, then the hard state naming it, back to back.
      for (let i = 0; i < 30; i++) {
        lsn++;
        await writeWalEntry(rig.dir, lsn, makeEntry(lsn, 1, randomBytes(256), Date.now()));
        await commit(rig.dir, 1, lsn);
      }
      const last = lsn;
      expect(
        await eventually(async () => (await archivedThrough(rig.store)) >= last, within),
        `burst ${burst}`,
      ).toBe(true);
    }
  });
});
