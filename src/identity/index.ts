/**
 * Who is the client. Without proxy authentication (see authenticator.ts): the source IP, and a
 * workstation (name, room, profile) from
 *   1. the static map (`workstations` config key, map-file.ts) by IP,
 *   2. the static map by MAC; the MAC comes from the DHCP lease of the IP when there is one,
 *      else from the kernel's neighbour table (/proc/net/arp, read at most every few seconds),
 *   3. the hostname of the DHCP lease of the IP (`identity.dhcpLeases`, leases.ts).
 * The static map wins over the leases: the technician wrote it; a lease hostname is chosen by
 * the client machine itself.
 */
import * as fs from 'node:fs';
import type { Client } from '../policy/types';
import type { LeaseTable } from './leases';
import { MAC_RE, normaliseMac, readWorkstationMap, type Workstation } from './map-file';

export { type Workstation, parseWorkstationMap, readWorkstationMap } from './map-file';
export { LeaseTable, parseLeases, parseIscLeases, parseDnsmasqLeases, type Lease } from './leases';

const ARP_REFRESH_MS = 5000;

export interface IdentityOptions {
  /** the neighbour table to read (tests give a file of their own) */
  arpFile?: string;
  now?: () => number;
}

export class Identity {
  private readonly byIp: Map<string, Workstation>;
  private readonly byMac: Map<string, Workstation>;
  private readonly arpFile: string;
  private readonly now: () => number;
  private macOfIp = new Map<string, string>();
  private arpReadAt = -Infinity;

  /** Every profile the workstation map names (checked against the policy at start and reload). */
  profilesNamed(): string[] {
    const out = new Set<string>();
    for (const m of [this.byIp, this.byMac]) for (const w of m.values()) if (w.profile !== undefined) out.add(w.profile);
    return [...out];
  }

  constructor(byIp: Map<string, Workstation> = new Map(), byMac: Map<string, Workstation> = new Map(), opts: IdentityOptions = {}) {
    this.byIp = byIp;
    this.byMac = byMac;
    this.arpFile = opts.arpFile ?? '/proc/net/arp';
    this.now = opts.now ?? Date.now;
  }

  static fromFile(file: string | null, opts: IdentityOptions = {}): Identity {
    if (file === null) return new Identity(new Map(), new Map(), opts);
    const m = readWorkstationMap(file);
    return new Identity(m.byIp, m.byMac, opts);
  }

  /** The workstation entry of `ip` (see the order above), or undefined. */
  workstationOf(ip: string, leases: LeaseTable | null = null): Workstation | undefined {
    const w = this.byIp.get(ip);
    if (w !== undefined) return w;
    const lease = leases?.lookup(ip);
    if (this.byMac.size > 0) {
      const mac = lease?.mac ?? this.macOf(ip);
      const byMac = mac === undefined || mac === null ? undefined : this.byMac.get(mac);
      if (byMac !== undefined) return byMac;
    }
    return lease?.hostname ? { name: lease.hostname } : undefined;
  }

  /**
   * The client as the policy and the journal see it. `ip` is already plain (no ::ffff:). The
   * map's profile, if any, is carried as `profile` (the policy uses it when it knows it).
   */
  identify(ip: string, leases: LeaseTable | null = null): Client {
    const w = this.workstationOf(ip, leases);
    if (w === undefined) return { ip, workstation: undefined };
    return w.profile === undefined ? { ip, workstation: w.name } : { ip, workstation: w.name, profile: w.profile };
  }

  private macOf(ip: string): string | undefined {
    if (this.now() - this.arpReadAt > ARP_REFRESH_MS) {
      this.arpReadAt = this.now();
      this.macOfIp = readArpTable(this.arpFile);
    }
    return this.macOfIp.get(ip);
  }
}

/**
 * /proc/net/arp: "IP address  HW type  Flags  HW address  Mask  Device", one line per
 * neighbour; incomplete entries (flags 0x0, MAC 00:00:...) are skipped. A missing or
 * unreadable table (not Linux, sandbox) gives an empty map: the IP entries still work.
 */
export function readArpTable(file: string): Map<string, string> {
  const out = new Map<string, string>();
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    const [ip, , flags, mac] = f;
    if (ip === undefined || mac === undefined || flags === '0x0' || !MAC_RE.test(mac) || mac === '00:00:00:00:00:00') continue;
    out.set(ip, normaliseMac(mac));
  }
  return out;
}
