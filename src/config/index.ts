/**
 * Configuration: one JSON file, validated once at load. Unknown keys are an error naming them;
 * every error names the key and the bad value. Key names listed in DESIGN.md are contracts.
 *
 * Relative paths in a config file are resolved against the file's directory; relative paths
 * in the embedded defaults are resolved against the package root (shipped rules) or the
 * working directory (`var/`, the journal), so `npm start` works from a fresh clone.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigError, errorMessage } from '../errors';
import { parseCidr } from './cidr';
import { parseHostPort } from './hostport';

export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');

export interface JournalConfig {
  path: string;
  retentionDays: number;
  /** false (default): refuse traffic when the journal cannot be written. */
  failOpen: boolean;
  /** gateway signing key (created on first start); default beside the journal */
  keyFile: string | null;
  /** OS group whose members may query the journal (null: root and the owner of the file only) */
  operatorGroup: string | null;
  /** tolerance for "egress port at time T" requisitions, in seconds */
  skewToleranceSeconds: number;
  /** longest delay before a batch of records is committed, in ms */
  batchMs: number;
}

export interface InterceptConfig {
  /** the school CA (`gardefou ca init`); null: ca/ beside the journal */
  caDir: string | null;
  /** PEM files of extra roots trusted for upstream certificates, besides node's store (tests, a private PKI) */
  upstreamCAs: string[];
  /** leaf certificates kept in memory (LRU) */
  maxCertificates: number;
}

/** LDAP directory for proxy authentication (docs/identity.md). */
export interface LdapConfig {
  url: string;
  bindDn: string;
  bindPasswordFile: string;
  baseDn: string;
  /** `{user}` is replaced by the RFC 4515-escaped user name */
  userFilter: string;
  /** attribute of the user entry listing its groups (memberOf), or null */
  groupAttribute: string | null;
  /** search for the user's groups (`{dn}`, `{user}` escaped), or null */
  groupSearch: { baseDn: string; filter: string; nameAttribute: string } | null;
  caFile: string | null;
  timeoutMs: number;
}

/** Who is behind each connection: workstations, DHCP leases, proxy authentication. */
export interface IdentityConfig {
  /** isc-dhcp-server dhcpd.leases and/or dnsmasq lease files */
  dhcpLeases: string[];
  leasesRefreshSeconds: number;
  /** first matching row decides; no row: identified by workstation (no login) */
  subnets: Array<{ cidr: string; mode: 'authenticate' | 'workstation' }>;
  realm: string;
  htpasswd: string | null;
  htgroups: string | null;
  ldap: LdapConfig | null;
  /** first row whose group the user is in gives the profile */
  groupProfiles: Array<{ group: string; profile: string }>;
  cacheTtlSeconds: number;
  failureTtlSeconds: number;
  cacheMaxEntries: number;
  /** an `authenticate` subnet seen on a transparent listener (no 407 possible there) */
  transparent: 'refuse' | 'workstation';
}

export interface LimitsConfig {
  maxHeaderBytes: number;
  headerTimeoutMs: number;
  idleTimeoutMs: number;
  maxConnectionsPerClient: number;
  /** how long SIGTERM waits for in-flight requests before closing them */
  shutdownGraceMs: number;
}

export interface Config {
  listen: string[];
  clients: string[];
  allowDestinations: string[];
  connectPorts: number[];
  lists: string;
  hosts: string | null;
  parentProxy: string | null;
  policy: string;
  blockPage: string;
  workstations: string | null;
  identity: IdentityConfig;
  /** map of search/video hosts to their enforced-safe endpoints, used by profiles with safeSearch */
  safeSearch: string;
  /** listeners for traffic the firewall redirects (transparent mode): port-80 HTTP and port-443 TLS */
  transparent: { http: string[]; tls: string[] };
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  journal: JournalConfig;
  admin: { listen: string | null };
  update: { feed: string | null; trustedKeys: string[]; intervalSeconds: number; stateDir: string };
  limits: LimitsConfig;
  /** optional TLS interception (what is intercepted is the policy's `intercept` section) */
  intercept: InterceptConfig;
  /** proxy processes (node:cluster): an integer >= 1, or 'auto' = the cores available; 1 = one process */
  workers: number | 'auto';
}

/** Private and loopback ranges: who may use the proxy when nothing else is configured. */
export const DEFAULT_CLIENTS = [
  '127.0.0.0/8',
  '::1/128',
  '10.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  'fc00::/7',
];

export function defaultConfig(): Config {
  const rules = (p: string) => path.join(PACKAGE_ROOT, 'rules', p);
  const cwd = (p: string) => path.resolve(p);
  return {
    listen: ['127.0.0.1:3128'],
    clients: [...DEFAULT_CLIENTS],
    allowDestinations: [],
    connectPorts: [443],
    lists: rules('lists'),
    hosts: null,
    parentProxy: null,
    policy: rules('policy.json'),
    blockPage: rules('block-page.html'),
    workstations: null,
    identity: {
      dhcpLeases: [],
      leasesRefreshSeconds: 5,
      subnets: [],
      realm: 'gardefou',
      htpasswd: null,
      htgroups: null,
      ldap: null,
      groupProfiles: [],
      cacheTtlSeconds: 300,
      failureTtlSeconds: 10,
      cacheMaxEntries: 10_000,
      transparent: 'refuse',
    },
    safeSearch: rules('safesearch.json'),
    transparent: { http: [], tls: [] },
    logLevel: 'info',
    journal: {
      path: cwd('var/journal.db'),
      retentionDays: 365,
      failOpen: false,
      keyFile: null,
      operatorGroup: null,
      skewToleranceSeconds: 2,
      batchMs: 5,
    },
    admin: { listen: '127.0.0.1:3129' },
    intercept: { caDir: null, upstreamCAs: [], maxCertificates: 1000 },
    update: { feed: null, trustedKeys: [], intervalSeconds: 300, stateDir: cwd('var/lists') },
    limits: {
      maxHeaderBytes: 16384,
      headerTimeoutMs: 10_000,
      idleTimeoutMs: 120_000,
      maxConnectionsPerClient: 256,
      shutdownGraceMs: 10_000,
    },
    workers: 'auto',
  };
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Reads and validates a config file; the result is the defaults overlaid with the file. */
export function loadConfigFile(file: string): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`reading config ${file}: ${errorMessage(err)}`);
  }
  let json: Json;
  try {
    json = JSON.parse(text) as Json;
  } catch (err) {
    throw new ConfigError(`parsing config ${file}: ${errorMessage(err)}`);
  }
  return applyConfig(defaultConfig(), json, path.dirname(path.resolve(file)), file);
}

/** Loads `file` when given, else the embedded defaults (validated the same way). */
export function loadConfig(file: string | undefined): Config {
  return file ? loadConfigFile(file) : validateConfig(defaultConfig(), '(defaults)');
}

/**
 * Overlays `json` on `base`. Paths are resolved against `baseDir`. `origin` names the file in
 * error messages.
 */
export function applyConfig(base: Config, json: Json, baseDir: string, origin: string): Config {
  const cfg = structuredClone(base);
  const v = new Validator(baseDir, origin);
  const top = v.object(json, '');
  for (const [key, value] of Object.entries(top)) {
    switch (key) {
      case 'listen': cfg.listen = v.list(value, key, (x, k) => v.hostPort(x, k)); break;
      case 'clients': cfg.clients = v.list(value, key, (x, k) => v.cidr(x, k)); break;
      case 'allowDestinations': cfg.allowDestinations = v.list(value, key, (x, k) => v.cidr(x, k)); break;
      case 'connectPorts': cfg.connectPorts = v.list(value, key, (x, k) => v.port(x, k)); break;
      case 'lists': cfg.lists = v.path(value, key); break;
      case 'hosts': cfg.hosts = value === null ? null : v.path(value, key); break;
      case 'parentProxy': cfg.parentProxy = value === null ? null : v.proxyUrl(value, key); break;
      case 'policy': cfg.policy = v.path(value, key); break;
      case 'blockPage': cfg.blockPage = v.path(value, key); break;
      case 'workstations': cfg.workstations = value === null ? null : v.path(value, key); break;
      case 'safeSearch': cfg.safeSearch = v.path(value, key); break;
      case 'identity': cfg.identity = identityConfig(v, value, cfg.identity); break;
      case 'transparent': {
        for (const [k, x] of Object.entries(v.object(value, key))) {
          if (k === 'http' || k === 'tls') cfg.transparent[k] = v.list(x, `transparent.${k}`, (y, k2) => v.hostPort(y, k2));
          else v.unknown(`transparent.${k}`);
        }
        break;
      }
      case 'intercept': {
        for (const [k, x] of Object.entries(v.object(value, key))) {
          const kk = `intercept.${k}`;
          switch (k) {
            case 'caDir': cfg.intercept.caDir = x === null ? null : v.path(x, kk); break;
            case 'upstreamCAs': cfg.intercept.upstreamCAs = v.list(x, kk, (y, k2) => v.path(y, k2)); break;
            case 'maxCertificates': cfg.intercept.maxCertificates = v.int(x, kk, 1, 1_000_000); break;
            default: v.unknown(kk);
          }
        }
        break;
      }
      case 'logLevel': cfg.logLevel = v.oneOf(value, key, ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const); break;
      case 'journal': {
        for (const [k, x] of Object.entries(v.object(value, key))) {
          const kk = `journal.${k}`;
          switch (k) {
            case 'path': cfg.journal.path = v.path(x, kk); break;
            case 'retentionDays': cfg.journal.retentionDays = v.int(x, kk, 1, 36500); break;
            case 'failOpen': cfg.journal.failOpen = v.bool(x, kk); break;
            case 'keyFile': cfg.journal.keyFile = x === null ? null : v.path(x, kk); break;
            case 'operatorGroup': cfg.journal.operatorGroup = x === null ? null : v.string(x, kk); break;
            case 'skewToleranceSeconds': cfg.journal.skewToleranceSeconds = v.int(x, kk, 0, 3600); break;
            case 'batchMs': cfg.journal.batchMs = v.int(x, kk, 0, 1000); break;
            default: v.unknown(kk);
          }
        }
        break;
      }
      case 'admin': {
        for (const [k, x] of Object.entries(v.object(value, key))) {
          if (k === 'listen') cfg.admin.listen = x === null ? null : v.hostPort(x, 'admin.listen');
          else v.unknown(`admin.${k}`);
        }
        break;
      }
      case 'update': {
        for (const [k, x] of Object.entries(v.object(value, key))) {
          const kk = `update.${k}`;
          switch (k) {
            case 'feed': cfg.update.feed = x === null ? null : v.feedUrl(x, kk); break;
            case 'trustedKeys': cfg.update.trustedKeys = v.list(x, kk, (y, k2) => v.path(y, k2)); break;
            case 'intervalSeconds': cfg.update.intervalSeconds = v.int(x, kk, 10, 86400 * 7); break;
            case 'stateDir': cfg.update.stateDir = v.path(x, kk); break;
            default: v.unknown(kk);
          }
        }
        break;
      }
      case 'limits': {
        for (const [k, x] of Object.entries(v.object(value, key))) {
          const kk = `limits.${k}`;
          switch (k) {
            case 'maxHeaderBytes': cfg.limits.maxHeaderBytes = v.int(x, kk, 1024, 1 << 20); break;
            case 'headerTimeoutMs': cfg.limits.headerTimeoutMs = v.int(x, kk, 100, 600_000); break;
            case 'idleTimeoutMs': cfg.limits.idleTimeoutMs = v.int(x, kk, 100, 86_400_000); break;
            case 'maxConnectionsPerClient': cfg.limits.maxConnectionsPerClient = v.int(x, kk, 1, 1_000_000); break;
            case 'shutdownGraceMs': cfg.limits.shutdownGraceMs = v.int(x, kk, 0, 600_000); break;
            default: v.unknown(kk);
          }
        }
        break;
      }
      case 'workers':
        if (value === 'auto') cfg.workers = 'auto';
        else if (typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 1024) cfg.workers = value;
        else v.fail(key, `expected "auto" or an integer from 1 to 1024, got ${v.show(value)}`);
        break;
      default: v.unknown(key);
    }
  }
  return validateConfig(cfg, origin);
}

/** The `identity` section (docs/identity.md); every error names its key. */
function identityConfig(v: Validator, value: Json, base: IdentityConfig): IdentityConfig {
  const id = structuredClone(base);
  for (const [k, x] of Object.entries(v.object(value, 'identity'))) {
    const kk = `identity.${k}`;
    switch (k) {
      case 'dhcpLeases': id.dhcpLeases = v.list(x, kk, (y, k2) => v.path(y, k2)); break;
      case 'leasesRefreshSeconds': id.leasesRefreshSeconds = v.int(x, kk, 1, 3600); break;
      case 'subnets': id.subnets = v.list(x, kk, (y, k2) => {
        const row = v.object(y, k2);
        let cidr: string | null = null;
        let mode: 'authenticate' | 'workstation' | null = null;
        for (const [rk, rx] of Object.entries(row)) {
          if (rk === 'cidr') cidr = v.cidr(rx, `${k2}.cidr`);
          else if (rk === 'mode') mode = v.oneOf(rx, `${k2}.mode`, ['authenticate', 'workstation'] as const);
          else v.unknown(`${k2}.${rk}`);
        }
        if (cidr === null || mode === null) v.fail(k2, 'expected {"cidr": "10.1.0.0/16", "mode": "authenticate" or "workstation"}');
        return { cidr, mode };
      }); break;
      case 'realm':
        id.realm = v.string(x, kk);
        if (!/^[\x20-\x7e]{1,64}$/.test(id.realm) || /["\\]/.test(id.realm)) v.fail(kk, `expected up to 64 printable ASCII characters without " or \\, got ${v.show(x)}`);
        break;
      case 'htpasswd': id.htpasswd = x === null ? null : v.path(x, kk); break;
      case 'htgroups': id.htgroups = x === null ? null : v.path(x, kk); break;
      case 'ldap': id.ldap = x === null ? null : ldapConfig(v, x); break;
      case 'groupProfiles': id.groupProfiles = v.list(x, kk, (y, k2) => {
        const row = v.object(y, k2);
        for (const rk of Object.keys(row)) if (rk !== 'group' && rk !== 'profile') v.unknown(`${k2}.${rk}`);
        return { group: v.string(row['group'] ?? null, `${k2}.group`), profile: v.string(row['profile'] ?? null, `${k2}.profile`) };
      }); break;
      case 'cacheTtlSeconds': id.cacheTtlSeconds = v.int(x, kk, 0, 86400); break;
      case 'failureTtlSeconds': id.failureTtlSeconds = v.int(x, kk, 0, 3600); break;
      case 'cacheMaxEntries': id.cacheMaxEntries = v.int(x, kk, 1, 10_000_000); break;
      case 'transparent': id.transparent = v.oneOf(x, kk, ['refuse', 'workstation'] as const); break;
      default: v.unknown(kk);
    }
  }
  if (id.subnets.some((s) => s.mode === 'authenticate') && id.htpasswd === null && id.ldap === null) {
    v.fail('identity.subnets', 'a subnet must "authenticate" but neither identity.htpasswd nor identity.ldap is set');
  }
  if (id.htgroups !== null && id.htpasswd === null) v.fail('identity.htgroups', 'needs identity.htpasswd');
  return id;
}

function ldapConfig(v: Validator, x: Json): LdapConfig {
  const o = v.object(x, 'identity.ldap');
  const out: LdapConfig = {
    url: '', bindDn: '', bindPasswordFile: '', baseDn: '', userFilter: '(&(objectClass=person)(uid={user}))',
    groupAttribute: null, groupSearch: null, caFile: null, timeoutMs: 5000,
  };
  for (const [k, y] of Object.entries(o)) {
    const kk = `identity.ldap.${k}`;
    switch (k) {
      case 'url': {
        out.url = v.string(y, kk);
        if (!/^ldaps?:\/\/[^/?#\s]+\/?$/i.test(out.url)) v.fail(kk, `expected ldap://host[:port] or ldaps://host[:port], got ${v.show(y)}`);
        break;
      }
      case 'bindDn': out.bindDn = v.string(y, kk); break;
      case 'bindPasswordFile': out.bindPasswordFile = v.path(y, kk); break;
      case 'baseDn': out.baseDn = v.string(y, kk); break;
      case 'userFilter': out.userFilter = v.string(y, kk); break;
      case 'groupAttribute': out.groupAttribute = y === null ? null : v.string(y, kk); break;
      case 'groupSearch': {
        if (y === null) { out.groupSearch = null; break; }
        const g = v.object(y, kk);
        for (const gk of Object.keys(g)) if (!['baseDn', 'filter', 'nameAttribute'].includes(gk)) v.unknown(`${kk}.${gk}`);
        out.groupSearch = {
          baseDn: v.string(g['baseDn'] ?? null, `${kk}.baseDn`),
          filter: v.string(g['filter'] ?? null, `${kk}.filter`),
          nameAttribute: g['nameAttribute'] === undefined ? 'cn' : v.string(g['nameAttribute'], `${kk}.nameAttribute`),
        };
        if (!out.groupSearch.filter.includes('{dn}') && !out.groupSearch.filter.includes('{user}')) v.fail(`${kk}.filter`, 'expected {dn} or {user} in the filter');
        break;
      }
      case 'caFile': out.caFile = y === null ? null : v.path(y, kk); break;
      case 'timeoutMs': out.timeoutMs = v.int(y, kk, 100, 60_000); break;
      default: v.unknown(kk);
    }
  }
  for (const req of ['url', 'bindDn', 'bindPasswordFile', 'baseDn'] as const) {
    if (out[req] === '') v.fail(`identity.ldap.${req}`, 'required when identity.ldap is set');
  }
  if (!out.userFilter.includes('{user}')) v.fail('identity.ldap.userFilter', `expected {user} in the filter, got ${v.show(out.userFilter)}`);
  if (!/^\(.*\)$/.test(out.userFilter)) v.fail('identity.ldap.userFilter', `expected a parenthesised LDAP filter, got ${v.show(out.userFilter)}`);
  return out;
}

/** Whole-config checks (after overlays such as command-line flags). */
export function validateConfig(cfg: Config, origin: string): Config {
  const fail = (key: string, msg: string) => { throw new ConfigError(`config ${origin}: key "${key}": ${msg}`); };
  if (cfg.listen.length === 0) fail('listen', 'at least one listener is needed');
  if (cfg.connectPorts.length === 0) fail('connectPorts', 'at least one port is needed');
  if (cfg.clients.length === 0) fail('clients', 'an empty list would refuse everyone; list the school networks');
  return cfg;
}

class Validator {
  constructor(private readonly baseDir: string, private readonly origin: string) {}

  fail(key: string, msg: string): never {
    throw new ConfigError(`config ${this.origin}: key "${key || '(top)'}": ${msg}`);
  }
  unknown(key: string): never {
    this.fail(key, 'unknown key');
  }
  show(x: Json): string {
    const s = JSON.stringify(x);
    return s.length > 60 ? `${s.slice(0, 57)}...` : s;
  }
  object(x: Json, key: string): { [k: string]: Json } {
    if (x === null || typeof x !== 'object' || Array.isArray(x)) this.fail(key, `expected an object, got ${this.show(x)}`);
    return x;
  }
  list<T>(x: Json, key: string, item: (y: Json, k: string) => T): T[] {
    if (!Array.isArray(x)) this.fail(key, `expected a list, got ${this.show(x)}`);
    return x.map((y, i) => item(y, `${key}[${i}]`));
  }
  string(x: Json, key: string): string {
    if (typeof x !== 'string' || x === '') this.fail(key, `expected a non-empty string, got ${this.show(x)}`);
    return x;
  }
  bool(x: Json, key: string): boolean {
    if (typeof x !== 'boolean') this.fail(key, `expected true or false, got ${this.show(x)}`);
    return x;
  }
  int(x: Json, key: string, min: number, max: number): number {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) {
      this.fail(key, `expected an integer from ${min} to ${max}, got ${this.show(x)}`);
    }
    return x;
  }
  port(x: Json, key: string): number {
    return this.int(x, key, 1, 65535);
  }
  oneOf<T extends string>(x: Json, key: string, allowed: readonly T[]): T {
    if (typeof x !== 'string' || !(allowed as readonly string[]).includes(x)) {
      this.fail(key, `expected one of ${allowed.join(', ')}, got ${this.show(x)}`);
    }
    return x as T;
  }
  path(x: Json, key: string): string {
    return path.resolve(this.baseDir, this.string(x, key));
  }
  hostPort(x: Json, key: string): string {
    const s = this.string(x, key);
    try {
      parseHostPort(s);
    } catch (err) {
      this.fail(key, errorMessage(err));
    }
    return s;
  }
  cidr(x: Json, key: string): string {
    const s = this.string(x, key);
    try {
      parseCidr(s);
    } catch (err) {
      this.fail(key, errorMessage(err));
    }
    return s;
  }
  proxyUrl(x: Json, key: string): string {
    const s = this.string(x, key);
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      this.fail(key, `expected a URL such as http://proxy.example:3128, got ${this.show(x)}`);
    }
    if (u.protocol !== 'http:') this.fail(key, `only http:// parent proxies are supported, got ${this.show(x)}`);
    return s;
  }
  feedUrl(x: Json, key: string): string {
    const s = this.string(x, key);
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      this.fail(key, `expected an http(s):// or file:// URL, got ${this.show(x)}`);
    }
    if (!['http:', 'https:', 'file:'].includes(u.protocol)) this.fail(key, `expected an http(s):// or file:// URL, got ${this.show(x)}`);
    return s;
  }
}
