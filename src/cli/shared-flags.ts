/** Flags several wal-archiver commands share, and their checks. */

import {
  parseFlags,
  UsageError,
  type CommandHelp,
  type FlagSpecs,
  type ParsedFlags,
} from '../../contract/cli/flags.js';
import { ErrorCodes, isWalArchiverError } from '../../contract/errors.js';
import type { EventBus } from '../../contract/events/event-bus.js';
import { openEventBus } from '../../contract/events/open.js';
import { isPartitionId } from '../../contract/partition-id.js';
import type { Command, CommandContext } from '../../contract/cli/runner.js';
import type { ObjectStore } from '../store/object-store.js';
import { openObjectStore } from '../store/open.js';

/** `--object-store URL` (or WAL_ARCHIVER_OBJECT_STORE): the archive. */
export const objectStoreFlag = {
  type: 'string',
  help: 'the archive (s3://bucket/prefix?… or file:///path)',
  value: 'URL',
  required: true,
  env: 'WAL_ARCHIVER_OBJECT_STORE',
} as const;

/** UsageError unless `--partition`, when given, is a partition ID. */
export function checkPartitionFlag(partition: string | undefined): void {
  if (partition !== undefined && !isPartitionId(partition)) {
    throw new UsageError(
      `flag --partition: "${partition}" is not a partition ID (1-64 of [A-Za-z0-9._-], starting with a letter or digit)`,
    );
  }
}

/** Parses a command's flags, and checks `--partition` when the command has one and it is given. */
export function parseCommandFlags<S extends FlagSpecs>(
  argv: readonly string[],
  specs: S,
  help: CommandHelp,
  env: NodeJS.ProcessEnv,
): ParsedFlags<S> {
  const f = parseFlags(argv, specs, help, env);
  const partition = (f as Record<string, unknown>)['partition'];
  if (typeof partition === 'string') checkPartitionFlag(partition);
  return f;
}

/** A command's flag parser: parseCommandFlags, then the command's own checks of how its flags combine. */
export function flagParser<S extends FlagSpecs>(
  specs: S,
  help: CommandHelp,
  check: (f: ParsedFlags<S>) => void,
): (argv: readonly string[], env: NodeJS.ProcessEnv) => ParsedFlags<S> {
  return (argv, env) => {
    const f = parseCommandFlags(argv, specs, help, env);
    check(f);
    return f;
  };
}

/** Opening a service with a malformed URL is a usage error (exit 2): the flag is wrong. */
function flagError(flag: string, err: unknown): unknown {
  if (
    isWalArchiverError(err, ErrorCodes.INVALID_ARGUMENT) ||
    isWalArchiverError(err, ErrorCodes.UNSUPPORTED_SCHEME)
  ) {
    return new UsageError(`flag --${flag}: ${err.message}`);
  }
  return err;
}

export async function openStoreFlag(url: string): Promise<ObjectStore> {
  try {
    return await openObjectStore(url);
  } catch (err) {
    throw flagError('object-store', err);
  }
}

/** Opens the archive `--object-store` names, runs `use` on it, and closes it whatever happens. */
export async function withObjectStore<T>(url: string, use: (store: ObjectStore) => Promise<T>): Promise<T> {
  const store = await openStoreFlag(url);
  try {
    return await use(store);
  } finally {
    await store.close().catch(() => undefined);
  }
}

/** Opens the bus a flag names and checks that it answers, so an unreachable bus fails at once, in one line. */
export async function openBusFlag(flag: string, url: string): Promise<EventBus> {
  let bus: EventBus;
  try {
    bus = await openEventBus(url);
  } catch (err) {
    throw flagError(flag, err);
  }
  try {
    await bus.checkConnection();
  } catch (err) {
    await bus.close().catch(() => undefined);
    throw err;
  }
  return bus;
}

/** A command that parses its flags, then works on the archive `--object-store` names (closed when it is done). */
export function archiveCommand<F extends { 'object-store': string }>(
  summary: string,
  parse: (argv: readonly string[], env: NodeJS.ProcessEnv) => F,
  work: (f: F, store: ObjectStore, ctx: CommandContext) => Promise<number>,
): Command {
  return {
    summary,
    run(argv, ctx) {
      const f = parse(argv, ctx.env);
      return withObjectStore(f['object-store'], (store) => work(f, store, ctx));
    },
  };
}
