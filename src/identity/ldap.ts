/**
 * Accounts of the school's (or the ENT's) directory, with ldapts 7: search, then bind as the user.
 *   1. bind with the service account (bindDn + the password read from bindPasswordFile),
 *   2. search baseDn (subtree) with userFilter, `{user}` replaced by the RFC 4515-escaped name;
 *      exactly one entry must match (none: unknown user; several: refused, logged as ambiguous),
 *   3. bind as that entry's DN with the password given (a wrong one: InvalidCredentials),
 *   4. groups: the values of groupAttribute (e.g. memberOf) on the entry, and/or the entries of
 *      a group search (`{dn}` and `{user}` escaped the same way), named by nameAttribute.
 * Each group is offered to the mapping both as its full DN and as the value of its first RDN
 * ("cn=profs,ou=groups,dc=x" -> also "profs"). An empty password is refused before any bind:
 * LDAP treats a bind with a DN and no password as anonymous and "succeeds".
 * A directory that does not answer (refused, timeout, TLS error) is `unavailable`, never a yes.
 */
import * as fs from 'node:fs';
import type * as Ldapts from 'ldapts';
import type { LdapConfig } from '../config';
import { ConfigError } from '../errors';
import type { Backend, LoginResult } from './backend';

// ldapts and its dependencies load when a directory is first asked, not at every start
let ldaptsModule: typeof Ldapts | null = null;
function ldapts(): typeof Ldapts {
  ldaptsModule ??= require('ldapts') as typeof Ldapts;
  return ldaptsModule;
}

export type { LdapConfig } from '../config';

/** RFC 4515 section 3: the characters that must be escaped in an assertion value. */
export function escapeFilterValue(s: string): string {
  let out = '';
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    if (ch === '*' || ch === '(' || ch === ')' || ch === '\\' || c === 0) out += `\\${c.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return out;
}

/** Replaces `{user}` / `{dn}` in a filter template with escaped values. */
export function fillFilter(template: string, values: { user: string; dn?: string }): string {
  return template.replace(/\{(user|dn)\}/g, (_m, k: 'user' | 'dn') => escapeFilterValue(values[k] ?? ''));
}

/** "cn=profs,ou=groups,dc=x" -> "profs" (the value of the first RDN), or null. */
export function firstRdnValue(dn: string): string | null {
  const m = /^\s*[A-Za-z0-9.-]+\s*=\s*((?:\\.|[^,+\\])*)/.exec(dn);
  if (!m) return null;
  const v = m[1]!.trim().replace(/\\([0-9a-fA-F]{2}|.)/g, (_x, e: string) => (e.length === 2 ? String.fromCharCode(parseInt(e, 16)) : e));
  return v === '' ? null : v;
}

function values(x: Buffer | Buffer[] | string[] | string | undefined): string[] {
  if (x === undefined) return [];
  const arr = Array.isArray(x) ? x : [x];
  return arr.map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : v));
}

export class LdapBackend implements Backend {
  readonly name = 'ldap';
  private readonly bindPassword: string;
  private readonly ca: Buffer | null;

  constructor(private readonly cfg: LdapConfig) {
    try {
      this.bindPassword = fs.readFileSync(cfg.bindPasswordFile, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new ConfigError(`reading identity.ldap.bindPasswordFile ${cfg.bindPasswordFile}: ${(err as Error).message}`);
    }
    if (this.bindPassword === '') throw new ConfigError(`identity.ldap.bindPasswordFile ${cfg.bindPasswordFile} is empty`);
    try {
      this.ca = cfg.caFile === null ? null : fs.readFileSync(cfg.caFile);
    } catch (err) {
      throw new ConfigError(`reading identity.ldap.caFile ${cfg.caFile}: ${(err as Error).message}`);
    }
  }

  private client(): Ldapts.Client {
    return new (ldapts().Client)({
      url: this.cfg.url,
      timeout: this.cfg.timeoutMs,
      connectTimeout: this.cfg.timeoutMs,
      ...(this.ca === null ? {} : { tlsOptions: { ca: [this.ca] } }),
    });
  }

  async login(user: string, password: string): Promise<LoginResult> {
    if (password === '') return { kind: 'bad-password' };
    const cfg = this.cfg;
    const svc = this.client();
    let dn: string;
    const groups: string[] = [];
    try {
      await svc.bind(cfg.bindDn, this.bindPassword);
      const attrs = cfg.groupAttribute === null ? ['1.1'] : [cfg.groupAttribute];
      const { searchEntries } = await svc.search(cfg.baseDn, { scope: 'sub', filter: fillFilter(cfg.userFilter, { user }), attributes: attrs, sizeLimit: 2 });
      if (searchEntries.length === 0) return { kind: 'unknown-user' };
      if (searchEntries.length > 1) return { kind: 'unavailable', detail: 'user filter matches several entries' };
      const entry = searchEntries[0]!;
      dn = entry.dn;
      if (cfg.groupAttribute !== null) {
        // attribute names come back as the server spells them
        const key = Object.keys(entry).find((k) => k.toLowerCase() === cfg.groupAttribute!.toLowerCase());
        for (const g of values(key === undefined ? undefined : entry[key])) groups.push(g);
      }
      if (cfg.groupSearch !== null) {
        const gs = cfg.groupSearch;
        const r = await svc.search(gs.baseDn, { scope: 'sub', filter: fillFilter(gs.filter, { user, dn }), attributes: [gs.nameAttribute], sizeLimit: 1000 });
        for (const e of r.searchEntries) {
          groups.push(e.dn);
          const key = Object.keys(e).find((k) => k.toLowerCase() === gs.nameAttribute.toLowerCase());
          for (const n of values(key === undefined ? undefined : e[key])) groups.push(n);
        }
      }
    } catch (err) {
      return { kind: 'unavailable', detail: describe(err) };
    } finally {
      await svc.unbind().catch(() => undefined);
    }
    const asUser = this.client();
    try {
      await asUser.bind(dn, password);
    } catch (err) {
      if (err instanceof ldapts().InvalidCredentialsError) return { kind: 'bad-password' };
      return { kind: 'unavailable', detail: describe(err) };
    } finally {
      await asUser.unbind().catch(() => undefined);
    }
    const names = new Set<string>();
    for (const g of groups) {
      names.add(g);
      const short = firstRdnValue(g);
      if (short !== null) names.add(short);
    }
    return { kind: 'ok', groups: [...names] };
  }
}

function describe(err: unknown): string {
  const e = err as { code?: unknown; message?: string };
  return `${typeof e.code === 'string' || typeof e.code === 'number' ? `${e.code} ` : ''}${e.message ?? String(err)}`.slice(0, 200);
}
