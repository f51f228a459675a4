import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { Identity, readArpTable } from '../../src/identity';
import { InputError } from '../../src/errors';
import { tempDir } from '../helpers/gardefou';

const ARP = `IP address       HW type     Flags       HW address            Mask     Device
10.1.2.40        0x1         0x2         3c:52:82:0a:1b:2c     *        eth1
10.1.2.41        0x1         0x0         00:00:00:00:00:00     *        eth1
10.1.2.42        0x1         0x2         A4-BB-6D-00-11-22     *        eth1
`;

t.test('workstations by IP and by MAC (through the neighbour table)', async (t) => {
  const dir = tempDir();
  const map = path.join(dir, 'workstations');
  fs.writeFileSync(map, '# salle 3\n10.1.2.34 salle3-pc04\n3c:52:82:0a:1b:2c cdi-portable-07\r\na4:bb:6d:00:11:22 cdi-portable-08 # comment\n');
  const arp = path.join(dir, 'arp');
  fs.writeFileSync(arp, ARP);
  let now = 0;
  const id = Identity.fromFile(map, { arpFile: arp, now: () => now });
  t.same(id.identify('10.1.2.34'), { ip: '10.1.2.34', workstation: 'salle3-pc04' });
  t.same(id.identify('10.1.2.40'), { ip: '10.1.2.40', workstation: 'cdi-portable-07' }, 'by MAC');
  t.same(id.identify('10.1.2.42'), { ip: '10.1.2.42', workstation: 'cdi-portable-08' }, 'dash-separated upper-case MAC');
  t.same(id.identify('10.1.2.41'), { ip: '10.1.2.41', workstation: undefined }, 'incomplete neighbour entry');
  t.same(id.identify('10.9.9.9'), { ip: '10.9.9.9', workstation: undefined });
  // the table is re-read only after a while: a laptop that moved is seen after the refresh
  fs.writeFileSync(arp, ARP.replace('10.1.2.40 ', '10.1.2.50 '));
  t.equal(id.identify('10.1.2.50').workstation, undefined, 'not re-read per request');
  now = 10_000;
  t.equal(id.identify('10.1.2.50').workstation, 'cdi-portable-07', 're-read after the refresh interval');
});

t.test('a bad line names the file and the line; a missing neighbour table is no error', async (t) => {
  const dir = tempDir();
  const map = path.join(dir, 'workstations');
  fs.writeFileSync(map, '10.1.2.34 salle3-pc04\nnot-an-address pc\n');
  t.throws(() => Identity.fromFile(map), { message: /workstations line 2: expected "IP NAME" or "MAC NAME", got "not-an-address pc"/ });
  t.throws(() => Identity.fromFile(path.join(dir, 'none')), InputError);
  t.same([...readArpTable(path.join(dir, 'no-such-table'))], []);
  t.same(new Identity().identify('127.0.0.1'), { ip: '127.0.0.1', workstation: undefined });
});

t.test('the workstation name reaches the journal record and the requisition query', async (t) => {
  const { startGardefou, testConfig, writeHosts, journalRows, waitFor, BIN, CHILD_ENV } = await import('../helpers/gardefou');
  const { startOrigin, viaProxy } = await import('../helpers/net');
  const { spawnSync } = await import('node:child_process');
  const origin = await startOrigin();
  t.teardown(() => origin.close());
  const dir = tempDir();
  const map = path.join(dir, 'workstations');
  fs.writeFileSync(map, '127.0.0.1 salle3-pc04\n');
  const g = await startGardefou(testConfig(dir, { hosts: writeHosts(dir, ['allowed.test']), workstations: map }), dir);
  t.teardown(() => g.stop());
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200);
  const row = await waitFor(() => journalRows(g.journalPath).find((r) => r['end_ms'] !== null), 'journal row');
  t.equal(row['workstation'], 'salle3-pc04');
  const q = spawnSync(process.execPath, [BIN, 'journal', 'query', '--config', g.configPath, '--requisition', 'T-7',
    '--authority', 'Gendarmerie test', '--basis', '77-1-1', '--from', new Date(Date.now() - 60_000).toISOString(),
    '--to', new Date(Date.now() + 60_000).toISOString(), '--workstation', 'salle3-pc04', '--json'], { encoding: 'utf8', env: CHILD_ENV });
  t.equal(q.status, 0, q.stderr);
  const rows = JSON.parse(q.stdout) as unknown;
  t.match(JSON.stringify(rows), /salle3-pc04/);
  t.match(JSON.stringify(rows), /allowed\.test/);

  // the map is read again on SIGHUP
  fs.writeFileSync(map, '127.0.0.1 salle3-pc05\n');
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => l['msg'] === 'reloaded');
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200);
  const row2 = await waitFor(() => journalRows(g.journalPath).find((r) => r['end_ms'] !== null && r['workstation'] === 'salle3-pc05'), 'record with the new name');
  t.ok(row2, 'new name after reload');
});
