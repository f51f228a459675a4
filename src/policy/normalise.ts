/**
 * URL and host normalisation: ONE function family that every request and every list entry goes
 * through, so that a list entry and a request for the same thing always compare equal.
 *
 *   parseAbsoluteUrl('http://user@EXAMPLE.com.:80/a/../%62?q')  -> { http, example.com, 80, '/b?q' }
 *   parseConnectAuthority('[::ffff:192.168.1.1]:443')           -> { connect, 192.168.1.1, 443, '' }
 *   normaliseHost('0300.0250.1.1')                              -> '192.168.1.1'
 *
 * Rules (each one closes an evasion):
 * - whitespace, control characters (tab, CR, LF, NUL...) anywhere: refused. The WHATWG parser
 *   silently drops tabs and newlines (`ba\td.com` -> `bad.com`); we refuse instead, so that what
 *   we decide on is what the origin receives.
 * - backslash in the authority: refused (`http://good.com\@bad.com/` is read differently by
 *   different parsers). In the path a backslash is a `/` (as WHATWG and IIS read it).
 * - userinfo is ignored: `http://good@bad/` is host `bad` (the last `@` ends the userinfo).
 * - host: lower case, one trailing dot removed, percent-escapes decoded, IDN to punycode,
 *   every IPv4 literal form (decimal 3232235777, octal 0300.0250.1.1, hex 0xC0A80101, short
 *   192.168.257, mixed) to a dotted quad, IPv6 compressed lower case without brackets,
 *   IPv4-mapped IPv6 (::ffff:a.b.c.d) to the IPv4 dotted quad it carries.
 *   A host with an empty label, a character outside [a-z0-9-_.] after conversion, a label over
 *   63 or a name over 253 characters cannot be parsed: the caller must refuse it, never allow it.
 * - path: dot segments (also `%2e`) removed, percent-escapes of unreserved characters
 *   (A-Z a-z 0-9 - . _ ~) decoded, other escapes upper-cased; fragment dropped; '/' at least.
 * - port: default ports (80 for http, 443 for https) implied; 0 and > 65535 refused.
 */
import type { Target } from './types';

const CC_DOT = 46;
const CC_COLON = 58;
const CC_LBRACKET = 91;
const CC_RBRACKET = 93;

/** True for a code unit that may appear in a normalised DNS name: a-z 0-9 - _ . */
function isHostChar(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45 || c === 95 || c === CC_DOT;
}

/**
 * Checks a host already in normalised form (lower-case ASCII name): labels non-empty, at most
 * 63 chars, name at most 253, only [a-z0-9-_.], and the last label is not numeric-looking
 * (an all-digit or 0x last label makes WHATWG read the name as an IPv4 literal).
 * Returns true when `s` can be used as is (the fast path: no allocation).
 */
function isCleanName(s: string, punycodeChecked: boolean): boolean {
  const n = s.length;
  if (n === 0 || n > 253) return false;
  let labelStart = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === CC_DOT) {
      const len = i - labelStart;
      if (len === 0 || len > 63) return false;
      labelStart = i + 1;
    } else if (!isHostChar(c)) {
      return false;
    } else if (!punycodeChecked && c === 45 && i - labelStart === 3 && s.charCodeAt(i - 1) === 45 &&
               s.charCodeAt(i - 2) === 110 && s.charCodeAt(i - 3) === 120) {
      return false; // "xn--" label: let the URL parser validate the punycode
    }
  }
  const last = n - labelStart;
  if (last === 0 || last > 63) return false;
  return !looksNumeric(s, labelStart, n);
}

/** WHATWG "ends in a number": last label all digits or 0x-hex: then the name is an IPv4 literal. */
function looksNumeric(s: string, from: number, to: number): boolean {
  let allDigits = true;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) { allDigits = false; break; }
  }
  if (allDigits) return true;
  if (to - from >= 2 && s.charCodeAt(from) === 48 && (s.charCodeAt(from + 1) | 0x20) === 120) {
    for (let i = from + 2; i < to; i++) {
      const c = s.charCodeAt(i) | 0x20;
      if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
    }
    return true;
  }
  return false;
}

/** True for a dotted quad of decimal numbers 0-255 without leading zeros (normalised IPv4). */
export function isIPv4Literal(s: string): boolean {
  let parts = 0;
  let val = 0;
  let digits = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i < s.length ? s.charCodeAt(i) : CC_DOT;
    if (c === CC_DOT) {
      if (digits === 0 || val > 255) return false;
      parts++;
      val = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && val === 0) return false; // leading zero
      val = val * 10 + (c - 48);
      digits++;
      if (digits > 3) return false;
    } else {
      return false;
    }
  }
  return parts === 4;
}

/**
 * True when `h` is a host as normaliseHost returns it (clean name, dotted quad, or IPv6 without
 * brackets). The engine re-checks targets with it: a host it cannot vouch for is refused.
 */
export function isNormalisedHost(h: string): boolean {
  if (isCleanName(h, true) || isIPv4Literal(h)) return true;
  if (h.indexOf(':') < 0 || h.length > 45) return false;
  for (let i = 0; i < h.length; i++) {
    const c = h.charCodeAt(i);
    if (!((c >= 48 && c <= 58) || (c >= 97 && c <= 102) || c === CC_DOT)) return false;
  }
  return true;
}

/** Characters refused anywhere in raw input: C0 controls, space, DEL. */
function hasControlOrSpace(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c <= 32 || c === 127) return true;
  }
  return false;
}

/**
 * Normalises a host name or IP literal (IPv6 with or without brackets). Returns null when it
 * cannot be parsed; callers refuse such hosts.
 */
export function normaliseHost(raw: string): string | null {
  let s = raw;
  // fast path: already clean (the common case for lists and browsers): no allocation
  if (isCleanName(s, false)) return s;
  if (s.length === 0 || s.length > 1024 || hasControlOrSpace(s)) return null;
  if (s.charCodeAt(0) === CC_LBRACKET) {
    if (s.charCodeAt(s.length - 1) !== CC_RBRACKET) return null;
    return normaliseIPv6(s.slice(1, -1));
  }
  if (s.indexOf(':') >= 0) return normaliseIPv6(s);
  // characters that would change how the URL parser splits the authority
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 47 /* / */ || c === 92 /* \ */ || c === 63 /* ? */ || c === 35 /* # */ || c === 64 /* @ */ ||
        c === CC_LBRACKET || c === CC_RBRACKET) return null;
  }
  let h: string;
  try {
    h = new URL(`http://${s}/`).hostname;
  } catch {
    return null;
  }
  if (h.length > 0 && h.charCodeAt(h.length - 1) === CC_DOT) h = h.slice(0, -1);
  if (isIPv4Literal(h)) return h;
  return isCleanName(h, true) ? h : null;
}

function normaliseIPv6(inner: string): string | null {
  if (inner.length === 0 || inner.indexOf('%') >= 0) return null; // no zone ids through a proxy
  for (let i = 0; i < inner.length; i++) {
    const c = inner.charCodeAt(i) | 0x20;
    if (!((c >= 48 && c <= 58) || (c >= 97 && c <= 102) || c === CC_DOT)) return null;
  }
  let h: string;
  try {
    h = new URL(`http://[${inner}]/`).hostname;
  } catch {
    return null;
  }
  h = h.slice(1, -1);
  // IPv4-mapped: the IPv4 address is what will be reached, and what IPv4 lists name
  if (h.startsWith('::ffff:') && h.length > 7) {
    const rest = h.slice(7);
    const colon = rest.indexOf(':');
    if (colon > 0 && rest.indexOf(':', colon + 1) < 0) {
      const hi = parseInt(rest.slice(0, colon), 16);
      const lo = parseInt(rest.slice(colon + 1), 16);
      return `${hi >>> 8}.${hi & 255}.${lo >>> 8}.${lo & 255}`;
    }
    if (isIPv4Literal(rest)) return rest;
  }
  return h;
}

function hexVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  c |= 0x20;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

function isUnreserved(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 45 || c === 46 || c === 95 || c === 126;
}

/** Decodes %XX of unreserved characters, upper-cases the hex of the others. */
function normalisePercent(p: string): string {
  if (p.indexOf('%') < 0) return p;
  let out = '';
  let from = 0;
  for (let i = 0; i + 2 < p.length + 0; i++) {
    if (p.charCodeAt(i) !== 37) continue;
    const a = hexVal(p.charCodeAt(i + 1));
    const b = hexVal(p.charCodeAt(i + 2));
    if (a < 0 || b < 0) continue;
    const v = a * 16 + b;
    out += p.slice(from, i);
    out += isUnreserved(v) ? String.fromCharCode(v) : '%' + p.slice(i + 1, i + 3).toUpperCase();
    from = i + 3;
    i += 2;
  }
  return out + p.slice(from);
}

/** True when a path needs the full parser: dot segments, escapes, backslashes, non-ASCII. */
function pathNeedsParse(p: string): boolean {
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c === 37 || c === 92 || c > 126 || c === 34 || c === 60 || c === 62 || c === 96 || c === 123 || c === 125 || c === 124 || c === 94) return true;
    if (c === CC_DOT && i > 0 && p.charCodeAt(i - 1) === 47) {
      const n = p.charCodeAt(i + 1);
      if (Number.isNaN(n) || n === 47 || n === 63 || n === CC_DOT) return true;
    }
  }
  return false;
}

/**
 * Normalises path + query (fragment already removed). `p` starts with '/' or '?' or is empty.
 */
export function normalisePath(p: string): string | null {
  if (p === '' ) return '/';
  if (p.charCodeAt(0) === 63 /* ? */) p = '/' + p;
  if (!pathNeedsParse(p)) return p;
  let u: URL;
  try {
    u = new URL(`http://h${p}`);
  } catch {
    return null;
  }
  // decoding unreserved escapes may create new dot segments (%2e handled by WHATWG already,
  // but `.%2E` mixes too): WHATWG treats %2e as a dot, so one pass is enough.
  const path = normalisePercent(u.pathname);
  const search = normalisePercent(u.search);
  return (path === '' ? '/' : path) + search;
}

/**
 * Parses an absolute-form URI as a proxy client sends it (`http://host[:port]/path?query`).
 * `https://` is accepted too (kind stays 'http', port 443). Returns null when unparseable.
 */
export function parseAbsoluteUrl(raw: string): Target | null {
  if (raw.length > 65536 || hasControlOrSpace(raw)) return null;
  let defaultPort: number;
  let i: number;
  if (raw.length > 7 && raw.slice(0, 7).toLowerCase() === 'http://') {
    defaultPort = 80;
    i = 7;
  } else if (raw.length > 8 && raw.slice(0, 8).toLowerCase() === 'https://') {
    defaultPort = 443;
    i = 8;
  } else {
    return null;
  }
  let end = i;
  while (end < raw.length) {
    const c = raw.charCodeAt(end);
    if (c === 47 || c === 63 || c === 35) break;
    if (c === 92) return null; // backslash in the authority
    end++;
  }
  let authority = raw.slice(i, end);
  const at = authority.lastIndexOf('@');
  if (at >= 0) authority = authority.slice(at + 1);
  const hp = splitHostPort(authority, defaultPort);
  if (hp === null) return null;
  const host = normaliseHost(hp.host);
  if (host === null) return null;
  let rest = raw.slice(end);
  const hash = rest.indexOf('#');
  if (hash >= 0) rest = rest.slice(0, hash);
  const path = normalisePath(rest);
  if (path === null) return null;
  return { kind: 'http', host, port: hp.port, path };
}

/** Parses a CONNECT authority: `host:port`, `[v6]:port`. The port is required. */
export function parseConnectAuthority(raw: string): Target | null {
  if (raw.length === 0 || raw.length > 1100 || hasControlOrSpace(raw)) return null;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === 47 || c === 92 || c === 63 || c === 35 || c === 64) return null;
  }
  const hp = splitHostPort(raw, -1);
  if (hp === null || hp.port < 0) return null;
  const host = normaliseHost(hp.host);
  if (host === null) return null;
  return { kind: 'connect', host, port: hp.port, path: '' };
}

/** Splits `host[:port]` / `[v6][:port]`. port -1 = absent and no default. */
function splitHostPort(a: string, defaultPort: number): { host: string; port: number } | null {
  let host: string;
  let portText: string | null = null;
  if (a.charCodeAt(0) === CC_LBRACKET) {
    const close = a.indexOf(']');
    if (close < 0) return null;
    host = a.slice(0, close + 1);
    const after = a.slice(close + 1);
    if (after !== '') {
      if (after.charCodeAt(0) !== CC_COLON) return null;
      portText = after.slice(1);
    }
  } else {
    const colon = a.lastIndexOf(':');
    if (colon >= 0) {
      if (a.indexOf(':') !== colon) return null; // bare IPv6 without brackets is ambiguous
      host = a.slice(0, colon);
      portText = a.slice(colon + 1);
    } else {
      host = a;
    }
  }
  if (host === '') return null;
  let port = defaultPort;
  if (portText !== null && portText !== '') {
    if (portText.length > 5) return null;
    let v = 0;
    for (let i = 0; i < portText.length; i++) {
      const c = portText.charCodeAt(i);
      if (c < 48 || c > 57) return null;
      v = v * 10 + (c - 48);
    }
    if (v === 0 || v > 65535) return null;
    port = v;
  }
  return { host, port };
}

/** The normalised URL of a target, for display (`check`) and expression matching. */
export function targetUrl(t: Target): string {
  if (t.kind === 'connect') return `${hostForUrl(t.host)}:${t.port}`;
  const scheme = t.port === 443 ? 'https' : 'http';
  const port = t.port === 80 || t.port === 443 ? '' : `:${t.port}`;
  return `${scheme}://${hostForUrl(t.host)}${port}${t.path}`;
}

function hostForUrl(h: string): string {
  return h.indexOf(':') >= 0 ? `[${h}]` : h;
}

/**
 * Parses a list or policy entry `host[:port][/path][?query]` (UT1 `urls` lines, local entries):
 * optional scheme, userinfo and port dropped, backslash escapes (`a\\.cgi\\?`) unescaped, leading
 * dots removed. path is '/' when the entry names a whole host.
 */
export function parseListUrl(text: string): { host: string; path: string } | null {
  let t = text.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').replace(/\\(.)/g, '$1');
  const cut = t.search(/[/?]/);
  let hostPart = cut < 0 ? t : t.slice(0, cut);
  const rest = cut < 0 ? '' : t.slice(cut);
  const at = hostPart.lastIndexOf('@');
  if (at >= 0) hostPart = hostPart.slice(at + 1);
  hostPart = hostPart.replace(/:\d{1,5}$/, '').replace(/^(\*?\.)+/, '');
  const host = normaliseHost(hostPart);
  if (host === null) return null;
  const hash = rest.indexOf('#');
  const p = normalisePath(hash >= 0 ? rest.slice(0, hash) : rest);
  if (p === null) return null;
  t = p;
  return { host, path: t };
}

