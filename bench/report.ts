/**
 * Benchmark figures and how they are shown: the ratio to a baseline, whether
 * a target is met, the table printed on stdout and the SVG chart. Pure
 * functions, no I/O (unit-tested in test/unit/bench/report.test.ts).
 */

export type Better = 'higher' | 'lower';

export interface Target {
  /** What the target bounds: the ratio to the baseline, or the measured value itself. */
  of: 'ratio' | 'value';
  op: '>=' | '<=';
  value: number;
}

export interface FigureInput {
  workload: string;
  name: string;
  value: number;
  unit: string;
  better: Better;
  baseline?: { name: string; value: number };
  target?: Target;
  note?: string;
}

/** One figure: what was measured, in which unit, which way is better, and optionally its baseline, target and note. */
export function measured(
  workload: string,
  name: string,
  value: number,
  unit: string,
  better: Better,
  more: Pick<FigureInput, 'baseline' | 'target' | 'note'> = {},
): FigureInput {
  return { workload, name, value, unit, better, ...more };
}

export interface Figure extends FigureInput {
  /** How many times better than the baseline (>1: better), when there is a baseline. */
  ratio: number | null;
  /** Whether the target is met; null without a target or without the number it bounds. */
  met: boolean | null;
}

/**
 * value / baseline when higher is better, baseline / value when lower is
 * better: either way, above 1 means better than the baseline. Null when
 * either number is missing, zero or not finite.
 */
export function ratioOf(value: number, baseline: number | undefined, better: Better): number | null {
  if (baseline === undefined || !Number.isFinite(value) || !Number.isFinite(baseline)) return null;
  if (value <= 0 || baseline <= 0) return null;
  return better === 'higher' ? value / baseline : baseline / value;
}

export function meets(target: Target, value: number | null): boolean | null {
  if (value === null || !Number.isFinite(value)) return null;
  return target.op === '>=' ? value >= target.value : value <= target.value;
}

export function figure(input: FigureInput): Figure {
  const ratio = ratioOf(input.value, input.baseline?.value, input.better);
  const bound = input.target?.of === 'ratio' ? ratio : input.value;
  return { ...input, ratio, met: input.target ? meets(input.target, bound) : null };
}

/** A number with about three significant digits and thousands separators. */
export function formatNumber(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const abs = Math.abs(n);
  if (abs >= 100) return Math.round(n).toLocaleString('en-US');
  if (abs >= 10) return n.toFixed(1);
  if (abs >= 1) return n.toFixed(2);
  if (abs === 0) return '0';
  return n.toPrecision(2);
}

export function formatRatio(r: number | null): string {
  return r === null ? '-' : `${formatNumber(r)}x`;
}

export function formatTarget(t: Target | undefined, unit: string): string {
  if (!t) return '-';
  return t.of === 'ratio' ? `${t.op} ${formatNumber(t.value)}x` : `${t.op} ${formatNumber(t.value)} ${unit}`;
}

function formatMet(met: boolean | null, hasTarget: boolean): string {
  if (!hasTarget) return '';
  return met === null ? 'n/a' : met ? 'met' : 'MISSED';
}

export const TABLE_HEADER = [
  'workload',
  'figure',
  'value',
  'baseline',
  'baseline value',
  'ratio',
  'target',
  'result',
] as const;

export function tableRows(figures: readonly Figure[]): string[][] {
  return figures.map((f) => [
    f.workload,
    f.name,
    `${formatNumber(f.value)} ${f.unit}`,
    f.baseline?.name ?? '-',
    f.baseline ? `${formatNumber(f.baseline.value)} ${f.unit}` : '-',
    formatRatio(f.ratio),
    formatTarget(f.target, f.unit),
    formatMet(f.met, f.target !== undefined),
  ]);
}

/** A plain-text table, columns padded to their widest cell. */
export function renderTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n') + '\n';
}

export function formatReport(figures: readonly Figure[]): string {
  return renderTable(TABLE_HEADER, tableRows(figures));
}

/**
 * How far a figure is from its target, as a factor where 1 is exactly on
 * target and above 1 is better: measured / target for a lower bound, target /
 * measured for an upper bound. Null without a target or a number.
 */
export function targetScore(f: Figure): number | null {
  if (!f.target) return null;
  const v = f.target.of === 'ratio' ? f.ratio : f.value;
  if (v === null || !Number.isFinite(v) || v <= 0 || f.target.value <= 0) return null;
  return f.target.op === '>=' ? v / f.target.value : f.target.value / v;
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export interface ChartOptions {
  title: string;
  subtitle?: string;
}

const LOG_MIN = -2;
const LOG_MAX = 2;

/**
 * A horizontal bar chart on a log scale: one bar per figure that has a
 * target or a baseline. Targeted figures show their distance to the target
 * (the line at 1 is the target: green past it, red short of it); the others
 * show their ratio to the baseline (grey). Each bar is labelled with the
 * measured value, the baseline and the target as printed in the table.
 */
export function renderSvg(figures: readonly Figure[], options: ChartOptions): string {
  const rows = figures
    .map((f) => ({ f, score: targetScore(f), ratio: f.ratio }))
    .filter((r) => r.score !== null || r.ratio !== null);
  const rowH = 30;
  const labelW = 260;
  const plotW = 420;
  const textW = 420;
  const top = 70;
  const width = labelW + plotW + textW + 20;
  const height = top + rows.length * rowH + 50;
  const x = (factor: number) => {
    const l = Math.min(LOG_MAX, Math.max(LOG_MIN, Math.log10(factor)));
    return labelW + ((l - LOG_MIN) / (LOG_MAX - LOG_MIN)) * plotW;
  };
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="10" y="22" font-size="16" font-weight="bold">${escapeXml(options.title)}</text>`,
  );
  if (options.subtitle) out.push(`<text x="10" y="40" fill="#555">${escapeXml(options.subtitle)}</text>`);
  out.push(
    `<text x="${labelW}" y="${top - 8}" fill="#555">bar: measured / target (coloured) or ratio to baseline (grey), log scale; the line at 1 is the target or the baseline</text>`,
  );
  for (let l = LOG_MIN; l <= LOG_MAX; l++) {
    const gx = x(10 ** l);
    out.push(
      `<line x1="${gx}" y1="${top}" x2="${gx}" y2="${top + rows.length * rowH}" stroke="${l === 0 ? '#000' : '#ddd'}" stroke-width="${l === 0 ? 1.5 : 1}"/>`,
      `<text x="${gx}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#555">${formatNumber(10 ** l)}</text>`,
    );
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const factor = r.score ?? r.ratio!;
    const colour = r.score === null ? '#999' : r.score >= 1 ? '#2a9d4b' : '#d33b2c';
    const x0 = x(1);
    const x1 = x(factor);
    const label = `${r.f.workload}: ${r.f.name}`;
    const detail =
      `${formatNumber(r.f.value)} ${r.f.unit}` +
      (r.f.baseline ? `, ${formatRatio(r.f.ratio)} ${r.f.baseline.name}` : '') +
      (r.f.target ? ` (target ${formatTarget(r.f.target, r.f.unit)}: ${r.f.met ? 'met' : 'missed'})` : '');
    out.push(
      `<text x="${labelW - 8}" y="${y + 19}" text-anchor="end">${escapeXml(label)}</text>`,
      `<rect x="${Math.min(x0, x1)}" y="${y + 6}" width="${Math.max(1, Math.abs(x1 - x0))}" height="${rowH - 12}" fill="${colour}"/>`,
      `<text x="${labelW + plotW + 8}" y="${y + 19}" fill="#222">${escapeXml(detail)}</text>`,
    );
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
