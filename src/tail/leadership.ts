import http from 'node:http';
import { createInterface } from 'node:readline';
import type { Logger } from '../../contract/log.js';
import { Backoff, sleep } from '../../contract/retry.js';

/**
 * Follows the co-located storage node's leadership stream
 * (`GET /v1/leadership/stream`, NDJSON): first the state of every partition,
 * then every change. Reconnects with backoff when the node restarts; after a
 * reconnect the full state comes again, so nothing is missed.
 */

export interface LeadershipState {
  partition: string;
  node: number;
  leader: number;
  term: number;
  role: string;
}

export interface LeadershipFollowerOptions {
  nodeUrl: string;
  logger: Logger;
  onChange: (state: LeadershipState) => void;
  /** Called when the connection drops: the caller should treat every partition as unknown until the next state. */
  onDisconnect?: () => void;
  signal: AbortSignal;
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

export async function followLeadership(options: LeadershipFollowerOptions): Promise<void> {
  const backoff = new Backoff({ initialMs: 200, maxMs: 5_000 });
  const url = `${options.nodeUrl.replace(/\/+$/, '')}/v1/leadership/stream`;
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
      if (warned++ % 20 === 0) options.logger.warn('storage node unreachable; retrying', { url, error: err });
    }
    options.onDisconnect?.();
    await sleep(backoff.next(), options.signal).catch(() => undefined);
  }
}
