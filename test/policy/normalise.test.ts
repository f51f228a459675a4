/**
 * Normalisation table: every evasion form we know of, for absolute URIs (HTTP) and CONNECT
 * authorities. A null answer means "refused" (the proxy answers 400, never forwards).
 */
import t from 'tap';
import {
  isNormalisedHost, normaliseHost, normalisePath, parseAbsoluteUrl, parseConnectAuthority, parseListUrl, targetUrl,
} from '../../src/policy/normalise';

type Row = [input: string, host: string | null, port?: number, path?: string];

const HTTP: Row[] = [
  // case, trailing dot, default ports
  ['http://Example.COM/', 'example.com', 80, '/'],
  ['http://example.com', 'example.com', 80, '/'],
  ['HTTP://EXAMPLE.COM/A/B', 'example.com', 80, '/A/B'],
  ['http://example.com.:80/', 'example.com', 80, '/'],
  ['http://example.com:80/', 'example.com', 80, '/'],
  ['http://example.com:8080/a', 'example.com', 8080, '/a'],
  ['http://example.com:00080/', 'example.com', 80, '/'],
  ['https://example.com/', 'example.com', 443, '/'],
  ['https://example.com:443/x', 'example.com', 443, '/x'],
  // userinfo ignored, the last @ ends it
  ['http://good.com@bad.com/', 'bad.com', 80, '/'],
  ['http://good.com:pass@bad.com/', 'bad.com', 80, '/'],
  ['http://a@b@bad.com/', 'bad.com', 80, '/'],
  ['http://good.com:80@bad.com:8080/', 'bad.com', 8080, '/'],
  ['http://@bad.com/', 'bad.com', 80, '/'],
  // backslashes in the authority: refused
  ['http://good.com\\@bad.com/', null],
  ['http://bad.com\\', null],
  ['http://bad.com\\.good.com/', null],
  // IPv4 literal forms
  ['http://192.168.1.1/', '192.168.1.1', 80, '/'],
  ['http://3232235777/', '192.168.1.1', 80, '/'],
  ['http://0300.0250.1.1/', '192.168.1.1', 80, '/'],
  ['http://0300.0250.0001.0001/', '192.168.1.1', 80, '/'],
  ['http://0xC0A80101/', '192.168.1.1', 80, '/'],
  ['http://0xc0.0xa8.0x01.0x01/', '192.168.1.1', 80, '/'],
  ['http://0XC0.0XA8.1.1/', '192.168.1.1', 80, '/'],
  ['http://192.168.257/', '192.168.1.1', 80, '/'],
  ['http://192.11010305/', '192.168.1.1', 80, '/'],
  ['http://0300.168.0x101/', '192.168.1.1', 80, '/'],
  ['http://030052000401/', '192.168.1.1', 80, '/'],
  ['http://127.1/', '127.0.0.1', 80, '/'],
  ['http://0x7f.1/', '127.0.0.1', 80, '/'],
  ['http://0/', '0.0.0.0', 80, '/'],
  ['http://192.168.1.1./', '192.168.1.1', 80, '/'],
  ['http://192%2e168%2e1%2e1/', '192.168.1.1', 80, '/'],
  ['http://256.1.1.1/', null],
  ['http://1.2.3.4.5/', null],
  ['http://4294967296/', null],
  ['http://0x100000000/', null],
  ['http://1.2.3.09/', null],
  ['http://example.0x10/', null],
  // IPv6
  ['http://[::1]/', '::1', 80, '/'],
  ['http://[0:0:0:0:0:0:0:1]:8080/', '::1', 8080, '/'],
  ['http://[2001:DB8:0:0:0:0:0:1]/', '2001:db8::1', 80, '/'],
  ['http://[2001:db8::0:1]/', '2001:db8::1', 80, '/'],
  ['http://[::ffff:192.168.1.1]/', '192.168.1.1', 80, '/'],
  ['http://[::FFFF:c0a8:101]/', '192.168.1.1', 80, '/'],
  ['http://[0:0:0:0:0:ffff:c0a8:0101]/', '192.168.1.1', 80, '/'],
  ['http://[fe80::1%25eth0]/', null],
  ['http://[::1/', null],
  ['http://[::1]x/', null],
  ['http://[example.com]/', null],
  ['http://[1::2::3]/', null],
  // IDN and percent-encoded hosts
  ['http://bücher.de/', 'xn--bcher-kva.de', 80, '/'],
  ['http://BÜCHER.de/', 'xn--bcher-kva.de', 80, '/'],
  ['http://xn--bcher-kva.de/', 'xn--bcher-kva.de', 80, '/'],
  ['http://ex%61mple.com/', 'example.com', 80, '/'],
  ['http://EX%41MPLE.com/', 'example.com', 80, '/'],
  ['http://bad%2ecom/', 'bad.com', 80, '/'],
  ['http://ｅｘａｍｐｌｅ.com/', 'example.com', 80, '/'],
  ['http://example。com/', 'example.com', 80, '/'],
  ['http://b\u00ADad.com/', 'bad.com', 80, '/'],
  // whitespace and control characters: refused (WHATWG would silently drop tabs/newlines)
  ['http://exa mple.com/', null],
  ['http://exa\tmple.com/', null],
  ['http://exa\nmple.com/', null],
  ['http://exa\rmple.com/', null],
  ['http://example.com/\n', null],
  ['http://example.com/a\tb', null],
  ['http://example.com\u0000/', null],
  [' http://example.com/', null],
  // bad names
  ['http://a..b.com/', null],
  ['http://.example.com/', null],
  ['http://example.com../', null],
  ['http://exa*mple.com/', null],
  ['http://exa<mple.com/', null],
  ['http://exa"mple.com/', null],
  ['http://exa%20mple.com/', null],
  ['http://exa%00mple.com/', null],
  ['http://exa%2fmple.com/', null],
  ['http://' + 'a'.repeat(64) + '.com/', null],
  ['http://' + 'abcdefghi.'.repeat(26) + 'com/', null],
  ['http://exa_mple.com/', 'exa_mple.com', 80, '/'],
  ['http://xn--abc/', null],
  // authority / scheme forms
  ['http:///path', null],
  ['http://:80/', null],
  ['http://example.com:0/', null],
  ['http://example.com:65536/', null],
  ['http://example.com:80a/', null],
  ['http://example.com:-1/', null],
  ['http://example.com:1:2/', null],
  ['ftp://example.com/', null],
  ['http:/example.com/', null],
  ['http:example.com/', null],
  ['//example.com/', null],
  ['/relative', null],
  ['', null],
  // paths: dot segments, escapes, backslashes, fragments
  ['http://example.com/a/../b', 'example.com', 80, '/b'],
  ['http://example.com/a/%2e%2e/b', 'example.com', 80, '/b'],
  ['http://example.com/a/.%2E/b', 'example.com', 80, '/b'],
  ['http://example.com/a/%2E/b', 'example.com', 80, '/a/b'],
  ['http://example.com/./a/./b/', 'example.com', 80, '/a/b/'],
  ['http://example.com/../../a', 'example.com', 80, '/a'],
  ['http://example.com/a/b/..', 'example.com', 80, '/a/'],
  ['http://example.com/%7Euser/%41%42', 'example.com', 80, '/~user/AB'],
  ['http://example.com/%66orbidden', 'example.com', 80, '/forbidden'],
  ['http://example.com/a%2fb', 'example.com', 80, '/a%2Fb'],
  ['http://example.com/a%2Fb', 'example.com', 80, '/a%2Fb'],
  ['http://example.com/a\\b', 'example.com', 80, '/a/b'],
  ['http://example.com/a\\..\\b', 'example.com', 80, '/b'],
  ['http://example.com/p?q=%61&r=%2f', 'example.com', 80, '/p?q=a&r=%2F'],
  ['http://example.com/p?a/../b', 'example.com', 80, '/p?a/../b'],
  ['http://example.com/p#frag', 'example.com', 80, '/p'],
  ['http://example.com#frag', 'example.com', 80, '/'],
  ['http://example.com?x=1', 'example.com', 80, '/?x=1'],
  ['http://example.com/café', 'example.com', 80, '/caf%C3%A9'],
  ['http://example.com/caf%c3%a9', 'example.com', 80, '/caf%C3%A9'],
  ['http://example.com/a%zzb', 'example.com', 80, '/a%zzb'],
  ['http://example.com//double//slash', 'example.com', 80, '//double//slash'],
];

const CONNECT: Row[] = [
  ['example.com:443', 'example.com', 443],
  ['EXAMPLE.com.:443', 'example.com', 443],
  ['example.com:8443', 'example.com', 8443],
  ['[::1]:443', '::1', 443],
  ['[0:0::1]:443', '::1', 443],
  ['[::ffff:7f00:1]:443', '127.0.0.1', 443],
  ['[::ffff:127.0.0.1]:443', '127.0.0.1', 443],
  ['3232235777:443', '192.168.1.1', 443],
  ['0xC0A80101:443', '192.168.1.1', 443],
  ['0300.0250.1.1:443', '192.168.1.1', 443],
  ['192.168.257:443', '192.168.1.1', 443],
  ['0x7f.1:443', '127.0.0.1', 443],
  ['bücher.de:443', 'xn--bcher-kva.de', 443],
  ['ex%61mple.com:443', 'example.com', 443],
  ['example.com', null],
  ['example.com:', null],
  ['example.com:0', null],
  ['example.com:99999', null],
  ['example.com:443x', null],
  ['::1:443', null],
  ['[::1]', null],
  ['user@example.com:443', null],
  ['good.com@bad.com:443', null],
  ['example.com:443/x', null],
  ['example.com\\:443', null],
  ['exa mple.com:443', null],
  ['exa\tmple.com:443', null],
  ['a..b:443', null],
  ['.example.com:443', null],
  [':443', null],
  ['', null],
  ['256.0.0.1:443', null],
  ['[fe80::1%eth0]:443', null],
];

t.test('absolute-form URIs', async (t) => {
  for (const [input, host, port, path] of HTTP) {
    const got = parseAbsoluteUrl(input);
    if (host === null) {
      t.equal(got, null, `${JSON.stringify(input)} is refused`);
    } else {
      t.same(got, { kind: 'http', host, port, path }, `${JSON.stringify(input)} -> ${host}:${port}${path}`);
    }
  }
});

t.test('CONNECT authorities', async (t) => {
  for (const [input, host, port] of CONNECT) {
    const got = parseConnectAuthority(input);
    if (host === null) t.equal(got, null, `${JSON.stringify(input)} is refused`);
    else t.same(got, { kind: 'connect', host, port, path: '' }, `${JSON.stringify(input)} -> ${host}:${port}`);
  }
});

t.test('HTTP and CONNECT normalise a host alike', async (t) => {
  const hosts = ['Example.COM', 'example.com.', '3232235777', '0300.0250.1.1', '0xC0A80101', '192.168.257', 'bücher.de',
    'ex%61mple.com', '[::ffff:192.168.1.1]', '[2001:DB8::1]', 'a_b.example', 'ｅｘａｍｐｌｅ.com', 'a..b', 'x y', '256.1.1.1'];
  for (const h of hosts) {
    const a = parseAbsoluteUrl(`http://${h}/`);
    const c = parseConnectAuthority(`${h}:443`);
    t.equal(a?.host ?? null, c?.host ?? null, `${h}: same host for http and CONNECT`);
    t.equal(a?.host ?? null, normaliseHost(h), `${h}: same as normaliseHost`);
  }
});

t.test('normaliseHost', async (t) => {
  const rows: Array<[string, string | null]> = [
    ['example.com', 'example.com'],
    ['EXAMPLE.COM', 'example.com'],
    ['example.com.', 'example.com'],
    ['example.com..', null],
    ['', null],
    ['.', null],
    ['localhost', 'localhost'],
    ['a'.repeat(63) + '.com', 'a'.repeat(63) + '.com'],
    ['a'.repeat(64) + '.com', null],
    ['::1', '::1'],
    ['[::1]', '::1'],
    ['[::1', null],
    ['exa/mple.com', null],
    ['exa?mple.com', null],
    ['exa#mple.com', null],
    ['exa@mple.com', null],
    ['exa:mple.com', null],
  ];
  for (const [input, want] of rows) t.equal(normaliseHost(input), want, `${JSON.stringify(input)} -> ${want}`);
  t.ok(isNormalisedHost('example.com'));
  t.ok(isNormalisedHost('192.168.1.1'));
  t.ok(isNormalisedHost('2001:db8::1'));
  t.notOk(isNormalisedHost('Example.com'));
  t.notOk(isNormalisedHost('a b'));
  t.notOk(isNormalisedHost(''));
});

t.test('normalisePath', async (t) => {
  t.equal(normalisePath(''), '/');
  t.equal(normalisePath('?a=1'), '/?a=1');
  t.equal(normalisePath('/plain/path.html?x=1'), '/plain/path.html?x=1');
  t.equal(normalisePath('/a/./b/../c'), '/a/c');
});

t.test('list and policy entries (parseListUrl)', async (t) => {
  const rows: Array<[string, { host: string; path: string } | null]> = [
    ['example.com', { host: 'example.com', path: '/' }],
    ['Example.com/Path', { host: 'example.com', path: '/Path' }],
    ['example.com/a/../b', { host: 'example.com', path: '/b' }],
    ['http://example.com/p', { host: 'example.com', path: '/p' }],
    ['example.com:8080/p', { host: 'example.com', path: '/p' }],
    ['.example.com/p', { host: 'example.com', path: '/p' }],
    ['example.com/onionimp\\.cgi\\?x=1', { host: 'example.com', path: '/onionimp.cgi?x=1' }],
    ['example.com?q=1', { host: 'example.com', path: '/?q=1' }],
    ['203.0.113.9/bad', { host: '203.0.113.9', path: '/bad' }],
    ['bad host/x', null],
    ['a..b/x', null],
  ];
  for (const [input, want] of rows) t.same(parseListUrl(input), want, input);
});

t.test('targetUrl', async (t) => {
  t.equal(targetUrl(parseAbsoluteUrl('http://EXAMPLE.com:80/a/../b?x')!), 'http://example.com/b?x');
  t.equal(targetUrl(parseAbsoluteUrl('http://example.com:8080/')!), 'http://example.com:8080/');
  t.equal(targetUrl(parseConnectAuthority('[::1]:443')!), '[::1]:443');
  t.equal(targetUrl(parseAbsoluteUrl('http://[::1]:81/')!), 'http://[::1]:81/');
});
