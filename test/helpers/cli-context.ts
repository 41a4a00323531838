import { Writable } from 'node:stream';
import { HelpRequested } from '../../contract/cli/flags.js';
import { reportError, type Command, type CommandContext } from '../../contract/cli/runner.js';

/** A command context whose stdout and stderr are kept as text, for a test to read. */
export interface CapturedContext {
  ctx: CommandContext;
  /** Everything written to stdout so far. */
  stdout: () => string;
  /** Everything written to stderr so far. */
  stderr: () => string;
}

function textSink(): { stream: Writable; text: () => string } {
  let text = '';
  return {
    stream: new Writable({
      write(chunk: Buffer | string, _encoding, callback) {
        text += chunk.toString();
        callback();
      },
    }),
    text: () => text,
  };
}

/** A fresh context for one command run: its own signal (unless given), an empty environment (unless given). */
export function captureContext(
  options: { signal?: AbortSignal; env?: NodeJS.ProcessEnv } = {},
): CapturedContext {
  const out = textSink();
  const err = textSink();
  return {
    ctx: {
      signal: options.signal ?? new AbortController().signal,
      stdout: out.stream,
      stderr: err.stream,
      env: options.env ?? {},
    },
    stdout: out.text,
    stderr: err.text,
  };
}

/**
 * Runs a command the way the top-level runner does: help is printed on stdout and exits 0; an error
 * becomes one line on stderr and exit code 2 (usage) or 1 (failure).
 */
export async function runCommand(
  command: Command,
  argv: string[],
  c: CapturedContext = captureContext(),
): Promise<number> {
  try {
    return await command.run(argv, c.ctx);
  } catch (err) {
    if (err instanceof HelpRequested) {
      c.ctx.stdout.write(err.text);
      return 0;
    }
    return reportError('wal-archiver', err, c.ctx.stderr);
  }
}

/** The non-empty lines of a command's output. */
export function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '');
}
