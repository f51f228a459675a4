/**
 * `gardefou update [--config FILE] [--feed URL] [--once] [--status [--json]]`
 *   --once    one check, then exit: 0 applied / up to date / not modified, 1 refused or busy
 *             (what the systemd timer runs); without it, check now then every
 *             update.intervalSeconds until SIGTERM (for sites running the updater apart)
 *   --status  print the state of the lists channel (from update.stateDir) and exit
 */
import type { Command } from 'commander';
import pino from 'pino';
import { loadConfig } from '../config';
import { ConfigError, InputError } from '../errors';
import { createLogger } from '../log';
import { readStatus, updateAgentFromConfig, UpdateResult, UpdateStatus } from '../lists/update';

interface Flags {
  config?: string;
  feed?: string;
  once?: boolean;
  status?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('update')
    .description('pull, verify and apply the signed DASEN list bundle (config update.*)')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--feed <url>', 'feed URL (overrides config "update.feed")')
    .option('--once', 'check once and exit (exit 1 when the update was refused)')
    .option('--status', 'print the channel status: bundle in force, last check, last success, last refusal')
    .option('--json', 'with --status or --once: print one JSON object')
    .action(async (flags: Flags) => {
      const cfg = loadConfig(flags.config);
      if (flags.feed !== undefined) {
        try {
          const u = new URL(flags.feed);
          if (!['http:', 'https:', 'file:'].includes(u.protocol)) throw new Error('scheme');
        } catch {
          throw new InputError(`flag --feed: expected an http(s):// or file:// URL, got ${JSON.stringify(flags.feed)}`);
        }
      }
      const feed = flags.feed ?? cfg.update.feed;
      if (flags.status) {
        const s = readStatus(cfg.update.stateDir, feed);
        process.stdout.write(flags.json ? JSON.stringify(s) + '\n' : formatStatus(s));
        return;
      }
      if (!feed) throw new ConfigError('update: no feed: set update.feed in the config or give --feed URL');
      // --once prints its own result on stdout: its log lines (warnings and worse) go to stderr
      const log = flags.once ? createLogger('warn', pino.destination({ dest: 2, sync: true })) : createLogger(cfg.logLevel);
      const agent = updateAgentFromConfig(cfg, feed, log);
      if (flags.once) {
        const r = await agent.checkNow();
        log.flush();
        process.stdout.write(flags.json ? JSON.stringify(r) + '\n' : formatResult(r));
        if (r.outcome === 'refused' || r.outcome === 'busy') process.exitCode = 1;
        return;
      }
      agent.start();
      log.info({ feed: new URL(feed).host, intervalSeconds: cfg.update.intervalSeconds }, 'update agent started');
      // the agent's timer is unref'd: hold the process until a signal
      const hold = setInterval(() => undefined, 1 << 30);
      await new Promise<void>((resolve) => {
        const end = () => resolve();
        process.once('SIGTERM', end);
        process.once('SIGINT', end);
      });
      clearInterval(hold);
      await agent.stop();
      log.flush();
    });
}

function formatResult(r: UpdateResult): string {
  const what = {
    applied: `applied serial ${r.serial} (was ${r.previousSerial ?? 'none'})`,
    'up-to-date': `up to date (serial ${r.serial})`,
    'not-modified': `feed not modified (serial ${r.serial})`,
    refused: `REFUSED (${r.reason}): ${r.message}; serial ${r.serial ?? 'none'} stays in force`,
    busy: `busy: ${r.message}`,
    'no-feed': 'no feed configured',
  }[r.outcome];
  return `${what} [${r.bytes} bytes, ${r.ms} ms]\n`;
}

export function formatStatus(s: UpdateStatus): string {
  const r = s.running;
  const lines = [
    `feed          ${s.feed ?? '(none)'}`,
    r
      ? `in force      serial ${r.serial} (${r.kind}${r.kind === 'delta' ? ` over ${r.fullSerial}` : ''}), created ${r.created} (${Math.round(r.ageSeconds / 3600)} h ago), expires ${r.expires}${r.expired ? ' EXPIRED' : ''}, key ${r.keyid.slice(0, 16)}`
      : 'in force      no signed bundle applied yet',
    `last check    ${s.lastCheck ? `${s.lastCheck.at} ${s.lastCheck.outcome}` : 'never'}`,
    `last success  ${s.lastSuccess ? `${s.lastSuccess.at} (serial ${s.lastSuccess.serial ?? 'none'})` : 'never'}`,
    `last applied  ${s.lastApplied ? `${s.lastApplied.at} serial ${s.lastApplied.serial} (${s.lastApplied.bytes} bytes, ${s.lastApplied.ms} ms)` : 'never'}`,
    `last refusal  ${s.lastRefusal ? `${s.lastRefusal.at} ${s.lastRefusal.reason}: ${s.lastRefusal.message}` : 'none'}`,
  ];
  if (s.consecutiveFailures) lines.push(`failing       ${s.consecutiveFailures} checks in a row`);
  if (s.busyPid) lines.push(`busy          pid ${s.busyPid} is applying an update`);
  return lines.join('\n') + '\n';
}
