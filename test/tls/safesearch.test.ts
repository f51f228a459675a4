/**
 * The SafeSearch map: the shipped rules/safesearch.json, table-driven, and the validation of
 * malformed map files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { PACKAGE_ROOT } from '../../src/config';
import { loadSafeSearch, parseSafeSearch, SAFESEARCH_FORMAT } from '../../src/proxy/safesearch';

const shipped = loadSafeSearch(path.join(PACKAGE_ROOT, 'rules', 'safesearch.json'));

t.test('shipped map: search and video hosts to their safe endpoints', async (t) => {
  const cases: Array<[string, 'strict' | 'moderate', string | null]> = [
    ['www.google.com', 'strict', 'forcesafesearch.google.com'],
    ['www.google.fr', 'strict', 'forcesafesearch.google.com'],
    ['google.fr', 'moderate', 'forcesafesearch.google.com'],
    ['www.google.co.uk', 'strict', 'forcesafesearch.google.com'],
    ['www.google.com.br', 'strict', 'forcesafesearch.google.com'],
    ['www.google.cat', 'strict', 'forcesafesearch.google.com'],
    ['www.youtube.com', 'strict', 'restrict.youtube.com'],
    ['www.youtube.com', 'moderate', 'restrictmoderate.youtube.com'],
    ['m.youtube.com', 'strict', 'restrict.youtube.com'],
    ['youtubei.googleapis.com', 'moderate', 'restrictmoderate.youtube.com'],
    ['youtube.googleapis.com', 'strict', 'restrict.youtube.com'],
    ['www.youtube-nocookie.com', 'strict', 'restrict.youtube.com'],
    ['www.bing.com', 'strict', 'strict.bing.com'],
    ['duckduckgo.com', 'strict', 'safe.duckduckgo.com'],
    ['start.duckduckgo.com', 'moderate', 'safe.duckduckgo.com'],
    ['pixabay.com', 'strict', 'safesearch.pixabay.com'],
    // not covered: left alone
    ['mail.google.com', 'strict', null],
    ['www.google.evil.example', 'strict', null],
    ['google.com.evil.example', 'strict', null],
    ['xwww.google.fr', 'strict', null],
    ['forcesafesearch.google.com', 'strict', null],
    ['restrict.youtube.com', 'moderate', null],
    ['music.youtube.com', 'strict', null],
    ['example.org', 'strict', null],
  ];
  for (const [host, mode, want] of cases) t.equal(shipped.substitute(host, mode), want, `${host} (${mode}) -> ${want}`);
  t.equal(shipped.engineOf('www.google.de'), 'google');
  t.equal(shipped.engineOf('m.youtube.com'), 'youtube');
  t.equal(shipped.engineOf('example.org'), null);
  t.ok(shipped.size > 380, `every Google country domain, with and without www (${shipped.size} hosts)`);
});

t.test('malformed maps are refused with the key named', async (t) => {
  const good = { format: SAFESEARCH_FORMAT, engines: { g: { strict: 'safe.example', moderate: null, hosts: ['www.example.com'] } } };
  t.equal(parseSafeSearch(good, 'x').substitute('www.example.com', 'moderate'), null, 'no moderate endpoint: no substitution');
  const cases: Array<[string, unknown, RegExp]> = [
    ['not an object', [], /\(top\)/],
    ['wrong format', { ...good, format: 'v0' }, /key "format"/],
    ['unknown top key', { ...good, extra: 1 }, /key "extra": unknown key/],
    ['host not normalised', { format: SAFESEARCH_FORMAT, engines: { g: { strict: 's.example', hosts: ['WWW.Example.com'] } } }, /engines\.g\.hosts\[0\]/],
    ['endpoint not a host', { format: SAFESEARCH_FORMAT, engines: { g: { strict: 'https://s.example/', hosts: ['a.example'] } } }, /engines\.g\.strict/],
    ['no endpoint', { format: SAFESEARCH_FORMAT, engines: { g: { hosts: ['a.example'] } } }, /engines\.g": needs/],
    ['empty hosts', { format: SAFESEARCH_FORMAT, engines: { g: { strict: 's.example', hosts: [] } } }, /engines\.g\.hosts/],
    ['host in two engines', { format: SAFESEARCH_FORMAT, engines: { a: { strict: 's.example', hosts: ['h.example'] }, b: { strict: 't.example', hosts: ['h.example'] } } }, /already listed under engines\.a/],
    ['endpoint listed as a host', { format: SAFESEARCH_FORMAT, engines: { a: { strict: 's.example', hosts: ['s.example'] } } }, /own safe endpoint/],
    ['unknown engine key', { format: SAFESEARCH_FORMAT, engines: { a: { strict: 's.example', hosts: ['h.example'], wild: true } } }, /engines\.a\.wild/],
  ];
  for (const [name, json, re] of cases) {
    t.throws(() => parseSafeSearch(json, 'test.json'), { code: 'GARDEFOU_INPUT', message: re }, name);
  }
  const dir = t.testdir({ 'bad.json': '{ not json' });
  t.throws(() => loadSafeSearch(path.join(dir, 'bad.json')), { code: 'GARDEFOU_INPUT', message: /parsing safesearch map .*bad\.json/ });
  t.throws(() => loadSafeSearch(path.join(dir, 'missing.json')), { code: 'GARDEFOU_INPUT', message: /reading safesearch map/ });
  t.ok(fs.existsSync(path.join(PACKAGE_ROOT, 'rules', 'safesearch.json')));
});
