import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { Identity, LeaseTable, parseDnsmasqLeases, parseIscLeases, parseLeases, parseWorkstationMap } from '../../src/identity';
import { PACKAGE_ROOT } from '../../src/config';
import { tempDir } from '../helpers/gardefou';

const FIX = path.join(PACKAGE_ROOT, 'test', 'identity', 'fixtures');
const NOW = Date.UTC(2026, 10, 29, 9, 0, 0);

/** 1-based line number of the first line containing `needle` (fixtures change; tests follow). */
function lineOf(file: string, needle: string): number {
  const i = fs.readFileSync(file, 'utf8').split('\n').findIndex((l) => l.includes(needle));
  if (i < 0) throw new Error(`${needle} not in ${file}`);
  return i + 1;
}

t.test('isc-dhcp-server dhcpd.leases', async (t) => {
  const file = path.join(FIX, 'dhcpd.leases');
  const r = parseLeases(fs.readFileSync(file, 'utf8'), file);
  const by = new Map(r.leases.map((l) => [l.ip, l])); // later blocks win, as in LeaseTable
  t.same(by.get('10.1.2.34'), { ip: '10.1.2.34', mac: '3c:52:82:0a:1b:2c', hostname: 'SALLE3-PC04', endsMs: Date.UTC(2099, 10, 29, 19) });
  t.equal(by.get('10.1.2.35')?.endsMs, Date.UTC(2026, 10, 29, 8), 'ends in UTC');
  t.equal(by.get('10.1.2.36')?.endsMs, Infinity, 'ends never');
  t.equal(by.get('10.1.2.36')?.hostname, 'cdi-scriptportable', 'hostname reduced to a safe alphabet');
  t.equal(by.get('10.1.2.37')?.endsMs, 4102444800_000, 'ends epoch');
  t.equal(by.get('10.1.2.37')?.mac, null, 'bad MAC dropped, lease kept');
  t.equal(by.get('10.1.2.38')?.endsMs, -Infinity, 'a later "binding state free" block supersedes the active one');
  t.equal(by.get('10.1.2.39')?.endsMs, -Infinity, 'unreadable "ends": not trusted as held');
  t.notOk(by.has('not-an-ip'));
  t.same(r.warnings, [
    `${file} line ${lineOf(file, 'zz:bb:6d')}: bad MAC address`,
    `${file} line ${lineOf(file, 'ends sometime soon')}: bad "ends" time`,
    `${file} line ${lineOf(file, 'ends sometime soon') + 1}: expected a statement ending in ";"`,
    `${file} line ${lineOf(file, 'lease not-an-ip')}: bad lease address "not-an-ip"`,
  ]);
  t.equal(parseIscLeases('lease 10.0.0.1 {\n  binding state active;\n', 'f').warnings[0], 'f line 1: lease block not closed (file being written?)');
});

t.test('dnsmasq leases', async (t) => {
  const file = path.join(FIX, 'dnsmasq.leases');
  const r = parseLeases(fs.readFileSync(file, 'utf8'), file);
  t.same(r.leases, [
    { ip: '10.1.3.10', mac: '3c:52:82:0a:1b:2e', hostname: 'cdi-portable-07', endsMs: 4102444800_000 },
    { ip: '10.1.3.11', mac: '3c:52:82:0a:1b:2f', hostname: null, endsMs: Infinity },
    { ip: '10.1.3.12', mac: '3c:52:82:0a:1b:30', hostname: 'expired-pc', endsMs: 1000_000 },
    { ip: 'fd00::1:2', mac: null, hostname: 'v6-portable', endsMs: 4102444800_000 },
  ]);
  t.same(r.warnings, [
    `${file} line 4: expected "EXPIRY MAC IP HOSTNAME CLIENTID"`,
    `${file} line 5: bad MAC address`,
  ]);
  t.same(parseDnsmasqLeases('', 'x'), { leases: [], warnings: [] });
});

t.test('workstations map: room and profile columns, old two-column form', async (t) => {
  const m = parseWorkstationMap('10.1.2.34 salle3-pc04 room=salle3 profile=college\n3c:52:82:0a:1b:2c cdi-07 room=cdi\n10.1.2.35 pc05\n', 'ws');
  t.same(m.byIp.get('10.1.2.34'), { name: 'salle3-pc04', room: 'salle3', profile: 'college' });
  t.same(m.byMac.get('3c:52:82:0a:1b:2c'), { name: 'cdi-07', room: 'cdi', profile: undefined });
  t.same(m.byIp.get('10.1.2.35'), { name: 'pc05', room: undefined, profile: undefined });
  const bad: Array<[string, RegExp]> = [
    ['10.1.2.34 pc room=', /ws line 1: expected "room=NAME"/],
    ['10.1.2.34 pc colour=blue', /ws line 1: expected "room=NAME"/],
    ['10.1.2.34 pc room=a room=b', /each once/],
    ['10.1.2.34 <pc>', /ws line 1: expected a name/],
    ['\n\nnope pc', /ws line 3: expected "IP NAME" or "MAC NAME"/],
  ];
  for (const [text, re] of bad) t.throws(() => parseWorkstationMap(text, 'ws'), { message: re }, text);
});

t.test('identify: static map wins over leases; lease MAC finds the map entry; profile carried', async (t) => {
  const dir = tempDir();
  const leases = path.join(dir, 'dnsmasq.leases');
  fs.writeFileSync(leases, [
    '4102444800 3c:52:82:0a:1b:2c 10.1.2.34 lease-name-34 *',
    '4102444800 3c:52:82:0a:1b:2d 10.1.2.50 roaming-laptop *',
    '4102444800 3c:52:82:0a:1b:2e 10.1.2.51 self-named *',
    '1000 3c:52:82:0a:1b:2f 10.1.2.52 expired *',
  ].join('\n'));
  const map = parseWorkstationMap('10.1.2.34 salle3-pc04 room=salle3\n3c:52:82:0a:1b:2d cdi-07 profile=profs\n', 'ws');
  const id = new Identity(map.byIp, map.byMac, { arpFile: path.join(dir, 'no-arp') });
  let now = NOW;
  const warnings: string[] = [];
  const table = new LeaseTable([leases, path.join(dir, 'missing.leases')], { now: () => now, refreshMs: 5000, warn: (m) => warnings.push(m) });
  t.match(warnings, [/reading DHCP leases .*missing\.leases: ENOENT/], 'a missing file is reported, not fatal');
  t.same(id.identify('10.1.2.34', table), { ip: '10.1.2.34', workstation: 'salle3-pc04' }, 'static IP entry wins');
  t.same(id.identify('10.1.2.50', table), { ip: '10.1.2.50', workstation: 'cdi-07', profile: 'profs' }, 'MAC from the lease, name and profile from the map');
  t.same(id.identify('10.1.2.51', table), { ip: '10.1.2.51', workstation: 'self-named' }, 'lease hostname');
  t.same(id.identify('10.1.2.52', table), { ip: '10.1.2.52', workstation: undefined }, 'ended lease ignored');

  // the file changes: not re-read per lookup, only after refreshMs, then swapped in
  fs.writeFileSync(leases, '4102444800 3c:52:82:0a:1b:2e 10.1.2.51 renamed *\n');
  t.equal(id.identify('10.1.2.51', table).workstation, 'self-named', 'not re-read before the refresh interval');
  now += 6000;
  table.lookup('10.1.2.51'); // starts the asynchronous re-read
  await table.refresh();
  t.equal(id.identify('10.1.2.51', table).workstation, 'renamed', 're-read once the mtime changed');
  t.equal(id.identify('10.1.2.50', table).workstation, undefined, 'old lease gone');
  // a malformed line in the new file: reported with file and line, the others still read
  fs.writeFileSync(leases, '4102444800 3c:52:82:0a:1b:2e 10.1.2.51 renamed *\ngarbage\n4102444800 3c:52:82:0a:1b:2d 10.1.2.50 back *\n');
  now += 6000;
  await table.refresh();
  t.equal(id.identify('10.1.2.50', table).workstation, 'cdi-07');
  t.ok(warnings.some((w) => w === `DHCP leases ${leases} line 2: expected "EXPIRY MAC IP HOSTNAME CLIENTID"`), 'malformed line reported');
});
