/**
 * The engine over the fixture UT1 tree (test/fixtures/ut1-mini): default policy, layers and
 * their order, whitelist-only, schedules in Europe/Paris, client mapping, policy validation.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t, { type Test } from 'tap';
import { PACKAGE_ROOT } from '../../src/config';
import { loadLists, loadPolicyEngine, LoadedLists } from '../../src/lists/load';
import { createPolicyEngine, Engine } from '../../src/policy/engine';
import { parseAbsoluteUrl, parseConnectAuthority } from '../../src/policy/normalise';
import type { Decision, Target } from '../../src/policy/types';

const MINI = path.join(PACKAGE_ROOT, 'test', 'fixtures', 'ut1-mini');
const RULES = path.join(PACKAGE_ROOT, 'rules');
const REAL_UT1 = path.join(PACKAGE_ROOT, '..', 'shared', 'ut1', 'blacklists');

let lists: LoadedLists;
let dir: string;

t.before(async () => {
  lists = await loadLists(MINI);
  dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'gardefou-policy-'));
});
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

let n = 0;
function engine(policy: unknown): Engine {
  const file = path.join(dir, `policy-${n++}.json`);
  fs.writeFileSync(file, JSON.stringify(policy));
  return createPolicyEngine(lists, file, 'serial-7');
}

function url(u: string): Target {
  const target = u.includes('://') ? parseAbsoluteUrl(u) : parseConnectAuthority(u);
  if (target === null) throw new Error(`bad test url ${u}`);
  return target;
}

type Want = Partial<Decision>;

function check(t: Test, e: Engine, rows: Array<[string, string, Want, string?]>): void {
  for (const [u, ip, want, at] of rows) {
    const d = e.decide(url(u), { ip }, at === undefined ? undefined : new Date(at));
    t.match(d, want, `${u} from ${ip}${at ? ` at ${at}` : ''} -> ${want.action} ${want.reason}`);
  }
}

t.test('default policy ({}): every black-only category, nothing else', async (t) => {
  const e = engine({});
  check(t, e, [
    ['http://blocked.test/', '10.0.0.1', { action: 'block', reason: 'category', category: 'adult', categoryFr: 'Adulte (X)', categoryEn: 'Adult (X)', match: 'blocked.test', matchKind: 'domain', layer: 'lists', profile: 'default', listSerial: 'serial-7' }],
    ['http://www.img.blocked-two.test/', '10.0.0.1', { action: 'block', match: 'img.blocked-two.test' }],
    ['blocked.test:443', '10.0.0.1', { action: 'block', category: 'adult' }],
    ['http://xblocked.test/', '10.0.0.1', { action: 'allow', reason: 'not-listed', layer: 'default', category: null }],
    ['http://blocked.test.example/', '10.0.0.1', { action: 'allow' }],
    ['http://casino.test/', '10.0.0.1', { action: 'block', category: 'gambling', categoryFr: "Jeux d'argent" }],
    ['http://deep.poker.casino2.test/', '10.0.0.1', { action: 'block', match: 'poker.casino2.test' }],
    ['http://casino2.test/', '10.0.0.1', { action: 'allow' }],
    ['http://mixed-adult.test/', '10.0.0.1', { action: 'block', category: 'mixed_adult', categoryFr: null }],
    ['http://split-file.test/', '10.0.0.1', { action: 'block', category: 'mixed_adult' }],
    // white or black+white usage: never blocked unless a profile names them
    ['http://bank.test/', '10.0.0.1', { action: 'allow' }],
    ['http://chat.test/', '10.0.0.1', { action: 'allow' }],
    ['http://kids.test/', '10.0.0.1', { action: 'allow' }],
    // url entries: host + path prefix on a segment boundary
    ['http://mixed.test/forbidden', '10.0.0.1', { action: 'block', matchKind: 'url', match: 'mixed.test/forbidden' }],
    ['http://mixed.test/forbidden/', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://mixed.test/Forbidden?x=1', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://www.mixed.test/forbidden/deeper', '10.0.0.1', { action: 'block', matchKind: 'url', match: 'mixed.test/forbidden' }],
    ['http://mixed.test/%66orbidden', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://mixed.test/ok/../forbidden', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://mixed.test/forbiddenx', '10.0.0.1', { action: 'allow' }],
    ['http://mixed.test/forbidden.html', '10.0.0.1', { action: 'allow' }],
    ['http://mixed.test/', '10.0.0.1', { action: 'allow' }],
    ['mixed.test:443', '10.0.0.1', { action: 'allow' }],
    ['http://query.test/page.php?id=3', '10.0.0.1', { action: 'block', match: 'query.test/page.php?id=3' }],
    ['http://query.test/page.php?id=3&more', '10.0.0.1', { action: 'block' }],
    ['http://query.test/page.php?id=30', '10.0.0.1', { action: 'allow' }],
    ['http://esc.test/onionimp.cgi?x=1', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://upper.test/path/deep/er', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://scheme.test/p', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://whole.test/anything', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['whole.test:443', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    ['http://198.51.100.9/bad/path', '10.0.0.1', { action: 'block', matchKind: 'url' }],
    // IPv4 literals: exact, every form
    ['http://203.0.113.7/', '10.0.0.1', { action: 'block', match: '203.0.113.7' }],
    ['http://3405803783/', '10.0.0.1', { action: 'block', match: '203.0.113.7' }],
    ['http://0313.0.0161.7/', '10.0.0.1', { action: 'block' }],
    ['[::ffff:203.0.113.7]:443', '10.0.0.1', { action: 'block' }],
    ['http://203.0.113.8/', '10.0.0.1', { action: 'block' }],
    // list quirks: leading dot, spaces, trailing comment, trailing dot, "*.", IDN
    ['http://leading-dot.test/', '10.0.0.1', { action: 'block' }],
    ['http://spaced.test/', '10.0.0.1', { action: 'block' }],
    ['http://with-comment.test/', '10.0.0.1', { action: 'block' }],
    ['http://trailing-dot.test/', '10.0.0.1', { action: 'block' }],
    ['http://a.wild.test/', '10.0.0.1', { action: 'block' }],
    ['http://bücher-x.test/', '10.0.0.1', { action: 'block', match: 'xn--bcher-x-n2a.test' }],
    ['http://xn--bcher-x-n2a.test/', '10.0.0.1', { action: 'block' }],
    // expressions, tested against host + path
    ['http://www.sexe12.test/', '10.0.0.1', { action: 'block', matchKind: 'expression', match: 'sexe[0-9]+\\.' }],
    ['http://192.0.2.1/search?q=42', '10.0.0.1', { action: 'block', matchKind: 'expression' }],
    ['http://192.0.2.1/search?q=42x', '10.0.0.1', { action: 'allow' }],
    ['http://example.test/', '10.0.0.1', { action: 'allow' }],
  ]);
});

t.test('mandatory layer, local entries, and their order', async (t) => {
  const e = engine({
    dasen: { block: ['agressif'], deny: ['evil.test', 'cdn.test/evil'], localMayAllow: ['gambling'] },
    local: { allow: ['shared.test', 'casino.test', 'blocked.test', 'evil.test'], deny: ['bank.test', 'good.test/private'] },
    profiles: { default: { blockBlackUsage: true } },
  });
  check(t, e, [
    // DASEN entries and categories: no local allow lifts them
    ['http://evil.test/', '10.0.0.1', { action: 'block', reason: 'mandatory', layer: 'dasen', match: 'evil.test', matchKind: 'rule' }],
    ['http://cdn.test/evil/x', '10.0.0.1', { action: 'block', reason: 'mandatory', match: 'cdn.test/evil' }],
    ['http://cdn.test/fine', '10.0.0.1', { action: 'allow' }],
    ['http://hate.test/', '10.0.0.1', { action: 'block', reason: 'mandatory', layer: 'dasen', category: 'agressif' }],
    ['http://shared.test/', '10.0.0.1', { action: 'block', reason: 'mandatory', category: 'agressif' }],
    // local deny
    ['http://bank.test/', '10.0.0.1', { action: 'block', reason: 'local-deny', layer: 'local', match: 'bank.test', matchKind: 'rule' }],
    ['http://good.test/private/x', '10.0.0.1', { action: 'block', reason: 'local-deny', match: 'good.test/private' }],
    ['http://good.test/public', '10.0.0.1', { action: 'allow' }],
    // local allow lifts only what dasen.localMayAllow lists
    ['http://casino.test/', '10.0.0.1', { action: 'allow', reason: 'local-allow', layer: 'local', match: 'casino.test' }],
    ['http://blocked.test/', '10.0.0.1', { action: 'block', reason: 'category', category: 'adult' }],
  ]);
});

t.test('localMayAllow "*" (or absent) lets local allow entries lift any non-mandatory category', async (t) => {
  const e = engine({ dasen: { localMayAllow: '*' }, local: { allow: ['blocked.test'] } });
  check(t, e, [['http://www.blocked.test/', '10.0.0.1', { action: 'allow', reason: 'local-allow', match: 'blocked.test' }]]);
  const e2 = engine({ dasen: { localMayDeny: false }, local: { deny: ['example.test'] } });
  check(t, e2, [['http://example.test/', '10.0.0.1', { action: 'allow', reason: 'not-listed' }]]);
});

t.test('profiles, client mapping, whitelist-only, aliases in policies', async (t) => {
  const e = engine({
    profiles: {
      maternelle: { whitelistOnly: true, allowCategories: ['child'], allow: ['school.test'] },
      ecole: { block: ['porn', 'aggressive', 'bank', 'chat'] },
      adults: { block: [] },
    },
    clients: [
      { cidr: '10.1.0.0/16', profile: 'maternelle' },
      { cidr: '10.2.0.0/16', profile: 'ecole' },
      { cidr: '10.2.3.0/24', profile: 'adults' },
      { cidr: 'fd00::/8', profile: 'ecole' },
    ],
    defaultProfile: 'adults',
  });
  check(t, e, [
    ['http://kids.test/', '10.1.2.3', { action: 'allow', reason: 'allowed-category', category: 'child', layer: 'lists', profile: 'maternelle' }],
    ['http://school.test/', '10.1.2.3', { action: 'allow', reason: 'local-allow', profile: 'maternelle' }],
    ['http://example.test/', '10.1.2.3', { action: 'block', reason: 'not-whitelisted', layer: 'default', profile: 'maternelle' }],
    ['example.test:443', '::ffff:10.1.2.3', { action: 'block', reason: 'not-whitelisted', profile: 'maternelle' }],
    // aliases: porn = adult (file alias), aggressive = agressif (symlink)
    ['http://blocked.test/', '10.2.0.9', { action: 'block', category: 'adult', profile: 'ecole' }],
    ['http://hate.test/', '10.2.0.9', { action: 'block', category: 'agressif' }],
    // white-usage categories are blocked when a profile names them
    ['http://bank.test/', '10.2.0.9', { action: 'block', category: 'bank' }],
    ['http://chat.test/', 'fd00::5', { action: 'block', category: 'chat', profile: 'ecole' }],
    ['http://casino.test/', '10.2.0.9', { action: 'allow' }],
    // first matching rule wins (10.2.0.0/16 before 10.2.3.0/24)
    ['http://blocked.test/', '10.2.3.4', { profile: 'ecole' }],
    ['http://blocked.test/', '192.168.1.1', { action: 'allow', profile: 'adults' }],
  ]);
  t.same(e.profileNames().sort(), ['adults', 'ecole', 'maternelle']);
});

t.test('expressions are tested only for the categories that can change the answer', async (t) => {
  const e = engine({ profiles: { p: { block: ['gambling'] } } });
  check(t, e, [['http://www.sexe12.test/', '10.0.0.1', { action: 'allow', reason: 'not-listed' }]]);
  t.same(e.listedCategories(url('http://www.sexe12.test/')), ['adult'], 'check still explains where it is listed');
});

t.test('schedules in Europe/Paris (summer and winter time)', async (t) => {
  const e = engine({
    schedules: { ecole: [{ days: ['mon', 'tue', 'thu', 'fri'], from: '08:00', to: '17:00' }, { days: ['wed'], from: '08:00', to: '12:00' }] },
    profiles: {
      eleves: { block: ['gambling'], schedule: 'ecole', outside: 'block-all' },
      internat: { block: ['gambling'], schedule: 'ecole', outside: 'soir' },
      soir: { block: ['gambling', 'chat'] },
    },
    clients: [{ cidr: '10.1.0.0/16', profile: 'eleves' }, { cidr: '10.2.0.0/16', profile: 'internat' }],
    defaultProfile: 'soir',
  });
  check(t, e, [
    // Monday 7 September 2026: Paris is UTC+2
    ['http://example.test/', '10.1.0.1', { action: 'allow', profile: 'eleves' }, '2026-09-07T06:00:00Z'],
    ['http://example.test/', '10.1.0.1', { action: 'block', reason: 'schedule', layer: 'default' }, '2026-09-07T05:59:00Z'],
    ['http://example.test/', '10.1.0.1', { action: 'block', reason: 'schedule' }, '2026-09-07T15:00:00Z'],
    ['http://example.test/', '10.1.0.1', { action: 'allow' }, '2026-09-07T14:59:59Z'],
    // Wednesday afternoon, Saturday
    ['http://example.test/', '10.1.0.1', { action: 'block', reason: 'schedule' }, '2026-09-09T10:30:00Z'],
    ['http://example.test/', '10.1.0.1', { action: 'block', reason: 'schedule' }, '2026-09-12T08:00:00Z'],
    // Monday 7 December 2026: Paris is UTC+1
    ['http://example.test/', '10.1.0.1', { action: 'allow' }, '2026-12-07T07:00:00Z'],
    ['http://example.test/', '10.1.0.1', { action: 'block', reason: 'schedule' }, '2026-12-07T06:59:00Z'],
    // outside hours, another profile applies
    ['http://chat.test/', '10.2.0.1', { action: 'allow', profile: 'internat' }, '2026-09-07T08:00:00Z'],
    ['http://chat.test/', '10.2.0.1', { action: 'block', profile: 'soir', category: 'chat' }, '2026-09-07T19:00:00Z'],
  ]);
});

t.test('bad hosts are refused, never allowed', async (t) => {
  const e = engine({});
  for (const host of ['', 'a b', 'Example.com', 'a..b', '/x']) {
    t.match(e.decide({ kind: 'connect', host, port: 443, path: '' }, { ip: '10.0.0.1' }), { action: 'block', reason: 'bad-host' }, JSON.stringify(host));
  }
});

t.test('the common allow answer is shared and frozen (no allocation per request)', async (t) => {
  const e = engine({});
  const a = e.decide(url('http://example.test/'), { ip: '10.0.0.1' });
  const b = e.decide(url('http://other.test/x'), { ip: '10.0.0.2' });
  t.equal(a, b);
  t.ok(Object.isFrozen(a));
});

t.test('policy errors name the key and the bad value', async (t) => {
  const rows: Array<[unknown, RegExp]> = [
    [[1, 2], /\(top\): expected an object/],
    [{ profiles: { p: { blok: [] } } }, /profiles\.p\.blok: unknown key/],
    [{ profiles: { p: { block: 'adult' } } }, /profiles\.p\.block: expected a list, got "adult"/],
    [{ profiles: { p: { block: [42] } } }, /profiles\.p\.block\[0\]: expected a category name, got 42/],
    [{ profiles: { p: { schedule: 'nope', outside: 'block-all' } } }, /profiles\.p\.schedule: no schedule named "nope"/],
    [{ schedules: { s: [{ days: ['mon'], from: '08:00', to: '25:00' }] } }, /schedules\.s\[0\]\.to: expected HH:MM, got "25:00"/],
    [{ schedules: { s: [{ days: ['lundi'], from: '08:00', to: '09:00' }] } }, /schedules\.s\[0\]\.days\[0\]: expected one of mon/],
    [{ schedules: { s: [{ days: ['mon'], from: '10:00', to: '09:00' }] } }, /schedules\.s\[0\]\.to: must be later than from/],
    [{ clients: [{ cidr: '10.0.0.0/33', profile: 'default' }] }, /clients\[0\]\.cidr: .*bad prefix length/],
    [{ clients: [{ cidr: '10.0.0.0/8', profile: 'ghost' }] }, /clients\[0\]\.profile: no profile named "ghost"/],
    [{ profiles: { a: {}, b: {} } }, /defaultProfile: required/],
    [{ defaultProfile: 'x' }, /defaultProfile: no profile named "x"/],
    [{ local: { allow: ['bad host'] } }, /local\.allow\[0\]: expected "domain" or "domain\/path", got "bad host"/],
    [{ dasen: { deny: ['a..b'] } }, /dasen\.deny\[0\]: expected "domain"/],
    [{ timezone: 'Mars/Olympus' }, /timezone: unknown time zone/],
    [{ version: 2 }, /version: expected 1, got 2/],
    [{ profiles: { p: { outside: 'block-all' } } }, /profiles\.p\.outside: only meaningful with "schedule"/],
  ];
  for (const [policy, re] of rows) {
    t.throws(() => engine(policy), { code: 'GARDEFOU_CONFIG', message: re }, re.source);
  }
  t.throws(() => createPolicyEngine(lists, path.join(dir, 'missing.json')), { code: 'GARDEFOU_CONFIG', message: /reading policy .*missing\.json/ });
  const broken = path.join(dir, 'broken.json');
  fs.writeFileSync(broken, '{ "profiles": ');
  t.throws(() => createPolicyEngine(lists, broken), { code: 'GARDEFOU_CONFIG', message: /parsing policy/ });
});

t.test('localFile: school entries beside the DASEN policy', async (t) => {
  fs.writeFileSync(path.join(dir, 'school.json'), JSON.stringify({ allow: ['casino.test'], deny: ['example.test'] }));
  const e = engine({ localFile: 'school.json' });
  check(t, e, [
    ['http://casino.test/', '10.0.0.1', { action: 'allow', reason: 'local-allow' }],
    ['http://example.test/', '10.0.0.1', { action: 'block', reason: 'local-deny' }],
  ]);
  fs.writeFileSync(path.join(dir, 'school-bad.json'), JSON.stringify({ allow: [7] }));
  t.throws(() => engine({ localFile: 'school-bad.json' }), { message: /school-bad\.json: allow\[0\]: expected "domain"/ });
  t.doesNotThrow(() => engine({ localFile: 'absent.json' }), 'an absent local file is no local entry');
});

t.test('categories the lists lack are reported, not fatal', async (t) => {
  const e = engine({ profiles: { p: { block: ['adult', 'no_such_category'] } } });
  t.match(e.warnings, [/1 categories the lists do not have.*no_such_category/]);
});

t.test('loadPolicyEngine over the shipped rules', async (t) => {
  const e = await loadPolicyEngine({ lists: path.join(RULES, 'lists'), policy: path.join(RULES, 'policy.json'), listSerial: null });
  check(t, e, [
    ['dns.google:443', '127.0.0.1', { action: 'block', category: 'doh', categoryFr: 'DNS sur HTTPS', profile: 'default' }],
    ['http://1.1.1.1/dns-query', '127.0.0.1', { action: 'block', category: 'doh' }],
    ['http://www.croxyproxy.com/', '127.0.0.1', { action: 'block', category: 'redirector' }],
    ['http://www.example.org/', '127.0.0.1', { action: 'allow', reason: 'not-listed' }],
    ['http://www.lumni.fr/', '10.0.1.20', { action: 'allow', profile: 'maternelle', reason: 'allowed-category' }],
    ['http://www.example.org/', '10.0.1.20', { action: 'block', profile: 'maternelle', reason: 'not-whitelisted' }],
    ['nordvpn.com:443', '10.0.2.20', { action: 'block', profile: 'elementaire', category: 'vpn' }],
  ]);
  t.equal(e.describe().source, path.join(RULES, 'lists'));
});

t.test('real UT1 lists', { skip: fs.existsSync(REAL_UT1) ? false : '../shared/ut1 not present' }, async (t) => {
  const e = await loadPolicyEngine({ lists: REAL_UT1, policy: path.join(RULES, 'policy.json') });
  t.ok(e.describe().domains > 300000, `${e.describe().domains} domains`);
  check(t, e, [
    ['http://facebook.com/', '10.0.3.4', { action: 'block', category: 'social_networks', profile: 'college' }, '2026-09-07T08:00:00Z'],
    ['http://facebook.com/', '10.0.3.4', { action: 'allow', profile: 'college-hors-temps' }, '2026-09-07T20:00:00Z'],
    ['dns.google:443', '10.0.3.4', { action: 'block', category: 'doh' }, '2026-09-07T08:00:00Z'],
  ]);
});

t.test('ipLiterals: an address is decided like a name, or blocked when the profile takes names only', async (t) => {
  const e = engine({
    clients: [{ cidr: '10.9.0.0/16', profile: 'names' }],
    local: { allow: ['192.0.2.80'] },
    profiles: { names: { ipLiterals: 'block', block: ['gambling'] }, default: {} },
  });
  check(t, e, [
    // default profile: addresses are looked up like names (the lists may hold them)
    ['203.0.113.7:443', '10.1.0.1', { action: 'allow', reason: 'not-listed' }],
    ['http://203.0.113.7/x', '10.1.0.1', { action: 'allow', reason: 'not-listed' }],
    // names only: IPv4 and IPv6 literals blocked, for CONNECT and plain HTTP, names still decided
    ['203.0.113.7:443', '10.9.0.1', { action: 'block', reason: 'ip-literal', profile: 'names', category: null }],
    ['[2001:db8::7]:443', '10.9.0.1', { action: 'block', reason: 'ip-literal' }],
    ['http://203.0.113.7/x', '10.9.0.1', { action: 'block', reason: 'ip-literal' }],
    ['example.org:443', '10.9.0.1', { action: 'allow', reason: 'not-listed' }],
    ['casino.test:443', '10.9.0.1', { action: 'block', reason: 'category', category: 'gambling' }],
    // the school may name an address it trusts
    ['192.0.2.80:443', '10.9.0.1', { action: 'allow', reason: 'local-allow' }],
  ]);
  t.throws(() => engine({ profiles: { p: { ipLiterals: 'names' } } }), /profiles\.p\.ipLiterals: expected "decide" or "block", got "names"/, 'a bad value names the key');
});
