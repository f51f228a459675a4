/**
 * Proxy auto-configuration: `/proxy.pac` and `/wpad.dat` (same text) generated from the config.
 *
 * What the script decides, in this order:
 *   1. IPv6 literals (with or without brackets, zone id dropped): DIRECT when inside one of the
 *      local IPv6 networks or loopback, else the proxy. Checked first because an IPv6 literal
 *      has no dot and isPlainHostName() would call it a plain name.
 *   2. plain host names (no dot), localhost, *.local, *.localhost, and `directDomains`: DIRECT.
 *   3. IPv4 literals: DIRECT when isInNet() one of the local IPv4 networks (or 127/8).
 *   4. everything else: `PROXY host:port`, with no `; DIRECT` fallback — a proxy that is down
 *      must not turn into a way around the filter.
 * Names are never resolved (no dnsResolve / isInNet on a name): resolving every host in the
 * browser costs a DNS round trip per URL and fails on a network whose DNS is restricted.
 *
 * "Local networks" are the configured `clients` CIDRs, minus any broader than /8 (IPv4) or /7
 * (IPv6): `0.0.0.0/0` in `clients` means "anyone may use the proxy", not "the internet is local".
 *
 * The script is ES3 (var, no Array.prototype.indexOf, no arrow functions) because Windows'
 * WinHTTP / IE evaluate PAC files with an old JScript engine.
 */
import * as net from 'node:net';
import { parseCidr, plainAddress } from '../config/cidr';
import { formatHostPort, parseHostPort } from '../config/hostport';
import { ConfigError, errorMessage } from '../errors';

export const PAC_CONTENT_TYPE = 'application/x-ns-proxy-autoconfig';
/** Request paths answered with the PAC text (on the proxy port). */
export const PAC_PATHS: readonly string[] = ['/proxy.pac', '/wpad.dat'];

export function isPacPath(path: string): boolean {
  return path === '/proxy.pac' || path === '/wpad.dat';
}

export interface PacOptions {
  /** the `clients` CIDRs of the config: their networks go DIRECT */
  clients: readonly string[];
  /** the proxy address announced to browsers: "10.0.0.1:3128", "[fd00::1]:3128", "proxy.lan:3128" */
  proxyHostPort: string;
  /** extra DNS suffixes that go DIRECT (e.g. "ent.lycee.lan"); the suffix and its sub-domains */
  directDomains?: readonly string[];
}

/** Broadest networks still taken as "local" (see the block comment above). */
const MIN_PREFIX_V4 = 8;
const MIN_PREFIX_V6 = 7;

/** Generates the PAC script. Throws ConfigError naming the bad value. */
export function renderPac(opts: PacOptions): string {
  const proxy = announceable(opts.proxyHostPort);
  const nets4: Array<[string, string]> = [['127.0.0.0', '255.0.0.0']];
  const nets6: Array<[number[], number]> = [[[0, 0, 0, 0, 0, 0, 0, 1], 128]];
  const seen = new Set<string>(['127.0.0.0/8', '::1/128']);
  for (const text of opts.clients) {
    let c;
    try {
      c = parseCidr(text);
    } catch (err) {
      throw new ConfigError(`generating proxy.pac: clients: ${errorMessage(err)}`);
    }
    if (c.family === 'ipv4') {
      if (c.prefix < MIN_PREFIX_V4) continue;
      const netAddr = maskV4(c.address, c.prefix);
      const key = `${netAddr}/${c.prefix}`;
      if (seen.has(key)) continue;
      seen.add(key);
      nets4.push([netAddr, prefixToMaskV4(c.prefix)]);
    } else {
      const v4 = mappedV4(c.address);
      if (v4 !== null && c.prefix >= 96 + MIN_PREFIX_V4) {
        // ::ffff:a.b.c.d/104 style: the IPv4 network it carries
        const p = c.prefix - 96;
        const netAddr = maskV4(v4, p);
        const key = `${netAddr}/${p}`;
        if (!seen.has(key)) {
          seen.add(key);
          nets4.push([netAddr, prefixToMaskV4(p)]);
        }
        continue;
      }
      if (c.prefix < MIN_PREFIX_V6) continue;
      const hextets = maskV6(parseV6(c.address), c.prefix);
      const key = `${hextets.join(':')}/${c.prefix}`;
      if (seen.has(key)) continue;
      seen.add(key);
      nets6.push([hextets, c.prefix]);
    }
  }
  const domains: string[] = [];
  for (const d of opts.directDomains ?? []) {
    const s = d.trim().toLowerCase().replace(/^\*?\.+/, '').replace(/\.$/, '');
    if (!/^[a-z0-9-]+(\.[a-z0-9-]+)*$/.test(s)) throw new ConfigError(`generating proxy.pac: direct domain ${JSON.stringify(d)} is not a DNS name`);
    domains.push(s);
  }

  const lines = [
    '// gardefou proxy auto-configuration (proxy.pac / wpad.dat).',
    '// Generated from the gardefou configuration: do not edit, change the config instead.',
    `var GF_PROXY = ${JSON.stringify(`PROXY ${proxy}`)};`,
    `var GF_NETS4 = ${JSON.stringify(nets4)};`,
    `var GF_NETS6 = ${JSON.stringify(nets6.map(([h, p]) => [h.map((x) => `0x${x.toString(16)}`), p])).replace(/"(0x[0-9a-f]+)"/g, '$1')};`,
    `var GF_DIRECT_DOMAINS = ${JSON.stringify(domains)};`,
    '',
    PAC_BODY,
  ];
  return lines.join('\n');
}

/**
 * The address to announce when the caller has no better one: the first listener that is
 * neither loopback nor a wildcard; else the local address of the socket the PAC request came
 * in on (what the client could reach); else the first listener.
 */
export function defaultProxyHostPort(listen: readonly string[], local?: { address?: string | undefined; port?: number | undefined }): string {
  for (const spec of listen) {
    let hp;
    try {
      hp = parseHostPort(spec);
    } catch {
      continue;
    }
    if (!isLoopbackOrWildcard(hp.host)) return formatHostPort(hp.host, hp.port);
  }
  if (local?.address && local.port) return formatHostPort(plainAddress(local.address), local.port);
  return listen[0] ?? '127.0.0.1:3128';
}

function isLoopbackOrWildcard(host: string): boolean {
  const h = plainAddress(host).toLowerCase();
  return h === 'localhost' || h === '0.0.0.0' || h === '::' || h === '::1' || (net.isIPv4(h) && h.startsWith('127.'));
}

function announceable(spec: string): string {
  let hp;
  try {
    hp = parseHostPort(spec);
  } catch (err) {
    throw new ConfigError(`generating proxy.pac: proxy address: ${errorMessage(err)}`);
  }
  const host = hp.host;
  if (host === '0.0.0.0' || host === '::') {
    throw new ConfigError(`generating proxy.pac: proxy address "${spec}" is a wildcard; announce an address clients can reach`);
  }
  if (!net.isIP(host) && !/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$/.test(host)) {
    throw new ConfigError(`generating proxy.pac: proxy address "${spec}" does not name a host`);
  }
  if (hp.port === 0) throw new ConfigError(`generating proxy.pac: proxy address "${spec}" has port 0`);
  return formatHostPort(host, hp.port);
}

function v4ToInt(a: string): number {
  return a.split('.').reduce((acc, x) => acc * 256 + Number(x), 0);
}

function intToV4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function prefixToMaskV4(prefix: number): string {
  return intToV4(prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);
}

function maskV4(a: string, prefix: number): string {
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return intToV4((v4ToInt(a) & mask) >>> 0);
}

/** Eight 16-bit groups of a valid IPv6 address (node validated it). */
function parseV6(a: string): number[] {
  let s = a;
  const lastColon = s.lastIndexOf(':');
  const last = s.slice(lastColon + 1);
  if (last.includes('.')) {
    // a dotted IPv4 tail is two groups: rewrite it as hex and parse as usual
    const n = v4ToInt(last);
    s = `${s.slice(0, lastColon + 1)}${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const groups = (x: string) => (x === '' ? [] : x.split(':').map((g) => parseInt(g, 16)));
  const dbl = s.indexOf('::');
  if (dbl < 0) return groups(s);
  const head = groups(s.slice(0, dbl));
  const rest = groups(s.slice(dbl + 2));
  return [...head, ...new Array<number>(8 - head.length - rest.length).fill(0), ...rest];
}

function mappedV4(a: string): string | null {
  const h = parseV6(a);
  for (let i = 0; i < 5; i++) if (h[i] !== 0) return null;
  if (h[5] !== 0xffff) return null;
  const hi = h[6] as number;
  const lo = h[7] as number;
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

function maskV6(h: number[], prefix: number): number[] {
  return h.map((g, i) => {
    const bits = Math.max(0, Math.min(16, prefix - 16 * i));
    const mask = bits === 0 ? 0 : (0xffff << (16 - bits)) & 0xffff;
    return g & mask;
  });
}

/* The fixed part of the script (ES3). */
const PAC_BODY = String.raw`function FindProxyForURL(url, host) {
  var h = String(host).toLowerCase(), i, a;
  if (h.charAt(0) == "[") h = h.substring(1, h.length - 1);
  if (h.indexOf(":") >= 0) {
    a = gfParse6(h);
    if (a === null) return GF_PROXY;
    if (a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0 && a[4] == 0 && a[5] == 0xffff) {
      return gfDirect4(((a[6] >> 8) & 255) + "." + (a[6] & 255) + "." + ((a[7] >> 8) & 255) + "." + (a[7] & 255));
    }
    for (i = 0; i < GF_NETS6.length; i++) {
      if (gfIn6(a, GF_NETS6[i][0], GF_NETS6[i][1])) return "DIRECT";
    }
    return GF_PROXY;
  }
  if (h.charAt(h.length - 1) == ".") h = h.substring(0, h.length - 1);
  if (/^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)) return gfDirect4(h);
  if (isPlainHostName(h) || h == "localhost" || dnsDomainIs(h, ".local") || dnsDomainIs(h, ".localhost")) return "DIRECT";
  for (i = 0; i < GF_DIRECT_DOMAINS.length; i++) {
    if (h == GF_DIRECT_DOMAINS[i] || dnsDomainIs(h, "." + GF_DIRECT_DOMAINS[i])) return "DIRECT";
  }
  return GF_PROXY;
}

function gfDirect4(ip) {
  var i;
  for (i = 0; i < GF_NETS4.length; i++) {
    if (isInNet(ip, GF_NETS4[i][0], GF_NETS4[i][1])) return "DIRECT";
  }
  return GF_PROXY;
}

function gfIn6(a, net, prefix) {
  var i, bits, mask;
  for (i = 0; i < 8 && prefix > 0; i++) {
    bits = prefix >= 16 ? 16 : prefix;
    mask = (0xffff << (16 - bits)) & 0xffff;
    if ((a[i] & mask) != (net[i] & mask)) return false;
    prefix -= 16;
  }
  return true;
}

function gfGroups(s, dotted) {
  var out = [], parts, i, x, q, j, n;
  if (s === "") return out;
  parts = s.split(":");
  for (i = 0; i < parts.length; i++) {
    x = parts[i];
    if (dotted && i == parts.length - 1 && x.indexOf(".") >= 0) {
      q = x.split(".");
      if (q.length != 4) return null;
      for (j = 0; j < 4; j++) {
        if (!/^\d{1,3}$/.test(q[j])) return null;
        n = parseInt(q[j], 10);
        if (n > 255) return null;
        q[j] = n;
      }
      out.push(q[0] * 256 + q[1], q[2] * 256 + q[3]);
    } else {
      if (!/^[0-9a-f]{1,4}$/.test(x)) return null;
      out.push(parseInt(x, 16));
    }
  }
  return out;
}

function gfParse6(s) {
  var p = s.indexOf("%"), d, head, tail, out, i;
  if (p >= 0) s = s.substring(0, p);
  d = s.indexOf("::");
  if (d >= 0) {
    if (s.indexOf("::", d + 1) >= 0) return null;
    head = gfGroups(s.substring(0, d), false);
    tail = gfGroups(s.substring(d + 2), true);
    if (head === null || tail === null || head.length + tail.length > 7) return null;
    out = head;
    for (i = head.length + tail.length; i < 8; i++) out.push(0);
    for (i = 0; i < tail.length; i++) out.push(tail[i]);
    return out;
  }
  out = gfGroups(s, true);
  if (out === null || out.length != 8) return null;
  return out;
}
`;
