import { createLogger } from '../../contract/log.js';
import { StorageNode } from '../../storage-node/node.js';

/** An in-process storage node alone in its cluster (two partitions, a quick election, a silent log). */
export function startSingleNode(dataDir: string): Promise<StorageNode> {
  return StorageNode.start({
    id: 1,
    dataDir,
    listen: '127.0.0.1:0',
    peers: new Map([[1, 'http://127.0.0.1:1']]),
    partitions: 2,
    logger: createLogger({}, { write: () => undefined }),
    tickMs: 10,
    electionTick: 2,
  });
}
