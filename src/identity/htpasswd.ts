/**
 * Local accounts: an Apache-style htpasswd file, bcrypt hashes only, and an optional group file.
 *
 * htpasswd, one account a line (`htpasswd -B`, or `gardefou`-independent tools):
 *   alice:$2y$10$<53 characters of salt and hash>
 * Any other hash kind (MD5 "$apr1$", SHA "{SHA}", crypt, plain text) is refused at load with
 * the file and line: those are weak or unsalted, and a gateway should not accept them.
 *
 * Group file (Apache AuthGroupFile format), one group a line, members separated by blanks:
 *   profs: alice bob
 *   eleves: carol
 * The groups are mapped to profiles by `identity.groupProfiles`, as LDAP groups are.
 *
 * Checking a password runs in a worker thread (bcrypt-verifier.ts): a login does not stall the
 * other connections for its ~100 ms.
 */
import * as fs from 'node:fs';
import { ConfigError } from '../errors';
import type { Backend, LoginResult } from './backend';
import { bcryptVerifier } from './bcrypt-verifier';

const BCRYPT_RE = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;
export const USER_RE = /^[^\s:\x00-\x1f\x7f]{1,128}$/;

/** A hash of a random password, compared when the user is unknown (same time as a known one). */
const DUMMY_HASH = '$2b$10$AId9OHG64MN9Xujxvi8cLucfcxt.Z87Mb3EhBzju0h3U3rgKvNtvC';

function readText(file: string, what: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`reading ${what} ${file}: ${(err as Error).message}`);
  }
}

export function parseHtpasswd(text: string, file: string): Map<string, string> {
  const users = new Map<string, string>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    const at = `reading htpasswd ${file} line ${i + 1}`;
    if (colon <= 0) throw new ConfigError(`${at}: expected "USER:HASH"`);
    const user = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (!USER_RE.test(user)) throw new ConfigError(`${at}: bad user name`);
    // the hash itself is never echoed: it is a secret too
    if (!BCRYPT_RE.test(hash)) {
      const kind = hash.startsWith('$apr1$') ? 'MD5 ($apr1$)' : hash.startsWith('{SHA}') ? 'SHA-1 ({SHA})' : hash.startsWith('$') ? `"${hash.split('$')[1] ?? ''}"` : 'crypt or plain text';
      throw new ConfigError(`${at}: user "${user}": only bcrypt hashes ($2y$, $2a$, $2b$) are accepted, got ${kind}; re-create it with "htpasswd -B"`);
    }
    if (users.has(user)) throw new ConfigError(`${at}: user "${user}" appears twice`);
    users.set(user, hash);
  }
  return users;
}

/** group -> members, as user -> groups */
export function parseGroupFile(text: string, file: string): Map<string, string[]> {
  const groupsOf = new Map<string, string[]>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([^\s:]+)\s*:(.*)$/.exec(line);
    if (!m) throw new ConfigError(`reading group file ${file} line ${i + 1}: expected "GROUP: USER USER ..."`);
    for (const u of m[2]!.trim().split(/\s+/)) {
      if (u === '') continue;
      const list = groupsOf.get(u) ?? [];
      list.push(m[1]!);
      groupsOf.set(u, list);
    }
  }
  return groupsOf;
}

export class HtpasswdBackend implements Backend {
  readonly name = 'htpasswd';

  constructor(private readonly users: Map<string, string>, private readonly groupsOf: Map<string, string[]> = new Map()) {}

  static fromFiles(file: string, groupFile: string | null): HtpasswdBackend {
    const users = parseHtpasswd(readText(file, 'htpasswd'), file);
    const groups = groupFile === null ? new Map<string, string[]>() : parseGroupFile(readText(groupFile, 'group file'), groupFile);
    return new HtpasswdBackend(users, groups);
  }

  get size(): number {
    return this.users.size;
  }

  async login(user: string, password: string): Promise<LoginResult> {
    const hash = this.users.get(user);
    const ok = await bcryptVerifier.compare(password, hash ?? DUMMY_HASH);
    if (hash === undefined) return { kind: 'unknown-user' };
    if (!ok) return { kind: 'bad-password' };
    return { kind: 'ok', groups: this.groupsOf.get(user) ?? [] };
  }
}
