/**
 * SafeSearch without interception: for the big search engines and video sites, the proxy
 * connects to the engine's enforced-safe endpoint instead of the name the client asked for
 * (Google forcesafesearch.google.com, YouTube restrict.youtube.com...). The client keeps
 * talking TLS to the name it asked for; the safe endpoint serves a certificate valid for that
 * name (that is what the engines built these endpoints for: the DNS CNAME method), so nothing
 * is decrypted and the certificate stays valid.
 *
 * File format (rules/safesearch.json, "format": "gardefou-safesearch/1"):
 *   { "format": "...", "comment": "...",
 *     "engines": { NAME: { "strict": HOST | null, "moderate": HOST | null, "hosts": [HOST...] } } }
 * `hosts` are exact names (no wildcard: Google's country domains are listed one by one, so
 * www.google.evil.example can never be taken for Google). A missing endpoint for a mode means
 * no substitution in that mode. The file is validated once at load; a host may belong to one
 * engine only.
 *
 * The lookup is one Map get per request (the map is built at load).
 */
import * as fs from 'node:fs';
import { InputError } from '../errors';
import { normaliseHost } from '../policy/normalise';

export const SAFESEARCH_FORMAT = 'gardefou-safesearch/1';

export type SafeSearchMode = 'strict' | 'moderate';

export interface SafeSearchEntry {
  engine: string;
  strict: string | null;
  moderate: string | null;
}

export class SafeSearch {
  constructor(private readonly byHost: ReadonlyMap<string, SafeSearchEntry>) {}

  /** Number of hosts covered. */
  get size(): number {
    return this.byHost.size;
  }

  /**
   * The host to connect to instead of `host` (already normalised, as in Target.host) in
   * `mode`, or null when `host` is not a covered search/video host (or the engine has no
   * endpoint for that mode).
   */
  substitute(host: string, mode: SafeSearchMode): string | null {
    const e = this.byHost.get(host);
    if (e === undefined) return null;
    return mode === 'strict' ? e.strict : e.moderate;
  }

  /** Engine name for a covered host ('google', 'youtube'...), or null. For logs and `check`. */
  engineOf(host: string): string | null {
    return this.byHost.get(host)?.engine ?? null;
  }
}

/** Reads and validates a SafeSearch map file. Throws InputError naming the file and the key. */
export function loadSafeSearch(file: string): SafeSearch {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new InputError(`reading safesearch map ${file}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InputError(`parsing safesearch map ${file}: ${(err as Error).message}`);
  }
  return parseSafeSearch(json, file);
}

/** Validates an already parsed map (`origin` names it in errors). */
export function parseSafeSearch(json: unknown, origin: string): SafeSearch {
  const bad = (key: string, msg: string): never => { throw new InputError(`safesearch map ${origin}: key "${key}": ${msg}`); };
  if (!isObject(json)) return bad('(top)', 'expected an object');
  if (json['format'] !== SAFESEARCH_FORMAT) bad('format', `expected "${SAFESEARCH_FORMAT}", got ${JSON.stringify(json['format'])}`);
  for (const k of Object.keys(json)) if (k !== 'format' && k !== 'comment' && k !== 'engines') bad(k, 'unknown key');
  const engines = json['engines'];
  if (!isObject(engines)) return bad('engines', 'expected an object');
  const byHost = new Map<string, SafeSearchEntry>();
  for (const [name, spec] of Object.entries(engines)) {
    const key = `engines.${name}`;
    if (!isObject(spec)) return bad(key, 'expected an object');
    for (const k of Object.keys(spec)) if (k !== 'strict' && k !== 'moderate' && k !== 'hosts') bad(`${key}.${k}`, 'unknown key');
    const endpoint = (k: 'strict' | 'moderate'): string | null => {
      const v = spec[k];
      if (v === undefined || v === null) return null;
      if (typeof v !== 'string' || normaliseHost(v) !== v) return bad(`${key}.${k}`, `expected a lower-case host name, got ${JSON.stringify(v)}`);
      return v;
    };
    const entry: SafeSearchEntry = Object.freeze({ engine: name, strict: endpoint('strict'), moderate: endpoint('moderate') });
    if (entry.strict === null && entry.moderate === null) bad(key, 'needs a "strict" or a "moderate" endpoint');
    const hosts = spec['hosts'];
    if (!Array.isArray(hosts) || hosts.length === 0) return bad(`${key}.hosts`, 'expected a non-empty list of host names');
    hosts.forEach((h, i) => {
      const k = `${key}.hosts[${i}]`;
      if (typeof h !== 'string' || normaliseHost(h) !== h) bad(k, `expected a lower-case host name, got ${JSON.stringify(h)}`);
      const host = h as string;
      if (host === entry.strict || host === entry.moderate) bad(k, `${host} is the engine's own safe endpoint`);
      const other = byHost.get(host);
      if (other) bad(k, `${host} is already listed under engines.${other.engine}`);
      byHost.set(host, entry);
    });
  }
  return new SafeSearch(byHost);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return x !== null && typeof x === 'object' && !Array.isArray(x);
}
