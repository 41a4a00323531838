import { describe, expect, it } from 'vitest';
import { LocalCluster, parseClusterFlags } from '../../../storage-node/cluster.js';

describe('storage-node cluster --archiver', () => {
  const base = ['--partitions', '2', '--data-dir', '/tmp/cluster-flags'];

  it('keeps the WAL for sidecars by default and passes --archiver=false on to every node', () => {
    expect(parseClusterFlags(base).archiver).toBeUndefined();
    const options = parseClusterFlags([...base, '--archiver=false']);
    expect(options.archiver).toBe(false);
    const args = (c: LocalCluster) => c.nodes.map((n) => (n as unknown as { args: string[] }).args);
    for (const a of args(new LocalCluster(options))) expect(a).toContain('--archiver=false');
    for (const a of args(new LocalCluster(parseClusterFlags(base))))
      expect(a.join(' ')).not.toMatch(/archiver/);
  });

  it('refuses a value that is not a boolean in one line', () => {
    expect(() => parseClusterFlags([...base, '--archiver=maybe'])).toThrow(
      /^flag --archiver: must be true or false/,
    );
  });
});
