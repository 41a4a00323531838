import { runCli } from '../src/cli/runner.js';
import { runCommand } from './run.js';

await runCli(
  'storage-node',
  "A Raft-replicated Git partition store that writes its WAL in Gitaly's entry layout.",
  {
    run: runCommand,
  },
);
