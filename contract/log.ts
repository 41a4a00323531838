/**
 * Structured JSON logs, one object per line on stderr, for machines:
 * `{"time":…,"level":"info","msg":"…","component":"pipeline","partition":"3","lsn":42}`.
 * The level comes from WAL_ARCHIVER_LOG_LEVEL (debug, info, warn, error, silent).
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

export interface LoggerOptions {
  level?: LogLevel;
  write?: (line: string) => void;
  now?: () => Date;
}

function levelFromEnv(): LogLevel {
  const v = process.env.WAL_ARCHIVER_LOG_LEVEL;
  return v && v in ORDER ? (v as LogLevel) : 'info';
}

function errorFields(value: unknown): unknown {
  if (value instanceof Error) {
    const out: Record<string, unknown> = { message: value.message };
    const code = (value as { code?: unknown }).code;
    if (code !== undefined) out.code = code;
    if (value.cause !== undefined) out.cause = errorFields(value.cause);
    return out;
  }
  return value;
}

export function createLogger(base: Record<string, unknown> = {}, options: LoggerOptions = {}): Logger {
  const threshold = ORDER[options.level ?? levelFromEnv()];
  const write = options.write ?? ((line: string) => process.stderr.write(line));
  const now = options.now ?? (() => new Date());
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < threshold) return;
    const record: Record<string, unknown> = { time: now().toISOString(), level, msg, ...base };
    if (fields) for (const [k, v] of Object.entries(fields)) record[k] = errorFields(v);
    write(`${JSON.stringify(record)}\n`);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (fields) => createLogger({ ...base, ...fields }, options),
  };
}

/** A logger that drops everything (tests, library defaults). */
export const silentLogger: Logger = createLogger({}, { level: 'silent' });
