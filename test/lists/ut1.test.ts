/**
 * UT1 reader and compiler: the fixture tree with every quirk (test/fixtures/ut1-mini), the same
 * tree as a real tar.gz (with and without a root folder), the atomic index file, the `lists`
 * and `check` commands, and the real UT1 lists when ../shared/ut1 is present.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tar from 'tar';
import t from 'tap';
import { PACKAGE_ROOT } from '../../src/config';
import { classifyLists, compileLists, compileToBuffer, INDEX_FILE_NAME } from '../../src/lists/compile';
import { posixToJs } from '../../src/lists/ut1';
import { loadLists } from '../../src/lists/load';
import { parseIndex } from '../../src/policy/index-format';

const MINI = path.join(PACKAGE_ROOT, 'test', 'fixtures', 'ut1-mini');
const REAL_UT1 = path.join(PACKAGE_ROOT, '..', 'shared', 'ut1', 'blacklists');
const BIN = path.join(PACKAGE_ROOT, 'bin', 'gardefou');
const BUILD_ROOT = path.resolve(__dirname, '..', '..');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-lists-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function summary(buf: Buffer) {
  const h = parseIndex(buf, 'x').header;
  return {
    categories: h.categories.map((c) => ({ ...c })),
    aliases: h.aliases,
    domains: h.domains.count,
    urls: h.urls.entries,
    expressions: h.expressions,
    malformed: h.malformed,
  };
}

t.test('fixture tree: every quirk read, bad lines reported with file and line', async (t) => {
  const { buffer, report } = await compileToBuffer(MINI);
  const h = parseIndex(buffer, 'mini').header;
  const cat = (n: string) => h.categories.find((c) => c.name === n)!;
  t.same(h.categories.map((c) => c.name), ['adult', 'agressif', 'bank', 'chat', 'child', 'gambling', 'mixed_adult']);
  t.same(h.aliases, { aggressive: 'agressif', porn: 'adult' }, 'symlink alias and plain-file alias');
  t.same(cat('adult').aliases, ['porn']);
  t.same(cat('agressif').aliases, ['aggressive'], 'alias from usage and from the symlink counted once');
  t.same(cat('adult').usage, ['black']);
  t.same(cat('chat').usage, ['black', 'white']);
  t.same(cat('bank').usage, ['white']);
  t.same(cat('mixed_adult').usage, ['black'], 'upper case and a comment in usage');
  t.match(cat('adult'), { fr: 'Adulte (X)', en: 'Adult (X)', descFr: 'Sites pour adultes.', descEn: 'Adult sites.' });
  t.match(cat('gambling'), { fr: "Jeux d'argent", en: 'Gambling' });
  t.match(cat('bank'), { fr: null, en: null });
  // adult/domains: 11 good lines (CRLF, upper case, leading dot, spaces, IPv4 in two forms, IDN,
  // trailing comment, trailing dot, "*.", shared) and 3 bad ones
  t.equal(cat('adult').domains, 11);
  t.equal(cat('adult').urls, 7);
  t.equal(cat('adult').expressions, 2);
  t.equal(cat('gambling').urls, 0, 'empty urls file');
  t.equal(cat('gambling').expressions, 0, 'empty expressions file');
  t.equal(h.domains.count, 11 + 1 + 1 + 1 + 2 + 2 + 2, 'shared.test (adult + agressif) counted once');
  t.equal(cat('mixed_adult').domains, 2, 'domains and domains.1 (lists split upstream) both read');
  t.same(h.malformed.first.map((m) => [m.file, m.line, m.reason]), [
    ['adult/domains', 10, 'several fields on one line'],
    ['adult/domains', 11, 'not a valid host name'],
    ['adult/domains', 16, 'not a valid host name'],
    ['adult/expressions', 3, 'not a usable regular expression'],
    ['adult/expressions', 4, 'not a usable regular expression'],
  ]);
  t.equal(report.malformed.count, 5);
  // adult: 13 domain lines (the several-fields line is not an entry), 7 urls, 4 expressions
  t.equal(report.lines, 13 + 7 + 4 + 2 + 2 + 1 + 1 + 2 + 1 + 1, 'lines with content, comments and blanks excluded');
});

t.test('tar.gz: same index as the folder (symlinks kept), with or without a root folder', async (t) => {
  const fromDir = summary((await compileToBuffer(MINI)).buffer);
  const flat = path.join(dir, 'flat.tar.gz');
  await tar.c({ gzip: true, file: flat, cwd: MINI, portable: true }, fs.readdirSync(MINI));
  t.same(summary((await compileToBuffer(flat)).buffer), fromDir, 'flat tarball');
  // upstream layout: blacklists/<category>/...
  const staging = path.join(dir, 'staging');
  fs.mkdirSync(staging);
  fs.cpSync(MINI, path.join(staging, 'blacklists'), { recursive: true, verbatimSymlinks: true });
  t.ok(fs.lstatSync(path.join(staging, 'blacklists', 'aggressive')).isSymbolicLink());
  const rooted = path.join(dir, 'blacklists.tar.gz');
  await tar.c({ gzip: true, file: rooted, cwd: staging, portable: true }, ['blacklists']);
  t.same(summary((await compileToBuffer(rooted)).buffer), fromDir, 'tarball with blacklists/ root');
  t.same(classifyLists(rooted), { kind: 'ut1', path: rooted });
  const junk = path.join(dir, 'junk.bin');
  fs.writeFileSync(junk, 'hello');
  t.throws(() => classifyLists(junk), { code: 'GARDEFOU_INPUT', message: /neither a UT1 folder/ });
  const emptyTar = path.join(dir, 'empty.tar.gz');
  fs.writeFileSync(path.join(staging, 'README'), 'x');
  await tar.c({ gzip: true, file: emptyTar, cwd: staging }, ['README']);
  await t.rejects(compileToBuffer(emptyTar), { code: 'GARDEFOU_INPUT', message: /no UT1 category/ });
});

t.test('compileLists writes one file atomically; a folder holding it loads as an index', async (t) => {
  const out = path.join(dir, 'idx', INDEX_FILE_NAME);
  const r = await compileLists(MINI, out);
  t.equal(r.out, out);
  t.equal(fs.statSync(out).size, r.bytes);
  t.same(fs.readdirSync(path.dirname(out)), [INDEX_FILE_NAME], 'no temp file left behind');
  const loaded = await loadLists(path.dirname(out));
  t.equal(loaded.source, out);
  t.equal(loaded.compiled, null);
  t.same(loaded.index.describe(), { categories: 7, domains: 20, urls: 7, expressions: 2 });
  // a damaged index is refused at load with expected/got
  const bad = path.join(dir, 'bad.idx');
  const bytes = fs.readFileSync(out);
  bytes[bytes.length - 1]! ^= 1;
  fs.writeFileSync(bad, bytes);
  await t.rejects(loadLists(bad), { code: 'GARDEFOU_INDEX', message: /checksum: expected crc32 0x[0-9a-f]+, got 0x[0-9a-f]+/ });
  await t.rejects(compileLists(path.join(dir, 'nope'), out), { code: 'GARDEFOU_INPUT' });
  t.ok(fs.existsSync(out), 'a failed compile leaves the previous index in place');
});

t.test('POSIX expressions to JavaScript', async (t) => {
  t.equal(posixToJs('sexe[[:digit:]]+'), 'sexe[0-9]+');
  t.equal(posixToJs('[[:alpha:]][[:alnum:]_]*\\.exe'), '[a-zA-Z][a-zA-Z0-9_]*\\.exe');
  t.equal(posixToJs('(/banner/|/sponsor/)'), '(/banner/|/sponsor/)');
  t.equal(posixToJs('([unclosed'), null);
  t.equal(posixToJs('.*'), null, 'matches everything');
  t.equal(posixToJs('[[:nosuch:]]'), null);
});

function gardefou(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...process.env, GARDEFOU_DIST: BUILD_ROOT }, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('gardefou lists import / info', async (t) => {
  const out = path.join(dir, 'cli-out');
  const imp = gardefou(['lists', 'import', MINI, '--out', out]);
  t.equal(imp.code, 0, imp.stderr);
  t.match(imp.stdout, /20 domains, 7 urls, 2 expressions in 7 categories \(2 aliases\)/);
  t.match(imp.stdout, /adult\/domains line 10: several fields on one line/);
  const info = gardefou(['lists', 'info', '--lists', out, '--json']);
  t.equal(info.code, 0, info.stderr);
  const j = JSON.parse(info.stdout) as Record<string, unknown>;
  t.match(j, { source: path.join(out, INDEX_FILE_NAME), compiledAtLoad: false, formatVersion: 1, domains: 20, urls: 7, expressions: 2, aliases: { porn: 'adult' } });
  const text = gardefou(['lists', 'info', '--lists', MINI]);
  t.match(text.stdout, /adult\s+black\s+11\s+7\s+2\s+Adulte \(X\) \/ Adult \(X\) \[porn\]/);
  const bad = gardefou(['lists', 'import', path.join(dir, 'missing'), '--out', out]);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /^gardefou: reading lists .*missing/);
  t.equal(gardefou(['lists', 'import', MINI]).code, 2, '--out is required');
});

t.test('gardefou check: exit codes and JSON', async (t) => {
  const policy = path.join(dir, 'check-policy.json');
  fs.writeFileSync(policy, JSON.stringify({ profiles: { p: { blockBlackUsage: true } }, clients: [{ cidr: '10.9.0.0/16', profile: 'p' }], defaultProfile: 'p' }));
  const base = ['--lists', MINI, '--policy', policy];
  const b = gardefou(['check', 'http://WWW.Blocked.test./a/../b?x=1', ...base, '--json']);
  t.equal(b.code, 1, b.stderr);
  t.match(JSON.parse(b.stdout), {
    action: 'block', url: 'http://www.blocked.test/b?x=1', profile: 'p', category: 'adult', categoryFr: 'Adulte (X)',
    match: 'blocked.test', matchKind: 'domain', layer: 'lists', reason: 'category', listedIn: ['adult'],
  });
  const c = gardefou(['check', '3405803783:443', ...base, '--json']);
  t.equal(c.code, 1);
  t.match(JSON.parse(c.stdout), { action: 'block', url: '203.0.113.7:443', kind: 'connect', match: '203.0.113.7' });
  const a = gardefou(['check', 'example.test', ...base, '--client', '10.9.1.1']);
  t.equal(a.code, 0);
  t.match(a.stdout, /^ALLOWED  http:\/\/example\.test\/\n  profile   p \(client 10\.9\.1\.1/);
  const named = path.join(dir, 'check-policy-2.json');
  fs.writeFileSync(named, JSON.stringify({ profiles: { p: { blockBlackUsage: true }, q: {} }, defaultProfile: 'p', intercept: { domains: ['example.test'] } }));
  const q = gardefou(['check', 'http://blocked.test/', '--lists', MINI, '--policy', named, '--profile', 'q', '--json']);
  t.equal(q.code, 0, 'the profile given decides (q blocks nothing)');
  t.match(JSON.parse(q.stdout), { action: 'allow', profile: 'q', intercepted: false });
  const i = gardefou(['check', 'example.test', '--lists', MINI, '--policy', named]);
  t.match(i.stdout, /intercept yes: HTTPS to this host is decrypted/, 'says when a host would be intercepted');
  const np = gardefou(['check', 'example.test', '--lists', MINI, '--policy', named, '--profile', 'nobody']);
  t.equal(np.code, 2);
  t.match(np.stderr, /--profile: the policy has no profile "nobody" \(it has: p, q\)/);
  t.match(gardefou(['check', 'example.test', ...base, '--json']).stdout, /"intercepted":null/, 'null when the policy intercepts nothing');
  const u = gardefou(['check', 'http://mixed.test/forbidden/x', ...base]);
  t.equal(u.code, 1);
  t.match(u.stdout, /match     url mixed\.test\/forbidden/);
  for (const [args, re] of [
    [['check', 'http://bad host/', ...base], /gardefou: checking http:\/\/bad host\/: not a valid/],
    [['check', 'example.test', '--client', 'nope', ...base], /--client: expected an IPv4 or IPv6 address, got "nope"/],
    [['check', 'example.test', '--at', 'yesterday', ...base], /--at: expected an ISO 8601 time/],
    [['check', 'example.test', '--lists', path.join(dir, 'missing')], /gardefou: reading lists/],
    [['check', 'example.test', '--lists', MINI, '--policy', path.join(dir, 'missing.json')], /gardefou: reading policy/],
  ] as Array<[string[], RegExp]>) {
    const r = gardefou(args);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, re);
  }
});

t.test('real UT1 lists', { skip: fs.existsSync(REAL_UT1) ? false : '../shared/ut1 not present' }, async (t) => {
  const { buffer, report } = await compileToBuffer(REAL_UT1);
  const h = parseIndex(buffer, 'real').header;
  t.ok(report.domains > 300000, `${report.domains} distinct domains`);
  t.ok(report.urls > 40000, `${report.urls} urls`);
  t.equal(h.aliases['porn'], 'adult');
  t.equal(h.aliases['proxy'], 'redirector');
  t.equal(h.aliases['drugs'], 'drogue');
  const adult = h.categories.find((c) => c.name === 'adult')!;
  t.equal(adult.fr, 'Adulte (X)');
  t.ok(h.categories.filter((c) => c.usage.includes('white')).length >= 10, 'white-usage categories read');
  t.comment(`real UT1: ${report.domains} domains, ${report.urls} urls, ${report.expressions} expressions, ${report.malformed.count} malformed, ${report.ms} ms`);
  const r = gardefou(['check', 'http://www.pokerstars.fr/', '--lists', REAL_UT1, '--json']);
  t.equal(r.code, 1, r.stderr);
  t.match(JSON.parse(r.stdout), { action: 'block', layer: 'lists', matchKind: 'domain' });
});
