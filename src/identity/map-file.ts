/**
 * The static workstations map (`workstations` config key), written by the school's technician.
 *
 * Format, one entry a line, `#` comments, fields separated by blanks:
 *   IP|MAC  NAME  [room=ROOM]  [profile=PROFILE]
 *   10.1.2.34          salle3-pc04      room=salle3  profile=college
 *   3c:52:82:0a:1b:2c  cdi-portable-07  room=cdi
 * The two-column form of earlier versions is still valid. A bad line is an error naming the file
 * and line (the technician wrote it; a reload keeps the previous map in force).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import { InputError } from '../errors';

export const MAC_RE = /^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/i;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;

/** What the map (or a DHCP lease) says of one machine. */
export interface Workstation {
  readonly name: string;
  readonly room?: string | undefined;
  readonly profile?: string | undefined;
}

export interface WorkstationMap {
  byIp: Map<string, Workstation>;
  byMac: Map<string, Workstation>;
}

export function normaliseMac(mac: string): string {
  return mac.toLowerCase().replace(/-/g, ':');
}

export function parseWorkstationMap(text: string, file: string): WorkstationMap {
  const byIp = new Map<string, Workstation>();
  const byMac = new Map<string, Workstation>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').replace(/#.*/, '').trim();
    if (line === '') continue;
    const fail = (why: string): never => {
      throw new InputError(`reading workstations map ${file} line ${i + 1}: ${why}, got "${line.slice(0, 80)}"`);
    };
    const [key, name, ...extra] = line.split(/\s+/);
    if (key === undefined || name === undefined) fail('expected "IP NAME" or "MAC NAME"');
    const isIp = net.isIP(key!) !== 0;
    if (!isIp && !MAC_RE.test(key!)) fail('expected "IP NAME" or "MAC NAME"');
    if (!NAME_RE.test(name!)) fail('expected a name of letters, digits, ".", "_", "-", "@"');
    let room: string | undefined;
    let profile: string | undefined;
    for (const x of extra) {
      const eq = x.indexOf('=');
      const k = eq < 0 ? x : x.slice(0, eq);
      const value = eq < 0 ? '' : x.slice(eq + 1);
      if (!NAME_RE.test(value)) fail(`expected "room=NAME" or "profile=NAME" after the name`);
      if (k === 'room' && room === undefined) room = value;
      else if (k === 'profile' && profile === undefined) profile = value;
      else fail(`expected "room=NAME" or "profile=NAME" after the name (each once)`);
    }
    const w: Workstation = { name: name!, room, profile };
    if (isIp) byIp.set(plainAddress(key!), w);
    else byMac.set(normaliseMac(key!), w);
  }
  return { byIp, byMac };
}

export function readWorkstationMap(file: string): WorkstationMap {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new InputError(`reading workstations map ${file}: ${(err as Error).message}`);
  }
  return parseWorkstationMap(text, file);
}
