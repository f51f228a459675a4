/**
 * The proxy on every core (node:cluster): who does what, and the messages between them.
 *
 * Primary: the single journal (one writer thread, one chain), the admin listener, the DASEN
 * update agent, purge scheduling, signals, worker supervision (restart with bounded backoff).
 * Workers: the proxy listeners (forward + transparent; the listening sockets are shared through
 * the primary, which hands connections out round-robin) and a policy engine each. A worker never
 * opens the journal database: it writes through a RemoteJournal (src/journal/remote.ts).
 *
 * Start: the primary forks `workers` processes, each with WorkerInit in the environment
 * (GARDEFOU_WORKER, JSON). "ready" is logged once every worker has sent `listening`; a worker
 * that fails to start (`fatal`) aborts the start (exit 2, as with one process).
 *
 * IPC messages (JSON over the cluster channel; `seq` pairs a request with its replies):
 *
 *   primary -> worker
 *     j.ack, j.health                        journal answers (see src/journal/remote.ts)
 *     c.ack                                  connections admitted / refused (see gate.ts)
 *     { t: 'prepare', seq, config, sources } load config + lists + policy, keep the current ones
 *                                            in force; reply `prepared`
 *     { t: 'commit', seq, config, sources }  swap to what `prepare` loaded (a worker that did not
 *                                            prepare seq loads it now); reply `committed`
 *     { t: 'abort', seq }                    drop what `prepare` loaded
 *     { t: 'metrics?', seq }                 reply `metrics` with this worker's snapshot
 *     { t: 'stop' }                          stop accepting, drain (limits.shutdownGraceMs), send
 *                                            the last journal ops, `bye`, exit 0
 *
 *   worker -> primary
 *     j.ops                                  journal ops of one event-loop turn
 *     c.ops                                  connections opened / closed (per-client cap, gate.ts)
 *     { t: 'listening', proxy, transparent, summary }   every listener is open
 *     { t: 'fatal', message, config }        could not start (config: a ConfigError)
 *     { t: 'prepared', seq, ok, error, summary }
 *     { t: 'committed', seq, ok, error, summary }
 *     { t: 'metrics', seq, snapshot }
 *     { t: 'bye' }                           every journal op of this worker has been sent
 *
 * A reload (SIGHUP, index file replaced, bundle applied by the agent) is two-phase: `prepare`
 * everywhere; if every worker loaded it, `commit` everywhere, else `abort` everywhere, so a
 * failed reload keeps the old configuration and lists in every worker.
 */
import type { FamilySnapshot } from '../admin/metrics';
import type { Config } from '../config';
import type { FromJournalHost, ToJournalHost } from '../journal/remote';
import type { GateAckMessage, GateOpsMessage } from './gate';

/** Where the lists and policy in force come from (what serve.ts policySources() returns). */
export interface PolicySources {
  lists: string;
  policy: string;
  listSerial: string | null;
}

/** What /status and /healthz show of the lists, as a worker loaded them. */
export interface PolicySummary {
  describe: { categories: number; domains: number; urls: number; expressions: number; source: string };
  listSerial: string | null;
}

export interface WorkerInit {
  /** 1-based slot; a restarted worker takes its predecessor's slot */
  slot: number;
  /** how many workers the primary runs (per-worker share of per-client limits) */
  workers: number;
  config: Config;
  sources: PolicySources;
}

export const WORKER_ENV = 'GARDEFOU_WORKER';

export type ToWorker =
  | FromJournalHost
  | GateAckMessage
  | { t: 'prepare'; seq: number; config: Config; sources: PolicySources }
  | { t: 'commit'; seq: number; config: Config; sources: PolicySources }
  | { t: 'abort'; seq: number }
  | { t: 'metrics?'; seq: number }
  | { t: 'stop' };

export type FromWorker =
  | ToJournalHost
  | GateOpsMessage
  | { t: 'listening'; proxy: Array<{ host: string; port: number }>; transparent: Array<{ kind: 'http' | 'tls'; host: string; port: number }>; summary: PolicySummary }
  | { t: 'fatal'; message: string; config: boolean }
  | { t: 'prepared'; seq: number; ok: boolean; error: string | null; summary: PolicySummary | null }
  | { t: 'committed'; seq: number; ok: boolean; error: string | null; summary: PolicySummary | null }
  | { t: 'metrics'; seq: number; snapshot: FamilySnapshot[] }
  | { t: 'bye' };

/**
 * Below this many cores, 'auto' means one process: measured on 2 cores (bench/README.md, "All
 * cores"), two workers served no more requests than one, at more CPU per request (the IPC to
 * the journal) and 2.2x the memory. A core for the kernel's network work, one for the journal
 * threads and the rest for workers is what makes several processes pay.
 */
export const AUTO_MIN_CORES = 4;

/** `workers` of the config as a count: 'auto' = one per core from AUTO_MIN_CORES cores, else 1. */
export function workerCount(workers: number | 'auto', available: () => number): number {
  if (workers !== 'auto') return workers;
  const cores = available();
  return cores >= AUTO_MIN_CORES ? cores : 1;
}
