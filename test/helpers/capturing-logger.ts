import { createLogger, type Logger } from '../../contract/log.js';

/** A logger that keeps `<level> <message>` of each record, debug and up. */
export function capturingLogger(lines: string[]): Logger {
  return createLogger(
    {},
    {
      level: 'debug',
      write: (line) => {
        const r = JSON.parse(line) as { level: string; msg: string };
        lines.push(`${r.level} ${r.msg}`);
      },
    },
  );
}
