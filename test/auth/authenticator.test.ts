/**
 * The authenticator on its own, with real bcrypt hashes: Basic parsing, htpasswd loading, the
 * credential cache (successes, failures, bound), per-subnet choice, config validation.
 */
import * as bcrypt from 'bcryptjs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { applyConfig, defaultConfig, type IdentityConfig } from '../../src/config';
import { Authenticator, parseBasic } from '../../src/identity/authenticator';
import { HtpasswdBackend, parseGroupFile, parseHtpasswd } from '../../src/identity/htpasswd';
import { tempDir } from '../helpers/gardefou';
import { basic } from './helpers';

t.test('Basic credentials', async (t) => {
  t.same(parseBasic(basic('alice', 'a:b:c')), { user: 'alice', password: 'a:b:c' }, 'colons in the password');
  t.same(parseBasic(`  bAsIc ${Buffer.from('élève:pé').toString('base64')} `), { user: 'élève', password: 'pé' }, 'UTF-8, any case');
  for (const bad of [undefined, '', 'Basic', 'Basic !!!', `Basic ${Buffer.from('nocolon').toString('base64')}`, `Basic ${Buffer.from(':pw').toString('base64')}`, 'Digest x', `Basic ${'A'.repeat(5000)}`]) {
    t.equal(parseBasic(bad), null, String(bad).slice(0, 20));
  }
});

t.test('htpasswd: bcrypt only, errors name file and line', async (t) => {
  const h = bcrypt.hashSync('pw', 4);
  t.equal(parseHtpasswd(`# c\n\nalice:${h}\nbob:${h.replace('$2b$', '$2a$')}\n`, 'f').size, 2);
  const cases: Array<[string, RegExp]> = [
    [`alice:${h}\nbob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=`, /htpasswd f line 2: user "bob": only bcrypt .* got SHA-1 \(\{SHA\}\)/],
    ['carol:$apr1$xyz$abc', /line 1: user "carol": .* got MD5 \(\$apr1\$\)/],
    ['dave:$6$salt$hash', /line 1: user "dave": .* got "6"/],
    ['erin:plaintext', /got crypt or plain text/],
    ['noline', /line 1: expected "USER:HASH"/],
    [`alice:${h}\nalice:${h}`, /line 2: user "alice" appears twice/],
  ];
  for (const [text, re] of cases) t.throws(() => parseHtpasswd(text, 'f'), { message: re, code: 'GARDEFOU_CONFIG' });
  t.notOk(String((() => { try { parseHtpasswd('x:$apr1$SECRET', 'f'); } catch (e) { return (e as Error).message; } return ''; })()).includes('SECRET'), 'the hash is not echoed');
  t.same([...parseGroupFile('profs: alice bob\neleves:carol\n', 'g')], [['alice', ['profs']], ['bob', ['profs']], ['carol', ['eleves']]]);
});

t.test('bcrypt checks in the worker thread: right, wrong, concurrent', async (t) => {
  const { bcryptVerifier } = await import('../../src/identity/bcrypt-verifier');
  const h = bcrypt.hashSync('pw', 4);
  t.same(await Promise.all([bcryptVerifier.compare('pw', h), bcryptVerifier.compare('pW', h), bcryptVerifier.compare('pw', h.replace('$2b$', '$2y$')), bcryptVerifier.compare('pw', 'not-a-hash')]),
    [true, false, true, false]);
});

function idConfig(over: Partial<IdentityConfig>): IdentityConfig {
  return { ...defaultConfig().identity, ...over };
}

t.test('cache: successes and failures are kept, never the password; bounded; per-subnet choice', async (t) => {
  const users = new Map([['alice', bcrypt.hashSync('alice-pw', 4)], ['bob', bcrypt.hashSync('bob-pw', 4)]]);
  const backend = new HtpasswdBackend(users, new Map([['alice', ['profs']]]));
  let now = 1_000_000;
  const a = new Authenticator(idConfig({
    subnets: [{ cidr: '10.1.5.0/24', mode: 'workstation' }, { cidr: '10.0.0.0/8', mode: 'authenticate' }],
    htpasswd: '/unused', groupProfiles: [{ group: 'profs', profile: 'profs' }],
    cacheTtlSeconds: 60, failureTtlSeconds: 5, cacheMaxEntries: 3,
  }), [backend], { now: () => now });
  t.ok(a.requiredFor('10.2.0.1'));
  t.notOk(a.requiredFor('10.1.5.9'), 'the first matching row wins: a workstation room inside an authenticating network');
  t.notOk(a.requiredFor('192.168.0.1'), 'no row: identified by workstation');

  const [x, y] = await Promise.all([a.check(basic('alice', 'alice-pw')), a.check(basic('alice', 'alice-pw'))]);
  t.match(x, { kind: 'ok', user: 'alice', profile: 'profs', cached: false });
  t.match(y, { kind: 'ok', cached: true }, 'concurrent logins share one check');
  t.match(await a.check(basic('alice', 'alice-pw')), { cached: true });
  t.match(await a.check(basic('alice', 'wrong')), { kind: 'failed', why: 'bad-password' });
  t.match(await a.check(basic('zed', 'x')), { kind: 'failed', why: 'unknown-user' });
  t.match(await a.check(basic('bad user', 'x')), { kind: 'failed', why: 'bad-user-name' });
  t.equal(a.cacheSize, 3);
  t.match(await a.check(basic('yan', 'x')), { kind: 'failed' });
  t.equal(a.cacheSize, 3, 'bounded: the oldest went');
  t.match(await a.check(basic('alice', 'alice-pw')), { kind: 'ok', cached: false }, 'the evicted login is checked again');
  // the cache keys never hold the password
  const keys = [...(a as unknown as { cache: Map<string, unknown> }).cache.keys()].join('|');
  t.notOk(keys.includes('wrong') || keys.includes('alice-pw'));
  now += 61_000;
  t.match(await a.check(basic('bob', 'bob-pw')), { kind: 'ok', profile: undefined, cached: false });
  t.match(await a.check(basic('bob', 'bob-pw')), { cached: true });
  now += 61_000;
  t.match(await a.check(basic('bob', 'bob-pw')), { cached: false }, 'checked again after the TTL');
  t.equal(Authenticator.fromConfig(idConfig({})), null, 'no authenticating subnet: no authenticator');
});

t.test('config: identity keys validated, errors name the key', async (t) => {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, 'pw'), 'x');
  const load = (identity: unknown) => applyConfig(defaultConfig(), { identity } as never, dir, 'test.json');
  const ok = load({
    dhcpLeases: ['/var/lib/dhcp/dhcpd.leases', 'dnsmasq.leases'],
    subnets: [{ cidr: '10.0.0.0/8', mode: 'authenticate' }],
    ldap: { url: 'ldaps://ent.example:636', bindDn: 'cn=svc', bindPasswordFile: 'pw', baseDn: 'dc=x', groupAttribute: 'memberOf' },
    groupProfiles: [{ group: 'profs', profile: 'profs' }],
  });
  t.equal(ok.identity.dhcpLeases[1], path.join(dir, 'dnsmasq.leases'), 'relative paths resolved against the config file');
  t.equal(ok.identity.ldap?.userFilter, '(&(objectClass=person)(uid={user}))', 'default user filter');
  t.equal(ok.identity.transparent, 'refuse', 'default: refuse on transparent listeners');
  const bad: Array<[unknown, RegExp]> = [
    [{ nope: 1 }, /key "identity\.nope": unknown key/],
    [{ subnets: [{ cidr: '10.0.0.0/8', mode: 'login' }] }, /key "identity\.subnets\[0\]\.mode": expected one of authenticate, workstation/],
    [{ subnets: [{ cidr: '10.0.0.300/8', mode: 'authenticate' }] }, /identity\.subnets\[0\]\.cidr/],
    [{ subnets: [{ cidr: '10.0.0.0/8', mode: 'authenticate' }] }, /identity\.subnets": a subnet must "authenticate" but neither/],
    [{ ldap: { url: 'http://x', bindDn: 'a', bindPasswordFile: 'pw', baseDn: 'b' } }, /identity\.ldap\.url": expected ldap:/],
    [{ ldap: { url: 'ldap://x', bindDn: 'a', bindPasswordFile: 'pw' } }, /identity\.ldap\.baseDn": required/],
    [{ ldap: { url: 'ldap://x', bindDn: 'a', bindPasswordFile: 'pw', baseDn: 'b', userFilter: '(uid=*)' } }, /identity\.ldap\.userFilter": expected \{user\}/],
    [{ ldap: { url: 'ldap://x', bindDn: 'a', bindPasswordFile: 'pw', baseDn: 'b', groupSearch: { baseDn: 'g', filter: '(cn=x)' } } }, /identity\.ldap\.groupSearch\.filter": expected \{dn\} or \{user\}/],
    [{ groupProfiles: [{ group: 'a' }] }, /identity\.groupProfiles\[0\]\.profile/],
    [{ cacheTtlSeconds: -1 }, /identity\.cacheTtlSeconds/],
    [{ transparent: 'allow' }, /identity\.transparent": expected one of refuse, workstation/],
    [{ realm: 'a"b' }, /identity\.realm/],
    [{ htgroups: 'g' }, /identity\.htgroups": needs identity\.htpasswd/],
  ];
  for (const [identity, re] of bad) t.throws(() => load(identity), { message: re, code: 'GARDEFOU_CONFIG' }, JSON.stringify(identity).slice(0, 60));
});

t.test('docs/identity.md: the ENT / Active Directory example is a valid configuration', async (t) => {
  const { PACKAGE_ROOT } = await import('../../src/config');
  const text = fs.readFileSync(path.join(PACKAGE_ROOT, 'docs', 'identity.md'), 'utf8');
  const full = [...text.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]!).filter((b) => b.trimStart().startsWith('{'));
  t.ok(full.length >= 1, 'a full config example');
  for (const b of full) {
    const cfg = applyConfig(defaultConfig(), JSON.parse(b) as never, '/etc/gardefou', '/etc/gardefou/gardefou.json');
    t.equal(cfg.identity.ldap?.groupAttribute, 'memberOf');
    t.ok(cfg.identity.subnets.some((s) => s.mode === 'authenticate'));
  }
});
