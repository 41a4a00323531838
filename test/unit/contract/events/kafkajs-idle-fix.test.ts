import { createRequire } from 'node:module';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  applyKafkajsIdleFix,
  scheduleCheckPendingRequests,
} from '../../../../contract/events/kafkajs-idle-fix.js';

function queue(pending: number, throttledUntil = -1) {
  return {
    pending: Array.from({ length: pending }, () => ({})),
    throttledUntil,
    throttleCheckTimeoutId: null as NodeJS.Timeout | null,
    checkPendingRequests: vi.fn(),
  };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('kafkajs idle fix', () => {
  it('arms no timer when nothing is pending (kafkajs 2.2.4 armed a 1 ms timer forever)', () => {
    vi.useFakeTimers();
    const q = queue(0);
    scheduleCheckPendingRequests.call(q);
    expect(q.throttleCheckTimeoutId).toBeNull();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('checks pending requests again after the interval, or once a throttle has passed', () => {
    vi.useFakeTimers();
    const q = queue(2);
    scheduleCheckPendingRequests.call(q);
    scheduleCheckPendingRequests.call(q);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(9);
    expect(q.checkPendingRequests).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(q.checkPendingRequests).toHaveBeenCalledTimes(1);
    expect(q.throttleCheckTimeoutId).toBeNull();

    const throttled = queue(1, Date.now() + 500);
    scheduleCheckPendingRequests.call(throttled);
    vi.advanceTimersByTime(499);
    expect(throttled.checkPendingRequests).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(throttled.checkPendingRequests).toHaveBeenCalledTimes(1);
  });

  it('is installed on the RequestQueue kafkajs itself uses', () => {
    applyKafkajsIdleFix();
    const require = createRequire(import.meta.url);
    const RequestQueue = require('kafkajs/src/network/requestQueue/index.js') as {
      prototype: { scheduleCheckPendingRequests: unknown };
    };
    expect(RequestQueue.prototype.scheduleCheckPendingRequests).toBe(scheduleCheckPendingRequests);
  });
});
