/**
 * Who is the client. For now: the source IP, and a workstation name from a map file
 * (`workstations` config key) keyed by IP address or by MAC address. MAC addresses are found
 * in the kernel's neighbour table (/proc/net/arp), read at most every few seconds, never per
 * request. Later: DHCP leases, proxy authentication.
 *
 * Map file format, one entry a line, `#` comments:
 *   10.1.2.34          salle3-pc04
 *   3c:52:82:0a:1b:2c  cdi-portable-07
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import { InputError } from '../errors';
import type { Client } from '../policy/types';

const MAC_RE = /^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/i;
const ARP_REFRESH_MS = 5000;

export interface IdentityOptions {
  /** the neighbour table to read (tests give a file of their own) */
  arpFile?: string;
  now?: () => number;
}

export class Identity {
  private readonly byIp: Map<string, string>;
  private readonly byMac: Map<string, string>;
  private readonly arpFile: string;
  private readonly now: () => number;
  private macOfIp = new Map<string, string>();
  private arpReadAt = -Infinity;

  constructor(byIp: Map<string, string> = new Map(), byMac: Map<string, string> = new Map(), opts: IdentityOptions = {}) {
    this.byIp = byIp;
    this.byMac = byMac;
    this.arpFile = opts.arpFile ?? '/proc/net/arp';
    this.now = opts.now ?? Date.now;
  }

  static fromFile(file: string | null, opts: IdentityOptions = {}): Identity {
    if (file === null) return new Identity(new Map(), new Map(), opts);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new InputError(`reading workstations map ${file}: ${(err as Error).message}`);
    }
    const byIp = new Map<string, string>();
    const byMac = new Map<string, string>();
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      const line = (lines[i] ?? '').replace(/#.*/, '').trim();
      if (line === '') continue;
      const [key, name, extra] = line.split(/\s+/);
      if (key !== undefined && name !== undefined && extra === undefined && net.isIP(key) !== 0) {
        byIp.set(plainAddress(key), name);
      } else if (key !== undefined && name !== undefined && extra === undefined && MAC_RE.test(key)) {
        byMac.set(normaliseMac(key), name);
      } else {
        throw new InputError(`reading workstations map ${file} line ${i + 1}: expected "IP NAME" or "MAC NAME", got "${line.slice(0, 80)}"`);
      }
    }
    return new Identity(byIp, byMac, opts);
  }

  /** The client as the policy and the journal see it. `ip` is already plain (no ::ffff:). */
  identify(ip: string): Client {
    let workstation = this.byIp.get(ip);
    if (workstation === undefined && this.byMac.size > 0) {
      const mac = this.macOf(ip);
      if (mac !== undefined) workstation = this.byMac.get(mac);
    }
    return { ip, workstation };
  }

  private macOf(ip: string): string | undefined {
    if (this.now() - this.arpReadAt > ARP_REFRESH_MS) {
      this.arpReadAt = this.now();
      this.macOfIp = readArpTable(this.arpFile);
    }
    return this.macOfIp.get(ip);
  }
}

function normaliseMac(mac: string): string {
  return mac.toLowerCase().replace(/-/g, ':');
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
