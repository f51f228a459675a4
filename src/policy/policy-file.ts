/**
 * The policy file (rules/policy.json; format in rules/README.md and docs/policy.md), validated
 * once at load. Every error is a ConfigError naming the file, the key and the bad value.
 * An empty object `{}` is a valid policy: one profile "default" that blocks every category
 * whose usage is black only.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../config';
import { parseCidr } from '../config/cidr';
import { ConfigError, errorMessage } from '../errors';
import { parseEntry } from './entries';
import { DAYS, Day, LocalClock, parseClock, Window } from './schedule';

export interface Entry {
  host: string;
  path: string;
  text: string;
}

export interface ProfileSpec {
  name: string;
  description: string | null;
  block: string[];
  blockBlackUsage: boolean;
  allowCategories: string[];
  whitelistOnly: boolean;
  allow: Entry[];
  deny: Entry[];
  schedule: string | null;
  /** outside the schedule: 'block-all', or the name of the profile that applies */
  outside: string | null;
  /** search engines and video sites forced to their safe endpoints (rules/safesearch.json) */
  safeSearch: SafeSearchMode | null;
  /** `ipLiterals: "block"`: names only; a host given as an IP address is blocked unless a local
   *  allow entry names it (lists and categories cannot vouch for an address seen raw) */
  namesOnly: boolean;
}

export type SafeSearchMode = 'strict' | 'moderate';

export interface PolicySpec {
  file: string;
  timezone: string;
  schedules: Map<string, Window[]>;
  dasen: {
    block: string[];
    deny: Entry[];
    /** categories a local allow entry may lift; null = every non-mandatory category */
    localMayAllow: string[] | null;
    /** whether local deny entries are honoured (default true) */
    localMayDeny: boolean;
  };
  local: { allow: Entry[]; deny: Entry[]; file: string | null };
  profiles: Map<string, ProfileSpec>;
  clients: Array<{ cidr: string; profile: string }>;
  defaultProfile: string;
  /** TLS interception: only what this names is ever decrypted (see InterceptSpec) */
  intercept: InterceptSpec;
}

/**
 * Policy keys `intercept` and `noIntercept`. A CONNECT is intercepted when the host is named by
 * intercept.domains or one of intercept.categories (domain lists), the client's profile is in
 * intercept.profiles (null: every profile), and nothing of noIntercept names it: noIntercept
 * always wins. noIntercept includes the shipped defaults (UT1 `bank`, and the health,
 * government, tax and update services of rules/lists/no_intercept/domains) unless
 * `"default": false`.
 */
export interface InterceptSpec {
  domains: Entry[];
  categories: string[];
  profiles: string[] | null;
  noIntercept: { domains: Entry[]; categories: string[] };
}

/** Shipped never-intercepted services (UT1 domains format), read when the policy intercepts. */
export const NO_INTERCEPT_DEFAULT_FILE = path.join(PACKAGE_ROOT, 'rules', 'lists', 'no_intercept', 'domains');
export const NO_INTERCEPT_DEFAULT_CATEGORIES: readonly string[] = ['bank'];

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const CATEGORY_RE = /^[a-z0-9][a-z0-9_. -]{0,63}$/i;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

function safeSearchMode(v: V, x: Json, key: string): SafeSearchMode {
  if (x !== 'strict' && x !== 'moderate') v.fail(key, `expected "strict", "moderate" or null, got ${v.got(x)}`);
  return x;
}

/** `ipLiterals`: "decide" (default: an address is decided like a name) or "block" (names only). */
function ipLiteralsBlock(v: V, x: Json | undefined, key: string): boolean {
  if (x === undefined || x === 'decide') return false;
  if (x === 'block') return true;
  return v.fail(key, `expected "decide" or "block", got ${v.got(x)}`);
}

class V {
  constructor(readonly file: string) {}

  fail(key: string, msg: string): never {
    throw new ConfigError(`policy ${this.file}: ${key}: ${msg}`);
  }

  got(v: Json | undefined): string {
    const s = JSON.stringify(v);
    return s === undefined ? 'nothing' : s.length > 60 ? s.slice(0, 57) + '...' : s;
  }

  object(v: Json | undefined, key: string, allowed: readonly string[]): { [k: string]: Json } {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) this.fail(key || '(top)', `expected an object, got ${this.got(v)}`);
    for (const k of Object.keys(v)) {
      if (!allowed.includes(k)) this.fail(key ? `${key}.${k}` : k, `unknown key (known: ${allowed.join(', ')})`);
    }
    return v;
  }

  string(v: Json | undefined, key: string): string {
    if (typeof v !== 'string' || v === '') this.fail(key, `expected a non-empty string, got ${this.got(v)}`);
    return v;
  }

  bool(v: Json | undefined, key: string): boolean {
    if (typeof v !== 'boolean') this.fail(key, `expected true or false, got ${this.got(v)}`);
    return v;
  }

  list<T>(v: Json | undefined, key: string, f: (x: Json, k: string) => T): T[] {
    if (!Array.isArray(v)) this.fail(key, `expected a list, got ${this.got(v)}`);
    return v.map((x, i) => f(x, `${key}[${i}]`));
  }

  category(v: Json, key: string): string {
    if (typeof v !== 'string' || !CATEGORY_RE.test(v)) this.fail(key, `expected a category name, got ${this.got(v)}`);
    return v.toLowerCase();
  }

  entry(v: Json, key: string): Entry {
    if (typeof v !== 'string') this.fail(key, `expected "domain" or "domain/path", got ${this.got(v)}`);
    const e = parseEntry(v);
    if (e === null) this.fail(key, `expected "domain" or "domain/path", got ${this.got(v)}`);
    return { host: e.host, path: e.path, text: v };
  }
}

export function readPolicyFile(file: string): PolicySpec {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`reading policy ${file}: ${errorMessage(err)}`);
  }
  let json: Json;
  try {
    json = JSON.parse(text) as Json;
  } catch (err) {
    throw new ConfigError(`parsing policy ${file}: ${errorMessage(err)}`);
  }
  return parsePolicy(json, file);
}

const TOP_KEYS = ['$comment', 'version', 'timezone', 'schedules', 'dasen', 'local', 'localFile', 'profiles', 'clients', 'defaultProfile', 'intercept', 'noIntercept'] as const;
const PROFILE_KEYS = ['$comment', 'description', 'block', 'blockBlackUsage', 'allowCategories', 'whitelistOnly', 'allow', 'deny', 'schedule', 'outside', 'safeSearch', 'ipLiterals'] as const;

export function parsePolicy(json: Json, file: string): PolicySpec {
  const v: V = new V(file);
  const top = v.object(json, '', TOP_KEYS);
  if (top['version'] !== undefined && top['version'] !== 1) v.fail('version', `expected 1, got ${v.got(top['version'])}`);
  const timezone = top['timezone'] === undefined ? 'Europe/Paris' : v.string(top['timezone'], 'timezone');
  try {
    new LocalClock(timezone);
  } catch {
    v.fail('timezone', `unknown time zone ${v.got(timezone)}`);
  }

  const schedules = new Map<string, Window[]>();
  if (top['schedules'] !== undefined) {
    const s = v.object(top['schedules'], 'schedules', Object.keys(top['schedules'] as object ?? {}));
    for (const [name, wl] of Object.entries(s)) {
      const key = `schedules.${name}`;
      if (!NAME_RE.test(name)) v.fail(key, 'bad schedule name (letters, digits, _ . -)');
      schedules.set(name, v.list(wl, key, (w, k) => {
        const o = v.object(w, k, ['days', 'from', 'to']);
        const days = v.list(o['days'], `${k}.days`, (d, dk) => {
          if (typeof d !== 'string' || !(DAYS as readonly string[]).includes(d.toLowerCase())) v.fail(dk, `expected one of ${DAYS.join(', ')}, got ${v.got(d)}`);
          return d.toLowerCase() as Day;
        });
        const from = v.string(o['from'], `${k}.from`);
        const to = v.string(o['to'], `${k}.to`);
        const f = parseClock(from);
        const t = parseClock(to);
        if (f === null) v.fail(`${k}.from`, `expected HH:MM, got ${v.got(from)}`);
        if (t === null) v.fail(`${k}.to`, `expected HH:MM, got ${v.got(to)}`);
        if (f >= t) v.fail(`${k}.to`, `must be later than from (${from}), got ${v.got(to)}`);
        return { days, from, to };
      }));
    }
  }

  const dasen: PolicySpec['dasen'] = { block: [], deny: [], localMayAllow: null, localMayDeny: true };
  if (top['dasen'] !== undefined) {
    const d = v.object(top['dasen'], 'dasen', ['$comment', 'block', 'deny', 'localMayAllow', 'localMayDeny']);
    if (d['block'] !== undefined) dasen.block = v.list(d['block'], 'dasen.block', (x, k) => v.category(x, k));
    if (d['deny'] !== undefined) dasen.deny = v.list(d['deny'], 'dasen.deny', (x, k) => v.entry(x, k));
    if (d['localMayAllow'] !== undefined && d['localMayAllow'] !== '*') {
      dasen.localMayAllow = v.list(d['localMayAllow'], 'dasen.localMayAllow', (x, k) => v.category(x, k));
    }
    if (d['localMayDeny'] !== undefined) dasen.localMayDeny = v.bool(d['localMayDeny'], 'dasen.localMayDeny');
  }

  const local: PolicySpec['local'] = { allow: [], deny: [], file: null };
  const readLocal = (o: { [k: string]: Json }, prefix: string) => {
    if (o['allow'] !== undefined) local.allow.push(...v.list(o['allow'], `${prefix}allow`, (x, k) => v.entry(x, k)));
    if (o['deny'] !== undefined) local.deny.push(...v.list(o['deny'], `${prefix}deny`, (x, k) => v.entry(x, k)));
  };
  if (top['local'] !== undefined) readLocal(v.object(top['local'], 'local', ['$comment', 'allow', 'deny']), 'local.');
  if (top['localFile'] !== undefined && top['localFile'] !== null) {
    const lf = path.resolve(path.dirname(path.resolve(file)), v.string(top['localFile'], 'localFile'));
    local.file = lf;
    if (fs.existsSync(lf)) {
      let lj: Json;
      try {
        lj = JSON.parse(fs.readFileSync(lf, 'utf8')) as Json;
      } catch (err) {
        throw new ConfigError(`policy ${file}: localFile: reading ${lf}: ${errorMessage(err)}`);
      }
      const lv: V = new V(lf);
      const o = lv.object(lj, '', ['$comment', 'allow', 'deny']);
      if (o['allow'] !== undefined) local.allow.push(...lv.list(o['allow'], 'allow', (x, k) => lv.entry(x, k)));
      if (o['deny'] !== undefined) local.deny.push(...lv.list(o['deny'], 'deny', (x, k) => lv.entry(x, k)));
    }
  }

  const profiles = new Map<string, ProfileSpec>();
  if (top['profiles'] !== undefined) {
    const ps = v.object(top['profiles'], 'profiles', Object.keys(top['profiles'] as object ?? {}));
    for (const [name, pj] of Object.entries(ps)) {
      const key = `profiles.${name}`;
      if (!NAME_RE.test(name)) v.fail(key, 'bad profile name (letters, digits, _ . -)');
      const o = v.object(pj, key, PROFILE_KEYS);
      const p: ProfileSpec = {
        name,
        description: o['description'] === undefined ? null : v.string(o['description'], `${key}.description`),
        block: o['block'] === undefined ? [] : v.list(o['block'], `${key}.block`, (x, k) => v.category(x, k)),
        blockBlackUsage: o['blockBlackUsage'] === undefined ? false : v.bool(o['blockBlackUsage'], `${key}.blockBlackUsage`),
        allowCategories: o['allowCategories'] === undefined ? [] : v.list(o['allowCategories'], `${key}.allowCategories`, (x, k) => v.category(x, k)),
        whitelistOnly: o['whitelistOnly'] === undefined ? false : v.bool(o['whitelistOnly'], `${key}.whitelistOnly`),
        allow: o['allow'] === undefined ? [] : v.list(o['allow'], `${key}.allow`, (x, k) => v.entry(x, k)),
        deny: o['deny'] === undefined ? [] : v.list(o['deny'], `${key}.deny`, (x, k) => v.entry(x, k)),
        schedule: o['schedule'] === undefined ? null : v.string(o['schedule'], `${key}.schedule`),
        outside: o['outside'] === undefined ? null : v.string(o['outside'], `${key}.outside`),
        safeSearch: o['safeSearch'] === undefined || o['safeSearch'] === null ? null : safeSearchMode(v, o['safeSearch'], `${key}.safeSearch`),
        namesOnly: ipLiteralsBlock(v, o['ipLiterals'], `${key}.ipLiterals`),
      };
      if (p.schedule !== null && !schedules.has(p.schedule)) v.fail(`${key}.schedule`, `no schedule named ${v.got(p.schedule)} in "schedules"`);
      if (p.schedule !== null && p.outside === null) v.fail(`${key}.outside`, 'a profile with a schedule needs "outside": "block-all" or a profile name');
      if (p.schedule === null && p.outside !== null) v.fail(`${key}.outside`, 'only meaningful with "schedule"');
      profiles.set(name, p);
    }
  }
  if (profiles.size === 0) {
    profiles.set('default', {
      name: 'default', description: 'every category whose usage is black only', block: [], blockBlackUsage: true,
      allowCategories: [], whitelistOnly: false, allow: [], deny: [], schedule: null, outside: null, safeSearch: null, namesOnly: false,
    });
  }
  for (const p of profiles.values()) {
    if (p.outside !== null && p.outside !== 'block-all') {
      const other = profiles.get(p.outside);
      if (!other) v.fail(`profiles.${p.name}.outside`, `expected "block-all" or a profile name, got ${v.got(p.outside)}`);
      if (other.schedule !== null) v.fail(`profiles.${p.name}.outside`, `profile ${v.got(p.outside)} has a schedule itself; outside profiles cannot chain`);
    }
  }

  let defaultProfile: string;
  if (top['defaultProfile'] !== undefined) {
    defaultProfile = v.string(top['defaultProfile'], 'defaultProfile');
    if (!profiles.has(defaultProfile)) v.fail('defaultProfile', `no profile named ${v.got(defaultProfile)}`);
  } else if (profiles.has('default')) {
    defaultProfile = 'default';
  } else if (profiles.size === 1) {
    defaultProfile = [...profiles.keys()][0]!;
  } else {
    v.fail('defaultProfile', 'required when there are several profiles and none is named "default"');
  }

  const clients: PolicySpec['clients'] = [];
  if (top['clients'] !== undefined) {
    v.list(top['clients'], 'clients', (c, k) => {
      const o = v.object(c, k, ['$comment', 'cidr', 'profile']);
      const cidr = v.string(o['cidr'], `${k}.cidr`);
      try {
        parseCidr(cidr);
      } catch (err) {
        v.fail(`${k}.cidr`, errorMessage(err));
      }
      const profile = v.string(o['profile'], `${k}.profile`);
      if (!profiles.has(profile)) v.fail(`${k}.profile`, `no profile named ${v.got(profile)}`);
      clients.push({ cidr, profile });
    });
  }

  const intercept = parseIntercept(v, top, profiles);
  return { file, timezone, schedules, dasen, local, profiles, clients, defaultProfile, intercept };
}

function parseIntercept(v: V, top: { [k: string]: Json }, profiles: Map<string, ProfileSpec>): InterceptSpec {
  const hostOnly = (x: Json, k: string): Entry => {
    const e = v.entry(x, k);
    if (e.path !== '/') v.fail(k, `interception is decided on the host alone; expected a domain without a path, got ${v.got(x)}`);
    return e;
  };
  const spec: InterceptSpec = { domains: [], categories: [], profiles: null, noIntercept: { domains: [], categories: [] } };
  if (top['intercept'] !== undefined) {
    const o = v.object(top['intercept'], 'intercept', ['$comment', 'domains', 'categories', 'profiles']);
    if (o['domains'] !== undefined) spec.domains = v.list(o['domains'], 'intercept.domains', hostOnly);
    if (o['categories'] !== undefined) spec.categories = v.list(o['categories'], 'intercept.categories', (x, k) => v.category(x, k));
    if (o['profiles'] !== undefined && o['profiles'] !== null) {
      spec.profiles = v.list(o['profiles'], 'intercept.profiles', (x, k) => {
        const name = v.string(x, k);
        if (!profiles.has(name)) v.fail(k, `no profile named ${v.got(name)}`);
        return name;
      });
    }
  }
  let useDefault = true;
  if (top['noIntercept'] !== undefined) {
    const o = v.object(top['noIntercept'], 'noIntercept', ['$comment', 'default', 'domains', 'categories']);
    if (o['default'] !== undefined) useDefault = v.bool(o['default'], 'noIntercept.default');
    if (o['domains'] !== undefined) spec.noIntercept.domains = v.list(o['domains'], 'noIntercept.domains', hostOnly);
    if (o['categories'] !== undefined) spec.noIntercept.categories = v.list(o['categories'], 'noIntercept.categories', (x, k) => v.category(x, k));
  }
  // the shipped list is read only when something is intercepted: a policy without interception
  // does not depend on it
  if (useDefault && (spec.domains.length > 0 || spec.categories.length > 0)) {
    spec.noIntercept.categories.push(...NO_INTERCEPT_DEFAULT_CATEGORIES);
    spec.noIntercept.domains.push(...readDomainsFile(NO_INTERCEPT_DEFAULT_FILE, `policy ${v.file}: noIntercept.default`));
  }
  return spec;
}

/** A UT1 `domains` file (one name per line, `#` comments) as host entries. */
export function readDomainsFile(file: string, what: string): Entry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${what}: reading ${file}: ${errorMessage(err)}`);
  }
  const out: Entry[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const e = parseEntry(line);
    if (e === null || e.path !== '/') throw new ConfigError(`${what}: reading ${file} line ${i + 1}: expected a domain, got ${JSON.stringify(line.slice(0, 80))}`);
    out.push({ host: e.host, path: e.path, text: line });
  }
  return out;
}
