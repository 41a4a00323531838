export * from './object-store.js';
export * from './keys.js';
export { FolderStore, DEFAULT_LOCK_STALE_MS, DEFAULT_LOCK_TIMEOUT_MS } from './folder-store.js';
export type { FolderStoreOptions } from './folder-store.js';
export {
  S3Store,
  parseS3Url,
  DEFAULT_CONNECTION_TIMEOUT_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_PART_SIZE,
  DEFAULT_QUEUE_SIZE,
  DEFAULT_SOCKET_TIMEOUT_MS,
} from './s3-store.js';
export type { S3Credentials, S3StoreOptions } from './s3-store.js';
export { openObjectStore, SUPPORTED_SCHEMES } from './open.js';
export type { OpenObjectStoreOptions } from './open.js';
export { PROBE_PREFIX, verifyConditionalWrites } from './conditional-check.js';
