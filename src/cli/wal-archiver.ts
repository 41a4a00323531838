import { runCli } from './runner.js';
import { runCommand } from './run.js';

await runCli(
  'wal-archiver',
  'Point-in-time recovery for a Raft-replicated Git storage cluster: archives committed WAL entries\nto object storage, publishes them as events, and keeps the manifests restores start from.',
  {
    run: runCommand,
  },
);
