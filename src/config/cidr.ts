/**
 * CIDR lists, matched with node's BlockList (no per-check allocation of our own).
 * IPv4-mapped IPv6 addresses (::ffff:10.0.0.1, what a dual-stack socket reports) are matched as
 * the IPv4 address they carry.
 */
import * as net from 'node:net';

export interface Cidr {
  address: string;
  prefix: number;
  family: 'ipv4' | 'ipv6';
}

export function parseCidr(text: string): Cidr {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const family = net.isIPv4(address) ? 'ipv4' : net.isIPv6(address) ? 'ipv6' : null;
  if (family === null) throw new Error(`"${text}" is not an IPv4 or IPv6 address or CIDR`);
  const max = family === 'ipv4' ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) throw new Error(`"${text}" has a bad prefix length (0 to ${max})`);
    prefix = Number(p);
  }
  return { address, prefix, family };
}

/** Strips the ::ffff: prefix of IPv4-mapped IPv6 addresses and IPv6 zone ids. */
export function plainAddress(ip: string): string {
  if (ip.length > 7 && ip.charCodeAt(0) === 58 /* : */ && ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7))) {
    return ip.slice(7);
  }
  const pct = ip.indexOf('%');
  return pct < 0 ? ip : ip.slice(0, pct);
}

export class CidrSet {
  private readonly list = new net.BlockList();
  readonly size: number;

  constructor(cidrs: readonly string[]) {
    for (const text of cidrs) {
      const c = parseCidr(text);
      this.list.addSubnet(c.address, c.prefix, c.family);
    }
    this.size = cidrs.length;
  }

  has(ip: string): boolean {
    const a = plainAddress(ip);
    const family = net.isIPv4(a) ? 'ipv4' : net.isIPv6(a) ? 'ipv6' : null;
    return family !== null && this.list.check(a, family);
  }
}
