import * as net from 'node:net';
import * as vm from 'node:vm';
import t from 'tap';
import { DEFAULT_CLIENTS } from '../../src/config';
import { defaultProxyHostPort, isPacPath, PAC_CONTENT_TYPE, PAC_PATHS, renderPac } from '../../src/proxy/pac';
import { ConfigError } from '../../src/errors';

/**
 * The PAC helper functions as browsers define them (after Mozilla's ascii_pac_utils.js).
 * dnsResolve is the identity for IP literals and fails the test for a name: the script must
 * never make the browser resolve names.
 */
function pacSandbox(resolved: string[]): vm.Context {
  const v4 = (s: string) => s.split('.').reduce((a, x) => a * 256 + Number(x), 0);
  const dnsResolve = (host: string): string | null => {
    if (net.isIPv4(host)) return host;
    resolved.push(host);
    return null;
  };
  return vm.createContext({
    isPlainHostName: (host: string) => !host.includes('.'),
    dnsDomainIs: (host: string, domain: string) => host.length >= domain.length && host.slice(host.length - domain.length) === domain,
    localHostOrDomainIs: (host: string, hostdom: string) => host === hostdom || hostdom.lastIndexOf(`${host}.`, 0) === 0,
    isResolvable: (host: string) => dnsResolve(host) !== null,
    dnsResolve,
    myIpAddress: () => '10.1.2.3',
    isInNet: (host: string, pattern: string, mask: string) => {
      const ip = dnsResolve(host);
      if (ip === null) return false;
      const m = v4(mask);
      // unsigned 32-bit AND
      return ((v4(ip) & m) >>> 0) === ((v4(pattern) & m) >>> 0);
    },
    shExpMatch: (s: string, p: string) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`).test(s),
  });
}

function compile(pac: string): { find: (url: string) => string; resolved: string[] } {
  const resolved: string[] = [];
  const ctx = pacSandbox(resolved);
  vm.runInContext(pac, ctx, { filename: 'proxy.pac' });
  const fn = (ctx as unknown as { FindProxyForURL: (url: string, host: string) => string }).FindProxyForURL;
  const find = (url: string) => {
    // what browsers pass as host: the URL's hostname, lower-case, IPv6 without brackets (Chrome)
    const u = new URL(url);
    return fn(url, u.hostname);
  };
  return { find, resolved };
}

t.test('FindProxyForURL: local networks and plain names DIRECT, the rest through the proxy', async (t) => {
  const pac = renderPac({
    clients: ['10.20.0.0/16', '192.168.1.0/24', '2001:db8:42::/48', 'fd00::/8', '0.0.0.0/0', '::/0'],
    proxyHostPort: '10.20.0.1:3128',
    directDomains: ['ent.lycee.lan', '.college.example'],
  });
  const { find, resolved } = compile(pac);
  const P = 'PROXY 10.20.0.1:3128';
  const cases: Array<[string, string]> = [
    ['http://www.example.com/', P],
    ['https://www.example.com/path?q=1', P],
    ['http://intranet/', 'DIRECT'],
    ['http://localhost:8080/', 'DIRECT'],
    ['http://printer.local/', 'DIRECT'],
    ['http://app.localhost/', 'DIRECT'],
    ['http://ent.lycee.lan/', 'DIRECT'],
    ['http://www.ent.lycee.lan/', 'DIRECT'],
    ['http://notent.lycee.lan/', P],
    ['http://college.example/', 'DIRECT'],
    ['http://10.20.5.6/', 'DIRECT'],
    ['http://10.21.5.6/', P],
    ['http://192.168.1.200/', 'DIRECT'],
    ['http://192.168.2.1/', P],
    ['http://127.0.0.1:9000/', 'DIRECT'],
    ['http://8.8.8.8/', P],
    ['http://[2001:db8:42::1]/', 'DIRECT'],
    ['http://[2001:db8:42:ffff:1:2:3:4]/', 'DIRECT'],
    ['http://[2001:db8:43::1]/', P],
    ['http://[fd12:3456::1]/', 'DIRECT'],
    ['http://[fe80::1]/', P],
    ['http://[::1]:8080/', 'DIRECT'],
    ['http://[2a00:1450::200e]/', P],
    ['http://[::ffff:10.20.1.1]/', 'DIRECT'],
    ['http://[::ffff:8.8.8.8]/', P],
    ['http://www.example.com./', P],
  ];
  for (const [url, want] of cases) t.equal(find(url), want, url);
  t.same(resolved, [], 'no name was ever resolved');
  t.match(pac, /^var GF_PROXY = "PROXY 10\.20\.0\.1:3128";$/m, 'no DIRECT fallback after the proxy');
  t.notMatch(pac, /0\.0\.0\.0/, '/0 in clients is not announced as a local network');
});

t.test('host as given by browsers that keep brackets or zone ids, and upper case', async (t) => {
  const pac = renderPac({ clients: ['fd00::/8'], proxyHostPort: '[fd00::1]:3128' });
  const resolved: string[] = [];
  const ctx = pacSandbox(resolved);
  vm.runInContext(pac, ctx);
  const fn = (ctx as unknown as { FindProxyForURL: (url: string, host: string) => string }).FindProxyForURL;
  t.equal(fn('http://[fd00::5]/', '[fd00::5]'), 'DIRECT');
  t.equal(fn('http://[fe80::5%25eth0]/', 'fe80::5%eth0'), 'PROXY [fd00::1]:3128');
  t.equal(fn('http://[FD00::5]/', 'FD00::5'), 'DIRECT');
  t.equal(fn('http://WWW.EXAMPLE.ORG/', 'WWW.EXAMPLE.ORG'), 'PROXY [fd00::1]:3128');
  t.equal(fn('http://[1:2:3]/', '1:2:3'), 'PROXY [fd00::1]:3128', 'malformed IPv6: proxy, never DIRECT');
  t.equal(fn('http://[fd00::1::2]/', 'fd00::1::2'), 'PROXY [fd00::1]:3128');
  t.same(resolved, []);
});

t.test('the default clients (private ranges) go direct; IPv4-mapped CIDRs are understood', async (t) => {
  const { find } = compile(renderPac({ clients: DEFAULT_CLIENTS, proxyHostPort: 'proxy.lycee.lan:8080' }));
  t.equal(find('http://172.16.3.4/'), 'DIRECT');
  t.equal(find('http://172.32.0.1/'), 'PROXY proxy.lycee.lan:8080');
  t.equal(find('http://[fdab::1]/'), 'DIRECT', 'fc00::/7');
  const mapped = compile(renderPac({ clients: ['::ffff:10.9.0.0/112'], proxyHostPort: '10.9.0.1:3128' }));
  t.equal(mapped.find('http://10.9.3.3/'), 'DIRECT');
  t.equal(mapped.find('http://10.8.3.3/'), 'PROXY 10.9.0.1:3128');
});

t.test('the generated script is deterministic and parses as ES3-style script', async (t) => {
  const opts = { clients: ['10.0.0.0/8', '10.0.0.0/8', '10.1.2.3/8'], proxyHostPort: '10.0.0.1:3128' };
  const a = renderPac(opts);
  t.equal(renderPac(opts), a);
  t.equal((a.match(/"10\.0\.0\.0"/g) ?? []).length, 1, 'duplicate networks (also unmasked ones) appear once');
  t.notMatch(a, /\b(let|const|class)\s|=>|`/, 'no ES6 syntax for old PAC engines');
  t.match(a, /do not edit/);
});

t.test('bad input is refused with a ConfigError naming it', async (t) => {
  const cases: Array<[Parameters<typeof renderPac>[0], RegExp]> = [
    [{ clients: ['10.0.0.0/33'], proxyHostPort: '10.0.0.1:3128' }, /clients: .*prefix/],
    [{ clients: [], proxyHostPort: '0.0.0.0:3128' }, /wildcard/],
    [{ clients: [], proxyHostPort: '[::]:3128' }, /wildcard/],
    [{ clients: [], proxyHostPort: 'proxy' }, /HOST:PORT/],
    [{ clients: [], proxyHostPort: 'a"b:3128' }, /does not name a host/],
    [{ clients: [], proxyHostPort: '10.0.0.1:0' }, /port 0/],
    [{ clients: [], proxyHostPort: '10.0.0.1:3128', directDomains: ['bad domain'] }, /not a DNS name/],
  ];
  for (const [opts, re] of cases) {
    t.throws(() => renderPac(opts), re, JSON.stringify(opts));
    t.throws(() => renderPac(opts), ConfigError);
  }
});

t.test('defaultProxyHostPort: first listener clients can reach', async (t) => {
  const cases: Array<[string[], { address?: string; port?: number } | undefined, string]> = [
    [['127.0.0.1:3128', '10.0.0.1:3128'], undefined, '10.0.0.1:3128'],
    [['[::1]:3128', '[fd00::1]:3128'], undefined, '[fd00::1]:3128'],
    [['0.0.0.0:3128'], { address: '::ffff:10.4.0.1', port: 3128 }, '10.4.0.1:3128'],
    [['[::]:3128'], { address: 'fd00::9', port: 8080 }, '[fd00::9]:8080'],
    [['127.0.0.1:3128'], undefined, '127.0.0.1:3128'],
    [['localhost:3128', 'proxy.lan:3128'], undefined, 'proxy.lan:3128'],
  ];
  for (const [listen, local, want] of cases) t.equal(defaultProxyHostPort(listen, local), want, listen.join(' '));
});

t.test('paths and content type', async (t) => {
  t.equal(PAC_CONTENT_TYPE, 'application/x-ns-proxy-autoconfig');
  t.same(PAC_PATHS, ['/proxy.pac', '/wpad.dat']);
  t.ok(isPacPath('/wpad.dat'));
  t.ok(isPacPath('/proxy.pac'));
  t.notOk(isPacPath('/proxy.pac.bak'));
});
