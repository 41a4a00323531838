/**
 * The event bus's quiet structured logging: one JSON line per record on
 * stderr, errors only unless `WAL_ARCHIVER_LOG_LEVEL` (debug, info, warn,
 * error, silent) says otherwise. Callers that have a logger of their own pass
 * it in the bus options instead.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export type BusLogger = (level: LogLevel, message: string, fields?: Record<string, unknown>) => void;

const LEVEL_RANK: Record<LogLevel | 'silent', number> = {
  debug: 10,
  info: 20,
  warn: 30,
  error: 40,
  silent: 100,
};

function envLevel(): LogLevel | 'silent' {
  const v = (process.env.WAL_ARCHIVER_LOG_LEVEL ?? '').toLowerCase();
  return v in LEVEL_RANK ? (v as LogLevel | 'silent') : 'error';
}

export function stderrLogger(minLevel: LogLevel | 'silent' = envLevel()): BusLogger {
  const min = LEVEL_RANK[minLevel];
  return (level, message, fields) => {
    if (LEVEL_RANK[level] < min) return;
    const line = JSON.stringify({
      time: new Date().toISOString(),
      level,
      component: 'event-bus',
      message,
      ...fields,
    });
    process.stderr.write(`${line}\n`);
  };
}
