import { createRequire } from 'node:module';

/**
 * kafkajs 2.2.4 (the latest release) re-arms a timer on every broker
 * connection after each response, even with nothing pending: with its
 * initial throttle time of -1 the delay is negative, so the timer fires
 * every millisecond for as long as the connection lives (kafkajs issues
 * #1556 and #1704). An idle sidecar with a few consumers spent 4-5 % of a
 * core on it. This replaces that one method with the behaviour its comment
 * describes: look at the pending requests again only when some are pending,
 * once the client-side throttle (if any) has passed.
 */

interface RequestQueueLike {
  pending: unknown[];
  throttledUntil: number;
  throttleCheckTimeoutId: NodeJS.Timeout | null;
  checkPendingRequests(): void;
}

/** kafkajs' own interval for re-checking a queue that is merely full. */
const CHECK_PENDING_REQUESTS_INTERVAL_MS = 10;

export function scheduleCheckPendingRequests(this: RequestQueueLike): void {
  if (this.throttleCheckTimeoutId || this.pending.length === 0) return;
  const wait = Math.max(this.throttledUntil - Date.now(), CHECK_PENDING_REQUESTS_INTERVAL_MS);
  this.throttleCheckTimeoutId = setTimeout(() => {
    this.throttleCheckTimeoutId = null;
    this.checkPendingRequests();
  }, wait);
}

let applied = false;

/** Installs the fix on kafkajs' RequestQueue (idempotent). */
export function applyKafkajsIdleFix(): void {
  if (applied) return;
  const require = createRequire(import.meta.url);
  const RequestQueue = require('kafkajs/src/network/requestQueue/index.js') as {
    prototype: { scheduleCheckPendingRequests: unknown };
  };
  RequestQueue.prototype.scheduleCheckPendingRequests = scheduleCheckPendingRequests;
  applied = true;
}
