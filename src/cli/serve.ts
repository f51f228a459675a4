/**
 * `gardefou serve`: wires configuration, journal, policy engine and proxy, and handles signals.
 *   SIGHUP  reload config, policy and lists; a failed reload keeps the old ones and logs why.
 *   SIGTERM / SIGINT  stop accepting, let in-flight requests end (bounded), flush, exit 0.
 */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CONTENT_TYPE as METRICS_CONTENT_TYPE, createGardefouMetrics } from '../admin/metrics';
import { AdminServer } from '../admin/server';
import { Config, loadConfig, validateConfig } from '../config';
import { formatHostPort, parseHostPort } from '../config/hostport';
import { ConfigError, errorMessage } from '../errors';
import { Identity } from '../identity';
import { Journal, openJournal } from '../journal';
import { createLogger, Logger } from '../log';
import { currentBundle, renderUpdateMetrics, updateAgentFromConfig } from '../lists/update';
import { loadPolicyEngine } from '../lists/load';
import type { PolicyEngine } from '../policy/types';
import type { ProxyObserver } from '../proxy/context';
import { ProxyServer } from '../proxy/server';
import * as os from 'node:os';
import { runPrimary } from '../cluster/primary';
import { workerCount } from '../cluster/protocol';
import { watchIndexFile } from '../lists/watch';
import { serialised } from '../serialised';
import { stopService } from '../lifecycle';

export interface ServeFlags {
  config?: string;
  listen?: string[];
  lists?: string;
  journal?: string;
  hosts?: string;
  policy?: string;
  workers?: string;
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('run the filtering proxy (HTTP and CONNECT) with its connection journal')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--listen <host:port>', 'listen address, repeatable; IPv6 as [::1]:3128 (overrides config "listen")', collect)
    .option('--lists <path>', 'UT1 directory, blacklists.tar.gz or compiled index (overrides config "lists")')
    .option('--policy <file>', 'policy file: profiles, clients, local entries (overrides config "policy")')
    .option('--journal <path>', 'journal database file (overrides config "journal.path")')
    .option('--hosts <file>', 'hosts-file override for upstream name resolution (overrides config "hosts")')
    .option('--workers <n>', 'proxy processes: a number >= 1 or "auto" (one per core from 4 cores, else 1; overrides config "workers")')
    .action(async (flags: ServeFlags) => {
      await serve(flags);
    });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Configuration from the file (or defaults) with command-line flags on top. */
export function configFromFlags(flags: ServeFlags): Config {
  const cfg = loadConfig(flags.config);
  const origin = flags.config ?? '(defaults)';
  if (flags.listen) {
    for (const l of flags.listen) {
      try {
        parseHostPort(l);
      } catch (err) {
        throw new ConfigError(`flag --listen: ${errorMessage(err)}`);
      }
    }
    cfg.listen = flags.listen;
  }
  if (flags.lists) cfg.lists = path.resolve(flags.lists);
  if (flags.policy) cfg.policy = path.resolve(flags.policy);
  if (flags.journal) cfg.journal.path = path.resolve(flags.journal);
  if (flags.hosts) cfg.hosts = path.resolve(flags.hosts);
  if (flags.workers !== undefined) {
    const n = Number(flags.workers);
    if (flags.workers === 'auto') cfg.workers = 'auto';
    else if (/^[0-9]+$/.test(flags.workers) && n >= 1 && n <= 1024) cfg.workers = n;
    else throw new ConfigError(`flag --workers: expected "auto" or an integer from 1 to 1024, got "${flags.workers}"`);
  }
  return validateConfig(cfg, origin);
}

/**
 * Where the lists and policy in force come from: the DASEN bundle applied in update.stateDir
 * when there is one (it carries its serial, and the school's policy composed with the DASEN
 * layer), else the configured `lists` and `policy`.
 */
export function policySources(cfg: Config): { lists: string; policy: string; listSerial: string | null } {
  const bundle = currentBundle(cfg.update.stateDir);
  if (bundle) return { lists: bundle.listsPath, policy: bundle.policyPath, listSerial: bundle.serial };
  return { lists: cfg.lists, policy: cfg.policy, listSerial: null };
}

async function loadPolicy(cfg: Config, log: Logger): Promise<PolicyEngine> {
  return loadPolicyEngine({ ...policySources(cfg), log });
}

export async function serve(flags: ServeFlags): Promise<void> {
  const cfg = configFromFlags(flags);
  const log = createLogger(cfg.logLevel);
  log.info({ config: flags.config ?? '(embedded defaults)', lists: cfg.lists, policy: cfg.policy, journal: cfg.journal.path }, 'starting');
  if (cfg.journal.failOpen) {
    log.warn('journal.failOpen is true: if the journal cannot be written, traffic will be forwarded WITHOUT being recorded');
  }
  fs.mkdirSync(path.dirname(cfg.journal.path), { recursive: true });
  const journal = await openJournal(cfg.journal, log);
  // workers: 1 is the one-process proxy below; more: src/cluster (the journal stays here)
  const workers = workerCount(cfg.workers, () => os.availableParallelism());
  try {
    if (workers > 1) await runPrimary({ config: cfg, workers, log, journal, reloadConfig: () => configFromFlags(flags), policySources });
    else await run(flags, cfg, log, journal);
  } catch (err) {
    // a start that fails (lists, a port in use...) must not leave the journal's threads
    // keeping the process alive: close it, then report
    await journal.close().catch(() => undefined);
    log.flush();
    throw err;
  }
}

async function run(flags: ServeFlags, initial: Config, log: Logger, journal: Journal): Promise<void> {
  let cfg = initial;
  const policy = await loadPolicy(cfg, log);
  log.info({ ...policy.describe(), serial: policy.listSerial }, 'lists loaded');
  const metrics = createGardefouMetrics();
  const observer: ProxyObserver = {
    done(open, close) {
      metrics.request(close.decision ?? open.decision, open.category, open.profile, close.bytesIn, close.bytesOut);
      metrics.requestDuration(open.protocol, (close.endMs - open.startMs) / 1000);
    },
  };
  const proxy = new ProxyServer({ config: cfg, policy, journal, log, identity: Identity.fromFile(cfg.workstations), observer });
  let bound: Array<{ host: string; port: number }>;
  try {
    bound = await proxy.listen();
  } catch (err) {
    await proxy.close(0);
    metrics.close();
    throw new ConfigError(`cannot listen: ${errorMessage(err)}`);
  }
  journal.startPurge();
  // The DASEN channel: a new bundle, once verified and compiled, is swapped in live.
  const agent = cfg.update.feed === null ? null : updateAgentFromConfig(cfg, cfg.update.feed, log, { onApplied: async (info) => {
    const next = await loadPolicyEngine({ lists: info.listsPath, policy: info.policyPath, listSerial: info.serial, log });
    proxy.setPolicy(next);
    log.info({ serial: info.serial, ...next.describe() }, 'bundle applied');
  } });
  agent?.start();
  metrics.setSources({
    tunnelsOpen: () => proxy.tunnelsOpen,
    journalQueueDepth: () => journal.stats().queueDepth,
    journalIndexLag: () => journal.stats().indexLag,
    journalIndexHealthy: () => journal.stats().indexError === null,
    listSerial: () => (proxy.policy.listSerial === null ? null : Number(proxy.policy.listSerial)),
    listCreatedMs: () => {
      const created = agent?.status().running?.created;
      return created ? Date.parse(created) : null;
    },
  });
  const admin: AdminServer | null = cfg.admin.listen === null ? null : new AdminServer({
    proxy,
    journal,
    log,
    updateStatus: agent ? () => agent.status() : null,
    metrics: {
      contentType: METRICS_CONTENT_TYPE,
      render: () => metrics.render() + (agent ? renderUpdateMetrics(agent.status()) : ''),
    },
  });
  let adminBound: string | null = null;
  try {
    adminBound = admin && cfg.admin.listen ? await admin.listen(cfg.admin.listen) : null;
  } catch (err) {
    await agent?.stop();
    await proxy.close(0);
    metrics.close();
    throw new ConfigError(`cannot listen on admin.listen ${cfg.admin.listen}: ${errorMessage(err)}`);
  }
  log.info({
    listen: bound.map((b) => formatHostPort(b.host, b.port)),
    transparent: proxy.transparentAddresses.map((a) => `${a.kind} ${formatHostPort(a.host, a.port)}`),
    admin: adminBound,
  }, 'ready');

  // One reload at a time; a signal arriving during a reload queues exactly one more.
  const reload = serialised(async (why: string) => {
    try {
      const next = configFromFlags(flags);
      if (agent) {
        // look at the feed now (a technician's `systemctl reload`, or the update timer), then
        // compose the school's local entries, which may have changed, with the bundle again
        await agent.checkNow();
        await agent.recomposeLocal();
      }
      const nextPolicy = await loadPolicy(next, log);
      proxy.reconfigure(next);
      proxy.setPolicy(nextPolicy);
      if (JSON.stringify(next.listen) !== JSON.stringify(cfg.listen)) log.warn('listen addresses changed: restart to apply them');
      if (next.lists !== cfg.lists) indexWatcher.watch(next.lists);
      cfg = next;
      log.info({ why, ...nextPolicy.describe(), serial: nextPolicy.listSerial }, 'reloaded');
    } catch (err) {
      log.error({ why, err: errorMessage(err) }, 'reload failed; keeping the configuration and lists in force');
    }
  });

  // a compiled index file given as `lists` is watched: replacing it reloads, as SIGHUP
  const indexWatcher = watchIndexFile(() => reload('index file changed'));
  indexWatcher.watch(cfg.lists);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    await stopService(signal, { log, journal, agent, admin, metrics, drain: () => proxy.close() });
    process.off('SIGHUP', onHup);
    indexWatcher.close();
  };
  const onHup = () => reload('SIGHUP');
  process.on('SIGHUP', onHup);
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}
