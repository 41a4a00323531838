import { parseServiceUrl, unsupportedScheme } from '../url.js';
import type { EventBus } from './event-bus.js';
import { FolderEventBus, type FolderBusOptions } from './folder-bus.js';
import { KafkaEventBus, type KafkaBusOptions } from './kafka-bus.js';
import type { Logger } from '../log.js';

export interface OpenEventBusOptions {
  logger?: Logger;
  folder?: Omit<FolderBusOptions, 'logger'>;
  kafka?: Omit<KafkaBusOptions, 'logger'>;
}

export const EVENT_BUS_SCHEMES = ['kafka://', 'file://'];

/**
 * Opens an event bus by URL: `kafka://host:port[,host:port]?topicPrefix=wal`
 * or `file:///path`. Bad URLs fail with INVALID_ARGUMENT, unknown schemes
 * with UNSUPPORTED_SCHEME. Nothing is contacted: a Kafka bus opens while the
 * broker is down (`bus.checkConnection()` finds out whether it answers).
 */
export async function openEventBus(url: string, options: OpenEventBusOptions = {}): Promise<EventBus> {
  if (typeof url === 'string' && /^kafka:/i.test(url.trim())) {
    return new KafkaEventBus(url.trim(), { ...options.kafka, logger: options.logger });
  }
  const parsed = parseServiceUrl(url, 'event bus');
  if (parsed.protocol === 'file:') {
    const bus = new FolderEventBus(url.trim(), { ...options.folder, logger: options.logger });
    await bus.checkConnection();
    return bus;
  }
  throw unsupportedScheme(url, 'event bus', EVENT_BUS_SCHEMES);
}
