import { describe, expect, it } from 'vitest';
import { abortError } from '../../../contract/errors.js';
import { FixedRateSchedule, runFixedRate, type Clock } from '../../../storage-node/load.js';

/** A clock that moves only when the test says so; sleepers wake in due-time order. */
class ManualClock implements Clock {
  private t: number;
  private sleepers: Array<{ at: number; resolve: () => void }> = [];

  constructor(start = 1000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal));
      const sleeper = { at: this.t + ms, resolve };
      this.sleepers.push(sleeper);
      signal?.addEventListener(
        'abort',
        () => {
          this.sleepers = this.sleepers.filter((s) => s !== sleeper);
          reject(abortError(signal));
        },
        { once: true },
      );
    });
  }

  /** Moves to `until`, waking sleepers one by one and letting promise chains run in between. */
  async advance(until: number): Promise<void> {
    await settle();
    for (;;) {
      this.sleepers.sort((a, b) => a.at - b.at);
      const next = this.sleepers[0];
      if (!next || next.at > until) break;
      this.sleepers.shift();
      this.t = Math.max(this.t, next.at);
      next.resolve();
      await settle();
    }
    this.t = Math.max(this.t, until);
    await settle();
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
}

describe('FixedRateSchedule', () => {
  it('computes due times from the index, so there is no drift', () => {
    const s = new FixedRateSchedule(3, 1000);
    expect(s.dueAt(0)).toBe(1000);
    expect(s.dueAt(3)).toBe(2000);
    expect(s.dueAt(1)).toBeCloseTo(1333.333, 3);
    // Adding up 1000/3 a million times drifts; computing from the index does not.
    let summed = 1000;
    for (let i = 0; i < 3_000_000; i++) summed += 1000 / 3;
    expect(s.dueAt(3_000_000)).toBe(1000 + 1_000_000_000);
    expect(summed).not.toBe(1000 + 1_000_000_000);
    expect(new FixedRateSchedule(0.5, 0).dueAt(2)).toBe(4000);
  });

  it('ends at the count or the duration, whichever comes first', () => {
    const byDuration = new FixedRateSchedule(3, 1000, { durationMs: 1000 });
    expect([0, 1, 2, 3].map((i) => byDuration.includes(i, 1000))).toEqual([true, true, true, false]);
    expect(byDuration.plannedCount).toBe(3);
    // Nothing is issued once the duration is over, however far behind the run is.
    expect(byDuration.includes(2, 2000)).toBe(false);

    const byCount = new FixedRateSchedule(100, 0, { count: 5 });
    expect(byCount.includes(4, 1e9)).toBe(true);
    expect(byCount.includes(5, 0)).toBe(false);
    expect(byCount.plannedCount).toBe(5);
    expect(new FixedRateSchedule(100, 0, { count: 5, durationMs: 20 }).plannedCount).toBe(2);
    expect(new FixedRateSchedule(100, 0).plannedCount).toBeUndefined();
  });

  it('counts the writes due by a time', () => {
    const s = new FixedRateSchedule(10, 500);
    expect(s.dueBy(499)).toBe(0);
    expect(s.dueBy(500)).toBe(1);
    expect(s.dueBy(599)).toBe(1);
    expect(s.dueBy(600)).toBe(2);
    expect(s.dueBy(1500)).toBe(11);
  });

  it('refuses a rate that is not positive', () => {
    expect(() => new FixedRateSchedule(0, 0)).toThrow(RangeError);
    expect(() => new FixedRateSchedule(-1, 0)).toThrow(RangeError);
    expect(() => new FixedRateSchedule(Number.NaN, 0)).toThrow(RangeError);
  });
});

describe('runFixedRate', () => {
  it('issues each write at its due time when writes are fast', async () => {
    const clock = new ManualClock(1000);
    const times: number[] = [];
    const done = runFixedRate({ rate: 4, count: 6, maxInFlight: 2, clock }, async (i) => {
      times.push(clock.now());
      expect(i).toBe(times.length - 1);
    });
    await clock.advance(5000);
    const result = await done;
    expect(times).toEqual([1000, 1250, 1500, 1750, 2000, 2250]);
    expect(result.issued).toBe(6);
    expect(result.maxLagMs).toBe(0);
  });

  it('keeps at most maxInFlight unsettled and catches up on the original schedule, without drift', async () => {
    const clock = new ManualClock(0);
    const issuedAt: number[] = [];
    let inFlight = 0;
    let maxSeen = 0;
    // Each write takes 250 ms at 10/s: 2 in flight keep up with 8/s only, so the run falls behind ...
    const done = runFixedRate({ rate: 10, count: 20, maxInFlight: 2, clock }, async () => {
      issuedAt.push(clock.now());
      inFlight++;
      maxSeen = Math.max(maxSeen, inFlight);
      await clock.sleep(issuedAt.length <= 6 ? 250 : 1);
      inFlight--;
    });
    await clock.advance(10_000);
    const result = await done;
    expect(result.issued).toBe(20);
    expect(maxSeen).toBe(2);
    expect(issuedAt.slice(0, 6)).toEqual([0, 100, 250, 350, 500, 600]);
    // ... and once writes are fast again it issues the late ones at once and is back on the
    // original schedule (due times of index 15.. are 1500, 1600, …), not shifted by the delay.
    expect(issuedAt.slice(15)).toEqual([1500, 1600, 1700, 1800, 1900]);
    expect(result.maxLagMs).toBeGreaterThan(0);
  });

  it('stops issuing when the duration is over, even when behind', async () => {
    const clock = new ManualClock(0);
    let issued = 0;
    const done = runFixedRate({ rate: 100, durationMs: 1000, maxInFlight: 1, clock }, async () => {
      issued++;
      await clock.sleep(50);
    });
    await clock.advance(5000);
    const result = await done;
    // One at a time, 50 ms each: 20 fit into the second, the other 80 due writes are not sent late.
    expect(issued).toBe(20);
    expect(result.issued).toBe(20);
  });

  it('on abort stops issuing and waits for what is in flight', async () => {
    const clock = new ManualClock(0);
    const controller = new AbortController();
    let finished = 0;
    let started = 0;
    const done = runFixedRate({ rate: 10, maxInFlight: 5, clock, signal: controller.signal }, async () => {
      started++;
      await clock.sleep(300);
      finished++;
    });
    await clock.advance(450);
    expect(started).toBe(5);
    controller.abort();
    await clock.advance(2000);
    const result = await done;
    expect(result.issued).toBe(5);
    expect(finished).toBe(5);
  });

  it('a failing issue stops the schedule; the error comes out after the rest settled', async () => {
    const clock = new ManualClock(0);
    let settled = 0;
    let started = 0;
    const done = runFixedRate({ rate: 10, count: 100, maxInFlight: 10, clock }, async (i) => {
      started++;
      await clock.sleep(500);
      settled++;
      if (i === 1) throw new Error('record lost');
    });
    const outcome = done.then(
      () => 'resolved',
      (err: Error) => err.message,
    );
    await clock.advance(10_000);
    expect(await outcome).toBe('record lost');
    // Writes 0..5 were issued by the time write 1 failed (at 600 ms, before write 6 was due
    // at the same instant); nothing after, and every one of them settled.
    expect(started).toBe(6);
    expect(settled).toBe(6);
  });
});
