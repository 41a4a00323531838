import { runCli } from '../contract/cli/runner.js';
import { clusterCommand } from './cluster.js';
import { loadCommand } from './load.js';
import { runCommand } from './run.js';

await runCli(
  'storage-node',
  "A Raft-replicated Git partition store that writes its WAL in Gitaly's entry layout.",
  {
    run: runCommand,
    cluster: clusterCommand,
    load: loadCommand,
  },
);
