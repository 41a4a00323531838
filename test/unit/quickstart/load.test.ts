import { describe, expect, it } from 'vitest';
import { quickstartLoadOptions } from '../../../quickstart/quickstart.js';
import { LOAD_DEFAULTS } from '../../../storage-node/load.js';

describe('quickstart workload', () => {
  it('has no duration of its own: it writes until the quickstart’s signal stops it', () => {
    const o = quickstartLoadOptions({ rate: 20, size: 4096 }, ['http://127.0.0.1:7101'], () => undefined, 7);
    // runLoad reads 0 as "until the signal"; inheriting LOAD_DEFAULTS stopped writing after 30 s.
    expect(LOAD_DEFAULTS.durationMs).toBeGreaterThan(0);
    expect(o.durationMs).toBe(0);
    expect(o).toMatchObject({ rate: 20, size: 4096, partitions: 'all', nodeUrls: ['http://127.0.0.1:7101'] });
  });
});
