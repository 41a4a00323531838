import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { openObjectStore } from '../../src/store/open.js';
import { uniqueName } from '../helpers/services.js';
import { objectStoreConformance } from './object-store.conformance.js';

objectStoreConformance('folder', async () => {
  const parent = await mkdtemp(path.join(tmpdir(), 'wal-folder-store-'));
  // The store's own folder does not exist yet: it is created on the first write.
  const root = path.join(parent, uniqueName('archive'));
  const store = await openObjectStore(pathToFileURL(root).href);
  return {
    store,
    cleanup: async () => {
      await store.close();
      await rm(parent, { recursive: true, force: true });
    },
  };
});
