import { describe, expect, it } from 'vitest';
import { HelpRequested, UsageError } from '../../../contract/cli/flags.js';
import { loadCommand, parseLoadFlags } from '../../../storage-node/load.js';
import { captureContext } from '../../helpers/cli-context.js';

const base = ['--node-url', 'http://127.0.0.1:7101', '--rate', '50', '--size', '4KiB'];

describe('load flags', () => {
  it('parses the documented flags with their defaults', () => {
    const o = parseLoadFlags([...base, '--seed', '7']);
    expect(o).toEqual({
      nodeUrls: ['http://127.0.0.1:7101'],
      rate: 50,
      size: 4096,
      partitions: 'all',
      durationMs: 30_000,
      count: undefined,
      git: false,
      repositoriesPerPartition: 1,
      record: undefined,
      seed: 7,
      maxInFlight: 32,
      requestTimeoutMs: 10_000,
      attempts: 10,
    });
  });

  it('takes lists, fractions, git mode, and a count instead of the default duration', () => {
    const o = parseLoadFlags([
      '--node-url',
      'http://a:1/,http://b:2',
      '--rate',
      '0.5',
      '--size',
      '100',
      '--partitions',
      '1,3',
      '--count',
      '10',
      '--git',
      '--repositories-per-partition',
      '4',
      '--record',
      '/tmp/r.jsonl',
    ]);
    expect(o).toMatchObject({
      nodeUrls: ['http://a:1', 'http://b:2'],
      rate: 0.5,
      partitions: ['1', '3'],
      count: 10,
      durationMs: undefined,
      git: true,
      repositoriesPerPartition: 4,
      record: '/tmp/r.jsonl',
    });
    expect(typeof o.seed).toBe('number');
    expect(parseLoadFlags([...base, '--count', '5', '--duration', '2s'])).toMatchObject({
      count: 5,
      durationMs: 2000,
    });
    expect(parseLoadFlags([...base, '--duration', '0']).durationMs).toBe(0);
  });

  it.each([
    [['--rate', '5', '--size', '1'], /missing required flag --node-url/],
    [['--node-url', 'http://x', '--size', '1'], /missing required flag --rate/],
    [['--node-url', 'http://x', '--rate', '1'], /missing required flag --size/],
    [['--node-url', 'ftp://x', '--rate', '1', '--size', '1'], /http:\/\/ or https:\/\//],
    [['--node-url', 'not a url', '--rate', '1', '--size', '1'], /is not a URL/],
    [['--node-url', ',', '--rate', '1', '--size', '1'], /at least one URL/],
    [['--node-url', 'http://x', '--rate', '0', '--size', '1'], /--rate: must be a number/],
    [['--node-url', 'http://x', '--rate', '-3', '--size', '1'], /flag --rate needs a value|--rate: must be/],
    [['--node-url', 'http://x', '--rate', 'fast', '--size', '1'], /--rate: must be a number/],
    [['--node-url', 'http://x', '--rate', '1e9', '--size', '1'], /--rate: must be a number/],
    [['--node-url', 'http://x', '--rate', '1', '--size', '0'], /at least 1/],
    [['--node-url', 'http://x', '--rate', '1', '--size', '1TB'], /--size/],
    [['--node-url', 'http://x', '--rate', '1', '--size', '65MiB'], /at most/],
    [[...base, '--partitions', 'all,1'], /all cannot be combined/],
    [[...base, '--partitions', '1,1'], /listed twice/],
    [[...base, '--partitions', '../1'], /not a partition ID/],
    [[...base, '--partitions', ','], /at least one partition/],
    [[...base, '--duration', 'soon'], /--duration/],
    [[...base, '--count', '0'], /at least 1/],
    [[...base, '--repositories-per-partition', '0'], /at least 1/],
    [[...base, '--max-in-flight', '0'], /at least 1/],
    [[...base, '--git', 'maybe'], /true or false/],
    [[...base, '--record', ''], /must not be empty/],
    [[...base, '--seed', 'x'], /whole number/],
    [[...base, '--nodes', '3'], /unknown flag --nodes/],
  ])('%j is a usage error', (argv, message) => {
    expect(() => parseLoadFlags(argv)).toThrow(UsageError);
    expect(() => parseLoadFlags(argv)).toThrow(message);
  });

  it('--help prints the usage', () => {
    expect(() => parseLoadFlags(['--help'])).toThrow(HelpRequested);
  });

  it('the command refuses bad flags before contacting anything', async () => {
    const { ctx } = captureContext();
    await expect(loadCommand.run([...base, '--rate', '2'], ctx)).rejects.toThrow(/given twice/);
    await expect(loadCommand.run(['--rate', '0'], ctx)).rejects.toBeInstanceOf(UsageError);
  });
});
