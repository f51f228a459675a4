/**
 * A proxy worker process (node:cluster): the proxy listeners and a policy engine, writing to the
 * primary's journal through a RemoteJournal. Messages: see protocol.ts.
 */
import { createGardefouMetrics } from '../admin/metrics';
import type { Config } from '../config';
import { ConfigError, errorMessage } from '../errors';
import { Identity } from '../identity';
import { RemoteJournal } from '../journal/remote';
import { loadPolicyEngine } from '../lists/load';
import { createLogger, type Logger } from '../log';
import type { PolicyEngine } from '../policy/types';
import type { ProxyObserver } from '../proxy/context';
import { ProxyServer } from '../proxy/server';
import { WorkerGate } from './gate';
import { FromWorker, PolicySources, PolicySummary, ToWorker, WORKER_ENV, WorkerInit } from './protocol';

function summaryOf(p: PolicyEngine): PolicySummary {
  return { describe: p.describe(), listSerial: p.listSerial };
}

/** Sends to the primary; false when the channel is closed (a full backlog is not a failure). */
function send(m: FromWorker, cb?: () => void): boolean {
  if (!process.send || !process.connected) return false;
  process.send(m, undefined, {}, cb ? () => cb() : undefined);
  return true;
}

export async function runWorker(): Promise<void> {
  const raw = process.env[WORKER_ENV];
  if (!raw || !process.send) throw new Error(`${WORKER_ENV} is not set: this file runs as a gardefou cluster worker only`);
  const init = JSON.parse(raw) as WorkerInit;
  const log: Logger = createLogger(init.config.logLevel).child({ worker: init.slot });
  const journal = new RemoteJournal((m) => send(m), Math.max(1, init.config.journal.batchMs));
  const gate = new WorkerGate((m) => send(m), log);
  let proxy: ProxyServer | null = null;
  let stopping = false;
  const prepared = new Map<number, { config: Config; policy: PolicyEngine }>();

  const metrics = createGardefouMetrics();
  let served = 0;
  metrics.registry.callback('gardefou_worker_requests_total', 'Requests and tunnels finished, by proxy worker (slot).',
    [{ labels: { worker: String(init.slot) }, fn: () => served }], { type: 'counter' });
  const observer: ProxyObserver = {
    done(open, close) {
      served++;
      metrics.request(close.decision ?? open.decision, open.category, open.profile, close.bytesIn, close.bytesOut);
      metrics.requestDuration(open.protocol === 'connect' ? 'connect' : 'http', (close.endMs - open.startMs) / 1000);
    },
  };

  const stop = async (why: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.debug({ why }, 'worker stopping');
    try {
      if (proxy) await proxy.close();
      metrics.close();
      await journal.close();
    } catch (err) {
      log.error({ err: errorMessage(err) }, 'error while stopping');
    }
    log.flush();
    // `bye` goes after the last journal ops on the same channel: the primary has them all
    if (!send({ t: 'bye' }, () => process.exit(0))) process.exit(0);
  };

  const load = (config: Config, sources: PolicySources) => loadPolicyEngine({ ...sources, log }).then((policy) => {
    Identity.fromFile(config.workstations); // a bad workstations file fails the prepare, not the commit
    return policy;
  });

  const onMessage = async (m: ToWorker): Promise<void> => {
    switch (m.t) {
      case 'j.ack':
      case 'j.health':
        journal.receive(m);
        break;
      case 'c.ack':
        gate.receive(m);
        break;
      case 'metrics?':
        metrics.setSources({
          tunnelsOpen: () => proxy?.tunnelsOpen ?? 0,
          listSerial: () => (proxy?.policy.listSerial == null ? null : Number(proxy.policy.listSerial)),
        });
        send({ t: 'metrics', seq: m.seq, snapshot: metrics.snapshot() });
        break;
      case 'prepare':
        try {
          const policy = await load(m.config, m.sources);
          prepared.clear();
          prepared.set(m.seq, { config: m.config, policy });
          send({ t: 'prepared', seq: m.seq, ok: true, error: null, summary: summaryOf(policy) });
        } catch (err) {
          send({ t: 'prepared', seq: m.seq, ok: false, error: errorMessage(err), summary: null });
        }
        break;
      case 'commit':
        try {
          if (!proxy) throw new Error('not started');
          const p = prepared.get(m.seq) ?? { config: m.config, policy: await load(m.config, m.sources) };
          prepared.delete(m.seq);
          proxy.reconfigure(p.config);
          proxy.setPolicy(p.policy);
          send({ t: 'committed', seq: m.seq, ok: true, error: null, summary: summaryOf(p.policy) });
        } catch (err) {
          log.error({ err: errorMessage(err) }, 'reload failed in this worker; keeping the configuration and lists in force');
          send({ t: 'committed', seq: m.seq, ok: false, error: errorMessage(err), summary: null });
        }
        break;
      case 'abort':
        prepared.delete(m.seq);
        break;
      case 'stop':
        await stop('stop requested');
        break;
      default:
        break;
    }
  };
  process.on('message', (m: ToWorker) => void onMessage(m));
  process.on('disconnect', () => {
    journal.onDisconnect('the primary process is gone');
    gate.refuseAll();
    if (!stopping) {
      log.error('primary process gone: stopping this worker');
      log.flush();
      process.exit(1);
    }
  });
  // systemd's KillMode=mixed signals only the primary; a terminal's Ctrl-C reaches every process
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', () => log.debug('SIGHUP ignored by a worker: the primary reloads every worker'));

  try {
    const policy = await loadPolicyEngine({ ...init.sources, log });
    proxy = new ProxyServer({
      config: init.config, policy, journal, log, identity: Identity.fromFile(init.config.workstations), observer, shareListeners: true, connectionGate: gate.gate,
    });
    let bound: Array<{ host: string; port: number }>;
    try {
      bound = await proxy.listen();
    } catch (err) {
      throw new ConfigError(`cannot listen: ${errorMessage(err)}`);
    }
    send({ t: 'listening', proxy: bound, transparent: proxy.transparentAddresses, summary: summaryOf(policy) });
  } catch (err) {
    log.flush();
    if (!send({ t: 'fatal', message: errorMessage(err), config: err instanceof ConfigError }, () => process.exit(2))) process.exit(2);
  }
}
