/**
 * LDAP authentication against a REAL slapd (test/auth/slapd.ts): search-then-bind with a service
 * account, bad password, unknown user, filter injection, group -> profile, and the directory
 * going down (fail closed: 503, never a pass) through the real `gardefou serve`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import type { IdentityConfig, LdapConfig } from '../../src/config';
import { defaultConfig } from '../../src/config';
import { Authenticator } from '../../src/identity/authenticator';
import { escapeFilterValue, fillFilter, firstRdnValue, LdapBackend } from '../../src/identity/ldap';
import { journalRows, startGardefou, tempDir, testConfig, waitFor, writeHosts } from '../helpers/gardefou';
import { startOrigin } from '../helpers/net';
import { basic, get } from './helpers';
import { SERVICE_DN, SERVICE_PW, slapdMissing, startSlapd, SUFFIX } from './slapd';

t.test('filter escaping (RFC 4515) and DN names', async (t) => {
  t.equal(escapeFilterValue('*)(uid=*'), '\\2a\\29\\28uid=\\2a');
  t.equal(escapeFilterValue('a\\b\0c'), 'a\\5cb\\00c');
  t.equal(escapeFilterValue('élève'), 'élève', 'UTF-8 passes as is');
  t.equal(fillFilter('(&(uid={user})(member={dn}))', { user: 'x)(|(uid=*', dn: 'uid=a,dc=b' }), '(&(uid=x\\29\\28|\\28uid=\\2a)(member=uid=a,dc=b))');
  t.equal(firstRdnValue('cn=Profs du collège,ou=groups,dc=x'), 'Profs du collège');
  t.equal(firstRdnValue('CN=a\\2cb,OU=x'), 'a,b');
  t.equal(firstRdnValue('profs'), null);
});

const missing = slapdMissing();
t.test('a real slapd', { skip: missing ?? false }, async (t) => {
  const slapd = await startSlapd();
  t.teardown(() => slapd.stop());
  const dir = tempDir();
  const pwFile = path.join(dir, 'ldap-bind.pw');
  fs.writeFileSync(pwFile, `${SERVICE_PW}\n`, { mode: 0o600 });
  const ldap: LdapConfig = {
    url: slapd.url,
    bindDn: SERVICE_DN,
    bindPasswordFile: pwFile,
    baseDn: `ou=people,${SUFFIX}`,
    userFilter: '(&(objectClass=inetOrgPerson)(uid={user}))',
    groupAttribute: null,
    groupSearch: { baseDn: `ou=groups,${SUFFIX}`, filter: '(&(objectClass=groupOfNames)(member={dn}))', nameAttribute: 'cn' },
    caFile: null,
    timeoutMs: 3000,
  };

  await t.test('search, then bind as the user', async (t) => {
    const b = new LdapBackend(ldap);
    t.same(await b.login('alice', 'alice-pw'), { kind: 'ok', groups: [`cn=profs,ou=groups,${SUFFIX}`, 'profs'] });
    t.same(await b.login('bob', 'bob-pw'), { kind: 'ok', groups: [`cn=eleves,ou=groups,${SUFFIX}`, 'eleves'] });
    t.same(await b.login('carol', 'carol-pw'), { kind: 'ok', groups: [] });
    t.same(await b.login('alice', 'wrong'), { kind: 'bad-password' });
    t.same(await b.login('alice', ''), { kind: 'bad-password' }, 'empty password never binds (would be anonymous)');
    t.same(await b.login('nobody', 'x'), { kind: 'unknown-user' });
    // injection: without escaping, "*)(uid=*" would match every user and alice's password would do
    t.same(await b.login('*)(uid=*', 'alice-pw'), { kind: 'unknown-user' }, 'filter injection finds nobody');
    t.same(await b.login('*', 'alice-pw'), { kind: 'unknown-user' }, 'a lone * is a literal');
    t.same(await b.login('ali*', 'alice-pw'), { kind: 'unknown-user' }, 'no wildcard search');
    // groups from an attribute of the user entry (AD's memberOf; here departmentNumber)
    const byAttr = new LdapBackend({ ...ldap, groupAttribute: 'departmentNumber', groupSearch: null });
    t.same(await byAttr.login('alice', 'alice-pw'), { kind: 'ok', groups: ['profs'] });
    // a wrong service password: the directory "answers" but we cannot search: unavailable, not a no
    fs.writeFileSync(path.join(dir, 'bad.pw'), 'nope\n');
    const badSvc = new LdapBackend({ ...ldap, bindPasswordFile: path.join(dir, 'bad.pw') });
    t.match(await badSvc.login('alice', 'alice-pw'), { kind: 'unavailable', detail: /Invalid Credentials|49/i });
  });

  await t.test('groups mapped to profiles, first row wins; cache', async (t) => {
    const cfg: IdentityConfig = {
      ...defaultConfig().identity,
      subnets: [{ cidr: '10.0.0.0/8', mode: 'authenticate' }],
      ldap,
      groupProfiles: [{ group: 'CN=ELEVES,OU=GROUPS,DC=ECOLE,DC=TEST', profile: 'eleves' }, { group: 'profs', profile: 'profs' }, { group: 'eleves', profile: 'never-reached' }],
    };
    const a = Authenticator.fromConfig(cfg)!;
    t.ok(a.requiredFor('10.1.2.3'));
    t.notOk(a.requiredFor('192.168.1.1'));
    t.match(await a.check(basic('alice', 'alice-pw')), { kind: 'ok', user: 'alice', profile: 'profs', cached: false });
    t.match(await a.check(basic('alice', 'alice-pw')), { kind: 'ok', profile: 'profs', cached: true });
    t.match(await a.check(basic('bob', 'bob-pw')), { kind: 'ok', profile: 'eleves' }, 'full DN, any case');
    t.match(await a.check(basic('carol', 'carol-pw')), { kind: 'ok', profile: undefined }, 'no group: no profile');
    t.match(await a.check(basic('*)(uid=*', 'alice-pw')), { kind: 'failed', why: 'unknown-user' });
  });

  await t.test('through the real proxy; slapd down: 503, fail closed', async (t) => {
    const origin = await startOrigin();
    t.teardown(() => origin.close());
    fs.writeFileSync(path.join(dir, 'policy.json'), JSON.stringify({ profiles: { eleves: { block: ['gambling'] }, profs: { block: [] } }, defaultProfile: 'eleves' }));
    const g = await startGardefou(testConfig(dir, {
      hosts: writeHosts(dir, ['allowed.test', 'casino.test']),
      policy: path.join(dir, 'policy.json'),
      workers: 1, // the credential cache is per process: one, so the cached login below is seen
      identity: {
        subnets: [{ cidr: '127.0.0.0/8', mode: 'authenticate' }],
        ldap: { ...ldap, bindPasswordFile: 'ldap-bind.pw' },
        groupProfiles: [{ group: 'profs', profile: 'profs' }],
      },
    }), dir);
    t.teardown(() => g.stop());
    const casino = `http://casino.test:${origin.port}/`;
    t.equal((await get(g.port, casino)).status, 407);
    t.equal((await get(g.port, casino, { auth: basic('alice', 'wrong') })).status, 407);
    t.equal((await get(g.port, casino, { auth: basic('*)(uid=*', 'alice-pw') })).status, 407, 'injection: 407');
    t.equal((await get(g.port, casino, { auth: basic('alice', 'alice-pw') })).status, 200, 'alice (profs) may');
    t.equal((await get(g.port, casino, { auth: basic('bob', 'bob-pw') })).status, 403, 'bob (eleves) may not');

    await slapd.stop();
    const down = await get(g.port, casino, { auth: basic('carol', 'carol-pw') });
    t.equal(down.status, 503, 'directory down: 503, not a pass and not a 407');
    t.notOk(down.headers['proxy-authenticate'], 'no challenge: the password is not the problem');
    t.match(down.text, /annuaire/);
    t.equal((await get(g.port, casino, { auth: basic('alice', 'alice-pw') })).status, 200, 'a cached login still works within its TTL');
    t.equal((await get(g.port, casino, { auth: basic('alice', 'other') })).status, 503, 'an uncached one does not');

    const rows = await waitFor(() => {
      const r = journalRows(g.journalPath);
      return r.length >= 8 && r.every((x) => x['end_ms'] !== null) ? r : undefined;
    }, 'journal rows');
    t.same(rows.map((r) => [r['user'], r['decision'], r['reason'], r['profile']]), [
      [null, 'refused', 'auth-required', null],
      [null, 'refused', 'auth-failed', null],
      [null, 'refused', 'auth-failed', null],
      ['alice', 'allow', 'not-listed', 'profs'],
      ['bob', 'block', 'category', 'eleves'],
      [null, 'refused', 'auth-unavailable', null],
      ['alice', 'allow', 'not-listed', 'profs'],
      [null, 'refused', 'auth-unavailable', null],
    ]);
    t.notOk(JSON.stringify(g.logs).includes('alice-pw'), 'no password in the logs');
    t.ok(g.logs.some((l) => l['msg'] === 'proxy authentication: no account source answers; refusing' && l['user'] === 'carol'));
  });
});
