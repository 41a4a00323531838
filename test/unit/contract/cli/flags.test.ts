import { describe, expect, it } from 'vitest';
import {
  HelpRequested,
  parseBytes,
  parseDuration,
  parseFlags,
  UsageError,
} from '../../../../contract/cli/flags.js';

const specs = {
  'data-dir': { type: 'string', help: 'data directory', required: true },
  'metrics-port': { type: 'int', help: 'port', min: 0, max: 65535, default: 9187 },
  'segment-age': { type: 'duration', help: 'age', default: 1000 },
  'segment-size': { type: 'bytes', help: 'size', env: 'SEG_SIZE' },
  json: { type: 'bool', help: 'json output', default: false },
  peers: { type: 'list', help: 'peers' },
} as const;
const help = { usage: 'x run', description: 'test' };

describe('parseFlags', () => {
  it('parses every form and applies defaults', () => {
    const f = parseFlags(
      ['--data-dir', '/d', '--segment-age=5s', '--json', '--peers', '1=a, 2=b'],
      specs,
      help,
      {},
    );
    expect(f).toEqual({
      'data-dir': '/d',
      'metrics-port': 9187,
      'segment-age': 5000,
      json: true,
      peers: ['1=a', '2=b'],
    });
  });

  it('reads the environment when the flag is absent, the flag wins when both are given', () => {
    expect(parseFlags(['--data-dir', 'd'], specs, help, { SEG_SIZE: '8MiB' })['segment-size']).toBe(
      8 * 1024 * 1024,
    );
    expect(
      parseFlags(['--data-dir', 'd', '--segment-size', '1k'], specs, help, { SEG_SIZE: '8MiB' })[
        'segment-size'
      ],
    ).toBe(1024);
  });

  it.each([
    [['--nope'], /unknown flag --nope/],
    [[], /missing required flag --data-dir/],
    [['--data-dir'], /--data-dir needs a value/],
    [['--data-dir', 'd', '--metrics-port', 'x'], /must be a whole number/],
    [['--data-dir', 'd', '--metrics-port', '70000'], /at most 65535/],
    [['--data-dir', 'd', '--segment-age', '5 parsecs'], /must be a duration/],
    [['--data-dir', 'd', '--json=maybe'], /true or false/],
    [['--data-dir', 'd', '--data-dir', 'e'], /given twice/],
    [['stray'], /unexpected argument "stray"/],
  ])('refuses %j with one clear line', (argv, message) => {
    let caught: unknown;
    try {
      parseFlags(argv, specs, help, {});
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(UsageError);
    expect((caught as Error).message).toMatch(message);
    expect((caught as Error).message).not.toContain('\n');
  });

  it('names a bad environment variable', () => {
    expect(() => parseFlags(['--data-dir', 'd'], specs, help, { SEG_SIZE: 'lots' })).toThrow(
      /SEG_SIZE: must be a size/,
    );
  });

  it('--help lists every flag', () => {
    let caught: unknown;
    try {
      parseFlags(['--help'], specs, help, {});
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(HelpRequested);
    for (const name of Object.keys(specs)) expect((caught as HelpRequested).text).toContain(`--${name}`);
  });
});

describe('units', () => {
  it.each([
    ['250', 250],
    ['250ms', 250],
    ['2s', 2000],
    ['1.5m', 90_000],
    ['1h', 3_600_000],
    ['7d', 604_800_000],
  ])('duration %s', (text, ms) => expect(parseDuration(text)).toBe(ms));
  it.each([
    ['4096', 4096],
    ['64KiB', 65536],
    ['8MiB', 8388608],
    ['1g', 1073741824],
  ])('bytes %s', (text, n) => expect(parseBytes(text)).toBe(n));
  it('rejects junk', () => {
    expect(parseDuration('soon')).toBeUndefined();
    expect(parseBytes('8 parsecs')).toBeUndefined();
  });
});
