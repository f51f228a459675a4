/**
 * Who is the client. For now: the source IP, and a workstation name from a static map file
 * (`workstations` config key). Later: DHCP leases, MAC addresses, proxy authentication.
 *
 * Map file format, one entry a line, `#` comments:  `IP NAME`  e.g. `10.1.2.34 salle3-pc04`
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import { InputError } from '../errors';
import type { Client } from '../policy/types';

export class Identity {
  private readonly byIp: Map<string, string>;

  constructor(byIp: Map<string, string> = new Map()) {
    this.byIp = byIp;
  }

  static fromFile(file: string | null): Identity {
    if (file === null) return new Identity();
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new InputError(`reading workstations map ${file}: ${(err as Error).message}`);
    }
    const map = new Map<string, string>();
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      const line = (lines[i] ?? '').replace(/#.*/, '').trim();
      if (line === '') continue;
      const [ip, name, extra] = line.split(/\s+/);
      if (ip === undefined || name === undefined || extra !== undefined || net.isIP(ip) === 0) {
        throw new InputError(`reading workstations map ${file} line ${i + 1}: expected "IP NAME", got "${line.slice(0, 80)}"`);
      }
      map.set(plainAddress(ip), name);
    }
    return new Identity(map);
  }

  /** The client as the policy and the journal see it. `ip` is already plain (no ::ffff:). */
  identify(ip: string): Client {
    return { ip, workstation: this.byIp.get(ip) };
  }
}
