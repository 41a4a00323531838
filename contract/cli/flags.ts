import { ErrorCodes, WalArchiverError } from '../errors.js';

/**
 * A small, strict flag parser shared by both command lines.
 *
 * Every flag is declared with its type, whether it is required, an optional
 * environment variable and default. Unknown flags, missing values, malformed
 * numbers/durations/sizes and missing required flags are usage errors
 * (exit 2, one line). Validation happens here, once, at start.
 */

export type FlagType = 'string' | 'int' | 'bool' | 'duration' | 'bytes' | 'list';

export interface FlagSpec {
  type: FlagType;
  help: string;
  /** Placeholder in the help text, e.g. URL. */
  value?: string;
  required?: boolean;
  /** Environment variable read when the flag is not given. */
  env?: string;
  default?: string | number | boolean | string[];
  /** Inclusive minimum for int/duration/bytes. */
  min?: number;
  max?: number;
}

export type FlagSpecs = Record<string, FlagSpec>;

type ValueOf<S extends FlagSpec> = S['type'] extends 'bool'
  ? boolean
  : S['type'] extends 'int' | 'duration' | 'bytes'
    ? number
    : S['type'] extends 'list'
      ? string[]
      : string;

export type ParsedFlags<S extends FlagSpecs> = {
  [K in keyof S]: S[K]['required'] extends true
    ? ValueOf<S[K]>
    : S[K]['default'] extends undefined
      ? ValueOf<S[K]> | undefined
      : ValueOf<S[K]>;
};

export class UsageError extends WalArchiverError {
  constructor(message: string) {
    super(ErrorCodes.INVALID_ARGUMENT, message, { retryable: false });
    this.name = 'UsageError';
  }
}

/** Thrown by parseFlags when --help is given; the caller prints `text` and exits 0. */
export class HelpRequested extends Error {
  constructor(readonly text: string) {
    super('help requested');
  }
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const BYTE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
};

/** "500ms", "2s", "5m", "1h", "7d"; a bare number is milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] ?? 'ms']!);
}

/** "4096", "64KiB", "8MiB", "1g". */
export function parseBytes(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  if (!m) return undefined;
  const unit = BYTE_UNITS[(m[2] ?? '').toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(m[1]) * unit);
}

function convert(
  name: string,
  spec: FlagSpec,
  raw: string,
  source: string,
): string | number | boolean | string[] {
  const bad = (what: string) => new UsageError(`${source} ${name}: ${what} (got "${raw}")`);
  let value: number;
  switch (spec.type) {
    case 'string':
      if (raw === '') throw bad('must not be empty');
      return raw;
    case 'list':
      return raw
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '');
    case 'bool':
      if (/^(true|1|yes)$/i.test(raw)) return true;
      if (/^(false|0|no)$/i.test(raw)) return false;
      throw bad('must be true or false');
    case 'int':
      if (!/^-?\d+$/.test(raw)) throw bad('must be a whole number');
      value = Number(raw);
      break;
    case 'duration': {
      const d = parseDuration(raw);
      if (d === undefined) throw bad('must be a duration such as 500ms, 2s, 5m, 1h');
      value = d;
      break;
    }
    case 'bytes': {
      const b = parseBytes(raw);
      if (b === undefined) throw bad('must be a size such as 4096, 64KiB, 8MiB');
      value = b;
      break;
    }
  }
  if (!Number.isSafeInteger(value)) throw bad('is out of range');
  if (spec.min !== undefined && value < spec.min) throw bad(`must be at least ${spec.min}`);
  if (spec.max !== undefined && value > spec.max) throw bad(`must be at most ${spec.max}`);
  return value;
}

export interface CommandHelp {
  usage: string;
  description: string;
}

export function formatHelp(help: CommandHelp, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([name, s]) => {
    const left = `  --${name}${s.type === 'bool' ? '' : ` ${s.value ?? s.type.toUpperCase()}`}`;
    const extra: string[] = [];
    if (s.required) extra.push('required');
    if (s.default !== undefined && s.default !== false) extra.push(`default ${String(s.default)}`);
    if (s.env) extra.push(`env ${s.env}`);
    return [left, `${s.help}${extra.length ? ` (${extra.join('; ')})` : ''}`] as const;
  });
  const width = Math.min(34, Math.max(...rows.map(([l]) => l.length), 0) + 2);
  const lines = rows.map(([l, r]) =>
    l.length + 2 > width ? `${l}\n${' '.repeat(width)}${r}` : l.padEnd(width) + r,
  );
  return `Usage: ${help.usage}\n\n${help.description}\n\nFlags:\n${lines.join('\n')}\n  --help${' '.repeat(Math.max(1, width - 8))}Show this help\n`;
}

/**
 * Parses `--name value`, `--name=value` and bare `--flag` for booleans.
 * Positional arguments are refused: every command here takes flags only.
 */
export function parseFlags<S extends FlagSpecs>(
  argv: readonly string[],
  specs: S,
  help: CommandHelp,
  env: NodeJS.ProcessEnv = process.env,
): ParsedFlags<S> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') throw new HelpRequested(formatHelp(help, specs));
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument "${arg}" (see --help)`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq === -1 ? undefined : eq);
    const spec = specs[name];
    if (!spec) throw new UsageError(`unknown flag --${name} (see --help)`);
    let raw: string;
    if (eq !== -1) raw = arg.slice(eq + 1);
    else if (spec.type === 'bool' && (argv[i + 1] === undefined || argv[i + 1]!.startsWith('--')))
      raw = 'true';
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`flag --${name} needs a value`);
      raw = next;
      i++;
    }
    if (name in out) throw new UsageError(`flag --${name} given twice`);
    out[name] = convert(`--${name}`, spec, raw, 'flag');
  }
  for (const [name, spec] of Object.entries(specs)) {
    if (name in out) continue;
    const fromEnv = spec.env ? env[spec.env] : undefined;
    if (fromEnv !== undefined && fromEnv !== '') {
      out[name] = convert(spec.env!, spec, fromEnv, 'environment variable');
    } else if (spec.default !== undefined) {
      out[name] = spec.default;
    } else if (spec.required) {
      throw new UsageError(
        `missing required flag --${name}${spec.env ? ` (or ${spec.env})` : ''} (see --help)`,
      );
    }
  }
  return out as ParsedFlags<S>;
}
