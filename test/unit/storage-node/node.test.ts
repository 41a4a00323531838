import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startSingleNode } from '../../helpers/single-node.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

interface Family {
  type: string;
  samples: Array<{ name: string; labels: string; value: number }>;
}

/** Parses the Prometheus text exposition into families by name, checking every line's shape. */
function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ')) continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      expect(families.has(type[1]!), `${type[1]} declared twice`).toBe(false);
      families.set(type[1]!, { type: type[2]!, samples: [] });
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    expect(sample, `malformed line: ${line}`).not.toBeNull();
    const name = sample![1]!;
    const family = families.get(name) ?? families.get(name.replace(/_(bucket|sum|count)$/, '')) ?? undefined;
    expect(family, `${name} has no # TYPE`).toBeDefined();
    family!.samples.push({ name, labels: sample![2] ?? '', value: Number(sample![3]) });
  }
  return families;
}

describe('StorageNode /metrics', () => {
  it('declares every _total metric a counter, and only counters end in _total; counters never go down', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'storage-node-metrics-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const node = await startSingleNode(dataDir);
    cleanups.push(() => node.stop());
    const scrape = async () => parseExposition(await (await fetch(`${node.url}/metrics`)).text());

    // A single-voter partition elects itself: the elections counter has something to count.
    let first!: Map<string, Family>;
    for (const deadline = Date.now() + 20_000; ;) {
      first = await scrape();
      const elections = first.get('storage_node_partition_elections_total');
      if (elections && elections.samples.length === 2 && elections.samples.every((s) => s.value >= 1)) break;
      if (Date.now() > deadline) throw new Error('no election counted within 20 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(first.size).toBeGreaterThan(5);
    for (const [name, family] of first) {
      expect(family.type === 'counter', `${name} is a ${family.type}`).toBe(name.endsWith('_total'));
    }
    const second = await scrape();
    for (const [name, family] of second) {
      if (family.type !== 'counter') continue;
      for (const s of family.samples) {
        const before = first.get(name)?.samples.find((b) => b.labels === s.labels);
        if (before) expect(s.value, `${name}${s.labels}`).toBeGreaterThanOrEqual(before.value);
      }
    }
    expect(second.get('storage_node_partition_elections_total')!.samples).toEqual(
      first.get('storage_node_partition_elections_total')!.samples,
    );
  });
});
