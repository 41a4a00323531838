import { randomInt } from 'node:crypto';
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseFlags, UsageError, type CommandHelp, type FlagSpecs } from '../contract/cli/flags.js';
import { EXIT_FAILURE, EXIT_OK, type Command } from '../contract/cli/runner.js';
import { describeError, ErrorCodes, isWalArchiverError, WalArchiverError } from '../contract/errors.js';
import { comparePartitionIds, isPartitionId } from '../contract/partition-id.js';
import { Backoff, sleep, type BackoffOptions } from '../contract/retry.js';
import type { PartitionStatus, TransactionRequest, TransactionResponse } from './api.js';
import { createWorkload, git, type RefState, type RepositoryWorkload } from './git-workload.js';

/**
 * `storage-node load`: a steady write workload against a storage cluster.
 *
 * Writes are issued by a fixed-rate schedule (write i is due at start + i/rate,
 * computed from i, so the rate never drifts; a late write goes out as soon as
 * a slot frees, bounded by --max-in-flight), spread round-robin over the
 * partitions and, within each, over its repositories. A repository has one
 * write in flight at a time, so its writes commit in the order they were made
 * and the reference state written to --record is exact.
 */

// ---------------------------------------------------------------------------
// Fixed-rate scheduling

export interface Clock {
  /** Milliseconds on a monotonic scale. */
  now(): number;
  /** Resolves after `ms`; rejects when the signal fires first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  sleep: (ms, signal) => sleep(ms, signal),
};

export interface ScheduleLimits {
  /** Issue at most this many writes. */
  count?: number;
  /** Issue writes due before start + durationMs, and none once that time has passed. */
  durationMs?: number;
}

/** The due times of a fixed-rate schedule; pure arithmetic, no clock. */
export class FixedRateSchedule {
  readonly intervalMs: number;

  constructor(
    readonly rate: number,
    readonly startMs: number,
    readonly limits: ScheduleLimits = {},
  ) {
    if (!(rate > 0) || !Number.isFinite(rate))
      throw new RangeError(`rate must be a positive number, got ${rate}`);
    this.intervalMs = 1000 / rate;
  }

  /** When write `index` is due: from the index, never by adding up intervals. */
  dueAt(index: number): number {
    return this.startMs + (index * 1000) / this.rate;
  }

  /** The time after which nothing more is issued, if the run has a duration. */
  get endMs(): number | undefined {
    return this.limits.durationMs === undefined ? undefined : this.startMs + this.limits.durationMs;
  }

  /** Whether write `index` belongs to the run, asked at time `now`. */
  includes(index: number, now: number): boolean {
    if (this.limits.count !== undefined && index >= this.limits.count) return false;
    const end = this.endMs;
    if (end !== undefined && (this.dueAt(index) >= end || now >= end)) return false;
    return true;
  }

  /** How many writes a run that keeps up issues in all (undefined when unbounded). */
  get plannedCount(): number | undefined {
    const byDuration =
      this.limits.durationMs === undefined
        ? undefined
        : Math.ceil((this.limits.durationMs * this.rate) / 1000);
    if (this.limits.count === undefined) return byDuration;
    return byDuration === undefined ? this.limits.count : Math.min(byDuration, this.limits.count);
  }

  /** Writes due by `now`, counting from index 0. */
  dueBy(now: number): number {
    if (now < this.startMs) return 0;
    return Math.floor(((now - this.startMs) * this.rate) / 1000) + 1;
  }
}

export interface FixedRateOptions extends ScheduleLimits {
  rate: number;
  maxInFlight: number;
  clock?: Clock;
  /** Stops issuing; what is in flight is awaited. */
  signal?: AbortSignal;
}

export interface FixedRateResult {
  issued: number;
  /** The most a write went out after its due time. */
  maxLagMs: number;
  elapsedMs: number;
}

/**
 * Calls `issue(index)` at the schedule's due times with at most `maxInFlight`
 * unsettled at once, then waits for all of them. An `issue` that rejects stops
 * the schedule and the error is thrown once the others have settled.
 */
export async function runFixedRate(
  options: FixedRateOptions,
  issue: (index: number) => Promise<void>,
): Promise<FixedRateResult> {
  const clock = options.clock ?? systemClock;
  const { signal } = options;
  if (!Number.isInteger(options.maxInFlight) || options.maxInFlight < 1) {
    throw new RangeError('maxInFlight must be a positive integer');
  }
  const start = clock.now();
  const schedule = new FixedRateSchedule(options.rate, start, options);
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  let maxLagMs = 0;
  let issued = 0;
  const stopped = new Promise<void>((resolve) => {
    if (signal?.aborted) resolve();
    else signal?.addEventListener('abort', () => resolve(), { once: true });
  });
  const halted = () => signal?.aborted === true || failure !== undefined;

  for (let index = 0; !halted() && schedule.includes(index, clock.now()); index++) {
    const wait = schedule.dueAt(index) - clock.now();
    if (wait > 0) {
      try {
        await clock.sleep(wait, signal);
      } catch {
        break;
      }
    }
    while (inFlight.size >= options.maxInFlight && !halted()) await Promise.race([...inFlight, stopped]);
    if (halted() || !schedule.includes(index, clock.now())) break;
    maxLagMs = Math.max(maxLagMs, clock.now() - schedule.dueAt(index));
    issued++;
    const task: Promise<void> = issue(index)
      .catch((error: unknown) => {
        failure ??= { error };
      })
      .finally(() => inFlight.delete(task));
    inFlight.add(task);
  }
  await Promise.all([...inFlight]);
  if (failure) throw failure.error;
  return { issued, maxLagMs, elapsedMs: clock.now() - start };
}

// ---------------------------------------------------------------------------
// Leader-routed writes

/** Sends one POST and reads the whole answer; rejects on connection errors and timeouts. */
export type PostTransport = (
  url: string,
  body: string,
  timeoutMs: number,
) => Promise<{ status: number; text: string }>;

export class RequestTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`timed out after ${timeoutMs} ms`);
    this.name = 'TimeoutError';
  }
}

/** One request over node:http(s) with a whole-request timeout; `body` undefined sends a GET. */
function httpCall(
  url: string,
  body: string | undefined,
  timeoutMs: number,
  agent?: HttpAgent | HttpsAgent,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
    const data = body === undefined ? undefined : Buffer.from(body);
    const req = send(target, {
      method: data ? 'POST' : 'GET',
      ...(agent ? { agent } : {}),
      headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {},
    });
    const timer = setTimeout(() => req.destroy(new RequestTimeoutError(timeoutMs)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      reject(err);
    };
    req.once('error', fail);
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('error', fail);
      res.once('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
      });
    });
    req.end(data);
  });
}

/**
 * POST over node:http with keep-alive. Not `fetch`: the Fetch standard makes
 * fetch repeat a request that got 421 on a new connection, which would send
 * every write to a follower twice before the client sees the redirect.
 */
export function createHttpTransport(maxSockets = 64): { post: PostTransport; close(): void } {
  const agents = {
    'http:': new HttpAgent({ keepAlive: true, maxSockets }),
    'https:': new HttpsAgent({ keepAlive: true, maxSockets }),
  };
  const post: PostTransport = (url, body, timeoutMs) =>
    httpCall(url, body, timeoutMs, url.startsWith('https:') ? agents['https:'] : agents['http:']);
  return {
    post,
    close: () => {
      agents['http:'].destroy();
      agents['https:'].destroy();
    },
  };
}

export interface WriteClientOptions {
  urls: string[];
  /** Attempts per write, including the first; a redirect to the leader is one. */
  attempts: number;
  requestTimeoutMs: number;
  backoff?: BackoffOptions;
  /** How a request is sent; by default node:http with keep-alive (closed by `close()`). */
  transport?: PostTransport;
  /** Once aborted, no new attempt is started (the one under way finishes). */
  signal?: AbortSignal;
  onRetry?: (partition: string, url: string, error: WalArchiverError) => void;
}

export interface WriteResult {
  response: TransactionResponse;
  url: string;
  attempts: number;
}

export const DEFAULT_WRITE_BACKOFF: BackoffOptions = { initialMs: 100, maxMs: 2000 };

/** Strips a trailing slash so URLs compare and concatenate cleanly. */
export function normalizeNodeUrl(raw: string): string {
  return raw.replace(/\/+$/, '');
}

/**
 * POSTs transactions to a partition's leader. The leader of each partition is
 * cached; a 421 from a follower moves the cache to the `leaderUrl` it names; a
 * connection error, timeout or 5xx forgets the cached leader and, after a
 * backoff, tries the next URL in the list.
 */
export class WriteClient {
  private readonly urls: string[];
  private readonly leaders = new Map<string, string>();
  private readonly post: PostTransport;
  private readonly closeTransport: () => void;
  private cursor = 0;

  constructor(private readonly options: WriteClientOptions) {
    if (options.urls.length === 0) throw new RangeError('WriteClient needs at least one node URL');
    this.urls = options.urls.map(normalizeNodeUrl);
    if (options.transport) {
      this.post = options.transport;
      this.closeTransport = () => {};
    } else {
      const transport = createHttpTransport();
      this.post = transport.post;
      this.closeTransport = transport.close;
    }
  }

  /** Closes the kept-alive connections. */
  close(): void {
    this.closeTransport();
  }

  /** The cached leader URL of a partition. */
  leaderOf(partition: string): string | undefined {
    return this.leaders.get(partition);
  }

  private rotateAfter(url: string): string {
    const at = this.urls.indexOf(url);
    this.cursor = at === -1 ? this.cursor + 1 : at + 1;
    return this.urls[this.cursor % this.urls.length]!;
  }

  async write(partition: string, request: TransactionRequest | string): Promise<WriteResult> {
    const body = typeof request === 'string' ? request : JSON.stringify(request);
    const backoff = new Backoff({ ...DEFAULT_WRITE_BACKOFF, ...this.options.backoff });
    let url = this.leaders.get(partition) ?? this.urls[this.cursor % this.urls.length]!;
    let lastError: WalArchiverError | undefined;
    let made = 0;
    for (let attempt = 1; attempt <= this.options.attempts; attempt++) {
      if (attempt > 1 && this.options.signal?.aborted) break;
      made = attempt;
      const outcome = await this.attempt(partition, url, body);
      if (outcome.kind === 'ok') {
        this.leaders.set(partition, url);
        return { response: outcome.response, url, attempts: attempt };
      }
      lastError = outcome.error;
      if (outcome.kind === 'fatal') break;
      this.options.onRetry?.(partition, url, outcome.error);
      if (outcome.kind === 'redirect') {
        this.leaders.set(partition, outcome.leaderUrl);
        url = outcome.leaderUrl;
        continue;
      }
      this.leaders.delete(partition);
      url = this.rotateAfter(url);
      if (attempt < this.options.attempts) {
        try {
          await sleep(backoff.next(), this.options.signal);
        } catch {
          break;
        }
      }
    }
    const error = lastError ?? new WalArchiverError(ErrorCodes.ABORTED, 'stopped before the first attempt');
    const stopped = made < this.options.attempts && this.options.signal?.aborted ? ' (stopped)' : '';
    throw new WalArchiverError(
      error.code,
      `partition ${partition}: write failed after ${made} attempt${made === 1 ? '' : 's'}${stopped}: ${error.message}`,
      { cause: error, retryable: false, details: { partition, attempts: made } },
    );
  }

  private async attempt(
    partition: string,
    url: string,
    body: string,
  ): Promise<
    | { kind: 'ok'; response: TransactionResponse }
    | { kind: 'redirect'; leaderUrl: string; error: WalArchiverError }
    | { kind: 'retry' | 'fatal'; error: WalArchiverError }
  > {
    const target = `${url}/v1/partitions/${encodeURIComponent(partition)}/transactions`;
    let status: number;
    let text: string;
    try {
      ({ status, text } = await this.post(target, body, this.options.requestTimeoutMs));
    } catch (err) {
      const timedOut = err instanceof Error && err.name === 'TimeoutError';
      const what = timedOut ? `timed out after ${this.options.requestTimeoutMs} ms` : describeError(err);
      return {
        kind: 'retry',
        error: new WalArchiverError(ErrorCodes.UNAVAILABLE, `POST ${url}: ${what}`, {
          cause: err,
          details: { partition, url },
        }),
      };
    }
    let json: Record<string, unknown> = {};
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed === 'object' && parsed !== null) json = parsed as Record<string, unknown>;
    } catch {
      // Not JSON: the status decides, the text goes into the message.
    }
    const detail =
      typeof json.error === 'string' ? json.error : text.trim().split('\n')[0] || `HTTP ${status}`;
    if (status >= 200 && status < 300) {
      if (typeof json.lsn !== 'number' || typeof json.term !== 'number') {
        return {
          kind: 'fatal',
          error: new WalArchiverError(
            ErrorCodes.CORRUPT,
            `POST ${url}: response without lsn/term: ${text.slice(0, 200)}`,
          ),
        };
      }
      return {
        kind: 'ok',
        response: {
          partition: typeof json.partition === 'string' ? json.partition : partition,
          lsn: json.lsn,
          term: json.term,
          committedAt: typeof json.committedAt === 'string' ? json.committedAt : new Date().toISOString(),
        },
      };
    }
    if (status === 421) {
      const error = new WalArchiverError(ErrorCodes.NOT_LEADER, `POST ${url}: ${status} ${detail}`, {
        details: { partition, url },
      });
      const leaderUrl = typeof json.leaderUrl === 'string' ? normalizeNodeUrl(json.leaderUrl) : '';
      if (leaderUrl && leaderUrl !== url && /^https?:\/\//.test(leaderUrl)) {
        return { kind: 'redirect', leaderUrl, error };
      }
      return { kind: 'retry', error };
    }
    const error = new WalArchiverError(
      status >= 500 || status === 408 || status === 429
        ? ErrorCodes.UNAVAILABLE
        : ErrorCodes.INVALID_ARGUMENT,
      `POST ${url}: ${status} ${detail}`,
      { details: { partition, url, status } },
    );
    return { kind: status >= 500 || status === 408 || status === 429 ? 'retry' : 'fatal', error };
  }
}

// ---------------------------------------------------------------------------
// The record

/** One line of --record for a committed write. */
export interface WriteRecord {
  partition: string;
  relativePath: string;
  lsn: number;
  term: number;
  committedAt: string;
  /** The repository's full reference state after this write. */
  refs: RefState;
}

/**
 * One line of --record for a write that ultimately failed. It may still have
 * been committed (a timeout after the commit), so its LSN is unknown; the next
 * recorded write of the repository states the references again in full.
 */
export interface FailedWriteRecord {
  partition: string;
  relativePath: string;
  failed: true;
  error: string;
  at: string;
  attemptedRefs: RefState;
}

export type LoadRecordLine = WriteRecord | FailedWriteRecord;

/** Reads a --record file: committed writes and failed ones, in file order. */
export async function readLoadRecord(
  file: string,
): Promise<{ writes: WriteRecord[]; failures: FailedWriteRecord[] }> {
  const writes: WriteRecord[] = [];
  const failures: FailedWriteRecord[] = [];
  const text = await readFile(file, 'utf8');
  for (const [i, line] of text.split('\n').entries()) {
    if (line.trim() === '') continue;
    let value: LoadRecordLine;
    try {
      value = JSON.parse(line) as LoadRecordLine;
    } catch (err) {
      throw new WalArchiverError(ErrorCodes.CORRUPT, `${file}:${i + 1}: not JSON`, { cause: err });
    }
    if ('failed' in value && value.failed) failures.push(value);
    else writes.push(value as WriteRecord);
  }
  return { writes, failures };
}

/** Appends JSON lines in call order; `close()` waits for them and syncs the file. */
export class RecordWriter {
  private chain: Promise<void> = Promise.resolve();
  private error: unknown;

  private constructor(private readonly handle: FileHandle) {}

  static async open(file: string): Promise<RecordWriter> {
    try {
      return new RecordWriter(await open(file, 'a'));
    } catch (err) {
      throw new WalArchiverError(
        ErrorCodes.INVALID_ARGUMENT,
        `cannot open the record file ${file}: ${describeError(err)}`,
        {
          cause: err,
        },
      );
    }
  }

  append(line: LoadRecordLine): Promise<void> {
    const text = `${JSON.stringify(line)}\n`;
    const next = this.chain.then(async () => {
      if (this.error) throw this.error;
      try {
        await this.handle.appendFile(text);
      } catch (err) {
        this.error = err;
        throw err;
      }
    });
    this.chain = next.catch(() => {});
    return next;
  }

  async close(): Promise<void> {
    await this.chain;
    try {
      if (!this.error) await this.handle.sync();
    } finally {
      await this.handle.close();
    }
  }
}

// ---------------------------------------------------------------------------
// The run

export interface LoadOptions {
  nodeUrls: string[];
  /** Writes per second in total. */
  rate: number;
  /** Payload bytes per write. */
  size: number;
  /** Partition IDs, or 'all' for every partition a node lists. */
  partitions: string[] | 'all';
  /** Stop after this long; undefined or 0 with no count: until stopped. */
  durationMs?: number;
  count?: number;
  git: boolean;
  repositoriesPerPartition: number;
  record?: string;
  seed: number;
  maxInFlight: number;
  requestTimeoutMs: number;
  attempts: number;
  /** A progress line every this many ms (0: none). */
  progressIntervalMs?: number;
  /** Where progress and error lines go. */
  log?: (line: string) => void;
  clock?: Clock;
  /** Used for the writes (POST). */
  transport?: PostTransport;
  backoff?: BackoffOptions;
}

export const LOAD_DEFAULTS = {
  durationMs: 30_000,
  repositoriesPerPartition: 1,
  maxInFlight: 32,
  requestTimeoutMs: 10_000,
  attempts: 10,
  progressIntervalMs: 2000,
} as const;

export interface PartitionSummary {
  ok: number;
  failed: number;
  lastLsn: number;
  term: number;
}

export interface LoadSummary {
  partitions: string[];
  repositories: number;
  seed: number;
  git: boolean;
  /** Writes the schedule gave out. */
  scheduled: number;
  /** Writes sent to a node (scheduled minus those still queued behind their repository at stop). */
  issued: number;
  ok: number;
  failed: number;
  /** Scheduled writes that were never sent because the run was stopped first. */
  skipped: number;
  elapsedMs: number;
  targetRate: number;
  achievedRate: number;
  /** Payload bytes of committed writes (before base64). */
  bytes: number;
  maxLagMs: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  perPartition: Record<string, PartitionSummary>;
  lastError?: string;
}

/** Whether a run counts as a success: something committed and every sent write is accounted for. */
export function loadSucceeded(summary: LoadSummary): boolean {
  return summary.ok >= 1 && summary.ok + summary.failed === summary.issued;
}

const LATENCY_SAMPLES = 100_000;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function getJson(url: string, timeoutMs: number): Promise<unknown> {
  const { status, text } = await httpCall(url, undefined, timeoutMs);
  if (status < 200 || status > 299)
    throw new Error(`GET ${url}: HTTP ${status} ${text.trim().split('\n')[0] ?? ''}`);
  return text ? JSON.parse(text) : undefined;
}

/** Partition IDs a node lists, sorted numerically where they are numbers; tries each URL in turn. */
export async function discoverPartitions(
  urls: string[],
  options: { attempts?: number; timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<string[]> {
  const attempts = options.attempts ?? 10;
  const backoff = new Backoff({ initialMs: 200, maxMs: 2000 });
  let last: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    for (const url of urls.map(normalizeNodeUrl)) {
      try {
        const list = await getJson(`${url}/v1/partitions`, options.timeoutMs ?? 5000);
        if (!Array.isArray(list)) throw new Error(`GET ${url}/v1/partitions: not a list`);
        const ids = [...new Set((list as PartitionStatus[]).map((p) => String(p.partition)))];
        if (ids.length === 0) throw new Error(`${url} has no partitions`);
        return ids.sort(comparePartitionIds);
      } catch (err) {
        last = err;
      }
    }
    if (attempt + 1 < attempts) await sleep(backoff.next(), options.signal);
  }
  throw new WalArchiverError(
    ErrorCodes.UNAVAILABLE,
    `could not list partitions from ${urls.join(', ')}: ${describeError(last)}`,
    { cause: last },
  );
}

interface Target {
  workload: RepositoryWorkload;
  chain: Promise<void>;
}

/**
 * Runs the workload until the count or duration is reached or `signal` fires;
 * then waits for the writes in flight, flushes the record and returns a summary.
 */
export async function runLoad(options: LoadOptions, signal?: AbortSignal): Promise<LoadSummary> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const clock = options.clock ?? systemClock;
  const stop = new AbortController();
  const onAbort = () => stop.abort(signal?.reason);
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });

  let partitions: string[];
  let record: RecordWriter | undefined;
  try {
    partitions =
      options.partitions === 'all'
        ? await discoverPartitions(options.nodeUrls, { signal: stop.signal })
        : options.partitions;
    if (options.git) await git(process.cwd(), ['--version']);
    if (options.record) record = await RecordWriter.open(options.record);
  } catch (err) {
    signal?.removeEventListener('abort', onAbort);
    if (isWalArchiverError(err) && err.code !== ErrorCodes.INTERNAL) throw err;
    throw new WalArchiverError(ErrorCodes.UNAVAILABLE, `--git needs the git command: ${describeError(err)}`, {
      cause: err,
    });
  }

  const scratchRoot = await mkdtemp(join(tmpdir(), 'wal-load-'));
  const targets: Target[] = [];
  for (let r = 0; r < options.repositoriesPerPartition; r++) {
    for (const partition of partitions) {
      const workload = createWorkload({
        git: options.git,
        partition,
        index: r,
        size: options.size,
        seed: options.seed,
        scratchRoot,
      });
      targets.push({ workload, chain: Promise.resolve() });
    }
  }

  const perPartition: Record<string, PartitionSummary> = {};
  for (const p of partitions) perPartition[p] = { ok: 0, failed: 0, lastLsn: 0, term: 0 };
  const latencies: number[] = [];
  let latencyCount = 0;
  let issued = 0;
  let ok = 0;
  let failed = 0;
  let skipped = 0;
  let bytes = 0;
  let lastError: string | undefined;
  const errorCounts = new Map<string, number>();

  const client = new WriteClient({
    urls: options.nodeUrls,
    attempts: options.attempts,
    requestTimeoutMs: options.requestTimeoutMs,
    transport: options.transport,
    backoff: options.backoff,
    signal: stop.signal,
  });

  const reportError = (message: string) => {
    lastError = message;
    // The first few of each kind in full; then the progress lines carry the count.
    const kind = message.replace(/\d+/g, '#');
    const seen = (errorCounts.get(kind) ?? 0) + 1;
    errorCounts.set(kind, seen);
    if (seen <= 3) log(`load: ${message}`);
    else if (seen === 4) log('load: (more errors like this are counted, not printed)');
  };

  const writeOnce = async (target: Target): Promise<void> => {
    if (stop.signal.aborted) {
      skipped++;
      return;
    }
    const { workload } = target;
    const stats = perPartition[workload.partition]!;
    issued++;
    let refs: RefState = {};
    let counted = false;
    try {
      const prepared = await workload.next();
      refs = prepared.refs;
      const started = clock.now();
      const { response } = await client.write(workload.partition, prepared.request);
      const latency = clock.now() - started;
      latencyCount++;
      if (latencies.length < LATENCY_SAMPLES) latencies.push(latency);
      else {
        const slot = randomInt(latencyCount);
        if (slot < LATENCY_SAMPLES) latencies[slot] = latency;
      }
      workload.acknowledge();
      counted = true;
      ok++;
      bytes += prepared.bytes;
      stats.ok++;
      stats.lastLsn = Math.max(stats.lastLsn, response.lsn);
      stats.term = Math.max(stats.term, response.term);
      await record?.append({
        partition: workload.partition,
        relativePath: workload.relativePath,
        lsn: response.lsn,
        term: response.term,
        committedAt: response.committedAt,
        refs: prepared.refs,
      });
    } catch (err) {
      if (counted) {
        // The write committed but its record line could not be written: stop, the record must be complete.
        stop.abort(err);
        throw err;
      }
      workload.fail();
      failed++;
      stats.failed++;
      const message = describeError(err);
      reportError(message);
      try {
        await record?.append({
          partition: workload.partition,
          relativePath: workload.relativePath,
          failed: true,
          error: message,
          at: new Date().toISOString(),
          attemptedRefs: refs,
        });
      } catch (recordError) {
        stop.abort(recordError);
        throw recordError;
      }
    }
  };

  const durationMs = options.durationMs === 0 ? undefined : options.durationMs;
  const startedAt = clock.now();
  let lastProgress = { at: startedAt, ok: 0 };
  const progress = () => {
    const now = clock.now();
    const rate = ((ok - lastProgress.ok) * 1000) / Math.max(1, now - lastProgress.at);
    lastProgress = { at: now, ok };
    const lsns = partitions.map((p) => `${p}:${perPartition[p]!.lastLsn}`).join(' ');
    log(
      `load: ${((now - startedAt) / 1000).toFixed(1)}s writes ok ${ok} failed ${failed} rate ${rate.toFixed(1)}/s (target ${options.rate}) last LSN ${lsns}`,
    );
  };
  const interval = options.progressIntervalMs ?? LOAD_DEFAULTS.progressIntervalMs;
  const timer = interval > 0 ? setInterval(progress, interval) : undefined;
  timer?.unref();

  log(
    `load: ${options.rate} writes/s of ${options.size} bytes${options.git ? ' (git)' : ''} to partitions ${partitions.join(',')} ` +
      `(${options.repositoriesPerPartition} ${options.repositoriesPerPartition === 1 ? 'repository' : 'repositories'} each, seed ${options.seed})`,
  );
  let result: FixedRateResult;
  try {
    result = await runFixedRate(
      {
        rate: options.rate,
        count: options.count,
        durationMs,
        maxInFlight: options.maxInFlight,
        clock,
        signal: stop.signal,
      },
      (index) => {
        const target = targets[index % targets.length]!;
        const run = target.chain.then(() => writeOnce(target));
        target.chain = run.catch(() => {});
        return run;
      },
    );
  } finally {
    if (timer) clearInterval(timer);
    signal?.removeEventListener('abort', onAbort);
    await Promise.all(targets.map((t) => t.chain));
    client.close();
    await record?.close();
    await Promise.all(targets.map((t) => t.workload.close()));
    await rm(scratchRoot, { recursive: true, force: true });
  }

  const sorted = latencies.sort((a, b) => a - b);
  const round = (n: number) => Math.round(n * 10) / 10;
  return {
    partitions,
    repositories: targets.length,
    seed: options.seed,
    git: options.git,
    scheduled: result.issued,
    issued,
    ok,
    failed,
    skipped,
    elapsedMs: Math.round(result.elapsedMs),
    targetRate: options.rate,
    achievedRate: round((ok * 1000) / Math.max(1, result.elapsedMs)),
    bytes,
    maxLagMs: Math.round(result.maxLagMs),
    latencyMs: {
      p50: round(percentile(sorted, 50)),
      p90: round(percentile(sorted, 90)),
      p99: round(percentile(sorted, 99)),
      max: round(sorted.length ? sorted[sorted.length - 1]! : 0),
    },
    perPartition,
    ...(lastError === undefined ? {} : { lastError }),
  };
}

// ---------------------------------------------------------------------------
// The command

export const LOAD_FLAGS = {
  'node-url': {
    type: 'list',
    value: 'URL[,URL…]',
    help: 'storage node URLs; writes follow each partition leader from there',
    required: true,
  },
  rate: {
    type: 'string',
    value: 'R',
    help: 'writes per second in total, over all partitions',
    required: true,
  },
  size: {
    type: 'bytes',
    value: 'S',
    help: 'payload bytes per write, e.g. 4096 or 1MiB',
    required: true,
    min: 1,
    max: 64 * 1024 * 1024,
  },
  partitions: {
    type: 'list',
    value: '1,2,…|all',
    help: 'partitions to write to, round-robin; all: every partition the node lists',
    default: ['all'],
  },
  duration: {
    type: 'duration',
    value: 'D',
    help: 'how long to write; 0 runs until stopped (default 30s unless --count is given)',
    min: 0,
  },
  count: { type: 'int', value: 'N', help: 'stop after N writes', min: 1 },
  git: {
    type: 'bool',
    help: 'write real Git history (commits and packs) instead of plain blobs',
    default: false,
  },
  'repositories-per-partition': {
    type: 'int',
    value: 'N',
    help: 'repositories written in each partition',
    default: LOAD_DEFAULTS.repositoriesPerPartition,
    min: 1,
    max: 10_000,
  },
  record: {
    type: 'string',
    value: 'FILE',
    help: 'append one JSON line per write (LSN, term, time, references)',
  },
  seed: {
    type: 'int',
    value: 'N',
    help: 'seed of the payload bytes (default: random, printed)',
    min: 0,
    max: 2 ** 31 - 1,
  },
  'max-in-flight': {
    type: 'int',
    value: 'N',
    help: 'writes due and not yet finished (sent, or waiting for their repository), at most',
    default: LOAD_DEFAULTS.maxInFlight,
    min: 1,
    max: 4096,
  },
  'request-timeout': {
    type: 'duration',
    value: 'D',
    help: 'timeout of one request',
    default: LOAD_DEFAULTS.requestTimeoutMs,
    min: 1,
  },
  attempts: {
    type: 'int',
    value: 'N',
    help: 'attempts per write before it counts as failed',
    default: LOAD_DEFAULTS.attempts,
    min: 1,
    max: 100,
  },
} as const satisfies FlagSpecs;

const LOAD_HELP: CommandHelp = {
  usage:
    'storage-node load --node-url U[,U2,…] --rate R --size S [--partitions 1,2,…|all] [--duration 30s] [--count N] [--git] [--record FILE]',
  description:
    'Writes transactions at a steady rate, spread round-robin over partitions, following each\n' +
    "partition's leader. Prints progress every 2 s on stderr and a summary at the end; exits 0 when\n" +
    'at least one write committed and every write sent is accounted for. SIGINT/SIGTERM stop it\n' +
    'after the writes in flight have finished.',
};

export const MAX_RATE = 1_000_000;

/** Parses and checks the flags of `storage-node load`; throws UsageError. */
export function parseLoadFlags(argv: string[], env: NodeJS.ProcessEnv = {}): LoadOptions {
  const f = parseFlags(argv, LOAD_FLAGS, LOAD_HELP, env);
  const nodeUrls = f['node-url'].map((raw) => {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new UsageError(`flag --node-url: "${raw}" is not a URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new UsageError(`flag --node-url: "${raw}" must be an http:// or https:// URL`);
    }
    if (url.search || url.hash)
      throw new UsageError(`flag --node-url: "${raw}" must not have a query or fragment`);
    return normalizeNodeUrl(url.href);
  });
  if (nodeUrls.length === 0) throw new UsageError('flag --node-url: needs at least one URL');

  const rateText = f.rate.trim();
  const rate = /^\d+(\.\d+)?$/.test(rateText) ? Number(rateText) : NaN;
  if (!(rate > 0) || rate > MAX_RATE) {
    throw new UsageError(
      `flag --rate: must be a number of writes per second above 0, at most ${MAX_RATE} (got "${f.rate}")`,
    );
  }

  let partitions: string[] | 'all';
  if (f.partitions.length === 1 && f.partitions[0]!.toLowerCase() === 'all') partitions = 'all';
  else {
    if (f.partitions.length === 0)
      throw new UsageError('flag --partitions: needs at least one partition ID, or all');
    for (const p of f.partitions) {
      if (p.toLowerCase() === 'all')
        throw new UsageError('flag --partitions: all cannot be combined with IDs');
      if (!isPartitionId(p)) throw new UsageError(`flag --partitions: "${p}" is not a partition ID`);
    }
    if (new Set(f.partitions).size !== f.partitions.length) {
      throw new UsageError('flag --partitions: a partition is listed twice');
    }
    partitions = f.partitions;
  }

  const durationMs = f.duration ?? (f.count === undefined ? LOAD_DEFAULTS.durationMs : undefined);
  return {
    nodeUrls,
    rate,
    size: f.size,
    partitions,
    durationMs,
    count: f.count,
    git: f.git,
    repositoriesPerPartition: f['repositories-per-partition'],
    record: f.record,
    seed: f.seed ?? randomInt(2 ** 31 - 1),
    maxInFlight: f['max-in-flight'],
    requestTimeoutMs: f['request-timeout'],
    attempts: f.attempts,
  };
}

/** A few lines for a person at the end of a run. */
export function formatLoadSummary(s: LoadSummary): string {
  const lines = [
    `writes: ${s.ok} ok, ${s.failed} failed${s.skipped ? `, ${s.skipped} not sent (stopped)` : ''} of ${s.issued} sent ` +
      `in ${(s.elapsedMs / 1000).toFixed(1)}s; ${s.achievedRate}/s (target ${s.targetRate}/s), ` +
      `${(s.bytes / 1024 / 1024).toFixed(1)} MiB payload`,
    `latency ms: p50 ${s.latencyMs.p50} p90 ${s.latencyMs.p90} p99 ${s.latencyMs.p99} max ${s.latencyMs.max}; ` +
      `most behind schedule ${s.maxLagMs} ms; seed ${s.seed}`,
    ...s.partitions.map((p) => {
      const x = s.perPartition[p]!;
      return `partition ${p}: ${x.ok} ok, ${x.failed} failed, last LSN ${x.lastLsn}, term ${x.term}`;
    }),
  ];
  if (s.maxLagMs > 1000 && s.achievedRate < s.targetRate * 0.9) {
    lines.push(
      'behind schedule: a repository takes one write at a time; more --repositories-per-partition ' +
        '(or --max-in-flight) allow more writes at once',
    );
  }
  if (s.lastError) lines.push(`last error: ${s.lastError}`);
  return `${lines.join('\n')}\n`;
}

export const loadCommand: Command = {
  summary: 'write a steady workload (plain blobs or real Git history) to a storage cluster',
  async run(argv, ctx) {
    const options = parseLoadFlags(argv, ctx.env);
    let summary: LoadSummary;
    try {
      summary = await runLoad({ ...options, log: (line) => ctx.stderr.write(`${line}\n`) }, ctx.signal);
    } catch (err) {
      if (isWalArchiverError(err)) throw err;
      throw new WalArchiverError(ErrorCodes.INTERNAL, `load failed: ${describeError(err)}`, { cause: err });
    }
    ctx.stdout.write(formatLoadSummary(summary));
    if (loadSucceeded(summary)) return EXIT_OK;
    ctx.stderr.write(
      summary.ok === 0
        ? `storage-node load: no write committed${summary.lastError ? ` (${summary.lastError})` : ''}\n`
        : `storage-node load: ${summary.issued - summary.ok - summary.failed} writes unaccounted for\n`,
    );
    return EXIT_FAILURE;
  },
};
