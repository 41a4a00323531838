import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { openEventBus } from '../../contract/events/open.js';
import { eventBusConformance } from './event-bus.conformance.js';

eventBusConformance('folder', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wal-events-'));
  const url = `${pathToFileURL(dir).href}?topicPrefix=wal`;
  return {
    open: () => openEventBus(url, { folder: { heartbeatMs: 200, sessionTimeoutMs: 3_000, pollMs: 100 } }),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});
