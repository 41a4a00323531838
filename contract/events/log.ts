/**
 * The event bus's default logger: the project's structured logger with
 * `component: event-bus`, errors only unless `WAL_ARCHIVER_LOG_LEVEL` (debug,
 * info, warn, error, silent) says otherwise — the bus is a library, quiet by
 * default. Callers that have a logger of their own pass it in the bus options.
 */

import { createLogger, type Logger, type LogLevel } from '../log.js';

const LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];

function envLevel(): LogLevel {
  const v = (process.env.WAL_ARCHIVER_LOG_LEVEL ?? '').toLowerCase() as LogLevel;
  return LEVELS.includes(v) ? v : 'error';
}

/** The logger a bus uses when it was given none. */
export function defaultBusLogger(level: LogLevel = envLevel()): Logger {
  return createLogger({ component: 'event-bus' }, { level });
}
