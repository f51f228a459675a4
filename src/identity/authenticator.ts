/**
 * Proxy authentication: which clients must log in, checking a `Proxy-Authorization: Basic`
 * header against the account sources (htpasswd first, then LDAP), the credential cache, and
 * the mapping of groups to profiles.
 *
 * Credential cache: key = user + HMAC-SHA-256(process-random key, password): the password itself
 * is never kept. A success is kept `cacheTtlSeconds`, a failure `failureTtlSeconds` (a client
 * retrying a wrong password, or a guesser repeating one, costs no bcrypt or LDAP round-trip);
 * "directory unavailable" is not kept. Concurrent logins with the same credentials (a browser
 * opens several connections at once) share one check. At most `cacheMaxEntries` entries: the
 * oldest is dropped first.
 *
 * Groups -> profile: the first row of `groupProfiles` whose group is one of the user's groups
 * (compared without case; LDAP groups are offered as full DN and as short name) gives the
 * profile. No row: the profile of the workstation, else the policy's `clients` rules.
 */
import * as crypto from 'node:crypto';
import { CidrSet } from '../config/cidr';
import type { IdentityConfig } from '../config';
import type { Backend, LoginResult } from './backend';
import { HtpasswdBackend, USER_RE } from './htpasswd';
import { LdapBackend } from './ldap';

export type AuthVerdict =
  | { kind: 'ok'; user: string; groups: string[]; profile: string | undefined; cached: boolean }
  /** no Proxy-Authorization, or not Basic, or not decodable: challenge */
  | { kind: 'missing' }
  | { kind: 'failed'; user: string; why: 'unknown-user' | 'bad-password' | 'bad-user-name' }
  /** no source could answer: fail closed, do not let through, do not ask again as if wrong */
  | { kind: 'unavailable'; user: string; detail: string };

interface CacheEntry {
  expires: number;
  result: Promise<LoginResult>;
}

export interface AuthenticatorOptions {
  now?: () => number;
}

export class Authenticator {
  private readonly authenticate: Array<{ set: CidrSet; must: boolean }>;
  private readonly cache = new Map<string, CacheEntry>();
  private readonly hmacKey = crypto.randomBytes(32);
  private readonly now: () => number;
  /** lower-case group -> profile, in table order */
  private readonly groupProfiles: Array<{ group: string; profile: string }>;

  constructor(readonly cfg: IdentityConfig, readonly backends: Backend[], opts: AuthenticatorOptions = {}) {
    this.authenticate = cfg.subnets.map((s) => ({ set: new CidrSet([s.cidr]), must: s.mode === 'authenticate' }));
    this.groupProfiles = cfg.groupProfiles.map((g) => ({ group: g.group.toLowerCase(), profile: g.profile }));
    this.now = opts.now ?? Date.now;
  }

  /**
   * Reads the account sources the configuration names (htpasswd and group file, LDAP service
   * password); throws ConfigError naming the file and line. Null when no subnet authenticates.
   */
  static fromConfig(cfg: IdentityConfig, opts: AuthenticatorOptions = {}): Authenticator | null {
    if (!cfg.subnets.some((s) => s.mode === 'authenticate')) return null;
    const backends: Backend[] = [];
    if (cfg.htpasswd !== null) backends.push(HtpasswdBackend.fromFiles(cfg.htpasswd, cfg.htgroups));
    if (cfg.ldap !== null) backends.push(new LdapBackend(cfg.ldap));
    return new Authenticator(cfg, backends, opts);
  }

  /** Whether a client address must log in (first `identity.subnets` row that matches). */
  requiredFor(ip: string): boolean {
    for (const r of this.authenticate) if (r.set.has(ip)) return r.must;
    return false;
  }

  get realm(): string {
    return this.cfg.realm;
  }

  /** Cached credentials right now (metrics, tests). */
  get cacheSize(): number {
    return this.cache.size;
  }

  /** Checks a Proxy-Authorization header value. Never throws. */
  async check(header: string | undefined): Promise<AuthVerdict> {
    const cred = parseBasic(header);
    if (cred === null) return { kind: 'missing' };
    const { user, password } = cred;
    if (!USER_RE.test(user)) return { kind: 'failed', user: user.replace(/[^\x21-\x7e]/g, '?').slice(0, 64), why: 'bad-user-name' };
    const key = `${user}\0${crypto.createHmac('sha256', this.hmacKey).update(password, 'utf8').digest('base64')}`;
    const now = this.now();
    let e = this.cache.get(key);
    let cached = true;
    if (e === undefined || e.expires <= now) {
      cached = false;
      if (e !== undefined) this.cache.delete(key);
      e = { expires: Infinity, result: this.login(user, password) };
      this.put(key, e);
      const entry = e;
      void entry.result.then((r) => {
        if (r.kind === 'unavailable') { if (this.cache.get(key) === entry) this.cache.delete(key); return; }
        entry.expires = this.now() + 1000 * (r.kind === 'ok' ? this.cfg.cacheTtlSeconds : this.cfg.failureTtlSeconds);
      });
    }
    const r = await e.result;
    switch (r.kind) {
      case 'ok': return { kind: 'ok', user, groups: r.groups, profile: this.profileOf(r.groups), cached };
      case 'unavailable': return { kind: 'unavailable', user, detail: r.detail };
      default: return { kind: 'failed', user, why: r.kind };
    }
  }

  /** Every profile the group table names (checked against the policy at start and reload). */
  profilesNamed(): string[] {
    return [...new Set(this.groupProfiles.map((g) => g.profile))];
  }

  /** The profile of a set of groups (first row of groupProfiles that matches), or undefined. */
  profileOf(groups: string[]): string | undefined {
    if (groups.length === 0 || this.groupProfiles.length === 0) return undefined;
    const mine = new Set(groups.map((g) => g.toLowerCase()));
    for (const g of this.groupProfiles) if (mine.has(g.group)) return g.profile;
    return undefined;
  }

  /** The sources in order: an unknown user goes on to the next; any other answer stops. */
  private async login(user: string, password: string): Promise<LoginResult> {
    let last: LoginResult = { kind: 'unknown-user' };
    for (const b of this.backends) {
      try {
        last = await b.login(user, password);
      } catch (err) {
        last = { kind: 'unavailable', detail: `${b.name}: ${(err as Error).message}` };
      }
      if (last.kind !== 'unknown-user') return last;
    }
    return last;
  }

  private put(key: string, e: CacheEntry): void {
    if (this.cache.size >= this.cfg.cacheMaxEntries) {
      // drop expired entries first, then the oldest
      const now = this.now();
      for (const [k, v] of this.cache) if (v.expires <= now) this.cache.delete(k);
      while (this.cache.size >= this.cfg.cacheMaxEntries) {
        const oldest = this.cache.keys().next();
        if (oldest.done === true) break;
        this.cache.delete(oldest.value);
      }
    }
    this.cache.set(key, e);
  }
}

/** `Basic base64(user:password)` -> the pair, or null (other schemes, bad encoding, too long). */
export function parseBasic(header: string | undefined): { user: string; password: string } | null {
  if (header === undefined || header.length > 4096) return null;
  const m = /^\s*basic\s+([A-Za-z0-9+/]+={0,2})\s*$/i.exec(header);
  if (!m) return null;
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon <= 0) return null;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}
