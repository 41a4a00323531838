/**
 * Crash-point exploration: run a protocol once to count its durable
 * operations, then once per operation k, crashing at k (and, in the power-cut
 * variant, also dropping what no fsync made durable), reopen from disk and
 * check the protocol's invariants.
 */

import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { CrashController, SimulatedCrash } from './controller.js';

export interface CrashOutcome {
  crashed: boolean;
  crashAt?: number;
  powerCut: boolean;
}

export interface CrashProtocol<Ctx> {
  /** e.g. 'node: append and commit' */
  name: string;
  /** Builds the starting state on disk (not observed). */
  setup(root: string): Promise<Ctx>;
  /** The durable step(s) under test (observed). */
  run(ctx: Ctx): Promise<void>;
  /** Best-effort teardown of whatever run() left running after a crash (timers, handles); no durable effects. */
  abandon?(ctx: Ctx): Promise<void>;
  /** Reopens the component(s) from disk (not observed) and returns the invariants violated, as lines. */
  check(ctx: Ctx, outcome: CrashOutcome): Promise<string[]>;
}

/** What a protocol file exports a list of (`export const protocols: AnyCrashProtocol[]`). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyCrashProtocol = CrashProtocol<any>;

export interface ExploreOptions {
  /** Also run every crash point with a power cut (default false). */
  powerCut?: boolean;
  /** At most this many crash points (sampled evenly over 1..N, always including the first and last). */
  maxPoints?: number;
  /** How long a crashed run may take to notice it is dead before it is abandoned (default 2000 ms). */
  settleMs?: number;
}

export interface ExploreResult {
  name: string;
  /** The protocol's durable operations in an uncrashed run. */
  ops: number;
  /** Crash points run (including the uncrashed run). */
  points: number;
  /** Whether the crash points were sampled (ops > maxPoints). */
  sampled: boolean;
  violations: string[];
}

function isCrashError(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if (e instanceof SimulatedCrash) return true;
    if (e instanceof Error && /simulated crash|crashed: /.test(e.message)) return true;
  }
  return false;
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** The crash points to run: all of 1..n, or `max` of them spread evenly. */
export function crashPoints(n: number, max?: number): number[] {
  if (max === undefined || n <= max) return Array.from({ length: n }, (_, i) => i + 1);
  if (max <= 1) return [n];
  const out = new Set<number>();
  for (let i = 0; i < max; i++) out.add(1 + Math.round((i * (n - 1)) / (max - 1)));
  return [...out].sort((a, b) => a - b);
}

async function runPoint<Ctx>(
  p: CrashProtocol<Ctx>,
  crashAt: number | undefined,
  powerCut: boolean,
  settleMs: number,
): Promise<{ count: number; crashed: boolean; violations: string[] }> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'crash-'));
  const label = `${p.name}${powerCut ? ' (power cut)' : ''}`;
  try {
    const ctx = await p.setup(root);
    const controller = new CrashController({ root, ...(crashAt === undefined ? {} : { crashAt }) });
    controller.install();
    let error: unknown;
    let settled = false;
    const running = p.run(ctx).then(
      () => {
        settled = true;
      },
      (err: unknown) => {
        settled = true;
        error = err;
      },
    );
    await Promise.race([
      running,
      controller
        .whenCrashed()
        .then(() => Promise.race([running, new Promise((r) => setTimeout(r, settleMs).unref())])),
    ]);
    const violations: string[] = [];
    const where =
      crashAt === undefined
        ? `${label}, uncrashed`
        : `${label}, k=${crashAt}` +
          (controller.crashEvent
            ? ` (${controller.crashEvent.op} ${path.relative(root, controller.crashEvent.path)}` +
              `${controller.crashEvent.dest ? ` -> ${path.relative(root, controller.crashEvent.dest)}` : ''})`
            : ' (no crash: the run did fewer ops)');
    if (!controller.crashed && settled && error !== undefined) {
      violations.push(`${where}: the run failed without a crash: ${describe(error)}`);
    } else if (controller.crashed && settled && error === undefined) {
      // A run may swallow a crash only if nothing it claims durable depends on it; the check decides.
    } else if (controller.crashed && error !== undefined && !isCrashError(error)) {
      violations.push(`${where}: the crash surfaced as an unrelated error: ${describe(error)}`);
    }
    if (!settled && !controller.crashed) violations.push(`${where}: the run did not finish`);
    if (p.abandon) await p.abandon(ctx).catch(() => undefined);
    if (powerCut) await controller.powerCut();
    controller.uninstall();
    const outcome: CrashOutcome = {
      crashed: controller.crashed,
      powerCut,
      ...(crashAt === undefined ? {} : { crashAt }),
    };
    let found: string[];
    try {
      found = await p.check(ctx, outcome);
    } catch (err) {
      found = [`reopen or check failed: ${describe(err)}`];
    }
    for (const v of found) violations.push(`${where}: ${v}`);
    return { count: controller.count, crashed: controller.crashed, violations };
  } finally {
    await rm(root, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * Runs the protocol uncrashed (counting N ops, and checking it), then crashed
 * at each k of 1..N (or an even sample of maxPoints of them), each in a fresh
 * temp root. With powerCut, every run (the uncrashed one too) ends with a
 * power cut before the check.
 */
export async function explore<Ctx>(p: CrashProtocol<Ctx>, opts: ExploreOptions = {}): Promise<ExploreResult> {
  const powerCut = opts.powerCut ?? false;
  const settleMs = opts.settleMs ?? 2000;
  const name = `${p.name}${powerCut ? ' (power cut)' : ''}`;
  const first = await runPoint(p, undefined, powerCut, settleMs);
  const violations = [...first.violations];
  const points = crashPoints(first.count, opts.maxPoints);
  for (const k of points) {
    const r = await runPoint(p, k, powerCut, settleMs);
    violations.push(...r.violations);
  }
  return {
    name,
    ops: first.count,
    points: points.length + 1,
    sampled: points.length < first.count,
    violations,
  };
}

/** The line `npm run test:crash` prints per protocol and variant. */
export function summaryLine(r: ExploreResult): string {
  const sample = r.sampled ? ` (sampled ${r.points - 1} of ${r.ops} ops, evenly)` : '';
  return `${r.name}: ${r.points} crash points, ${r.violations.length} violations${sample}`;
}
