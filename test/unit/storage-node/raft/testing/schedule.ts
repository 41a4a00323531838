import { Cluster, SafetyViolation, type NodeFactory } from './cluster.js';
import { Rng } from './prng.js';

export interface ScheduleOptions {
  /** Steps of random faults and traffic before the cluster is healed. */
  steps?: number;
  /** Ticks allowed, once healed, to elect a leader and converge. */
  livenessTicks?: number;
  factory?: NodeFactory;
}

export interface ScheduleResult {
  seed: number;
  nodes: number;
  committed: number;
  elections: number;
  snapshotsInstalled: number;
  crashes: number;
  ticksToConverge: number;
}

/**
 * One random schedule, fully determined by `seed`: a 3- or 5-node group under
 * message loss, duplication, reordering, partitions, crashes and compaction,
 * with random writes; then everything is healed and the group must converge.
 * Throws SafetyViolation (or an invariant error from the node) on a bug.
 */
export function runSchedule(seed: number, options: ScheduleOptions = {}): ScheduleResult {
  const rng = new Rng(seed);
  const size = rng.chance(0.3) ? 5 : 3;
  const ids = Array.from({ length: size }, (_, i) => i + 1);
  const cluster = new Cluster({
    ids,
    seed: rng.fork(),
    electionTick: rng.range(4, 10),
    maxMsgEntries: rng.range(1, 8),
    maxInflight: rng.range(1, 6),
    ...(options.factory ? { factory: options.factory } : {}),
  });
  cluster.dropRate = rng.pick([0, 0.02, 0.1, 0.25]);
  cluster.duplicateRate = rng.pick([0, 0, 0.05]);
  cluster.slowDiskRate = rng.pick([0, 0.1, 0.3]);
  const steps = options.steps ?? 1000;
  let proposals = 0;

  for (let step = 0; step < steps; step++) {
    const r = rng.next();
    if (r < 0.3) {
      // Clocks drift: each live node ticks with some probability.
      for (const id of cluster.live()) if (rng.chance(0.9)) cluster.tick(id);
    } else if (r < 0.7) {
      const n = rng.range(1, 4);
      for (let i = 0; i < n; i++) cluster.deliverRandom();
      const busy = cluster.busyNodes();
      if (busy.length > 0 && rng.chance(0.5)) cluster.finishReady(rng.pick(busy));
    } else if (r < 0.84) {
      const leaders = cluster.leadersNow();
      const target = leaders.length > 0 && rng.chance(0.85) ? rng.pick(leaders) : rng.pick(ids);
      cluster.propose(target, `s${seed}-p${proposals++}`);
    } else if (r < 0.87) {
      cluster.compact(rng.pick(ids));
    } else if (r < 0.9) {
      const a = rng.pick(ids);
      const b = rng.pick(ids.filter((x) => x !== a));
      cluster.cutLink(a, b);
    } else if (r < 0.92) {
      cluster.isolate(rng.pick(ids));
    } else if (r < 0.95) {
      cluster.heal();
    } else if (r < 0.965) {
      if (rng.chance(0.5)) cluster.dropAll();
      else cluster.crash(rng.pick(ids));
    } else if (r < 0.99) {
      const down = ids.filter((id) => !cluster.nodes.get(id));
      if (down.length > 0) cluster.restart(rng.pick(down));
    } else {
      const leaders = cluster.leadersNow().filter((id) => cluster.node(id).status().role === 'leader');
      if (leaders.length > 0) {
        const leader = cluster.node(rng.pick(leaders));
        const to = rng.pick(ids.filter((x) => x !== leader.id));
        leader.transferLeadership(to);
        cluster.process(leader.id);
      }
    }
    if (step % 50 === 49) cluster.checkLogMatching();
  }

  // Heal everything and require progress: one leader, and every node applies
  // the same log including a write made after the heal.
  cluster.heal();
  cluster.dropRate = 0;
  cluster.duplicateRate = 0;
  cluster.slowDiskRate = 0;
  for (const id of ids) cluster.restart(id);
  for (const id of cluster.busyNodes()) cluster.finishReady(id);
  const livenessTicks = options.livenessTicks ?? 400;
  let finalIndex: number | undefined;
  let finalTerm = 0;
  let ticks = 0;
  for (; ticks < livenessTicks; ticks++) {
    cluster.tickAll();
    cluster.deliverAll('random');
    const leaders = cluster.leadersNow();
    if (leaders.length === 1) {
      const leader = cluster.node(leaders[0]!);
      const term = leader.status().term;
      if (finalIndex === undefined || term !== finalTerm) {
        finalIndex = cluster.propose(leader.id, `s${seed}-final-t${term}`);
        finalTerm = term;
        cluster.deliverAll('random');
      }
    }
    if (finalIndex !== undefined && cluster.converged(finalIndex)) break;
  }
  cluster.checkLogMatching();
  if (ticks >= livenessTicks) {
    const states = cluster.ids
      .map((id) => {
        const st = cluster.node(id).status();
        return `${id}:${st.role}/t${st.term}/c${st.commit}/l${st.lastIndex}/a${cluster.disks.get(id)!.applied.length}`;
      })
      .join(' ');
    throw new SafetyViolation(
      `liveness: no convergence within ${livenessTicks} ticks after heal [${states}]`,
    );
  }
  return {
    seed,
    nodes: size,
    committed: cluster.committed.length - 1,
    elections: cluster.stats.elections,
    snapshotsInstalled: cluster.stats.snapshotsInstalled,
    crashes: cluster.stats.crashes,
    ticksToConverge: ticks,
  };
}
