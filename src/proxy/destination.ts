/**
 * Where the proxy may connect. Never an open door into the gateway or its neighbours:
 * loopback, link-local (cloud metadata included), unspecified, multicast/broadcast and the
 * gateway's own addresses are refused unless `allowDestinations` lists them.
 *
 * Names are resolved once here and the proxy connects to the address that was checked, so a
 * name that resolves differently a moment later (DNS rebinding) cannot slip through.
 */
import * as dns from 'node:dns';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import { CidrSet, plainAddress } from '../config/cidr';
import { InputError } from '../errors';

const FORBIDDEN_RANGES = [
  '0.0.0.0/8', // "this network", unspecified
  '127.0.0.0/8', // loopback
  '169.254.0.0/16', // link-local, cloud metadata (169.254.169.254)
  '224.0.0.0/4', // multicast
  '255.255.255.255/32', // broadcast
  '::/128', // unspecified
  '::1/128', // loopback
  'fe80::/10', // link-local
  'ff00::/8', // multicast
];

export type DestinationVerdict = 'ok' | 'forbidden';

export class DestinationGuard {
  private readonly forbidden: CidrSet;
  private readonly allowed: CidrSet;
  private readonly own: Set<string>;

  constructor(allowDestinations: readonly string[], ownAddresses: readonly string[] = localAddresses()) {
    this.forbidden = new CidrSet(FORBIDDEN_RANGES);
    this.allowed = new CidrSet(allowDestinations);
    this.own = new Set(ownAddresses.map(plainAddress));
  }

  check(ip: string): DestinationVerdict {
    const a = plainAddress(ip);
    if (this.allowed.has(a)) return 'ok';
    if (this.forbidden.has(a) || this.own.has(a)) return 'forbidden';
    return 'ok';
  }
}

/** Every address of this machine's interfaces: the gateway itself is not a destination. */
export function localAddresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(os.networkInterfaces())) {
    for (const ifa of list ?? []) out.push(ifa.address);
  }
  return out;
}

/**
 * A hosts-file override (like Squid's hosts_file): names listed there resolve to the listed
 * address without asking DNS. Format of /etc/hosts: `ADDRESS NAME [ALIAS...]`, `#` comments.
 */
export function readHostsFile(file: string): Map<string, string[]> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new InputError(`reading hosts file ${file}: ${(err as Error).message}`);
  }
  const map = new Map<string, string[]>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').replace(/#.*/, '').trim();
    if (line === '') continue;
    const [address, ...names] = line.split(/\s+/);
    if (address === undefined || net.isIP(address) === 0 || names.length === 0) {
      throw new InputError(`reading hosts file ${file} line ${i + 1}: expected "ADDRESS NAME...", got "${line.slice(0, 80)}"`);
    }
    for (const n of names) {
      const key = n.toLowerCase().replace(/\.$/, '');
      const list = map.get(key);
      if (list) list.push(address);
      else map.set(key, [address]);
    }
  }
  return map;
}

export type Resolution =
  | { ok: true; address: string; family: 4 | 6 }
  | { ok: false; reason: 'dns-failure' | 'forbidden-destination'; detail: string };

/** Resolves a host (name or literal) to one address the guard accepts. */
export class Resolver {
  constructor(
    private readonly guard: DestinationGuard,
    private readonly hosts: Map<string, string[]> | null,
  ) {}

  async resolve(host: string): Promise<Resolution> {
    let candidates: string[];
    const family = net.isIP(host);
    if (family !== 0) {
      candidates = [host];
    } else {
      const fromFile = this.hosts?.get(host);
      if (fromFile) {
        candidates = fromFile;
      } else {
        try {
          candidates = (await dns.promises.lookup(host, { all: true, verbatim: true })).map((a) => a.address);
        } catch (err) {
          return { ok: false, reason: 'dns-failure', detail: (err as NodeJS.ErrnoException).code ?? 'lookup failed' };
        }
      }
    }
    for (const address of candidates) {
      if (this.guard.check(address) === 'ok') {
        return { ok: true, address, family: net.isIPv6(address) ? 6 : 4 };
      }
    }
    return { ok: false, reason: 'forbidden-destination', detail: candidates.join(',') };
  }
}
