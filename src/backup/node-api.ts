import { describeError, ErrorCodes, WalArchiverError } from '../../contract/errors.js';

/**
 * The storage node's HTTP API as a base backup uses it: the partition's
 * status, whether this node leads it, and the errors its answers map to.
 */

/** An LSN in a header or object metadata (decimal, ≥ 1), or undefined. */
export function parseLsnHeader(value: string | null): number | undefined {
  if (value === null || !/^\d{1,16}$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n >= 1 ? n : undefined;
}

/** The JSON error body of a failed answer, or nothing when it has none. */
export async function errorBody(
  res: Response,
): Promise<{ error?: string; code?: string; leaderUrl?: string }> {
  try {
    return (await res.json()) as { error?: string; code?: string; leaderUrl?: string };
  } catch {
    return {};
  }
}

/** A request that got no answer: ABORTED on the signal, else UNAVAILABLE (retryable). */
export function unreachable(url: string, err: unknown, signal?: AbortSignal): WalArchiverError {
  if (signal?.aborted)
    return new WalArchiverError(ErrorCodes.ABORTED, `${url}: aborted`, { cause: err, retryable: false });
  return new WalArchiverError(ErrorCodes.UNAVAILABLE, `storage node ${url}: ${describeError(err)}`, {
    cause: err,
    retryable: true,
  });
}

export interface LeaderStatus {
  node: number;
  role: string;
  term: number;
  leader: number;
  leaderUrl?: string;
  applied: number;
}

/** GET /v1/partitions/{id}: the node's view of the partition. */
export async function partitionStatus(
  nodeUrl: string,
  partition: string,
  signal?: AbortSignal,
): Promise<LeaderStatus> {
  const url = `${nodeUrl.replace(/\/+$/, '')}/v1/partitions/${encodeURIComponent(partition)}`;
  let res: Response;
  try {
    res = await fetch(url, {
      signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(10_000)]) : AbortSignal.timeout(10_000),
    });
  } catch (err) {
    throw unreachable(url, err, signal);
  }
  if (!res.ok) {
    const body = await errorBody(res);
    const code = res.status === 404 ? ErrorCodes.NOT_FOUND : ErrorCodes.UNAVAILABLE;
    throw new WalArchiverError(
      code,
      `storage node ${nodeUrl}: partition ${partition}: ${body.error ?? `HTTP ${res.status}`}`,
      {
        retryable: code === ErrorCodes.UNAVAILABLE,
      },
    );
  }
  try {
    return (await res.json()) as LeaderStatus;
  } catch (err) {
    throw unreachable(url, err, signal);
  }
}

/**
 * Throws NOT_LEADER (naming the leader's URL when the node knows it) unless
 * `nodeUrl` leads `partition`, in `term` when one is given.
 */
export async function assertLeader(
  nodeUrl: string,
  partition: string,
  term: number | undefined,
  signal?: AbortSignal,
): Promise<LeaderStatus> {
  const s = await partitionStatus(nodeUrl, partition, signal);
  if (s.role !== 'leader' || (term !== undefined && s.term !== term)) {
    const leader =
      s.role === 'leader'
        ? `it leads in term ${s.term}, not ${term}`
        : s.leaderUrl
          ? `the leader is node ${s.leader} at ${s.leaderUrl}`
          : s.leader
            ? `the leader is node ${s.leader}`
            : 'no leader is known right now';
    throw new WalArchiverError(
      ErrorCodes.NOT_LEADER,
      `storage node ${nodeUrl} is not the leader of partition ${partition} (${leader})`,
      { retryable: false, details: { partition, leader: s.leader, leaderUrl: s.leaderUrl, term: s.term } },
    );
  }
  return s;
}
