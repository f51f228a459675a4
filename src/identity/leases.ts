/**
 * DHCP leases as a source of workstation names: the server hands out the addresses, so its lease
 * file says which machine (MAC, hostname) holds an IP right now. Two formats:
 *
 * isc-dhcp-server `dhcpd.leases` (an append-only log; a later block for an IP supersedes the
 * earlier ones; the server rewrites the file from time to time):
 *   lease 10.1.2.34 {
 *     starts 0 2026/11/29 07:00:00;          (UTC, "W YYYY/MM/DD HH:MM:SS")
 *     ends 0 2026/11/29 19:00:00;            (or "ends never;", or "ends epoch 1796000000; # ...")
 *     binding state active;                  (free / backup / expired / released: not held)
 *     hardware ethernet 3c:52:82:0a:1b:2c;
 *     client-hostname "salle3-pc04";
 *   }
 * dnsmasq `dnsmasq.leases`, one lease a line:
 *   EXPIRY(unix s, 0 = infinite) MAC IP HOSTNAME|* CLIENTID|*
 *   (a "duid ..." line and IPv6 lines "EXPIRY IAID IPv6 HOSTNAME CLIENTID" also occur)
 *
 * The hostname is chosen by the client machine itself, so it is a hint, not a proof: the static
 * map (written by the technician) wins over it, and the journal still has the IP, port and MAC.
 * Malformed lines are reported (file and line) and skipped: a lease file is written by another
 * program and one odd line must not take identification down.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import { MAC_RE, normaliseMac } from './map-file';

export interface Lease {
  ip: string;
  mac: string | null;
  hostname: string | null;
  /** ms since the epoch; Infinity for leases that never end */
  endsMs: number;
}

export interface LeaseParse {
  leases: Lease[];
  /** "FILE line N: why" for each line skipped */
  warnings: string[];
}

/** Hostnames go into the journal and pages: keep a safe, bounded alphabet. */
export function cleanHostname(s: string): string | null {
  const h = s.trim().replace(/[^A-Za-z0-9._-]/g, '').slice(0, 63);
  return h === '' || h === '*' ? null : h;
}

/** Which parser reads a file: dhcpd.leases has `lease X {` blocks, dnsmasq has none. */
export function parseLeases(text: string, file: string): LeaseParse {
  return /^\s*lease\s+\S+\s*\{/m.test(text) ? parseIscLeases(text, file) : parseDnsmasqLeases(text, file);
}

export function parseDnsmasqLeases(text: string, file: string): LeaseParse {
  const leases: Lease[] = [];
  const warnings: string[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').trim();
    if (line === '' || line.startsWith('duid ') || line.startsWith('#')) continue;
    const f = line.split(/\s+/);
    const [expiry, hw, ip, host] = f;
    if (f.length < 4 || f.length > 5 || !/^\d{1,12}$/.test(expiry ?? '') || net.isIP(ip ?? '') === 0) {
      warnings.push(`${file} line ${i + 1}: expected "EXPIRY MAC IP HOSTNAME CLIENTID"`);
      continue;
    }
    let mac: string | null = null;
    if (MAC_RE.test(hw ?? '')) mac = normaliseMac(hw!);
    else if (!(net.isIPv6(ip!) && /^[0-9a-f]+$/i.test(hw ?? ''))) {
      // IPv6 lines carry an IAID instead of a MAC; anything else is malformed
      warnings.push(`${file} line ${i + 1}: bad MAC address`);
      continue;
    }
    const exp = Number(expiry);
    leases.push({ ip: plainAddress(ip!), mac, hostname: cleanHostname(host ?? ''), endsMs: exp === 0 ? Infinity : exp * 1000 });
  }
  return { leases, warnings };
}

export function parseIscLeases(text: string, file: string): LeaseParse {
  const leases: Lease[] = [];
  const warnings: string[] = [];
  const lines = text.split(/\r?\n/);
  let cur: (Lease & { state: string | null; line: number }) | null = null;
  let skipDepth = 0; // inside a block we do not read (failover peer, host, server-duid...)
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').replace(/#.*/, '').trim();
    if (line === '') continue;
    const at = `${file} line ${i + 1}`;
    if (cur === null) {
      if (skipDepth > 0) {
        if (line.endsWith('{')) skipDepth++;
        if (line === '}') skipDepth--;
        continue;
      }
      const m = /^lease\s+(\S+)\s*\{$/.exec(line);
      if (m) {
        if (net.isIP(m[1]!) === 0) {
          warnings.push(`${at}: bad lease address "${m[1]!.slice(0, 40)}"`);
          skipDepth = 1;
          continue;
        }
        cur = { ip: plainAddress(m[1]!), mac: null, hostname: null, endsMs: Infinity, state: null, line: i + 1 };
      } else if (line.endsWith('{')) {
        skipDepth = 1;
      }
      // other top-level statements (authoring-byte-order, server-duid ...;) are ignored
      continue;
    }
    if (line === '}') {
      // a lease without "binding state" (old servers) counts as active until it ends
      if (cur.state === null || cur.state === 'active') leases.push({ ip: cur.ip, mac: cur.mac, hostname: cur.hostname, endsMs: cur.endsMs });
      else leases.push({ ip: cur.ip, mac: null, hostname: null, endsMs: -Infinity }); // supersedes an earlier active block
      cur = null;
      continue;
    }
    if (line.endsWith('{')) { warnings.push(`${at}: unexpected block inside the lease of line ${cur.line}`); continue; }
    if (!line.endsWith(';')) { warnings.push(`${at}: expected a statement ending in ";"`); continue; }
    const st = line.slice(0, -1).trim();
    let m: RegExpExecArray | null;
    if ((m = /^ends\s+(.*)$/.exec(st))) {
      const ends = parseIscTime(m[1]!);
      // an end we cannot read: the lease is not trusted to be held
      if (ends === null) { warnings.push(`${at}: bad "ends" time`); cur.endsMs = -Infinity; } else cur.endsMs = ends;
    } else if ((m = /^binding\s+state\s+(\S+)$/.exec(st))) {
      cur.state = m[1]!.toLowerCase();
    } else if ((m = /^hardware\s+ethernet\s+(\S+)$/.exec(st))) {
      if (MAC_RE.test(m[1]!)) cur.mac = normaliseMac(m[1]!);
      else warnings.push(`${at}: bad MAC address`);
    } else if ((m = /^client-hostname\s+"(.*)"$/.exec(st))) {
      cur.hostname = cleanHostname(m[1]!);
    }
    // starts, tstp, cltt, uid, next binding state, set ... : not needed
  }
  if (cur !== null) warnings.push(`${file} line ${cur.line}: lease block not closed (file being written?)`);
  return { leases, warnings };
}

/** "W YYYY/MM/DD HH:MM:SS" (UTC), "never", or "epoch N". */
function parseIscTime(s: string): number | null {
  if (s === 'never') return Infinity;
  let m = /^epoch\s+(\d{1,12})$/.exec(s);
  if (m) return Number(m[1]) * 1000;
  m = /^\d\s+(\d{4})\/(\d{1,2})\/(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})$/.exec(s);
  if (!m) return null;
  const ms = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
  return Number.isNaN(ms) ? null : ms;
}

export interface LeaseTableOptions {
  /** how often the files' mtimes are looked at, at most (ms) */
  refreshMs?: number;
  now?: () => number;
  /** told of every malformed line and unreadable file, once per (re)read */
  warn?: (msg: string) => void;
}

interface FileState {
  file: string;
  /** mtime + size + inode of what was read; '' = never read / missing */
  stamp: string;
  leases: Lease[];
}

/**
 * The leases of several files, by IP. The files are read once at construction (synchronously:
 * start-up), then their mtimes are looked at, at most every `refreshMs`, from lookups; a changed
 * file is re-read asynchronously while the old table keeps answering. Never per request.
 */
export class LeaseTable {
  private readonly files: FileState[];
  private readonly refreshMs: number;
  private readonly now: () => number;
  private readonly warn: (msg: string) => void;
  private byIp = new Map<string, Lease>();
  private checkedAt: number;
  private refreshing: Promise<void> | null = null;

  constructor(files: string[], opts: LeaseTableOptions = {}) {
    this.refreshMs = opts.refreshMs ?? 5000;
    this.now = opts.now ?? Date.now;
    this.warn = opts.warn ?? (() => undefined);
    this.files = files.map((file) => ({ file, stamp: '', leases: [] }));
    for (const f of this.files) {
      let st: fs.Stats | null = null;
      try {
        st = fs.statSync(f.file);
        this.load(f, fs.readFileSync(f.file, 'utf8'), stampOf(st));
      } catch (err) {
        this.warn(`reading DHCP leases ${f.file}: ${(err as Error).message}`);
      }
    }
    this.rebuild();
    this.checkedAt = this.now();
  }

  get size(): number {
    return this.byIp.size;
  }

  /** The current lease of `ip`, if it is held and not ended. */
  lookup(ip: string): Lease | undefined {
    if (this.files.length === 0) return undefined;
    if (this.now() - this.checkedAt >= this.refreshMs && this.refreshing === null) void this.refresh();
    const l = this.byIp.get(ip);
    return l !== undefined && l.endsMs > this.now() ? l : undefined;
  }

  /** Re-reads the files whose mtime, size or inode changed. Resolves once swapped in. */
  refresh(): Promise<void> {
    if (this.refreshing !== null) return this.refreshing;
    this.checkedAt = this.now();
    this.refreshing = (async () => {
      let changed = false;
      for (const f of this.files) {
        try {
          const st = await fs.promises.stat(f.file);
          const stamp = stampOf(st);
          if (stamp === f.stamp) continue;
          this.load(f, await fs.promises.readFile(f.file, 'utf8'), stamp);
          changed = true;
        } catch (err) {
          if (f.stamp !== 'missing') this.warn(`reading DHCP leases ${f.file}: ${(err as Error).message}`);
          if (f.leases.length > 0) changed = true;
          f.leases = [];
          f.stamp = 'missing';
        }
      }
      if (changed) this.rebuild();
    })().finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  private load(f: FileState, text: string, stamp: string): void {
    const r = parseLeases(text, f.file);
    for (const w of r.warnings.slice(0, 20)) this.warn(`DHCP leases ${w}`);
    if (r.warnings.length > 20) this.warn(`DHCP leases ${f.file}: ${r.warnings.length - 20} more malformed lines`);
    f.leases = r.leases;
    f.stamp = stamp;
  }

  /** Later files and later blocks win (dhcpd.leases is a log: the last block is the truth). */
  private rebuild(): void {
    const m = new Map<string, Lease>();
    for (const f of this.files) for (const l of f.leases) m.set(l.ip, l);
    this.byIp = m;
  }
}

function stampOf(st: fs.Stats): string {
  return `${st.mtimeMs}:${st.size}:${st.ino}`;
}
