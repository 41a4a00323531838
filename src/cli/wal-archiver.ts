import { backupCommand, retentionCommand } from './backup.js';
import { eventsCommand } from './events.js';
import { manifestCommand } from './manifest.js';
import { quickstartCommand } from './quickstart.js';
import { restoreCommand, verifyCommand } from './restore.js';
import { runCommand } from './run.js';
import { runCli } from './runner.js';

await runCli(
  'wal-archiver',
  'Point-in-time recovery for a Raft-replicated Git storage cluster: archives committed WAL entries\nto object storage, publishes them as events, and keeps the manifests restores start from.',
  {
    run: runCommand,
    manifest: manifestCommand,
    verify: verifyCommand,
    restore: restoreCommand,
    backup: backupCommand,
    retention: retentionCommand,
    events: eventsCommand,
    quickstart: quickstartCommand,
  },
);
