import { Kafka, logLevel } from 'kafkajs';
import { afterAll } from 'vitest';
import { openEventBus } from '../../contract/events/open.js';
import { KAFKA_BROKERS, kafkaUrl, uniqueName } from '../helpers/services.js';
import { eventBusConformance } from './event-bus.conformance.js';

const admin = new Kafka({
  clientId: 'event-bus-test',
  brokers: KAFKA_BROKERS.split(','),
  logLevel: logLevel.NOTHING,
}).admin();
let connected: Promise<void> | undefined;

afterAll(async () => {
  if (connected) await admin.disconnect();
});

eventBusConformance('kafka', async () => {
  const prefix = uniqueName('evt');
  return {
    open: () => openEventBus(kafkaUrl(prefix), { kafka: { sessionTimeoutMs: 6_000 } }),
    cleanup: async () => {
      connected ??= admin.connect();
      await connected;
      const topics = (await admin.listTopics()).filter((t) => t.startsWith(`${prefix}.`));
      if (topics.length > 0) await admin.deleteTopics({ topics, timeout: 10_000 });
    },
  };
});
