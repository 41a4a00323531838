import http from 'node:http';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { describeError, ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { Backoff, sleep } from '../../contract/retry.js';
import type {
  LeadershipFollowOptions,
  LeadershipState,
  NodeSnapshot,
  PartitionView,
  StorageNode,
} from './storage-node.js';

/**
 * The storage node's HTTP API (storage-node/api.ts) as the sidecar uses it:
 *
 *   GET /v1/partitions/<id>            the partition's status
 *   GET /v1/partitions/<id>/snapshot   tar of the applied state at X-Snapshot-LSN
 *                                      (X-Snapshot-Max-Committed-At bounds its commit stamps)
 *   GET /v1/leadership/stream          NDJSON: every partition's state, then every change
 */

/** An LSN in a header or object metadata (decimal, ≥ 1), or undefined. */
export function parseLsnHeader(value: string | null): number | undefined {
  if (value === null || !/^\d{1,16}$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n >= 1 ? n : undefined;
}

/** The JSON error body of a failed answer, or nothing when it has none. */
async function errorBody(res: Response): Promise<{ error?: string }> {
  try {
    return (await res.json()) as { error?: string };
  } catch {
    return {};
  }
}

/** A request that got no answer: ABORTED on the signal, else UNAVAILABLE (retryable). */
export function unreachable(url: string, err: unknown, signal?: AbortSignal): WalArchiverError {
  if (signal?.aborted)
    return new WalArchiverError(ErrorCodes.ABORTED, `${url}: aborted`, { cause: err, retryable: false });
  return new WalArchiverError(ErrorCodes.UNAVAILABLE, `storage node ${url}: ${describeError(err)}`, {
    cause: err,
    retryable: true,
  });
}

function parseLine(line: string): LeadershipState | undefined {
  try {
    const v = JSON.parse(line) as Record<string, unknown>;
    if (typeof v.partition !== 'string' || typeof v.node !== 'number' || typeof v.term !== 'number')
      return undefined;
    return {
      partition: v.partition,
      node: v.node,
      leader: typeof v.leader === 'number' ? v.leader : 0,
      term: v.term,
      role: typeof v.role === 'string' ? v.role : 'follower',
    };
  } catch {
    return undefined;
  }
}

/** How long a status request may take. */
const STATUS_TIMEOUT_MS = 10_000;

export class HttpStorageNode implements StorageNode {
  private readonly base: string;

  constructor(readonly url: string) {
    this.base = url.replace(/\/+$/, '');
  }

  async partitionStatus(partition: string, signal?: AbortSignal): Promise<PartitionView> {
    const url = `${this.base}/v1/partitions/${encodeURIComponent(partition)}`;
    const timeout = AbortSignal.timeout(STATUS_TIMEOUT_MS);
    let res: Response;
    try {
      res = await fetch(url, { signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
    } catch (err) {
      throw unreachable(url, err, signal);
    }
    if (!res.ok) {
      const body = await errorBody(res);
      const code = res.status === 404 ? ErrorCodes.NOT_FOUND : ErrorCodes.UNAVAILABLE;
      throw new WalArchiverError(
        code,
        `storage node ${this.url}: partition ${partition}: ${body.error ?? `HTTP ${res.status}`}`,
        { retryable: code === ErrorCodes.UNAVAILABLE },
      );
    }
    try {
      return (await res.json()) as PartitionView;
    } catch (err) {
      throw unreachable(url, err, signal);
    }
  }

  async snapshot(partition: string, signal?: AbortSignal): Promise<NodeSnapshot> {
    const url = `${this.base}/v1/partitions/${encodeURIComponent(partition)}/snapshot`;
    const what = `storage node ${this.url}: snapshot of partition ${partition}`;
    let res: Response;
    try {
      res = await fetch(url, signal ? { signal } : {});
    } catch (err) {
      throw unreachable(url, err, signal);
    }
    if (!res.ok || res.body === null) {
      const body = await errorBody(res);
      throw new WalArchiverError(
        res.status === 404 ? ErrorCodes.NOT_FOUND : ErrorCodes.UNAVAILABLE,
        `${what}: ${body.error ?? `HTTP ${res.status}`}`,
        { retryable: res.status !== 404 },
      );
    }
    const stream = res.body;
    const cancel = () => stream.cancel().catch(() => undefined);
    const lsnHeader = res.headers.get('x-snapshot-lsn');
    const lsn = parseLsnHeader(lsnHeader);
    const answeredFor = res.headers.get('x-partition');
    if (lsn === undefined || (answeredFor !== null && answeredFor !== partition)) {
      await cancel();
      throw new WalArchiverError(
        lsn === undefined && lsnHeader === '0' ? ErrorCodes.NOT_FOUND : ErrorCodes.CORRUPT,
        lsn === undefined
          ? `${what}: no applied LSN to back up (X-Snapshot-LSN ${JSON.stringify(lsnHeader)})`
          : `${what}: answered for partition ${answeredFor}`,
        { retryable: false },
      );
    }
    const max = Date.parse(res.headers.get('x-snapshot-max-committed-at') ?? '');
    return {
      lsn,
      ...(Number.isFinite(max) ? { maxCommittedAt: new Date(max).toISOString() } : {}),
      body: Readable.fromWeb(stream as WebReadableStream<Uint8Array>),
      cancel,
    };
  }

  async followLeadership(options: LeadershipFollowOptions): Promise<void> {
    const backoff = new Backoff({ initialMs: 200, maxMs: 5_000 });
    const url = `${this.base}/v1/leadership/stream`;
    let warned = 0;
    while (!options.signal.aborted) {
      try {
        await new Promise<void>((resolve, reject) => {
          const req = http.get(url, { signal: options.signal }, (res) => {
            if (res.statusCode !== 200) {
              res.resume();
              reject(new Error(`HTTP ${res.statusCode}`));
              return;
            }
            backoff.reset();
            warned = 0;
            options.logger.info('following leadership stream', { url });
            const lines = createInterface({ input: res });
            // A node that dies cuts the stream; readline re-emits that error, which must end
            // this connection attempt, not the process.
            lines.on('error', reject);
            lines.on('line', (line) => {
              const s = parseLine(line);
              if (s) options.onChange(s);
              else if (line.trim())
                options.logger.warn('ignoring a malformed leadership line', { line: line.slice(0, 200) });
            });
            res.on('end', () => resolve());
            res.on('error', reject);
          });
          req.on('error', reject);
        });
      } catch (err) {
        if (options.signal.aborted) break;
        // Rate-limited: one warning per outage, then every 20th attempt.
        if (warned++ % 20 === 0)
          options.logger.warn('storage node unreachable; retrying', { url, error: err });
      }
      options.onDisconnect?.();
      await sleep(backoff.next(), options.signal).catch(() => undefined);
    }
  }
}
