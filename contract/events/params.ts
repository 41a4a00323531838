import { ErrorCodes, WalArchiverError, throwIfAborted } from '../errors.js';
import { maskUrl } from '../url.js';
import type { Logger } from '../log.js';
import { DEFAULT_TOPIC_PREFIX, type PublishEvent, type SubscribeOptions } from './event-bus.js';

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

/** The parameters every bus URL takes (after `checkParams`): the topic prefix and the partition count. */
export function busParams(url: URL, raw: string): { topicPrefix: string; partitions: number } {
  return { topicPrefix: topicPrefixParam(url, raw), partitions: partitionsParam(url, raw) };
}

/**
 * A bus's options: its logger and any of its tuning knobs, named (and documented) by the bus's
 * table of defaults; `busTuning` fills in what is not given.
 */
export type BusOptions<Tuning> = { logger?: Logger } & Partial<Tuning>;

/** Each tuning knob of a bus as given in `options`, else its default. */
export function busTuning<T extends Record<string, number>>(defaults: T, options: Partial<T>): T {
  const tuning = { ...defaults };
  for (const knob of Object.keys(defaults) as (keyof T)[]) tuning[knob] = options[knob] ?? defaults[knob];
  return tuning;
}

/** The options of `EventBus.publish`. */
export interface PublishOptions {
  signal?: AbortSignal;
}

/** Refuses a call on a closed bus, or one whose signal has fired already. */
export function checkCall(closed: boolean, url: string, signal?: AbortSignal): void {
  if (closed) throw new WalArchiverError(ErrorCodes.UNAVAILABLE, `event bus ${url} is closed`);
  throwIfAborted(signal);
}

/** The bus's name of a logical topic: `<topicPrefix>.<topic>`. */
export function fullTopicName(topicPrefix: string, topic: string): string {
  return `${topicPrefix}.${checkName('topic', topic)}`;
}

/** Validates and serialises a publish call's events (all of them, before anything is sent). */
export function encodeEvents(events: readonly PublishEvent[]): { key: string; value: string }[] {
  return events.map((e) => ({ key: checkKey(e?.key), value: encodeValue(e?.value) }));
}

/** Validates a subscription's group and handler; returns the group. */
export function checkSubscribe(options: SubscribeOptions): string {
  const group = checkName('consumer group', options.group);
  if (typeof options.handler !== 'function') throw invalid('subscribe needs a handler');
  return group;
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
