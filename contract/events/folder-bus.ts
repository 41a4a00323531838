import { randomBytes } from 'node:crypto';
import { constants as fsConstants, promises as fsp, watch, type FSWatcher } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as dfs from '../fs/durable-fs.js';
import { ErrorCodes, WalArchiverError, throwIfAborted } from '../errors.js';
import { atomicWriteFile, fsyncDir, fsyncFile } from '../fs/fs-atomic.js';
import { sleep } from '../retry.js';
import { maskUrl, parseServiceUrl } from '../url.js';
import type { ConsumedEvent, EventBus, PublishEvent, SubscribeOptions, Subscription } from './event-bus.js';
import type { Logger } from '../log.js';
import { defaultBusLogger } from './log.js';
import { busParams, checkParams, invalid, type BusOptions, type PublishOptions } from './params.js';
import { busTuning, checkCall, checkSubscribe, encodeEvents, fullTopicName } from './params.js';
import { partitionForKey } from './partitioner.js';

/**
 * The folder event bus: `file:///path[?topicPrefix=wal&partitions=N]`.
 *
 * Layout under the root folder, per full topic name:
 *
 *   <topic>/meta.json                         {"version":1,"partitions":N}, created once
 *   <topic>/<pppp>.log                        one partition: newline-delimited JSON records
 *                                             {"offset","timestamp","key","value"}, offsets 0,1,2…
 *   <topic>/<pppp>.lock                       held while appending (pid, process start time, nonce)
 *   <topic>/groups/<group>/members/<id>.json  a live member; its mtime is its heartbeat
 *   <topic>/groups/<group>/claims/<pppp>.json the member currently consuming the partition
 *   <topic>/groups/<group>/offsets/<pppp>.json committed {"offset","position"} (next record, byte)
 *
 * Appends take the partition lock, repair a torn last line left by a crashed
 * writer (truncate to the last newline), write the whole batch with one
 * positioned write and fsync before publish resolves. Readers only ever
 * consume complete lines and tail files from a byte position (fs.watch, with
 * a poll as fallback). A complete line that does not parse, or whose offset is
 * not the next one, is corruption: it is reported, never skipped.
 *
 * Group members heartbeat by touching their member file; partitions are
 * dealt round-robin over the sorted live members; a member consumes a
 * partition only while it holds the partition's claim, and gives the claim
 * up between batches once the partition is no longer its own, so a key is
 * served by one member at a time. A member whose process is gone (same host)
 * or whose heartbeat is older than the session timeout is dead, and its
 * claims may be broken.
 */

/** The folder bus's tuning, with its defaults (each can be set in FolderBusOptions). */
export const FOLDER_TUNING = {
  /** How often a member touches its heartbeat and re-checks the assignment. */
  heartbeatMs: 500,
  /** A member whose heartbeat is older than this is dead. */
  sessionTimeoutMs: 5_000,
  /** Poll interval when fs.watch reports nothing. */
  pollMs: 250,
  /** Most records handed to the handler at once. */
  maxBatchRecords: 500,
};
type FolderTuning = typeof FOLDER_TUNING;
export type FolderBusOptions = BusOptions<FolderTuning>;

const MAX_BATCH_BYTES = 1 << 20;
const RETRY_MIN_MS = 200;
const RETRY_MAX_MS = 5_000;

const FOLDER_PARAMS = ['topicPrefix', 'partitions'] as const;

interface Owner {
  pid: number;
  start: string | null;
  host: string;
  nonce: string;
  memberId?: string;
}

interface Record_ {
  offset: number;
  timestamp: number;
  key: string;
  value: Record<string, unknown>;
}

interface Tail {
  /** Byte position just after the last complete line. */
  end: number;
  nextOffset: number;
  /** Bytes after `end` that are not a complete line (a crashed append). */
  torn: boolean;
}

interface TopicState {
  name: string;
  dir: string;
  partitions: number;
  writers: Map<number, PartitionWriter>;
}

interface PartitionWriter {
  handle?: dfs.DurableFileHandle;
  /** The topic folder was fsynced after this writer opened (maybe created) the log. */
  folderSynced?: boolean;
  tail?: Tail;
  queue: Promise<void>;
}

const HOST = os.hostname();

function partName(p: number): string {
  return String(p).padStart(4, '0');
}

function nonce(): string {
  return randomBytes(8).toString('hex');
}

function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function ioError(what: string, cause: unknown, details: Record<string, unknown> = {}): WalArchiverError {
  if (cause instanceof WalArchiverError) return cause;
  const msg = cause instanceof Error ? cause.message : String(cause);
  return new WalArchiverError(ErrorCodes.UNAVAILABLE, `${what}: ${msg.split('\n')[0]}`, { cause, details });
}

/** The start time of a process (Linux /proc), so a recycled pid is not mistaken for a lock's owner. */
async function processStart(pid: number): Promise<string | null> {
  try {
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

let selfStart: Promise<string | null> | undefined;
function selfOwner(extra: Partial<Owner> = {}): Promise<Owner> {
  selfStart ??= processStart(process.pid);
  return selfStart.then((start) => ({ pid: process.pid, start, host: HOST, nonce: nonce(), ...extra }));
}

/**
 * The lock nonces and member IDs this process holds now. A lock or member
 * file naming this process but none of these was left by a call that failed
 * half-way (a write error while releasing): nothing here holds it, so it is
 * as dead as one left by a crashed process.
 */
const heldHere = new Set<string>();

function orphanedHere(o: Pick<Owner, 'pid' | 'host'>, id: string): boolean {
  return o.host === HOST && o.pid === process.pid && !heldHere.has(id);
}

/** Whether the process that wrote `o` still runs. Another host's process is assumed alive. */
async function processAlive(o: Pick<Owner, 'pid' | 'start' | 'host'>): Promise<boolean> {
  if (o.host !== HOST) return true;
  try {
    process.kill(o.pid, 0);
  } catch (err) {
    if (errCode(err) === 'ESRCH') return false;
  }
  if (o.start) {
    const now = await processStart(o.pid);
    if (now !== null && now !== o.start) return false;
  }
  return true;
}

/** A small file's text; undefined when it does not exist. */
async function readText(file: string): Promise<string | undefined> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (err) {
    if (errCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}

async function readJson<T>(file: string): Promise<T | undefined> {
  const text = await readText(file);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}

/** Makes the names in each folder durable (a new file, folder or rename in it survives a power cut). */
async function syncFolders(...dirs: string[]): Promise<void> {
  for (const d of dirs) await fsyncDir(d);
}

/**
 * Creates `file` with `owner` as its content only if it does not exist
 * (write a private file, then hard-link it into place: atomic, never empty).
 */
async function tryCreate(file: string, owner: Owner): Promise<boolean> {
  const tmp = `${file}.${owner.nonce}.tmp`;
  await dfs.writeFile(tmp, JSON.stringify(owner));
  try {
    await dfs.link(tmp, file);
    return true;
  } catch (err) {
    if (errCode(err) === 'EEXIST') return false;
    throw err;
  } finally {
    await dfs.rm(tmp, { force: true });
  }
}

/**
 * A lock or claim's owner; undefined when the file is gone, null when it is
 * there but unreadable. Its content is written before its name is linked, so
 * no live writer leaves it unreadable: only a power cut does, keeping the
 * name but not the content. Such a file has no owner and may be broken.
 */
async function readOwner(file: string): Promise<Owner | undefined | null> {
  const text = await readText(file);
  if (text === undefined) return undefined;
  try {
    const o = JSON.parse(text) as Owner;
    return typeof o?.nonce === 'string' ? o : null;
  } catch {
    return null;
  }
}

/** Removes a lock or claim only if it still is the one with `expectedNonce`. */
async function breakLock(file: string, expectedNonce: string | undefined): Promise<void> {
  const moved = `${file}.${nonce()}.broken`;
  try {
    await dfs.rename(file, moved);
  } catch (err) {
    if (errCode(err) === 'ENOENT') return;
    throw err;
  }
  const info = await readJson<Owner>(moved);
  if (info?.nonce !== expectedNonce) {
    // It changed hands between the check and the rename: put it back.
    await dfs.link(moved, file).catch(() => undefined);
  }
  await dfs.rm(moved, { force: true });
}

async function releaseLock(file: string, owned: string): Promise<void> {
  heldHere.delete(owned);
  const info = await readJson<Owner>(file);
  if (info?.nonce === owned) await dfs.rm(file, { force: true });
}

async function acquireLock(file: string, signal?: AbortSignal): Promise<string> {
  const owner = await selfOwner();
  for (let attempt = 0; ; attempt++) {
    // Held from before the link, so another caller in this process never takes it for an orphan.
    heldHere.add(owner.nonce);
    let created = false;
    try {
      created = await tryCreate(file, owner);
    } finally {
      if (!created) heldHere.delete(owner.nonce);
    }
    if (created) return owner.nonce;
    const info = await readOwner(file);
    if (info === null) await breakLock(file, undefined);
    else if (info && (orphanedHere(info, info.nonce) || !(await processAlive(info))))
      await breakLock(file, info.nonce);
    throwIfAborted(signal);
    await sleep(Math.min(1 + attempt, 20) * (0.5 + Math.random()));
  }
}

function corrupt(message: string, details: Record<string, unknown>): WalArchiverError {
  return new WalArchiverError(ErrorCodes.CORRUPT, message, { retryable: false, details });
}

function parseRecord(line: Buffer, file: string, position: number): Record_ {
  let rec: Record_;
  try {
    rec = JSON.parse(line.toString('utf8')) as Record_;
  } catch (cause) {
    throw new WalArchiverError(
      ErrorCodes.CORRUPT,
      `event log ${file} has a corrupt record at byte ${position}`,
      {
        cause,
        retryable: false,
        details: { file, position },
      },
    );
  }
  if (
    rec === null ||
    typeof rec !== 'object' ||
    !Number.isSafeInteger(rec.offset) ||
    typeof rec.key !== 'string' ||
    typeof rec.timestamp !== 'number' ||
    rec.value === null ||
    typeof rec.value !== 'object'
  ) {
    throw corrupt(`event log ${file} has a malformed record at byte ${position}`, { file, position });
  }
  return rec;
}

async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf.subarray(0, done);
}

async function writeAt(fh: dfs.DurableFileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Finds the end of the last complete line and the offset after it, reading only the file's tail. */
export async function scanTail(fh: FileHandle, size: number, file: string): Promise<Tail> {
  if (size === 0) return { end: 0, nextOffset: 0, torn: false };
  for (let chunk = 64 * 1024; ; chunk *= 4) {
    const start = Math.max(0, size - chunk);
    const buf = await readAt(fh, start, size - start);
    const lastNl = buf.lastIndexOf(10);
    if (lastNl < 0) {
      if (start === 0) return { end: 0, nextOffset: 0, torn: true };
      continue;
    }
    const prevNl = lastNl === 0 ? -1 : buf.lastIndexOf(10, lastNl - 1);
    if (prevNl < 0 && start > 0) continue;
    const rec = parseRecord(buf.subarray(prevNl + 1, lastNl), file, start + prevNl + 1);
    const end = start + lastNl + 1;
    return { end, nextOffset: rec.offset + 1, torn: end !== size };
  }
}

/** Parses a folder bus URL; exported for the URL unit tests. */
export function parseFolderUrl(raw: string): { root: string; topicPrefix: string; partitions: number } {
  const url = parseServiceUrl(raw, 'event bus');
  if (url.protocol !== 'file:') throw invalid('event bus URL is not a file: URL', raw);
  if (url.host !== '' && url.host !== 'localhost') {
    throw invalid('event bus file: URL must name a local path (file:///path)', raw);
  }
  checkParams(url, FOLDER_PARAMS, raw);
  let root: string;
  try {
    root = fileURLToPath(new URL(`file://${url.pathname}`));
  } catch (cause) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `event bus URL has a bad path: ${maskUrl(raw)}`, {
      cause,
      retryable: false,
    });
  }
  if (root === '/' || root === '') throw invalid('event bus file: URL must name a folder, not /', raw);
  return {
    root: root.replace(/\/+$/, ''),
    ...busParams(url, raw),
  };
}

export class FolderEventBus implements EventBus {
  readonly url: string;
  readonly root: string;
  readonly topicPrefix: string;
  readonly defaultPartitions: number;
  private readonly log: Logger;
  private readonly options: FolderTuning;
  private readonly topics = new Map<string, Promise<TopicState>>();
  private readonly subscriptions = new Set<FolderSubscription>();
  private closed = false;

  constructor(raw: string, options: FolderBusOptions = {}) {
    const parsed = parseFolderUrl(raw);
    this.url = maskUrl(raw);
    this.root = parsed.root;
    this.topicPrefix = parsed.topicPrefix;
    this.defaultPartitions = parsed.partitions;
    this.log = options.logger ?? defaultBusLogger();
    this.options = busTuning(FOLDER_TUNING, options);
  }

  topicName(topic: string): string {
    return fullTopicName(this.topicPrefix, topic);
  }

  /** The folder is usable: it exists (or can be made) and is writable. */
  async checkConnection(): Promise<void> {
    try {
      await dfs.mkdir(this.root, { recursive: true });
      await fsp.access(this.root, fsConstants.W_OK | fsConstants.R_OK);
    } catch (cause) {
      throw ioError(`event bus folder ${this.root} is not usable`, cause, { url: this.url });
    }
  }

  /** Opens (creating on first use) a topic; every process agrees on the partition count in meta.json. */
  openTopic(topic: string): Promise<TopicState> {
    const name = this.topicName(topic);
    let state = this.topics.get(name);
    if (!state) {
      state = this.createTopic(name);
      this.topics.set(name, state);
      state.catch(() => this.topics.delete(name));
    }
    return state;
  }

  private async createTopic(name: string): Promise<TopicState> {
    const dir = path.join(this.root, name);
    const metaFile = path.join(dir, 'meta.json');
    try {
      await dfs.mkdir(dir, { recursive: true });
      let meta = await readJson<{ partitions?: unknown }>(metaFile);
      if (meta === undefined) {
        const tmp = `${metaFile}.${nonce()}.tmp`;
        await dfs.writeFile(tmp, JSON.stringify({ version: 1, partitions: this.defaultPartitions }));
        await fsyncFile(tmp);
        await dfs.link(tmp, metaFile).catch((err: unknown) => {
          if (errCode(err) !== 'EEXIST') throw err;
        });
        await dfs.rm(tmp, { force: true });
        meta = await readJson<{ partitions?: unknown }>(metaFile);
      }
      // The topic's folder and meta.json survive a power cut before anything is published to it.
      await syncFolders(dir, this.root);
      const partitions = meta?.partitions;
      if (typeof partitions !== 'number' || !Number.isInteger(partitions) || partitions < 1) {
        throw corrupt(`event log topic ${name} has a corrupt meta.json`, { file: metaFile });
      }
      if (partitions !== this.defaultPartitions) {
        this.log.debug('topic exists with another partition count; using it', { topic: name, partitions });
      }
      return { name, dir, partitions, writers: new Map() };
    } catch (cause) {
      throw ioError(`event bus cannot open topic ${name} in ${this.root}`, cause, { url: this.url });
    }
  }

  logFile(topic: TopicState, partition: number): string {
    return path.join(topic.dir, `${partName(partition)}.log`);
  }

  async publish(topic: string, events: readonly PublishEvent[], options: PublishOptions = {}): Promise<void> {
    checkCall(this.closed, this.url, options.signal);
    // Validate and encode everything first: a bad event fails the call before anything is written.
    const byPartition = new Map<number, { key: string; value: string }[]>();
    const state = this.openTopic(topic);
    const encoded = encodeEvents(events);
    const t = await state;
    for (const e of encoded) {
      const p = partitionForKey(e.key, t.partitions);
      let list = byPartition.get(p);
      if (!list) byPartition.set(p, (list = []));
      list.push(e);
    }
    await Promise.all([...byPartition].map(([p, list]) => this.enqueueAppend(t, p, list, options.signal)));
  }

  /** Appends from this process to one partition run one after another, in call order. */
  private enqueueAppend(
    t: TopicState,
    partition: number,
    events: { key: string; value: string }[],
    signal?: AbortSignal,
  ): Promise<void> {
    let w = t.writers.get(partition);
    if (!w) t.writers.set(partition, (w = { queue: Promise.resolve() }));
    const writer = w;
    const run = writer.queue.then(() => this.append(t, partition, writer, events, signal));
    writer.queue = run.catch(() => undefined);
    return run;
  }

  private async append(
    t: TopicState,
    partition: number,
    w: PartitionWriter,
    events: { key: string; value: string }[],
    signal?: AbortSignal,
  ): Promise<void> {
    const file = this.logFile(t, partition);
    const lockFile = path.join(t.dir, `${partName(partition)}.lock`);
    let lock: string;
    try {
      lock = await acquireLock(lockFile, signal);
    } catch (cause) {
      throw ioError(`event bus cannot lock ${file}`, cause, { url: this.url });
    }
    try {
      w.handle ??= await dfs.open(file, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o644);
      const fh = w.handle;
      const { size } = await fh.stat();
      const tail = w.tail && w.tail.end === size ? w.tail : await scanTail(fh.raw, size, file);
      if (tail.torn) {
        this.log.warn('event log ends with an incomplete record (a crashed append); truncating it', {
          file,
          position: tail.end,
          bytes: size - tail.end,
        });
        await fh.truncate(tail.end);
      }
      const now = Date.now();
      const lines = events.map(
        (e, i) =>
          `{"offset":${tail.nextOffset + i},"timestamp":${now},"key":${JSON.stringify(e.key)},"value":${e.value}}\n`,
      );
      const data = Buffer.from(lines.join(''), 'utf8');
      w.tail = undefined;
      await writeAt(fh, data, tail.end);
      await fh.sync();
      // A log file this append created is only durable once its name is.
      if (!w.folderSynced) {
        await syncFolders(t.dir);
        w.folderSynced = true;
      }
      w.tail = { end: tail.end + data.length, nextOffset: tail.nextOffset + events.length, torn: false };
    } catch (cause) {
      w.tail = undefined;
      throw ioError(`event bus cannot append to ${file}`, cause, { url: this.url });
    } finally {
      await releaseLock(lockFile, lock).catch(() => undefined);
    }
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    checkCall(this.closed, this.url);
    checkSubscribe(options);
    const t = await this.openTopic(options.topic);
    const sub = new FolderSubscription(this, t, options, this.options, this.log);
    this.subscriptions.add(sub);
    sub.done.finally(() => this.subscriptions.delete(sub)).catch(() => undefined);
    await sub.start();
    return sub;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.subscriptions].map((s) => s.stop()));
    for (const state of this.topics.values()) {
      const t = await state.catch(() => undefined);
      if (!t) continue;
      for (const w of t.writers.values()) {
        await w.queue;
        await w.handle?.close().catch(() => undefined);
        w.handle = undefined;
      }
    }
  }
}

interface Cursor {
  partition: number;
  file: string;
  handle?: FileHandle;
  position: number;
  offset: number;
  claimNonce: string;
}

interface Member {
  memberId: string;
  pid: number;
  start: string | null;
  host: string;
}

class FolderSubscription implements Subscription {
  readonly memberId = `${HOST}-${process.pid}-${nonce()}`;
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  private readonly groupDir: string;
  private readonly membersDir: string;
  private readonly claimsDir: string;
  private readonly offsetsDir: string;
  private readonly memberFile: string;
  private readonly owned = new Map<number, Cursor>();
  private desired = new Set<number>();
  private live = new Set<string>();
  private stopping = false;
  private readonly stopController = new AbortController();
  private beating?: Promise<void>;
  private stopPromise?: Promise<void>;
  private heartbeatTimer?: NodeJS.Timeout;
  private watcher?: FSWatcher;
  private wakeUp?: () => void;
  private loop?: Promise<void>;
  private memberInfo?: Member;
  private readyResolve?: () => void;

  constructor(
    private readonly bus: FolderEventBus,
    private readonly topic: TopicState,
    private readonly options: SubscribeOptions,
    private readonly tuning: FolderTuning,
    private readonly log: Logger,
  ) {
    this.groupDir = path.join(topic.dir, 'groups', options.group);
    this.membersDir = path.join(this.groupDir, 'members');
    this.claimsDir = path.join(this.groupDir, 'claims');
    this.offsetsDir = path.join(this.groupDir, 'offsets');
    this.memberFile = path.join(this.membersDir, `${this.memberId}.json`);
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  async start(): Promise<void> {
    try {
      for (const d of [this.membersDir, this.claimsDir, this.offsetsDir])
        await dfs.mkdir(d, { recursive: true });
      // The group's folders may be new: make their names durable, or a committed offset could vanish.
      await syncFolders(this.groupDir, path.dirname(this.groupDir), this.topic.dir);
      const owner = await selfOwner();
      this.memberInfo = { memberId: this.memberId, pid: owner.pid, start: owner.start, host: owner.host };
      heldHere.add(this.memberId);
      await this.writeMember();
      await this.refreshMembership();
    } catch (cause) {
      heldHere.delete(this.memberId);
      this.resolveDone();
      throw ioError(`event bus cannot join group ${this.options.group} of ${this.topic.name}`, cause, {
        url: this.bus.url,
      });
    }
    try {
      this.watcher = watch(this.topic.dir, { persistent: false }, () => this.wake());
      this.watcher.on('error', () => undefined);
    } catch {
      // The poll covers for a missing watcher.
    }
    this.heartbeatTimer = setInterval(() => {
      this.beating ??= this.heartbeat().finally(() => (this.beating = undefined));
    }, this.tuning.heartbeatMs);
    this.heartbeatTimer.unref();
    const ready = new Promise<void>((resolve) => (this.readyResolve = resolve));
    this.loop = this.run().finally(() => this.resolveDone());
    await ready;
  }

  stop(): Promise<void> {
    this.stopPromise ??= (async () => {
      this.stopping = true;
      this.stopController.abort();
      this.wake();
      await this.loop;
    })();
    return this.stopPromise;
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  private waitForChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        if (this.wakeUp === done) this.wakeUp = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeUp = done;
    });
  }

  private async writeMember(): Promise<void> {
    await atomicWriteFile(this.memberFile, JSON.stringify(this.memberInfo));
  }

  private async heartbeat(): Promise<void> {
    if (this.stopping) return;
    try {
      const now = new Date();
      await fsp.utimes(this.memberFile, now, now).catch(async (err: unknown) => {
        if (errCode(err) !== 'ENOENT') throw err;
        // Another member took this one for dead; say otherwise.
        if (!this.stopping) await this.writeMember();
      });
      const before = [...this.desired].join(',');
      await this.refreshMembership();
      if ([...this.desired].join(',') !== before) this.wake();
    } catch (err) {
      this.log.warn('event bus heartbeat failed', { group: this.options.group, error: String(err) });
    }
  }

  /** Reads the live members and recomputes which partitions are this member's. */
  private async refreshMembership(): Promise<void> {
    const names = await fsp.readdir(this.membersDir);
    const now = Date.now();
    const live: string[] = [];
    for (const name of names) {
      if (!name.endsWith('.json')) continue;
      const id = name.slice(0, -'.json'.length);
      const file = path.join(this.membersDir, name);
      if (id === this.memberId) {
        live.push(id);
        continue;
      }
      let alive = false;
      try {
        const st = await fsp.stat(file);
        const info = await readJson<Member>(file);
        alive =
          now - st.mtimeMs <= this.tuning.sessionTimeoutMs &&
          (info === undefined || (!orphanedHere(info, id) && (await processAlive(info))));
      } catch (err) {
        if (errCode(err) !== 'ENOENT') throw err;
      }
      if (alive) live.push(id);
      else await dfs.rm(file, { force: true });
    }
    live.sort();
    this.live = new Set(live);
    const me = live.indexOf(this.memberId);
    const desired = new Set<number>();
    for (let p = 0; p < this.topic.partitions; p++) if (p % live.length === me) desired.add(p);
    this.desired = desired;
  }

  private claimFile(p: number): string {
    return path.join(this.claimsDir, `${partName(p)}.json`);
  }

  private offsetFile(p: number): string {
    return path.join(this.offsetsDir, `${partName(p)}.json`);
  }

  /** Gives up partitions no longer ours and claims the ones that are, when their previous owner let go. */
  private async applyAssignment(): Promise<void> {
    for (const [p, cursor] of this.owned) {
      const info = await readJson<Owner>(this.claimFile(p));
      if (!this.desired.has(p) || info?.nonce !== cursor.claimNonce) await this.release(cursor);
    }
    for (const p of this.desired) {
      if (this.owned.has(p) || this.stopping) continue;
      const file = this.claimFile(p);
      const owner = await selfOwner({ memberId: this.memberId });
      if (!(await tryCreate(file, owner))) {
        const info = await readOwner(file);
        if (info === null) {
          await breakLock(file, undefined);
          continue;
        }
        const stale =
          info &&
          (!info.memberId ||
            info.memberId === this.memberId ||
            !this.live.has(info.memberId) ||
            !(await processAlive(info)));
        if (info && stale) {
          await breakLock(file, info.nonce);
        }
        continue;
      }
      try {
        this.owned.set(p, await this.openCursor(p, owner.nonce));
      } catch (err) {
        await releaseLock(file, owner.nonce).catch(() => undefined);
        throw err;
      }
    }
  }

  private async openCursor(p: number, claimNonce: string): Promise<Cursor> {
    const file = this.bus.logFile(this.topic, p);
    const cursor: Cursor = { partition: p, file, position: 0, offset: 0, claimNonce };
    const committed = await readJson<{ offset?: unknown; position?: unknown }>(this.offsetFile(p));
    if (committed && Number.isSafeInteger(committed.offset) && Number.isSafeInteger(committed.position)) {
      cursor.offset = committed.offset as number;
      cursor.position = committed.position as number;
      return cursor;
    }
    if (!this.options.fromBeginning) {
      const fh = await this.openLog(cursor);
      if (fh) {
        const tail = await scanTail(fh, (await fh.stat()).size, file);
        cursor.position = tail.end;
        cursor.offset = tail.nextOffset;
      }
    }
    await this.commit(cursor);
    return cursor;
  }

  private async openLog(cursor: Cursor): Promise<FileHandle | undefined> {
    if (cursor.handle) return cursor.handle;
    try {
      cursor.handle = await fsp.open(cursor.file, 'r');
    } catch (err) {
      if (errCode(err) === 'ENOENT') return undefined;
      throw err;
    }
    return cursor.handle;
  }

  private async release(cursor: Cursor): Promise<void> {
    this.owned.delete(cursor.partition);
    await cursor.handle?.close().catch(() => undefined);
    await releaseLock(this.claimFile(cursor.partition), cursor.claimNonce);
  }

  private async commit(cursor: Cursor): Promise<void> {
    await atomicWriteFile(
      this.offsetFile(cursor.partition),
      JSON.stringify({
        offset: cursor.offset,
        position: cursor.position,
        committedAt: new Date().toISOString(),
      }),
    );
  }

  /** Reads the complete records after the cursor, up to the batch limits. */
  private async readBatch(
    cursor: Cursor,
  ): Promise<{ events: ConsumedEvent[]; position: number; offset: number }> {
    const empty = { events: [], position: cursor.position, offset: cursor.offset };
    const fh = await this.openLog(cursor);
    if (!fh) return empty;
    const { size } = await fh.stat();
    if (size < cursor.position) {
      throw corrupt(`event log ${cursor.file} is shorter than the committed position ${cursor.position}`, {
        file: cursor.file,
      });
    }
    if (size === cursor.position) return empty;
    let buf = await readAt(fh, cursor.position, Math.min(size - cursor.position, MAX_BATCH_BYTES));
    if (buf.indexOf(10) < 0 && cursor.position + buf.length < size) {
      buf = await readAt(fh, cursor.position, size - cursor.position);
    }
    const events: ConsumedEvent[] = [];
    let start = 0;
    let offset = cursor.offset;
    while (events.length < this.tuning.maxBatchRecords) {
      const nl = buf.indexOf(10, start);
      if (nl < 0) break;
      const at = cursor.position + start;
      const rec = parseRecord(buf.subarray(start, nl), cursor.file, at);
      if (rec.offset !== offset) {
        throw corrupt(
          `event log ${cursor.file} has offset ${rec.offset} at byte ${at} where ${offset} was expected`,
          {
            file: cursor.file,
            position: at,
          },
        );
      }
      events.push({
        topic: this.topic.name,
        key: rec.key,
        value: rec.value,
        partition: cursor.partition,
        offset: String(rec.offset),
        timestamp: new Date(rec.timestamp),
      });
      offset++;
      start = nl + 1;
    }
    return { events, position: cursor.position + start, offset };
  }

  private async run(): Promise<void> {
    let failures = 0;
    try {
      while (!this.stopping) {
        let worked = false;
        try {
          await this.applyAssignment();
          this.readyResolve?.();
          for (const p of [...this.owned.keys()].sort((a, b) => a - b)) {
            if (this.stopping) break;
            const cursor = this.owned.get(p);
            if (!cursor || !this.desired.has(p)) continue;
            const batch = await this.readBatch(cursor);
            if (batch.events.length === 0) continue;
            await this.options.handler(batch.events);
            cursor.position = batch.position;
            cursor.offset = batch.offset;
            await this.commit(cursor);
            worked = true;
          }
          failures = 0;
        } catch (err) {
          this.readyResolve?.();
          failures++;
          this.report(err);
          // Cursors only move after a batch was handled, so the failed batch is read again.
          for (const cursor of this.owned.values()) {
            await cursor.handle?.close().catch(() => undefined);
            cursor.handle = undefined;
          }
          await sleep(
            Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(failures - 1, 10)),
            this.stopController.signal,
          ).catch(() => undefined); // stopping: the loop sees it
          continue;
        }
        if (!worked && !this.stopping) await this.waitForChange(this.tuning.pollMs);
      }
    } finally {
      clearInterval(this.heartbeatTimer);
      this.watcher?.close();
      await this.beating;
      for (const cursor of [...this.owned.values()]) await this.release(cursor).catch(() => undefined);
      heldHere.delete(this.memberId);
      await dfs.rm(this.memberFile, { force: true }).catch(() => undefined);
    }
  }

  private report(err: unknown): void {
    this.log[err instanceof WalArchiverError && err.code === ErrorCodes.CORRUPT ? 'error' : 'debug'](
      'event subscription failed; retrying',
      {
        topic: this.topic.name,
        group: this.options.group,
        error: err instanceof Error ? err.message : String(err),
      },
    );
    try {
      this.options.onError?.(err);
    } catch {
      // An onError that throws must not stop the subscription.
    }
  }
}
