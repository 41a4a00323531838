import { describe, expect, it } from 'vitest';
import {
  figure,
  formatNumber,
  formatReport,
  meets,
  ratioOf,
  renderSvg,
  renderTable,
  targetScore,
} from '../../../bench/report.js';

/** The small workload's throughput against a per-entry baseline of 100, held to 20 times it. */
const smallThroughput = (value: number) =>
  figure({
    workload: 'small',
    name: 'throughput',
    value,
    unit: 'entries/s',
    better: 'higher',
    baseline: { name: 'per-entry', value: 100 },
    target: { of: 'ratio', op: '>=', value: 20 },
  });

/** The many workload's idle CPU, held to 2 % of a core. */
const idleCpu = (value: number) =>
  figure({
    workload: 'many',
    name: 'idle CPU',
    value,
    unit: '% of a core',
    better: 'lower',
    target: { of: 'value', op: '<=', value: 2 },
  });

describe('ratioOf', () => {
  it('is value over baseline when higher is better', () => {
    expect(ratioOf(2000, 100, 'higher')).toBe(20);
  });

  it('is baseline over value when lower is better, so above 1 is still better', () => {
    expect(ratioOf(0.5, 2, 'lower')).toBe(4);
    expect(ratioOf(4, 2, 'lower')).toBe(0.5);
  });

  it('is null without a usable baseline', () => {
    expect(ratioOf(10, undefined, 'higher')).toBeNull();
    expect(ratioOf(10, 0, 'higher')).toBeNull();
    expect(ratioOf(0, 10, 'lower')).toBeNull();
    expect(ratioOf(Number.NaN, 10, 'higher')).toBeNull();
  });
});

describe('targets', () => {
  it('judges a ratio target on the ratio, not on the value', () => {
    const f = smallThroughput(1900);
    expect(f.ratio).toBe(19);
    expect(f.met).toBe(false);
    expect(targetScore(f)).toBeCloseTo(0.95);
  });

  it('judges a value target on the value, at the boundary inclusive', () => {
    const f = figure({
      workload: 'steady',
      name: 'p99',
      value: 1,
      unit: 's',
      better: 'lower',
      target: { of: 'value', op: '<=', value: 1 },
    });
    expect(f.met).toBe(true);
    expect(f.ratio).toBeNull();
    expect(targetScore({ ...f, value: 4 })).toBe(0.25);
  });

  it('cannot judge a ratio target without a baseline', () => {
    expect(meets({ of: 'ratio', op: '>=', value: 1 }, null)).toBeNull();
    const f = figure({
      workload: 'x',
      name: 'y',
      value: 5,
      unit: 'MB/s',
      better: 'higher',
      target: { of: 'ratio', op: '>=', value: 0.8 },
    });
    expect(f.met).toBeNull();
  });
});

describe('the table', () => {
  it('formats numbers to about three significant digits', () => {
    expect(formatNumber(123456.7)).toBe('123,457');
    expect(formatNumber(42.345)).toBe('42.3');
    expect(formatNumber(1.2345)).toBe('1.23');
    expect(formatNumber(0.012345)).toBe('0.012');
    expect(formatNumber(0)).toBe('0');
  });

  it('pads columns to the widest cell', () => {
    expect(renderTable(['a', 'bb'], [['xxx', 'y']])).toBe('a    bb\n---  --\nxxx  y\n');
  });

  it('prints every figure with its baseline, ratio, target and result', () => {
    const out = formatReport([
      figure({
        workload: 'large',
        name: 'throughput',
        value: 80,
        unit: 'MB/s',
        better: 'higher',
        baseline: { name: 'raw PUT ceiling', value: 100 },
        target: { of: 'ratio', op: '>=', value: 0.8 },
      }),
      idleCpu(3),
    ]);
    const lines = out.trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[2]).toMatch(
      /^large\s+throughput\s+80\.0 MB\/s\s+raw PUT ceiling\s+100 MB\/s\s+0\.80x\s+>= 0\.80x\s+met$/,
    );
    expect(lines[3]).toMatch(
      /^many\s+idle CPU\s+3\.00 % of a core\s+-\s+-\s+-\s+<= 2\.00 % of a core\s+MISSED$/,
    );
  });
});

describe('the chart', () => {
  const figures = [
    smallThroughput(3000),
    idleCpu(4),
    figure({ workload: 'many', name: 'no target, no baseline', value: 1, unit: 's', better: 'lower' }),
  ];

  it('draws one bar per figure with a target or a baseline, coloured by the target', () => {
    const svg = renderSvg(figures, { title: 'bench <quick>' });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('bench &#60;quick&#62;');
    const bars = [
      ...svg.matchAll(/<rect x="[^"]+" y="[^"]+" width="[^"]+" height="[^"]+" fill="(#[0-9a-f]+)"/g),
    ];
    expect(bars.map((m) => m[1])).toEqual(['#2a9d4b', '#d33b2c']);
    expect(svg).toContain('small: throughput');
    expect(svg).not.toContain('no target, no baseline');
  });

  it('draws a met target to the right of the target line and a missed one to the left', () => {
    const svg = renderSvg(figures, { title: 't' });
    const line = /<line x1="([\d.]+)"[^>]*stroke="#000"/.exec(svg);
    const bars = [...svg.matchAll(/<rect x="([\d.]+)" y="[^"]+" width="([\d.]+)"[^>]*fill="(#[0-9a-f]+)"/g)];
    const at = Number(line![1]);
    const met = bars.find((b) => b[3] === '#2a9d4b')!;
    const missed = bars.find((b) => b[3] === '#d33b2c')!;
    expect(Number(met[1])).toBeCloseTo(at);
    expect(Number(missed[1]) + Number(missed[2])).toBeCloseTo(at);
  });
});
