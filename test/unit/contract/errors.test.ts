import { describe, expect, it } from 'vitest';
import { describeError, ErrorCodes, isRetryable, WalArchiverError } from '../../../contract/errors.js';
import { Backoff, retry } from '../../../contract/retry.js';
import { maskUrl, parseServiceUrl } from '../../../contract/url.js';

describe('errors', () => {
  it('retries only when nothing in the cause chain forbids it', () => {
    const corrupt = new WalArchiverError(ErrorCodes.CORRUPT, 'bad checksum');
    expect(isRetryable(corrupt)).toBe(false);
    expect(isRetryable(new Error('wrapped', { cause: corrupt }))).toBe(false);
    expect(isRetryable(new WalArchiverError(ErrorCodes.UNAVAILABLE, 'down'))).toBe(true);
    expect(isRetryable(new Error('ECONNRESET'))).toBe(true);
    const abort = new Error('aborted');
    abort.name = 'AbortError';
    expect(isRetryable(abort)).toBe(false);
  });

  it('describes an error in one line with its root cause', () => {
    const err = new WalArchiverError(ErrorCodes.UNAVAILABLE, 'object store s3://b unreachable', {
      cause: new Error('outer', { cause: new Error('connect ECONNREFUSED 127.0.0.1:1\nmore') }),
    });
    expect(describeError(err)).toBe('object store s3://b unreachable: connect ECONNREFUSED 127.0.0.1:1');
  });
});

describe('urls', () => {
  it('masks passwords and secret parameters', () => {
    expect(maskUrl('kafka://user:hunter2@h:9092?topicPrefix=wal')).toBe(
      'kafka://user:***@h:9092?topicPrefix=wal',
    );
    expect(maskUrl('s3://b/p?secretAccessKey=abc&region=x')).toBe('s3://b/p?secretAccessKey=***&region=x');
    expect(maskUrl('not a url://user:pw@host')).not.toContain('pw');
  });
  it('refuses malformed URLs naming them, masked', () => {
    expect(() => parseServiceUrl('::::', 'object store')).toThrow(/object store URL is malformed: ::::/);
    expect(() => parseServiceUrl('', 'event bus')).toThrow(/event bus URL is empty/);
  });
});

describe('retry', () => {
  it('backs off exponentially up to the cap and resets', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([100, 200, 400, 800, 1000]);
    b.reset();
    expect(b.next()).toBe(100);
  });
  it('stops at the first non-retryable error and after the last attempt', async () => {
    let calls = 0;
    await expect(
      retry(
        async () => {
          calls++;
          throw new WalArchiverError(ErrorCodes.CORRUPT, 'x');
        },
        { attempts: 5, initialMs: 1 },
      ),
    ).rejects.toThrow('x');
    expect(calls).toBe(1);
    calls = 0;
    await expect(
      retry(
        async () => {
          calls++;
          throw new WalArchiverError(ErrorCodes.UNAVAILABLE, 'y');
        },
        { attempts: 3, initialMs: 1 },
      ),
    ).rejects.toThrow('y');
    expect(calls).toBe(3);
    expect(
      await retry(async (n) => (n < 2 ? Promise.reject(new Error('t')) : 'ok'), {
        attempts: 3,
        initialMs: 1,
      }),
    ).toBe('ok');
  });
});
