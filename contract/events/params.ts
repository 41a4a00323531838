import { ErrorCodes, WalArchiverError } from '../errors.js';
import { maskUrl } from '../url.js';
import { DEFAULT_TOPIC_PREFIX } from './event-bus.js';

/** Default number of bus partitions per topic (Kafka partitions, or folder-log partition files). */
export const DEFAULT_PARTITIONS = 4;
export const MAX_PARTITIONS = 1024;

const NAME = /^[A-Za-z0-9._-]{1,200}$/;

export function invalid(message: string, raw?: string): WalArchiverError {
  return new WalArchiverError(
    ErrorCodes.INVALID_ARGUMENT,
    raw === undefined ? message : `${message}: ${maskUrl(raw)}`,
    {
      retryable: false,
    },
  );
}

/** Rejects query parameters the bus does not know, so a typo is not silently ignored. */
export function checkParams(url: URL, allowed: readonly string[], raw: string): void {
  for (const name of url.searchParams.keys()) {
    if (!allowed.includes(name)) {
      throw invalid(`event bus URL has unknown parameter "${name}" (known: ${allowed.join(', ')})`, raw);
    }
  }
}

export function topicPrefixParam(url: URL, raw: string): string {
  const v = url.searchParams.get('topicPrefix');
  if (v === null) return DEFAULT_TOPIC_PREFIX;
  if (!NAME.test(v) || v === '.' || v === '..') {
    throw invalid(`event bus URL parameter topicPrefix=${v} must be 1-200 characters of [A-Za-z0-9._-]`, raw);
  }
  return v;
}

export function partitionsParam(url: URL, raw: string): number {
  const v = url.searchParams.get('partitions');
  if (v === null) return DEFAULT_PARTITIONS;
  if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > MAX_PARTITIONS) {
    throw invalid(
      `event bus URL parameter partitions=${v} must be an integer from 1 to ${MAX_PARTITIONS}`,
      raw,
    );
  }
  return Number(v);
}

/** Validates a logical topic or group name: it becomes part of a file or Kafka topic name. */
export function checkName(what: string, name: string): string {
  if (typeof name !== 'string' || !NAME.test(name) || name === '.' || name === '..') {
    throw invalid(`${what} "${String(name)}" must be 1-200 characters of [A-Za-z0-9._-]`);
  }
  return name;
}

/** Serialises one event value, refusing what JSON cannot carry. */
export function encodeValue(value: unknown): string {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid('event value must be a JSON object');
  }
  try {
    return JSON.stringify(value);
  } catch (cause) {
    throw new WalArchiverError(ErrorCodes.INVALID_ARGUMENT, 'event value is not JSON-serialisable', {
      cause,
      retryable: false,
    });
  }
}

export function checkKey(key: unknown): string {
  if (typeof key !== 'string' || key === '') throw invalid('event key must be a non-empty string');
  return key;
}
