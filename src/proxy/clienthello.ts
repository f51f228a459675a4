/**
 * A strict reader of the TLS ClientHello a client sends first, for deciding on the SNI name
 * without terminating TLS (transparent mode). It reads from the raw bytes received so far and
 * says either "here is the hello", "need more bytes" (truncated) or why it refuses.
 *
 * Layout (RFC 8446 §5.1, §4.1.2; RFC 5246 §7.4.1.2; RFC 6066 §3; RFC 7301 §3.1):
 *
 *   record     : type u8 (22 = handshake) | version u16 (0x03xx) | length u16 (1..16384) | fragment
 *                The handshake message may be split over several records (each with a non-empty
 *                fragment); no other record type may come between its pieces.
 *   handshake  : msg_type u8 (1 = client_hello) | length u24 | body
 *   body       : legacy_version u16 (0x03xx) | random [32]
 *                | session_id      <0..32>         (u8 length)
 *                | cipher_suites   <2..2^16-2>     (u16 length, even)
 *                | compression     <1..2^8-1>      (u8 length)
 *                | extensions      <0..2^16-1>     (u16 length; may be absent in old hellos)
 *                and nothing after the extensions.
 *   extension  : type u16 | length u16 | data
 *     0  server_name        : list u16 | { name_type u8 | HostName u16-prefixed } ...
 *                              at most one host_name (type 0); other name types are skipped
 *     16 ALPN               : list u16 (>= 2) | { name u8-prefixed, non-empty } ...
 *     43 supported_versions : list u8 (even, >= 2) | u16 ...
 *
 * Strictness: every length must fit exactly in its container; server_name, ALPN and
 * supported_versions may appear once each (a second SNI would let two readers see two names);
 * the host name must be printable ASCII and pass normaliseHost (the same function CONNECT uses).
 *
 * Allocation: when the hello fits in one record (the common case) it is read in place; only a
 * hello split over several records is copied into one buffer. The result holds the SNI string
 * and the ALPN strings, nothing else.
 */
import { normaliseHost } from '../policy/normalise';

/** Largest ClientHello accepted, counting record headers: far above real ones (~2 KiB with
 *  post-quantum key shares and padding), far below what would let a client pin memory. */
export const MAX_CLIENT_HELLO_BYTES = 16384;

export type ClientHelloError = 'not-tls' | 'truncated' | 'malformed' | 'too-large';

export interface ClientHello {
  ok: true;
  /** normalised host name from server_name, or null when the client sent none */
  sni: string | null;
  /** ALPN protocol names in the client's order (e.g. ['h2', 'http/1.1']); [] when absent */
  alpn: string[];
  /** highest version offered: supported_versions when present (GREASE ignored), else legacy_version; 0x0304 = TLS 1.3 */
  tlsVersion: number;
  /** raw bytes (record headers included) up to the end of the ClientHello */
  length: number;
}

export interface ClientHelloFailure {
  ok: false;
  error: ClientHelloError;
  /** short fixed text naming what was wrong (for the operational log; never client data) */
  detail: string;
}

export type ClientHelloResult = ClientHello | ClientHelloFailure;

const REC_HANDSHAKE = 22;
const HS_CLIENT_HELLO = 1;
const MAX_RECORD = 16384;
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const EXT_SUPPORTED_VERSIONS = 43;

// Failures are shared frozen objects: refusing costs no allocation.
const fail = (error: ClientHelloError, detail: string): ClientHelloFailure => Object.freeze({ ok: false, error, detail }) as ClientHelloFailure;
const TRUNCATED = fail('truncated', 'need more bytes');
const NOT_TLS = fail('not-tls', 'first byte is not a TLS handshake record');
const NOT_TLS_VERSION = fail('not-tls', 'record version is not 3.x');
const TOO_LARGE = fail('too-large', 'client hello larger than the cap');
const F = {
  recordLength: fail('malformed', 'record length'),
  recordType: fail('malformed', 'non-handshake record inside the client hello'),
  recordVersion: fail('malformed', 'record version is not 3.x'),
  msgType: fail('malformed', 'first handshake message is not a client hello'),
  helloVersion: fail('malformed', 'client hello version'),
  sessionId: fail('malformed', 'session id length'),
  ciphers: fail('malformed', 'cipher suites length'),
  compression: fail('malformed', 'compression methods length'),
  extensions: fail('malformed', 'extensions length'),
  extension: fail('malformed', 'extension length'),
  trailing: fail('malformed', 'bytes after the extensions'),
  duplicate: fail('malformed', 'duplicate extension'),
  sni: fail('malformed', 'server_name extension'),
  sniTwice: fail('malformed', 'two host names in server_name'),
  sniHost: fail('malformed', 'server_name host name is not a valid host'),
  alpn: fail('malformed', 'alpn extension'),
  versions: fail('malformed', 'supported_versions extension'),
} as const;

function u16(b: Uint8Array, i: number): number {
  return ((b[i] as number) << 8) | (b[i + 1] as number);
}

/** GREASE values (RFC 8701) are 0x?a?a with both bytes equal. */
function isGrease(v: number): boolean {
  return (v & 0x0f0f) === 0x0a0a && (v >> 8) === (v & 0xff);
}

/**
 * Reads a ClientHello from the first bytes of a connection (`data` = everything received so
 * far). Never throws, never reads outside `data`; at most `maxBytes` are examined.
 */
export function parseClientHello(data: Uint8Array, maxBytes = MAX_CLIENT_HELLO_BYTES): ClientHelloResult {
  const n = data.length;
  if (n === 0) return TRUNCATED;
  if (data[0] !== REC_HANDSHAKE) return NOT_TLS;
  if (n < 2) return TRUNCATED;
  if (data[1] !== 3) return NOT_TLS_VERSION;
  if (n < 5) return TRUNCATED;
  const firstLen = u16(data, 3);
  if (firstLen === 0 || firstLen > MAX_RECORD) return F.recordLength;
  // The handshake header (4 bytes) may itself be split over records: find its length first.
  if (n < 6) return TRUNCATED;
  if (data[5] !== HS_CLIENT_HELLO) return F.msgType;

  // Fast path: header and the whole message in the first record.
  if (firstLen >= 4 && n >= 9) {
    const hsLen = ((data[6] as number) << 16) | ((data[7] as number) << 8) | (data[8] as number);
    if (hsLen + 9 > maxBytes) return TOO_LARGE;
    if (hsLen + 4 <= firstLen) {
      if (n < 9 + hsLen) return TRUNCATED;
      return parseBody(data, 9, 9 + hsLen, 9 + hsLen);
    }
  }
  return reassemble(data, maxBytes);
}

/** Slow path: the handshake message spans several records; copy the fragments together. */
function reassemble(data: Uint8Array, maxBytes: number): ClientHelloResult {
  const n = data.length;
  // First pass: walk the records, learn the message length, check we have all of it.
  let pos = 0;
  let have = 0; // handshake bytes seen so far
  let need = -1; // total handshake bytes (4 + body) once the header is known
  const hdr = [0, 0, 0, 0];
  while (need < 0 || have < need) {
    if (pos >= maxBytes) return TOO_LARGE;
    if (pos + 5 > n) return TRUNCATED;
    if (data[pos] !== REC_HANDSHAKE) return F.recordType;
    // any 3.x: the record version of an initial hello is only a compatibility hint (RFC 8446 §5.1)
    if (data[pos + 1] !== 3) return F.recordVersion;
    const len = u16(data, pos + 3);
    if (len === 0 || len > MAX_RECORD) return F.recordLength;
    const start = pos + 5;
    const avail = Math.min(len, n - start);
    for (let i = 0; i < avail && have + i < 4; i++) hdr[have + i] = data[start + i] as number;
    if (need < 0 && have + avail >= 4) {
      need = 4 + (((hdr[1] as number) << 16) | ((hdr[2] as number) << 8) | (hdr[3] as number));
    }
    // Raw bytes needed are at least: up to here + what the message still lacks. Record
    // headers count, so a hello in many tiny records is refused too. Only bytes already
    // received are used, so the answer never changes when more arrive.
    if (need >= 0 && start + (need - have) > maxBytes) return TOO_LARGE;
    if (avail < len) {
      // this record is not complete yet; it may already hold everything we need
      if (need >= 0 && have + avail >= need) break;
      return TRUNCATED;
    }
    have += len;
    pos = start + len;
  }
  if (pos > maxBytes) return TOO_LARGE;
  // Second pass: copy the message bytes into one buffer.
  const msg = new Uint8Array(need);
  let off = 0;
  let end = 0;
  pos = 0;
  while (off < need) {
    const len = u16(data, pos + 3);
    const take = Math.min(len, need - off);
    msg.set(data.subarray(pos + 5, pos + 5 + take), off);
    off += take;
    end = pos + 5 + take;
    pos += 5 + len;
  }
  return parseBody(msg, 4, need, end);
}

/**
 * Parses the ClientHello body in b[from, to). `rawLength` is reported as `length`.
 */
function parseBody(b: Uint8Array, from: number, to: number, rawLength: number): ClientHelloResult {
  let p = from;
  if (to - p < 2 + 32 + 1) return F.helloVersion;
  const legacy = u16(b, p);
  if (b[p] !== 3) return F.helloVersion;
  p += 2 + 32;
  const sid = b[p] as number;
  if (sid > 32 || p + 1 + sid > to) return F.sessionId;
  p += 1 + sid;
  if (p + 2 > to) return F.ciphers;
  const cs = u16(b, p);
  if (cs < 2 || (cs & 1) !== 0 || p + 2 + cs > to) return F.ciphers;
  p += 2 + cs;
  if (p + 1 > to) return F.compression;
  const comp = b[p] as number;
  if (comp < 1 || p + 1 + comp > to) return F.compression;
  p += 1 + comp;

  let sni: string | null = null;
  let alpn: string[] = EMPTY;
  let version = legacy;
  if (p === to) return { ok: true, sni, alpn, tlsVersion: version, length: rawLength };
  if (p + 2 > to) return F.extensions;
  const extLen = u16(b, p);
  p += 2;
  if (p + extLen !== to) return extLen > to - p ? F.extensions : F.trailing;
  let seen = 0; // bit 0 sni, 1 alpn, 2 supported_versions
  while (p < to) {
    if (p + 4 > to) return F.extension;
    const type = u16(b, p);
    const len = u16(b, p + 2);
    const d = p + 4;
    const e = d + len;
    if (e > to) return F.extension;
    if (type === EXT_SERVER_NAME) {
      if (seen & 1) return F.duplicate;
      seen |= 1;
      const r = readServerName(b, d, e);
      if (typeof r !== 'string' && r !== null) return r;
      sni = r;
    } else if (type === EXT_ALPN) {
      if (seen & 2) return F.duplicate;
      seen |= 2;
      const r = readAlpn(b, d, e);
      if (!Array.isArray(r)) return r;
      alpn = r;
    } else if (type === EXT_SUPPORTED_VERSIONS) {
      if (seen & 4) return F.duplicate;
      seen |= 4;
      const l = len > 0 ? (b[d] as number) : -1;
      if (l < 2 || (l & 1) !== 0 || l + 1 !== len) return F.versions;
      let best = 0;
      for (let i = d + 1; i < e; i += 2) {
        const v = u16(b, i);
        if (!isGrease(v) && v > best) best = v;
      }
      if (best !== 0) version = best;
    }
    p = e;
  }
  return { ok: true, sni, alpn, tlsVersion: version, length: rawLength };
}

const EMPTY: string[] = [];

/** server_name: returns the normalised host, null when no host_name entry, or a failure. */
function readServerName(b: Uint8Array, d: number, e: number): string | null | ClientHelloFailure {
  if (e - d < 2) return F.sni;
  const listLen = u16(b, d);
  if (listLen + 2 !== e - d || listLen === 0) return F.sni;
  let p = d + 2;
  let host: string | null = null;
  while (p < e) {
    if (p + 3 > e) return F.sni;
    const nameType = b[p] as number;
    const len = u16(b, p + 1);
    const s = p + 3;
    if (len === 0 || s + len > e) return F.sni;
    if (nameType === 0) {
      if (host !== null) return F.sniTwice;
      if (len > 255) return F.sniHost;
      let raw = '';
      for (let i = s; i < s + len; i++) {
        const c = b[i] as number;
        if (c <= 0x20 || c >= 0x7f) return F.sniHost; // ASCII only, no spaces or controls
        raw += String.fromCharCode(c);
      }
      // RFC 6066: no trailing dot; normaliseHost would accept one, the wire form must not have it
      if (raw.charCodeAt(raw.length - 1) === 46) return F.sniHost;
      const h = normaliseHost(raw);
      if (h === null) return F.sniHost;
      host = h;
    }
    p = s + len;
  }
  return host;
}

function readAlpn(b: Uint8Array, d: number, e: number): string[] | ClientHelloFailure {
  if (e - d < 2) return F.alpn;
  const listLen = u16(b, d);
  if (listLen < 2 || listLen + 2 !== e - d) return F.alpn;
  const out: string[] = [];
  let p = d + 2;
  while (p < e) {
    const len = b[p] as number;
    if (len === 0 || p + 1 + len > e) return F.alpn;
    let s = '';
    for (let i = p + 1; i <= p + len; i++) s += String.fromCharCode(b[i] as number);
    out.push(s);
    p += 1 + len;
  }
  return out;
}

/** 'TLSv1.3' for 0x0304 and so on; 'unknown(0x....)' otherwise. For logs. */
export function tlsVersionName(v: number): string {
  switch (v) {
    case 0x0300: return 'SSLv3';
    case 0x0301: return 'TLSv1';
    case 0x0302: return 'TLSv1.1';
    case 0x0303: return 'TLSv1.2';
    case 0x0304: return 'TLSv1.3';
    default: return `unknown(0x${v.toString(16).padStart(4, '0')})`;
  }
}
