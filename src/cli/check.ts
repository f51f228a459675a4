/**
 * `gardefou check URL`: explains the decision the proxy would take for a URL (or a CONNECT
 * `host:port`), with the same lists, policy and code path as `serve`.
 * Exit codes: 0 allowed, 1 blocked, 2 bad input.
 */
import type { Command } from 'commander';
import * as net from 'node:net';
import * as path from 'node:path';
import { loadConfig } from '../config';
import { InputError } from '../errors';
import { loadPolicyEngine } from '../lists/load';
import { parseAbsoluteUrl, parseConnectAuthority, targetUrl } from '../policy/normalise';
import type { Target } from '../policy/types';

interface CheckFlags {
  config?: string;
  lists?: string;
  policy?: string;
  client?: string;
  profile?: string;
  at?: string;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('check')
    .description('explain the decision for a URL or a CONNECT host:port (exit 0 allowed, 1 blocked, 2 bad input)')
    .argument('<url>', 'http://host/path, https://host/path, host:port (CONNECT) or a bare host')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--lists <path>', 'UT1 directory, blacklists.tar.gz or compiled index (overrides config "lists")')
    .option('--policy <file>', 'policy file (overrides config "policy")')
    .option('--client <ip>', 'client IP address the request comes from', '127.0.0.1')
    .option('--profile <name>', 'decide for this profile, as a logged-in user\'s group or the workstation map would give it (default: from --client)')
    .option('--at <iso-time>', 'decide as at this time (ISO 8601, e.g. 2026-09-07T10:00:00+02:00)')
    .option('--json', 'print one JSON object')
    .action(async (url: string, flags: CheckFlags) => {
      process.exitCode = await check(url, flags, (s) => process.stdout.write(s));
    });
}

/** Parses what the user typed: absolute URL, CONNECT authority, or bare host. */
export function parseCheckTarget(raw: string): Target | null {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(raw)) return parseAbsoluteUrl(raw);
  if (/:\d+$/.test(raw) && !raw.includes('/')) return parseConnectAuthority(raw);
  if (raw.includes('/')) return parseAbsoluteUrl(`http://${raw}`);
  return parseAbsoluteUrl(`http://${raw}/`);
}

export async function check(url: string, flags: CheckFlags, out: (s: string) => void): Promise<number> {
  const cfg = loadConfig(flags.config);
  const client = flags.client ?? '127.0.0.1';
  if (net.isIP(client) === 0) throw new InputError(`checking ${url}: --client: expected an IPv4 or IPv6 address, got "${client}"`);
  let at: Date | undefined;
  if (flags.at !== undefined) {
    at = new Date(flags.at);
    if (!/^\d{4}-\d{2}-\d{2}/.test(flags.at) || Number.isNaN(at.getTime())) {
      throw new InputError(`checking ${url}: --at: expected an ISO 8601 time (2026-09-07T10:00:00+02:00), got "${flags.at}"`);
    }
  }
  const target = parseCheckTarget(url);
  if (target === null) {
    throw new InputError(`checking ${url}: not a valid http URL, host:port or host (a host that cannot be parsed is refused by the proxy)`);
  }
  const engine = await loadPolicyEngine({
    lists: flags.lists ? path.resolve(flags.lists) : cfg.lists,
    policy: flags.policy ? path.resolve(flags.policy) : cfg.policy,
  });
  if (flags.profile !== undefined && !engine.profileNames().includes(flags.profile)) {
    throw new InputError(`checking ${url}: --profile: the policy has no profile "${flags.profile}" (it has: ${engine.profileNames().join(', ')})`);
  }
  const who = flags.profile === undefined ? { ip: client } : { ip: client, profile: flags.profile };
  const d = engine.decide(target, who, at);
  // whether a TLS connection to this host would be decrypted (only when the policy intercepts)
  const intercepted = engine.intercepting ? engine.interceptFor({ kind: 'connect', host: target.host, port: 443, path: '' }, who, d) : null;
  const listedIn = engine.listedCategories(target);
  const result = {
    action: d.action,
    url: targetUrl(target),
    kind: target.kind,
    host: target.host,
    port: target.port,
    client,
    at: (at ?? new Date()).toISOString(),
    profile: d.profile,
    reason: d.reason,
    category: d.category,
    categoryFr: d.categoryFr,
    categoryEn: d.categoryEn,
    match: d.match,
    matchKind: d.matchKind,
    layer: d.layer,
    listSerial: d.listSerial,
    intercepted,
    listedIn,
    lists: engine.describe().source,
  };
  if (flags.json) {
    out(JSON.stringify(result) + '\n');
  } else {
    const cat = d.category === null ? '' : ` ${d.category}${d.categoryFr || d.categoryEn ? ` (${[d.categoryFr, d.categoryEn].filter(Boolean).join(' / ')})` : ''}`;
    const lines = [
      `${d.action === 'block' ? 'BLOCKED' : 'ALLOWED'}  ${result.url}`,
      `  profile   ${d.profile} (client ${client}, ${result.at})`,
      `  reason    ${d.reason}${cat}`,
      `  match     ${d.match === null ? '-' : `${d.matchKind} ${d.match}`}`,
      `  layer     ${d.layer}`,
      ...(intercepted === null ? [] : [`  intercept ${intercepted ? 'yes: HTTPS to this host is decrypted and decided per request' : 'no'}`]),
      `  listed in ${listedIn.length === 0 ? '-' : listedIn.join(', ')}`,
      `  lists     ${result.lists}${d.listSerial ? ` (serial ${d.listSerial})` : ''}`,
    ];
    for (const w of engine.warnings) lines.push(`  note      ${w}`);
    out(lines.join('\n') + '\n');
  }
  return d.action === 'block' ? 1 : 0;
}
