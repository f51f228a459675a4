/**
 * The cluster primary (`serve` with workers > 1): forks the proxy workers, owns the journal,
 * the admin listener, the update agent, purge and signals. Roles and messages: protocol.ts.
 */
import cluster, { type Worker } from 'node:cluster';
import * as path from 'node:path';
import { CONTENT_TYPE as METRICS_CONTENT_TYPE, createGardefouMetrics, type FamilySnapshot, mergeSnapshots, renderSnapshot } from '../admin/metrics';
import { AdminServer } from '../admin/server';
import type { Config } from '../config';
import { formatHostPort } from '../config/hostport';
import { ConfigError, errorMessage, GardefouError } from '../errors';
import type { Journal } from '../journal';
import { JournalHost } from '../journal/remote';
import { type AppliedInfo, renderUpdateMetrics, updateAgentFromConfig } from '../lists/update';
import type { Logger } from '../log';
import { PrimaryGate } from './gate';
import { FromWorker, PolicySources, PolicySummary, ToWorker, WORKER_ENV, WorkerInit } from './protocol';
import { watchIndexFile } from '../lists/watch';
import { serialised } from '../serialised';
import { stopService } from '../lifecycle';

export interface PrimaryOptions {
  config: Config;
  workers: number;
  log: Logger;
  journal: Journal;
  /** re-reads the configuration the way the command line built it (SIGHUP) */
  reloadConfig: () => Config;
  /** where the lists and policy in force come from for a configuration */
  policySources: (cfg: Config) => PolicySources;
}

/** Longest wait for a worker's answer to a reload (compiling a UT1 folder takes seconds). */
const RELOAD_TIMEOUT_MS = 300_000;
/** Longest wait for a worker's metrics at a scrape: a stuck worker must not stall /metrics. */
const METRICS_TIMEOUT_MS = 1000;
/** Restart backoff: 100 ms doubling per quick failure, at most 30 s; a worker that lived 30 s resets it. */
const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 30_000;
const STABLE_MS = 30_000;

interface Slot {
  slot: number;
  worker: Worker | null;
  /** listening and not stopping: receives reloads and scrapes */
  ready: boolean;
  forkedMs: number;
  quickFailures: number;
  restarts: number;
  pid: number | null;
}

type Reply = Extract<FromWorker, { seq: number }>;

export async function runPrimary(o: PrimaryOptions): Promise<void> {
  const { log, journal } = o;
  let cfg = o.config;
  let sources = o.policySources(cfg);
  let summary: PolicySummary = { describe: { categories: 0, domains: -1, urls: 0, expressions: 0, source: '' }, listSerial: null };
  const host = new JournalHost(journal);
  const gate = new PrimaryGate(() => cfg.limits.maxConnectionsPerClient);
  const slots: Slot[] = [];
  for (let i = 1; i <= o.workers; i++) slots.push({ slot: i, worker: null, ready: false, forkedMs: 0, quickFailures: 0, restarts: 0, pid: null });
  let started = false;
  let stopping = false;
  let seq = 0;
  const waiting = new Map<string, (r: Reply | null) => void>();
  const waitKey = (id: number, t: string, s: number) => `${id}/${t}/${s}`;

  cluster.setupPrimary({ exec: path.join(__dirname, 'worker-main.js'), args: [] });

  const sendTo = (w: Worker, m: ToWorker): boolean => {
    if (!w.isConnected()) return false;
    try {
      w.send(m);
      return true;
    } catch {
      return false;
    }
  };

  /** Sends `m` and waits for the worker's reply of type `reply` (null: timed out or exited). */
  const ask = (s: Slot, m: ToWorker & { seq: number }, reply: Reply['t'], timeoutMs: number): Promise<Reply | null> => {
    const w = s.worker;
    if (!w) return Promise.resolve(null);
    const key = waitKey(w.id, reply, m.seq);
    return new Promise<Reply | null>((resolve) => {
      const timer = setTimeout(() => { waiting.delete(key); resolve(null); }, timeoutMs);
      waiting.set(key, (r) => { clearTimeout(timer); waiting.delete(key); resolve(r); });
      if (!sendTo(w, m)) waiting.get(key)?.(null);
    });
  };

  // Start: every worker must listen, or the start fails as a one-process start would.
  let startResolve: (() => void) | null = null;
  let startReject: ((err: Error) => void) | null = null;
  const startDone = new Promise<void>((resolve, reject) => { startResolve = resolve; startReject = reject; });
  let firstListening: Extract<FromWorker, { t: 'listening' }> | null = null;

  const fork = (s: Slot): void => {
    const init: WorkerInit = { slot: s.slot, workers: o.workers, config: cfg, sources };
    const w = cluster.fork({ [WORKER_ENV]: JSON.stringify(init) });
    s.worker = w;
    s.ready = false;
    s.forkedMs = Date.now();
    s.pid = w.process.pid ?? null;
    const id = String(w.id);
    host.attach(id, (m) => sendTo(w, m));
    gate.attach(id, (m) => sendTo(w, m));
    w.on('message', (m: FromWorker) => {
      switch (m.t) {
        case 'j.ops':
          host.receive(id, m);
          break;
        case 'c.ops':
          gate.receive(id, m);
          break;
        case 'listening':
          s.ready = !stopping;
          if (!firstListening) firstListening = m;
          if (!started || (init.config === cfg && init.sources === sources)) summary = m.summary;
          if (started) {
            log.info({ worker: s.slot, pid: s.pid }, 'worker restarted');
            // forked before a reload switched: give it what is in force now
            if (init.config !== cfg || init.sources !== sources) void ask(s, { t: 'commit', seq: ++seq, config: cfg, sources }, 'committed', RELOAD_TIMEOUT_MS);
          } else if (slots.every((x) => x.ready)) {
            startResolve?.();
          }
          break;
        case 'fatal':
          if (!started) startReject?.(m.config ? new ConfigError(m.message) : new GardefouError('GARDEFOU_WORKER', m.message));
          else log.error({ worker: s.slot, err: m.message }, 'worker could not start');
          break;
        case 'prepared':
        case 'committed':
        case 'metrics':
          waiting.get(waitKey(w.id, m.t, m.seq))?.(m);
          break;
        case 'bye':
          s.ready = false;
          break;
        default:
          break;
      }
    });
    w.on('exit', (code, signal) => {
      s.ready = false;
      s.worker = null;
      const closed = host.detach(id);
      gate.detach(id);
      for (const [key, fn] of [...waiting]) if (key.startsWith(`${w.id}/`)) fn(null);
      if (!started) {
        startReject?.(new GardefouError('GARDEFOU_WORKER', `worker ${s.slot} exited during start (code ${code}${signal ? `, ${signal}` : ''})`));
        return;
      }
      if (stopping) return;
      const lived = Date.now() - s.forkedMs;
      s.quickFailures = lived >= STABLE_MS ? 0 : s.quickFailures + 1;
      const delay = Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** Math.max(0, s.quickFailures - 1));
      s.restarts++;
      log.warn({ worker: s.slot, pid: s.pid, code, signal, recordsClosed: closed, restartInMs: delay }, 'worker exited; restarting');
      const timer = setTimeout(() => { if (!stopping) fork(s); }, delay);
      timer.unref();
    });
  };

  const killAll = async (): Promise<void> => {
    stopping = true;
    await Promise.all(slots.map((s) => new Promise<void>((resolve) => {
      const w = s.worker;
      if (!w || w.isDead()) return resolve();
      w.once('exit', () => resolve());
      w.process.kill('SIGKILL');
    })));
  };

  for (const s of slots) fork(s);
  try {
    await startDone;
  } catch (err) {
    await killAll();
    throw err;
  }
  started = true;
  const listening = firstListening as Extract<FromWorker, { t: 'listening' }> | null;

  // Reloads, two-phase (protocol.ts): one at a time.
  let swapChain: Promise<unknown> = Promise.resolve();
  const swapAll = (next: Config, nextSources: PolicySources): Promise<PolicySummary> => {
    const run = async (): Promise<PolicySummary> => {
      const n = ++seq;
      const live = slots.filter((s) => s.ready);
      const prepared = await Promise.all(live.map((s) => ask(s, { t: 'prepare', seq: n, config: next, sources: nextSources }, 'prepared', RELOAD_TIMEOUT_MS)));
      const failed = prepared.find((r) => r === null || (r.t === 'prepared' && !r.ok));
      if (failed !== undefined) {
        for (const s of live) if (s.worker) sendTo(s.worker, { t: 'abort', seq: n });
        throw new Error(failed === null ? 'a worker did not answer' : failed.t === 'prepared' ? failed.error ?? 'failed' : 'failed');
      }
      cfg = next;
      sources = nextSources;
      // every worker in force now, including one restarted during the prepare
      const targets = slots.filter((s) => s.worker !== null);
      const committed = await Promise.all(targets.map((s) => ask(s, { t: 'commit', seq: n, config: next, sources: nextSources }, 'committed', RELOAD_TIMEOUT_MS)));
      for (const r of committed) if (r && r.t === 'committed' && r.ok && r.summary) summary = r.summary;
      const bad = committed.filter((r) => r && r.t === 'committed' && !r.ok).length;
      if (bad > 0) log.error({ workers: bad }, 'reload failed in some workers after every worker had prepared it');
      return summary;
    };
    const p = swapChain.then(run, run);
    swapChain = p.catch(() => undefined);
    return p;
  };

  journal.startPurge();
  const agent = cfg.update.feed === null ? null : updateAgentFromConfig(cfg, cfg.update.feed, log, { onApplied: async (info: AppliedInfo) => {
    const s = await swapAll(cfg, { lists: info.listsPath, policy: info.policyPath, listSerial: info.serial });
    log.info({ serial: info.serial, ...s.describe }, 'bundle applied');
  } });
  agent?.start();

  const metrics = createGardefouMetrics();
  metrics.setSources({
    journalQueueDepth: () => journal.stats().queueDepth,
    journalIndexLag: () => journal.stats().indexLag,
    journalIndexHealthy: () => journal.stats().indexError === null,
    listCreatedMs: () => {
      const created = agent?.status().running?.created;
      return created ? Date.parse(created) : null;
    },
  });
  metrics.registry.callback('gardefou_workers', 'Proxy worker processes listening now.', () => slots.filter((s) => s.ready).length);
  metrics.registry.callback('gardefou_worker_restarts_total', 'Restarts of each proxy worker (slot) after it exited.',
    slots.map((s) => ({ labels: { worker: String(s.slot) }, fn: () => s.restarts })), { type: 'counter' });
  const renderMetrics = async (): Promise<string> => {
    const n = ++seq;
    const replies = await Promise.all(slots.filter((s) => s.ready).map((s) => ask(s, { t: 'metrics?', seq: n }, 'metrics', METRICS_TIMEOUT_MS)));
    const parts: FamilySnapshot[][] = [metrics.snapshot()];
    for (const r of replies) if (r && r.t === 'metrics') parts.push(r.snapshot);
    return renderSnapshot(mergeSnapshots(parts)) + (agent ? renderUpdateMetrics(agent.status()) : '');
  };
  const policyView = {
    describe: () => summary.describe,
    get listSerial() { return summary.listSerial; },
  };
  const admin: AdminServer | null = cfg.admin.listen === null ? null : new AdminServer({
    proxy: { policy: policyView },
    journal,
    log,
    updateStatus: agent ? () => agent.status() : null,
    metrics: { contentType: METRICS_CONTENT_TYPE, render: renderMetrics },
    workers: () => ({ listening: slots.filter((s) => s.ready).length, total: slots.length }),
    extraStatus: () => ({
      workers: slots.map((s) => ({ worker: s.slot, pid: s.pid, listening: s.ready, restarts: s.restarts, openRecords: s.worker ? host.openRecords(String(s.worker.id)) : 0 })),
    }),
  });
  let adminBound: string | null = null;
  try {
    adminBound = admin && cfg.admin.listen ? await admin.listen(cfg.admin.listen) : null;
  } catch (err) {
    await agent?.stop();
    await killAll();
    metrics.close();
    throw new ConfigError(`cannot listen on admin.listen ${cfg.admin.listen}: ${errorMessage(err)}`);
  }
  log.info({
    listen: (listening?.proxy ?? []).map((b) => formatHostPort(b.host, b.port)),
    transparent: (listening?.transparent ?? []).map((a) => `${a.kind} ${formatHostPort(a.host, a.port)}`),
    admin: adminBound,
    workers: slots.length,
  }, 'ready');

  // One reload at a time; a signal arriving during a reload queues exactly one more (as serve.ts).
  const reload = serialised(async (why: string) => {
    try {
      const next = o.reloadConfig();
      if (agent) {
        await agent.checkNow();
        await agent.recomposeLocal();
      }
      const prevLists = cfg.lists;
      const s = await swapAll(next, o.policySources(next));
      if (JSON.stringify(next.listen) !== JSON.stringify(o.config.listen)) log.warn('listen addresses changed: restart to apply them');
      if (next.workers !== o.config.workers) log.warn('workers changed: restart to apply it');
      if (next.lists !== prevLists) indexWatcher.watch(next.lists);
      log.info({ why, ...s.describe, serial: s.listSerial }, 'reloaded');
    } catch (err) {
      log.error({ why, err: errorMessage(err) }, 'reload failed; keeping the configuration and lists in force');
    }
  });

  // a compiled index file given as `lists` is watched: replacing it reloads, as SIGHUP
  const indexWatcher = watchIndexFile(() => reload('index file changed'));
  indexWatcher.watch(cfg.lists);

  // workers drain their in-flight requests (limits.shutdownGraceMs), send their last journal
  // ops and exit; one that does not is killed, and its open records are closed by the host
  const stopWorkers = async () => {
    const grace = cfg.limits.shutdownGraceMs + 10_000;
    await Promise.all(slots.map((s) => new Promise<void>((resolve) => {
      const w = s.worker;
      if (!w || w.isDead()) return resolve();
      const timer = setTimeout(() => { log.warn({ worker: s.slot }, 'worker did not stop in time: killing it'); w.process.kill('SIGKILL'); }, grace);
      w.once('exit', () => { clearTimeout(timer); resolve(); });
      if (!sendTo(w, { t: 'stop' })) w.process.kill('SIGTERM');
    })));
  };

  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    await stopService(signal, { log, journal, agent, admin, metrics, drain: stopWorkers });
    process.off('SIGHUP', onHup);
    indexWatcher.close();
    // nothing should be left; if a handle is, do not hang the service manager
    setTimeout(() => process.exit(), 2000).unref();
  };
  const onHup = () => reload('SIGHUP');
  process.on('SIGHUP', onHup);
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}
