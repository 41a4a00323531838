export * from './event-bus.js';
export { FolderEventBus, parseFolderUrl, type FolderBusOptions } from './folder-bus.js';
export { KafkaEventBus, parseKafkaUrl, type KafkaBusConfig, type KafkaBusOptions } from './kafka-bus.js';
export { defaultBusLogger } from './log.js';
export { DEFAULT_PARTITIONS } from './params.js';
export { murmur2, partitionForKey } from './partitioner.js';
export { openEventBus, EVENT_BUS_SCHEMES, type OpenEventBusOptions } from './open.js';
