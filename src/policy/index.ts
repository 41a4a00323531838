/**
 * Base backup policy: pure decisions, no I/O, no clock reads.
 *
 * Integration in the sidecar (src/pipeline/sidecar.ts, src/backup/trigger.ts):
 *
 * 1. Once per sidecar: `const slots = new BackupSlots(n)` (flag
 *    --backup-concurrency, default DEFAULT_BACKUP_SLOTS) and the thresholds
 *    from flags/env (defaults DEFAULT_THRESHOLDS) plus per-partition overrides.
 *    Per partition: `resolveThresholds(defaults, overrides, partition)`.
 * 2. In each partition's BackupTrigger, after `resume()` and after every
 *    manifest write (the committer gets the manifest back from updatePartitionManifest),
 *    and on a timer (e.g. every minute, for the age threshold), call
 *      const state = policyStateFromManifest(manifest, {
 *        leading: true, backupRunning: this.backup !== undefined,
 *        manualRequested, lastFailureAt });
 *      const d = decide(state, Date.now(), thresholds);
 *    A new leader decides afresh from the manifest: nothing is carried over.
 * 3. On `d.action === 'backup'`: `const release = slots.tryAcquire(partition)`;
 *    undefined means the node is busy, ask again next round. Otherwise run,
 *    without awaiting it in the archive loop (archiving must go on meanwhile):
 *      takeBaseBackup({ store, nodeUrl, partition, node, term: this.term,
 *        trigger: d.reason, retention, spoolDir, signal: this.abort.signal,
 *        logger, now: () => new Date() })   // src/backup/take.ts
 *    then `release()` in a finally. On success publish
 *    `bus.publish(Topics.BACKUPS, [{ key: partition, value: result.event }])`
 *    (at least once; a failure to publish is retried like wal.archived) and
 *    clear manualRequested/lastFailureAt. On FENCED stop like the archive
 *    loop does; on any other error log one line, set lastFailureAt = now and
 *    let the policy retry after `retryAfter`. `stop()` aborts the signal and
 *    awaits the backup promise.
 * 4. Retention (src/backup/retention.ts) is separate and idempotent: when
 *    configured, the leader's sidecar may run, e.g. after each backup,
 *      const plan = planRetention(manifest, { keepCount, keepAge }, now);
 *      await applyRetention(store, partition, { node, term }, plan, { dryRun: false });
 *    Any process may run it (the CLI passes no writer and acts as the
 *    recorded leader).
 */

export {
  DEFAULT_THRESHOLDS,
  decide,
  resolveThresholds,
  validateThresholds,
  type Decision,
  type NoBackupReason,
  type PolicyState,
  type ThresholdOverrides,
  type Thresholds,
} from './decide.js';
export { policyStateFromManifest } from './state.js';
export { BackupSlots, DEFAULT_BACKUP_SLOTS } from './slots.js';
