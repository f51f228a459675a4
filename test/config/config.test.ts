import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { applyConfig, defaultConfig, loadConfig, PACKAGE_ROOT } from '../../src/config';
import { CidrSet, parseCidr } from '../../src/config/cidr';
import { parseHostPort } from '../../src/config/hostport';
import { ConfigError } from '../../src/errors';
import { BIN, CHILD_ENV, tempDir } from '../helpers/gardefou';

t.test('embedded defaults are valid and point at the shipped rules and ./var', async (t) => {
  const cfg = loadConfig(undefined);
  t.same(cfg.listen, ['127.0.0.1:3128']);
  t.same(cfg.connectPorts, [443]);
  t.equal(cfg.journal.retentionDays, 365);
  t.equal(cfg.journal.failOpen, false);
  t.equal(cfg.lists, path.join(PACKAGE_ROOT, 'rules', 'lists'));
  t.equal(cfg.journal.path, path.resolve('var/journal.db'));
  t.same(cfg.allowDestinations, [], 'no destination exception by default');
});

t.test('bad values are refused with the key and the value named', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ listen: '127.0.0.1:3128' }, /key "listen": expected a list/],
    [{ listen: ['127.0.0.1'] }, /key "listen\[0\]": .*HOST:PORT/],
    [{ listen: ['::1:3128'] }, /key "listen\[0\]": .*brackets/],
    [{ listen: ['[::1]:99999'] }, /key "listen\[0\]": .*bad port/],
    [{ clients: ['10.0.0.0/33'] }, /key "clients\[0\]": .*prefix/],
    [{ clients: ['school'] }, /key "clients\[0\]": "school" is not/],
    [{ clients: [] }, /key "clients": an empty list/],
    [{ connectPorts: [0] }, /key "connectPorts\[0\]": expected an integer from 1 to 65535, got 0/],
    [{ parentProxy: 'socks5://x:1080' }, /key "parentProxy": only http:\/\//],
    [{ journal: { retentionDays: 'a year' } }, /key "journal.retentionDays": expected an integer from 1 to 36500, got "a year"/],
    [{ journal: { failOpen: 'yes' } }, /key "journal.failOpen": expected true or false/],
    [{ journal: { colour: 'blue' } }, /key "journal.colour": unknown key/],
    [{ colour: 'blue' }, /key "colour": unknown key/],
    [{ update: { feed: 'ftp://x/' } }, /key "update.feed": expected an http/],
    [{ logLevel: 'loud' }, /key "logLevel": expected one of/],
    [[], /key "\(top\)": expected an object/],
  ];
  for (const [json, re] of cases) {
    t.throws(() => applyConfig(defaultConfig(), json as never, '/etc/gardefou', 'test.json'), re, JSON.stringify(json));
  }
  t.throws(() => applyConfig(defaultConfig(), { colour: 1 } as never, '/', 'x.json'), ConfigError);
});

t.test('relative paths in a config file resolve against its directory', async (t) => {
  const cfg = applyConfig(defaultConfig(), { lists: 'ut1', journal: { path: 'j/journal.db' } }, '/etc/gardefou', 'f');
  t.equal(cfg.lists, '/etc/gardefou/ut1');
  t.equal(cfg.journal.path, '/etc/gardefou/j/journal.db');
});

t.test('cidr sets match IPv4, IPv6 and IPv4-mapped addresses', async (t) => {
  const s = new CidrSet(['10.0.0.0/8', 'fd00::/8', '192.168.1.7']);
  const cases: Array<[string, boolean]> = [
    ['10.1.2.3', true], ['11.0.0.1', false], ['::ffff:10.9.9.9', true], ['fd12::1', true],
    ['fe80::1', false], ['192.168.1.7', true], ['192.168.1.8', false], ['not-an-ip', false],
  ];
  for (const [ip, want] of cases) t.equal(s.has(ip), want, ip);
  t.same(parseCidr('::1'), { address: '::1', prefix: 128, family: 'ipv6' });
  t.same(parseHostPort('[::1]:3128'), { host: '::1', port: 3128 });
  t.same(parseHostPort('0.0.0.0:0'), { host: '0.0.0.0', port: 0 });
});

t.test('command line: --help is honest, bad input exits 2 with one line', async (t) => {
  const help = spawnSync(process.execPath, [BIN, '--help'], { encoding: 'utf8', env: CHILD_ENV });
  t.equal(help.status, 0);
  t.match(help.stdout, /serve/);
  const dir = tempDir();
  const bad = path.join(dir, 'bad.json');
  fs.writeFileSync(bad, JSON.stringify({ journal: { retentionDays: -1 } }));
  const run = spawnSync(process.execPath, [BIN, 'serve', '--config', bad], { encoding: 'utf8', env: CHILD_ENV });
  t.equal(run.status, 2);
  t.match(run.stderr, /^gardefou: config .*bad\.json: key "journal\.retentionDays": expected an integer from 1 to 36500, got -1\n$/);
  const flag = spawnSync(process.execPath, [BIN, 'serve', '--listen', 'nowhere'], { encoding: 'utf8', env: CHILD_ENV });
  t.equal(flag.status, 2);
  t.match(flag.stderr, /--listen/);
  const unknown = spawnSync(process.execPath, [BIN, 'frobnicate'], { encoding: 'utf8', env: CHILD_ENV });
  t.equal(unknown.status, 2);
});

t.test('a listener that cannot bind stops the start with one line and exit 2 (no hang)', async (t) => {
  const net = await import('node:net');
  const holder = net.createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => holder.close(() => r())));
  const port = (holder.address() as { port: number }).port;
  const dir = tempDir();
  const cfg = path.join(dir, 'gardefou.json');
  fs.writeFileSync(cfg, JSON.stringify({ listen: [`127.0.0.1:${port}`], journal: { path: path.join(dir, 'journal.db') }, admin: { listen: null } }));
  const run = spawnSync(process.execPath, [BIN, 'serve', '--config', cfg], { encoding: 'utf8', env: CHILD_ENV, timeout: 20_000 });
  t.equal(run.status, 2, 'exits (does not hang on the journal threads)');
  t.match(run.stderr, new RegExp(`^gardefou: cannot listen: .*EADDRINUSE.*127\\.0\\.0\\.1:${port}\\n$`));
});
