import { isSpoolError } from '../archive/segment-writer.js';
import { describeError, ErrorCodes, isRetryable, isWalArchiverError } from '../../contract/errors.js';
import { Backoff, sleep } from '../../contract/retry.js';
import type { PartitionContext } from './context.js';

/**
 * The per-loop retry layer of a partition. A loop that throws is run again
 * after a capped backoff when its error is transient (store or bus down,
 * spool full); FENCED (a newer leader took over) stops the partition quietly;
 * anything else (CORRUPT, a bug) stops it with a metric and a log line.
 * Stopping, or being stopped, is never counted as a failure.
 */
export async function supervise(
  ctx: PartitionContext,
  name: string,
  loop: () => Promise<void>,
): Promise<void> {
  const backoff = new Backoff({ initialMs: 250, maxMs: 30_000 });
  const m = ctx.o.metrics;
  let failures = 0;
  while (!ctx.aborted) {
    try {
      await loop();
      return;
    } catch (err) {
      if (ctx.aborted) return;
      if (isWalArchiverError(err, ErrorCodes.FENCED)) {
        ctx.state = 'fenced';
        ctx.error = describeError(err);
        ctx.log.warn('a newer leader archives this partition; stopping', { error: err });
        m.leading.set(ctx.labels, 0);
        ctx.stop();
        return;
      }
      if (!isRetryable(err)) {
        ctx.state = 'failed';
        ctx.error = describeError(err);
        m.errors.inc({ partition: ctx.partition, kind: errorKind(err) });
        m.stopped.set(ctx.labels, 1);
        ctx.log.error('archiving stopped', {
          error: err,
          loop: name,
          ...(isWalArchiverError(err) ? err.details : {}),
        });
        ctx.stop();
        return;
      }
      failures++;
      m.errors.inc({ partition: ctx.partition, kind: errorKind(err) });
      m.retries.inc({ partition: ctx.partition, operation: name });
      const delay = backoff.next();
      // Rate-limited: the first failure and then every tenth.
      if (failures === 1 || failures % 10 === 0) {
        ctx.log.warn('archiving failed; retrying', { error: err, loop: name, failures, retryInMs: delay });
      }
      await sleep(delay, ctx.signal).catch(() => undefined);
    }
  }
}

function errorKind(err: unknown): string {
  if (isSpoolError(err)) return 'spool';
  return isWalArchiverError(err) ? err.code.toLowerCase() : 'internal';
}
