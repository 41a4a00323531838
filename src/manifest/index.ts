export * from './keys.js';
export * from './archived-partitions.js';
export * from './cas.js';
export * from './partition-manifest.js';
export * from './global-manifest.js';
export * from './format.js';
export * from './projector.js';
