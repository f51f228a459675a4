/**
 * Which hosts are intercepted: the policy's `intercept` / `noIntercept` sections, validated at
 * load, and Engine.interceptFor() over real lists compiled from a temp UT1 tree.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { applyConfig, defaultConfig } from '../../src/config';
import { loadPolicyEngine } from '../../src/lists/load';
import { parseConnectAuthority } from '../../src/policy/normalise';
import { NO_INTERCEPT_DEFAULT_FILE, parsePolicy, readDomainsFile } from '../../src/policy/policy-file';
import type { Target } from '../../src/policy/types';
import { defaultCaDir } from '../../src/tls/ca';

function writeLists(root: string): string {
  const lists = path.join(root, 'lists');
  const cat = (name: string, usage: string, domains: string) => {
    fs.mkdirSync(path.join(lists, name), { recursive: true });
    fs.writeFileSync(path.join(lists, name, 'usage'), `${usage}\n`);
    fs.writeFileSync(path.join(lists, name, 'domains'), domains);
  };
  cat('adult', 'black', 'blocked.test\n');
  cat('bank', 'white', 'mybank.test\n');
  cat('socnet', 'black', 'social.test\n');
  cat('health', 'white', 'clinic.test\n');
  return lists;
}

function target(authority: string): Target {
  const tg = parseConnectAuthority(authority);
  if (tg === null) throw new Error(`bad authority ${authority}`);
  return tg;
}

t.test('interceptFor: only what the policy names, noIntercept always wins', async (t) => {
  const dir = t.testdir();
  const lists = writeLists(dir);
  const policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify({
    profiles: { default: { block: ['adult'] }, staff: {} },
    clients: [{ cidr: '10.9.0.0/16', profile: 'staff' }],
    intercept: {
      domains: ['named.test', 'mybank.test', 'impots.gouv.fr', 'blocked.test', 'also-excluded.test'],
      categories: ['socnet'],
      profiles: ['default'],
    },
    noIntercept: { domains: ['also-excluded.test'], categories: ['health'] },
  }));
  const engine = await loadPolicyEngine({ lists, policy: policyFile });
  t.equal(engine.intercepting, true);
  const pupil = { ip: '10.1.2.3' };
  const staff = { ip: '10.9.1.1' };
  const cases: Array<[string, { ip: string }, boolean, string]> = [
    ['named.test:443', pupil, true, 'named domain'],
    ['www.named.test:443', pupil, true, 'subdomain of a named domain'],
    ['notnamed.test:443', pupil, false, 'not named: spliced'],
    ['xnamed.test:443', pupil, false, 'label boundary'],
    ['social.test:443', pupil, true, 'named category'],
    ['cdn.social.test:443', pupil, true, 'subdomain in named category'],
    ['mybank.test:443', pupil, false, 'named domain but in UT1 bank: noIntercept default wins'],
    ['impots.gouv.fr:443', pupil, false, 'shipped no_intercept list wins'],
    ['www.ameli.fr:443', pupil, false, 'not named anyway'],
    ['also-excluded.test:443', pupil, false, 'noIntercept.domains wins'],
    ['clinic.test:443', pupil, false, 'not named'],
    ['blocked.test:443', pupil, false, 'blocked: a block never opens anything'],
    ['named.test:443', staff, false, 'profile not in intercept.profiles'],
  ];
  for (const [auth, client, want, why] of cases) {
    const tg = target(auth);
    const d = engine.decide(tg, client);
    t.equal(engine.interceptFor(tg, client, d), want, `${auth} ${client.ip}: ${why}`);
  }
});

t.test('interceptFor is false when the policy has no intercept section', async (t) => {
  const dir = t.testdir();
  const policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify({ profiles: { default: {} } }));
  const engine = await loadPolicyEngine({ lists: writeLists(dir), policy: policyFile });
  t.equal(engine.intercepting, false);
  const tg = target('social.test:443');
  t.equal(engine.interceptFor(tg, { ip: '10.0.0.1' }, engine.decide(tg, { ip: '10.0.0.1' })), false);
  t.same(engine.spec.intercept.noIntercept.domains, [], 'the shipped list is not even read');
});

t.test('noIntercept.default false drops the shipped defaults; the given entries stay', async (t) => {
  const spec = parsePolicy({ intercept: { domains: ['impots.gouv.fr'] }, noIntercept: { default: false, domains: ['x.test'] } }, 'p.json');
  t.same(spec.intercept.noIntercept.categories, []);
  t.same(spec.intercept.noIntercept.domains.map((e) => e.host), ['x.test']);
  const withDefault = parsePolicy({ intercept: { domains: ['a.test'] }, noIntercept: { domains: ['x.test'] } }, 'p.json');
  t.ok(withDefault.intercept.noIntercept.categories.includes('bank'));
  t.ok(withDefault.intercept.noIntercept.domains.some((e) => e.host === 'ameli.fr'), 'shipped list added to the given entries');
});

t.test('policy validation names the key and the bad value', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ intercept: { domains: ['example.org/path'] } }, /intercept\.domains\[0\]: interception is decided on the host alone/],
    [{ intercept: { domains: [42] } }, /intercept\.domains\[0\]: expected "domain"/],
    [{ intercept: { hosts: [] } }, /intercept\.hosts: unknown key/],
    [{ intercept: { categories: ['bad name!'] } }, /intercept\.categories\[0\]: expected a category name/],
    [{ intercept: { profiles: ['nobody'] } }, /intercept\.profiles\[0\]: no profile named "nobody"/],
    [{ noIntercept: { default: 'yes' } }, /noIntercept\.default: expected true or false/],
    [{ noIntercept: { domains: ['a.test/x'] } }, /noIntercept\.domains\[0\]/],
  ];
  for (const [json, re] of cases) {
    t.throws(() => parsePolicy(json as never, 'p.json'), { code: 'GARDEFOU_CONFIG', message: re }, JSON.stringify(json));
  }
});

t.test('the shipped no_intercept list is valid UT1 domains format and covers the defaults', async (t) => {
  const entries = readDomainsFile(NO_INTERCEPT_DEFAULT_FILE, 'shipped');
  const hosts = new Set(entries.map((e) => e.host));
  for (const h of ['impots.gouv.fr', 'ameli.fr', 'service-public.fr', 'franceconnect.gouv.fr', 'windowsupdate.com', 'update.microsoft.com', 'swcdn.apple.com']) {
    t.ok(hosts.has(h), h);
  }
  const dir = t.testdir({ bad: 'ok.test\nnot a domain\n' });
  t.throws(() => readDomainsFile(path.join(dir, 'bad'), 'test'), { message: /line 2: expected a domain/ });
});

t.test('config keys intercept.*: defaults, paths resolved, errors name the key', async (t) => {
  const dir = t.testdir();
  const d = applyConfig(defaultConfig(), {}, dir, 'c.json');
  t.same(d.intercept, { caDir: null, upstreamCAs: [], maxCertificates: 1000 });
  t.equal(defaultCaDir(d), path.join(path.dirname(d.journal.path), 'ca'), 'CA beside the journal by default');
  const c = applyConfig(defaultConfig(), { intercept: { caDir: 'ca', upstreamCAs: ['roots/a.pem'], maxCertificates: 50 } }, dir, 'c.json');
  t.same(c.intercept, { caDir: path.join(dir, 'ca'), upstreamCAs: [path.join(dir, 'roots', 'a.pem')], maxCertificates: 50 });
  t.equal(defaultCaDir(c), path.join(dir, 'ca'), '`gardefou ca` and serve use intercept.caDir');
  const cases: Array<[unknown, RegExp]> = [
    [{ intercept: { caDir: 3 } }, /key "intercept\.caDir": expected a non-empty string/],
    [{ intercept: { maxCertificates: 0 } }, /key "intercept\.maxCertificates": expected an integer from 1/],
    [{ intercept: { upstreamCAs: 'a.pem' } }, /key "intercept\.upstreamCAs": expected a list/],
    [{ intercept: { verify: false } }, /key "intercept\.verify": unknown key/],
  ];
  for (const [json, re] of cases) {
    t.throws(() => applyConfig(defaultConfig(), json as never, dir, 'c.json'), { code: 'GARDEFOU_CONFIG', message: re }, JSON.stringify(json));
  }
});
