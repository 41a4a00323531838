import { describe, expect, it } from 'vitest';
import { ErrorCodes, isWalArchiverError } from '../../../../contract/errors.js';
import {
  parseTopicEvent,
  parseWalArchivedEvent,
  parseWalBackupEvent,
  parseWalEntryEvent,
  parseWalLeadershipEvent,
} from '../../../../contract/events/schemas.js';
import { archivedEvent, backupEvent, leadershipEvent, sha } from '../../src/manifest/fixtures.js';

function expectCorrupt(fn: () => unknown, field?: string): void {
  let error: unknown;
  try {
    fn();
  } catch (err) {
    error = err;
  }
  expect(isWalArchiverError(error, ErrorCodes.CORRUPT), String(error)).toBe(true);
  if (!isWalArchiverError(error)) return;
  expect(error.retryable).toBe(false);
  expect(error.message).not.toContain('\n');
  if (field !== undefined) expect(error.details.field).toBe(field);
}

const entry = {
  schema: 1,
  partition: '7',
  lsn: 42,
  term: 3,
  node: 2,
  bytes: 1234,
  refs: [
    { name: 'refs/heads/main', new_oid: 'a'.repeat(40) },
    { name: 'HEAD', new_oid: '', new_target: 'refs/heads/main' },
  ],
  committed_at: '2025-01-01T00:00:00Z',
};

describe('wal.entries', () => {
  it('parses a valid event and normalises its time', () => {
    const e = parseWalEntryEvent(entry);
    expect(e.committed_at).toBe('2025-01-01T00:00:00.000Z');
    expect(e.refs[1]).toEqual({ name: 'HEAD', new_oid: '', new_target: 'refs/heads/main' });
    expect(e.lsn).toBe(42);
  });

  it('drops unknown fields', () => {
    const e = parseWalEntryEvent({ ...entry, extra: 'x' });
    expect(Object.keys(e)).not.toContain('extra');
  });

  it.each([
    ['schema', { schema: 2 }],
    ['schema', { schema: '1' }],
    ['partition', { partition: '' }],
    ['partition', { partition: '../x' }],
    ['partition', { partition: 7 }],
    ['lsn', { lsn: 0 }],
    ['lsn', { lsn: 1.5 }],
    ['lsn', { lsn: '42' }],
    ['term', { term: -1 }],
    ['node', { node: 0 }],
    ['bytes', { bytes: -3 }],
    ['refs', { refs: 'x' }],
    ['committed_at', { committed_at: 'yesterday' }],
    ['committed_at', { committed_at: '2025-01-01T00:00:00' }],
    ['committed_at', { committed_at: '2025-13-45T00:00:00Z' }],
  ])('rejects a malformed %s', (field, patch) => {
    expectCorrupt(() => parseWalEntryEvent({ ...entry, ...patch }), field);
  });

  it('rejects a malformed ref change and non-objects', () => {
    expectCorrupt(() => parseWalEntryEvent({ ...entry, refs: [{ name: 'refs/heads/x' }] }), 'new_oid');
    expectCorrupt(() => parseWalEntryEvent(null));
    expectCorrupt(() => parseWalEntryEvent([entry]));
    expectCorrupt(() => parseWalEntryEvent('{}'));
  });
});

describe('wal.archived', () => {
  it('parses a valid event', () => {
    const ev = archivedEvent('3', 10, 19, { committed_lsn: 25 });
    expect(parseWalArchivedEvent(JSON.parse(JSON.stringify(ev)))).toEqual(ev);
  });

  it.each([
    ['last_lsn', { first_lsn: 20, last_lsn: 19 }],
    ['entries', { entries: 11 }],
    ['entries', { entries: 0 }],
    ['committed_lsn', { committed_lsn: 18 }],
    ['sha256', { sha256: 'ABC' }],
    ['sha256', { sha256: sha('x').toUpperCase() }],
    ['key', { key: '' }],
    ['raw_bytes', { raw_bytes: undefined }],
    ['last_committed_at', { last_committed_at: 'yesterday' }],
    ['archived_at', { archived_at: null }],
  ])('rejects a malformed %s', (field, patch) => {
    expectCorrupt(() => parseWalArchivedEvent({ ...archivedEvent('3', 10, 19), ...patch }), field);
  });

  it('accepts a segment whose last entry is stamped before its first (stamps of older archives)', () => {
    const event = parseWalArchivedEvent({
      ...archivedEvent('3', 10, 19),
      first_committed_at: '2099-02-01T00:00:00.000Z',
    });
    expect(event.first_committed_at > event.last_committed_at).toBe(true);
  });
});

describe('wal.backups', () => {
  it('parses a valid event with every trigger', () => {
    for (const trigger of ['size', 'age', 'entries', 'manual', 'first'] as const) {
      expect(parseWalBackupEvent(backupEvent('3', 50, { trigger })).trigger).toBe(trigger);
    }
  });

  it.each([
    ['trigger', { trigger: 'cron' }],
    ['finished_at', { started_at: '2026-01-01T00:00:00Z' }],
    ['lsn', { lsn: -1 }],
  ])('rejects a malformed %s', (field, patch) => {
    expectCorrupt(() => parseWalBackupEvent({ ...backupEvent('3', 50), ...patch }), field);
  });
});

describe('wal.leadership', () => {
  it('reads a leader of 0 or null as no leader', () => {
    const base = leadershipEvent('1', 4, null, { node: 3, role: 'follower' });
    expect(parseWalLeadershipEvent({ ...base, leader: 0 }).leader).toBeNull();
    expect(parseWalLeadershipEvent({ ...base, leader: null }).leader).toBeNull();
    expect(parseWalLeadershipEvent({ ...base, leader: 2 }).leader).toBe(2);
  });

  it.each([
    ['role', { role: 'boss' }],
    ['leader', { leader: -1 }],
    ['leader', { role: 'leader', node: 3, leader: 2 }],
    ['at', { at: 5 }],
  ])('rejects a malformed %s', (field, patch) => {
    expectCorrupt(
      () => parseWalLeadershipEvent({ ...leadershipEvent('1', 4, 2, { node: 2 }), ...patch }),
      field,
    );
  });
});

describe('parseTopicEvent', () => {
  it('dispatches by logical or full topic name', () => {
    expect(parseTopicEvent('archived', archivedEvent('1', 1, 1)).topic).toBe('archived');
    expect(parseTopicEvent('wal.backups', backupEvent('1', 1)).topic).toBe('backups');
    expect(parseTopicEvent('my.prefix.leadership', leadershipEvent('1', 1, 1)).topic).toBe('leadership');
    expect(parseTopicEvent('wal.entries', entry).topic).toBe('entries');
  });

  it('rejects an unknown topic with INVALID_ARGUMENT and a mismatched value with CORRUPT', () => {
    expect(() => parseTopicEvent('wal.other', entry)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    expectCorrupt(() => parseTopicEvent('archived', entry));
  });
});
