import { afterEach, describe, expect, it } from 'vitest';
import { setDurableObserver } from '../../../../contract/fs/durable-fs.js';
import { archivedThrough, archiverRig, counterValue, eventually, writeEntries } from '../pipeline/rig.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  setDurableObserver(undefined);
  while (cleanups.length) await cleanups.pop()!();
});

function enospc(path: string): Error {
  return Object.assign(new Error(`ENOSPC: no space left on device, write '${path}'`), {
    code: 'ENOSPC',
    errno: -28,
  });
}

describe('a full spool disk', () => {
  it('is retried with backoff and counted, never a corrupt partition; archiving resumes when space returns', async () => {
    const rig = await archiverRig(cleanups, 'spool-full');
    // 1 small entry, then one whose file (2 MiB, above the inline limit) is streamed into the spool.
    await writeEntries(rig.dir, 1, 1);
    await writeEntries(rig.dir, 2, 2, 2 * 1024 * 1024);
    let full = true;
    let refused = 0;
    setDurableObserver({
      before(e) {
        if (full && e.path.startsWith(rig.spoolDir) && (e.op === 'write' || e.op === 'create')) {
          refused++;
          throw enospc(e.path);
        }
      },
    });
    const { archiver, metrics } = rig.make();
    archiver.start();
    expect(
      await eventually(async () => (await counterValue(metrics.errors, { kind: 'spool' })) >= 2, 10_000),
    ).toBe(true);
    expect(refused).toBeGreaterThan(0);
    expect(archiver.state).not.toBe('failed');
    expect(await counterValue(metrics.stopped, {})).toBe(0);
    expect(await counterValue(metrics.errors, { kind: 'corrupt' })).toBe(0);
    expect(await counterValue(metrics.retries, { operation: 'archive' })).toBeGreaterThan(0);
    expect(await archivedThrough(rig.store)).toBe(0);

    full = false;
    // The backoff after two failures is at most 1 s; give it a few of them.
    expect(await eventually(async () => (await archivedThrough(rig.store)) >= 2, 10_000)).toBe(true);
    expect(archiver.state).toBe('archiving');
  });
});
