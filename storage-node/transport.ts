import http from 'node:http';
import { pipeline } from 'node:stream/promises';
import { ErrorCodes, WalArchiverError } from '../contract/errors.js';
import type { Logger } from '../contract/log.js';
import type { Entry, Message, MessageType, SnapshotMeta } from './raft/index.js';
import type { StateSnapshot } from './replica.js';

/**
 * Node-to-node Raft traffic over HTTP.
 *
 * `POST /v1/raft/messages` carries a batch of frames, each
 * `u32 header length, header JSON, entry data…`: the header names the
 * partition, the message fields and each entry's data length, and the
 * sender's archive position for the partition (followers must not prune
 * what the leader's sidecar has not archived). One sender loop per peer
 * batches whatever is queued; a failed batch is dropped and every partition
 * in it is told the peer is unreachable (Raft resends).
 *
 * `POST /v1/raft/snapshot` streams a partition's state tar, with the message
 * in the `x-raft-message` header.
 */

export interface Frame {
  partition: string;
  archived?: number;
  message: Message;
}

interface FrameHeader {
  p: string;
  a?: number;
  m: Omit<Message, 'entries'> & {
    entries: Array<{ term: number; index: number; type: Entry['type']; n: number }>;
  };
}

const MESSAGE_TYPES: ReadonlySet<MessageType> = new Set([
  'append',
  'append-response',
  'heartbeat',
  'heartbeat-response',
  'pre-vote',
  'pre-vote-response',
  'vote',
  'vote-response',
  'snapshot',
  'timeout-now',
]);

export function encodeFrames(frames: readonly Frame[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of frames) {
    const { entries, ...rest } = f.message;
    const header: FrameHeader = {
      p: f.partition,
      ...(f.archived === undefined ? {} : { a: f.archived }),
      m: {
        ...rest,
        entries: entries.map((e) => ({ term: e.term, index: e.index, type: e.type, n: e.data.byteLength })),
      },
    };
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(json.length);
    parts.push(len, json);
    for (const e of entries) parts.push(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength));
  }
  return Buffer.concat(parts);
}

function badFrame(why: string): WalArchiverError {
  return new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, `malformed raft message batch: ${why}`, {
    retryable: false,
  });
}

function num(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    throw badFrame(`${what} is not a non-negative integer`);
  return v;
}

export function decodeMessage(raw: unknown): Message {
  if (typeof raw !== 'object' || raw === null) throw badFrame('message is not an object');
  const m = raw as Record<string, unknown>;
  if (!MESSAGE_TYPES.has(m.type as MessageType)) throw badFrame(`unknown message type ${String(m.type)}`);
  let snapshot: SnapshotMeta | undefined;
  if (m.snapshot !== undefined) {
    const s = m.snapshot as Record<string, unknown>;
    if (!Array.isArray(s.voters)) throw badFrame('snapshot voters missing');
    snapshot = {
      index: num(s.index, 'snapshot.index'),
      term: num(s.term, 'snapshot.term'),
      voters: s.voters.map((v) => num(v, 'voter')),
    };
  }
  return {
    type: m.type as MessageType,
    from: num(m.from, 'from'),
    to: num(m.to, 'to'),
    term: num(m.term, 'term'),
    logTerm: num(m.logTerm, 'logTerm'),
    index: num(m.index, 'index'),
    commit: num(m.commit, 'commit'),
    reject: m.reject === true,
    rejectHint: num(m.rejectHint, 'rejectHint'),
    transfer: m.transfer === true,
    entries: [],
    ...(snapshot ? { snapshot } : {}),
  };
}

export function decodeFrames(buf: Buffer): Frame[] {
  const frames: Frame[] = [];
  let at = 0;
  while (at < buf.length) {
    if (at + 4 > buf.length) throw badFrame('truncated frame length');
    const len = buf.readUInt32BE(at);
    at += 4;
    if (at + len > buf.length) throw badFrame('truncated frame header');
    let header: FrameHeader;
    try {
      header = JSON.parse(buf.toString('utf8', at, at + len)) as FrameHeader;
    } catch {
      throw badFrame('frame header is not JSON');
    }
    at += len;
    if (typeof header.p !== 'string' || !/^[1-9][0-9]{0,15}$/.test(header.p))
      throw badFrame('bad partition id');
    const message = decodeMessage(header.m);
    const entries: Entry[] = [];
    for (const e of Array.isArray(header.m.entries) ? header.m.entries : []) {
      const n = num(e.n, 'entry length');
      if (at + n > buf.length) throw badFrame('truncated entry data');
      if (e.type !== 'normal' && e.type !== 'empty') throw badFrame('bad entry type');
      entries.push({
        term: num(e.term, 'entry term'),
        index: num(e.index, 'entry index'),
        type: e.type,
        data: buf.subarray(at, at + n),
      });
      at += n;
    }
    frames.push({
      partition: header.p,
      ...(header.a === undefined ? {} : { archived: num(header.a, 'archived') }),
      message: { ...message, entries },
    });
  }
  return frames;
}

export interface TransportHandlers {
  unreachable(partition: string, peer: number): void;
  snapshotDone(partition: string, peer: number, ok: boolean): void;
  archivedPosition(partition: string): number | undefined;
}

const MAX_BATCH_BYTES = 16 * 1024 * 1024;
const REQUEST_TIMEOUT_MS = 5_000;

class PeerSender {
  private queue: Frame[] = [];
  private queuedBytes = 0;
  private sending = false;

  constructor(
    readonly id: number,
    readonly url: string,
    private readonly agent: http.Agent,
    private readonly handlers: TransportHandlers,
  ) {}

  enqueue(frame: Frame): void {
    // A peer that is down must not make us hold unbounded data: Raft resends what is lost.
    if (this.queuedBytes > 4 * MAX_BATCH_BYTES) {
      this.handlers.unreachable(frame.partition, this.id);
      return;
    }
    this.queue.push(frame);
    for (const e of frame.message.entries) this.queuedBytes += e.data.byteLength;
    if (!this.sending) void this.drain();
  }

  private async drain(): Promise<void> {
    this.sending = true;
    try {
      while (this.queue.length > 0) {
        const batch: Frame[] = [];
        let bytes = 0;
        while (this.queue.length > 0 && (batch.length === 0 || bytes < MAX_BATCH_BYTES)) {
          const f = this.queue.shift()!;
          for (const e of f.message.entries) bytes += e.data.byteLength;
          batch.push(f);
        }
        this.queuedBytes -= bytes;
        try {
          await postBuffer(`${this.url}/v1/raft/messages`, encodeFrames(batch), this.agent);
        } catch {
          for (const p of new Set(batch.map((f) => f.partition))) this.handlers.unreachable(p, this.id);
        }
      }
    } finally {
      this.sending = false;
    }
  }
}

function postBuffer(url: string, body: Buffer, agent: http.Agent): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: 'POST',
        agent,
        timeout: REQUEST_TIMEOUT_MS,
        headers: { 'content-type': 'application/octet-stream', 'content-length': body.length },
      },
      (res) => {
        res.resume();
        res.on('end', () =>
          res.statusCode === 204 || res.statusCode === 200
            ? resolve()
            : reject(new Error(`HTTP ${res.statusCode}`)),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

export class HttpTransport {
  private readonly senders = new Map<number, PeerSender>();
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  private readonly snapshotsInFlight = new Set<string>();
  /** Fault injection: while set, nothing is sent to any peer (as if the network were cut). */
  isolated = false;

  constructor(
    readonly nodeId: number,
    readonly peers: ReadonlyMap<number, string>,
    private readonly handlers: TransportHandlers,
    private readonly logger: Logger,
  ) {
    for (const [id, url] of peers) {
      if (id !== nodeId) this.senders.set(id, new PeerSender(id, url, this.agent, handlers));
    }
  }

  send(partition: string, messages: Message[]): void {
    if (this.isolated) {
      for (const to of new Set(messages.map((m) => m.to))) this.handlers.unreachable(partition, to);
      return;
    }
    const archived = this.handlers.archivedPosition(partition);
    for (const message of messages) {
      const sender = this.senders.get(message.to);
      if (!sender) {
        this.logger.warn('message for an unknown peer dropped', { partition, peer: message.to });
        continue;
      }
      sender.enqueue({ partition, message, ...(archived === undefined ? {} : { archived }) });
    }
  }

  sendSnapshot(partition: string, message: Message, open: () => Promise<StateSnapshot>): void {
    const key = `${partition}/${message.to}`;
    const url = this.peers.get(message.to);
    if (!url || this.snapshotsInFlight.has(key)) return;
    if (this.isolated) {
      this.handlers.snapshotDone(partition, message.to, false);
      return;
    }
    this.snapshotsInFlight.add(key);
    void (async () => {
      let ok = false;
      let snap: StateSnapshot | undefined;
      try {
        snap = await open();
        // The state may have moved on since Raft chose the snapshot; ship the
        // newer one and say so (the follower then catches up from there).
        const snapshot = { index: snap.lsn, term: snap.term, voters: message.snapshot?.voters ?? [] };
        const header = JSON.stringify({ partition, message: { ...message, entries: [], snapshot } });
        await new Promise<void>((resolve, reject) => {
          const req = http.request(`${url}/v1/raft/snapshot`, {
            method: 'POST',
            agent: this.agent,
            headers: {
              'content-type': 'application/x-tar',
              'x-raft-message': Buffer.from(header).toString('base64'),
            },
          });
          req.on('response', (res) => {
            res.resume();
            res.on('end', () =>
              res.statusCode === 204 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`)),
            );
          });
          req.on('error', reject);
          pipeline(snap!.stream, req).catch(reject);
        });
        ok = true;
        this.logger.info('sent snapshot', { partition, peer: message.to, lsn: snap.lsn });
      } catch (err) {
        this.logger.warn('snapshot transfer failed', { partition, peer: message.to, error: err });
      } finally {
        await snap?.release().catch(() => undefined);
        this.snapshotsInFlight.delete(key);
        this.handlers.snapshotDone(partition, message.to, ok);
      }
    })();
  }

  close(): void {
    this.agent.destroy();
  }
}
