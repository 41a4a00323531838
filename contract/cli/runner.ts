import { describeError, isWalArchiverError } from '../errors.js';
import { HelpRequested, UsageError } from './flags.js';

/**
 * The shared top level of both command lines: sub-command dispatch, signal
 * handling and the one-line error contract (usage errors exit 2, every other
 * failure exits 1; a stack trace only with WAL_ARCHIVER_DEBUG=1).
 */

export interface CommandContext {
  /** Aborted on the first SIGINT/SIGTERM; a second signal exits at once. */
  signal: AbortSignal;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

export interface Command {
  summary: string;
  /** Returns the exit code. */
  run(argv: string[], ctx: CommandContext): Promise<number>;
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

function topHelp(program: string, description: string, commands: Record<string, Command>): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length)) + 4;
  const rows = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}${c.summary}`);
  return `Usage: ${program} <command> [flags]\n\n${description}\n\nCommands:\n${rows.join('\n')}\n\nRun "${program} <command> --help" for the flags of a command.\n`;
}

/** Prints the one line a person sees for an error, and returns the exit code. */
export function reportError(program: string, err: unknown, stderr: NodeJS.WritableStream): number {
  if (
    err instanceof UsageError ||
    isWalArchiverError(err, 'INVALID_ARGUMENT') ||
    isWalArchiverError(err, 'UNSUPPORTED_SCHEME')
  ) {
    // Bad flags and malformed URLs or values given on the command line.
    stderr.write(`${program}: ${(err as Error).message.split('\n')[0]}\n`);
    return EXIT_USAGE;
  }
  if (isWalArchiverError(err, 'ABORTED')) {
    stderr.write(`${program}: stopped\n`);
    return EXIT_FAILURE;
  }
  const line = describeError(err);
  stderr.write(`${program}: ${isWalArchiverError(err) ? '' : 'internal error: '}${line}\n`);
  if (process.env.WAL_ARCHIVER_DEBUG === '1' && err instanceof Error && err.stack)
    stderr.write(`${err.stack}\n`);
  return EXIT_FAILURE;
}

export async function runCli(
  program: string,
  description: string,
  commands: Record<string, Command>,
  argv: string[] = process.argv.slice(2),
): Promise<never> {
  const stderr = process.stderr;
  const controller = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      stderr.write(`${program}: ${sig} again, exiting now\n`);
      process.exit(130);
    }
    controller.abort(new Error(`received ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Anything that escapes a component still ends with one line, not a trace.
  process.on('unhandledRejection', (reason) => {
    process.exit(reportError(program, reason, stderr));
  });
  process.on('uncaughtException', (err) => {
    process.exit(reportError(program, err, stderr));
  });

  const [name, ...rest] = argv;
  let code: number;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(topHelp(program, description, commands));
    code = name === undefined ? EXIT_USAGE : EXIT_OK;
  } else if (!Object.hasOwn(commands, name)) {
    stderr.write(`${program}: unknown command "${name}" (run "${program} --help")\n`);
    code = EXIT_USAGE;
  } else {
    try {
      code = await commands[name]!.run(rest, {
        signal: controller.signal,
        stdout: process.stdout,
        stderr,
        env: process.env,
      });
    } catch (err) {
      if (err instanceof HelpRequested) {
        process.stdout.write(err.text);
        code = EXIT_OK;
      } else {
        code = reportError(program, err, stderr);
      }
    }
  }
  // Let stdout drain before exiting (piped output would otherwise be cut).
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  process.exit(code);
}
