import { backupCommand, retentionCommand } from './backup.js';
import { drillCommand } from './drill.js';
import { eventsCommand } from './events.js';
import { manifestCommand } from './manifest.js';
import { restoreCommand, verifyCommand } from './restore.js';
import { runCommand } from './run.js';
import { runCli, type Command } from '../../contract/cli/runner.js';

// The quickstart wires a local storage cluster to sidecars; it lives apart from both (quickstart/), and
// the sidecar reaches it only when asked to, so nothing here depends on the storage node.
const quickstartCommand: Command = {
  summary: 'run a local cluster with sidecars and a workload, on local folders (npm start)',
  async run(argv, ctx) {
    const { quickstartCommand: command } = await import('../../quickstart/quickstart.js');
    return command.run(argv, ctx);
  },
};

await runCli(
  'wal-archiver',
  'Point-in-time recovery for a Raft-replicated Git storage cluster: archives committed WAL entries\nto object storage, publishes them as events, and keeps the manifests restores start from.',
  {
    run: runCommand,
    manifest: manifestCommand,
    verify: verifyCommand,
    restore: restoreCommand,
    drill: drillCommand,
    backup: backupCommand,
    retention: retentionCommand,
    events: eventsCommand,
    quickstart: quickstartCommand,
  },
);
