import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { lookupGroup } from '../../src/journal/store';
import { CLI, REQ, cli, journalCfg, sampleClose, sampleOpen, tmpDir, withJournal, writeConfig } from './helpers';

const DAY = 86_400_000;
const T0 = Date.parse('2025-03-14T10:22:05.000Z');

/** 40 records on 2025-03-14 from T0, one per second, plus a 3-day tunnel ending at T0+30s. */
async function fixture(dir: string, over: { operatorGroup?: string } = {}): Promise<{ cfgFile: string; db: string }> {
  const cfg = journalCfg(dir, over);
  await withJournal(cfg, async (j) => {
    for (let i = 0; i < 40; i++) {
      const h = await j.begin(sampleOpen(i, { startMs: T0 + i * 1000 }));
      h.connected({ destIp: '192.0.2.1', egressIp: '198.51.100.7', egressPort: 40000 + i });
      h.finish(sampleClose(i, { endMs: T0 + i * 1000 + 10_000, egressPort: 40000 + i }));
    }
    const h = await j.begin(sampleOpen(99, { startMs: T0 - 3 * DAY, clientIp: '10.1.7.7', user: 'prof1' }));
    h.finish(sampleClose(99, { endMs: T0 + 30_000, egressPort: 55555 }));
  });
  return { cfgFile: writeConfig(dir, { path: cfg.path, ...over }), db: cfg.path };
}

t.test('query: each criterion, each format, egress port at time T with the skew tolerance', async (t) => {
  const dir = t.testdir();
  const { cfgFile } = await fixture(dir);
  const day = ['--from', '2025-03-14T00:00:00Z', '--to', '2025-03-14T23:59:59Z'];
  const q = (args: string[]) => {
    const r = cli(['query', '--config', cfgFile, ...REQ, ...args, '--json']);
    t.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as { count: number; records: Array<Record<string, unknown>> };
  };
  const cases: Array<[string, string[], number[]]> = [
    ['client over a day', [...day, '--client', '10.1.0.5'], [6]],
    ['user over a day', [...day, '--user', 'eleve3'], [1, 22, 29]].map((x) => x) as [string, string[], number[]],
    ['workstation', [...day, '--workstation', 'salle1-pc4'], [5, 15, 25, 35]],
    ['host, case and trailing dot ignored', [...day, '--host', 'SITE2.example.'], [3, 8, 13, 18, 23, 28, 33, 38]],
    ['egress port at T (inside)', ['--at', new Date(T0 + 5000 + 3000).toISOString(), '--egress-port', '40005'], [6]],
    ['egress port at T (end + skew)', ['--at', new Date(T0 + 5000 + 10_000 + 2000).toISOString(), '--egress-ip', '198.51.100.7', '--egress-port', '40005'], [6]],
    ['egress port at T (beyond the skew)', ['--at', new Date(T0 + 5000 + 10_000 + 2001).toISOString(), '--egress-port', '40005'], []],
    ['egress port of a 3-day tunnel', ['--at', new Date(T0 + 20_000).toISOString(), '--egress-port', '55555'], [41]],
    ['client at T: connections open then, not only started then', ['--at', new Date(T0 + 12_000).toISOString(), '--client', '10.1.0.5'], [6]],
    ['user at T: the 3-day tunnel', ['--at', new Date(T0 - DAY).toISOString(), '--user', 'prof1'], [41]],
    ['wrong egress ip', ['--at', new Date(T0 + 8000).toISOString(), '--egress-ip', '198.51.100.8', '--egress-port', '40005'], []],
  ];
  // the user case: users are set on i % 3 === 0 -> eleve(i % 7); ids are i + 1
  cases[1] = ['user over a day', [...day, '--user', 'eleve3'], Array.from({ length: 40 }, (_, i) => i).filter((i) => i % 3 === 0 && i % 7 === 3).map((i) => i + 1)];
  for (const [name, args, ids] of cases) {
    const r = q(args);
    t.same(r.records.map((x) => x['id']), ids, name);
  }
  const one = q([...day, '--client', '10.1.0.5']).records[0]!;
  t.match(one, { start_utc: '2025-03-14T10:22:10.000Z', start_paris: '2025-03-14 11:22:10.000+01:00', egress_port: 40005 });
  t.notOk(Object.keys(one).some((k) => /path|query|url|header/.test(k)), 'no path/query/header field');

  const csv = cli(['query', '--config', cfgFile, ...REQ, ...day, '--client', '10.1.0.5', '--format', 'csv']);
  t.equal(csv.code, 0);
  t.match(csv.stdout, /^id,ref,start_utc,start_paris,end_utc,end_paris,start_ms,end_ms,client_ip,/);
  t.match(csv.stdout, /\r\n6,R000005,2025-03-14T10:22:10.000Z,2025-03-14 11:22:10.000\+01:00,/);
  const table = cli(['query', '--config', cfgFile, ...REQ, ...day, '--client', '10.1.0.5']);
  t.equal(table.code, 0);
  t.match(table.stdout, /2025-03-14 11:22:10\.000\+01:00.*10\.1\.0\.5:30005.*198\.51\.100\.7:40005/);
  t.match(table.stdout, /1 record\(s\); times Europe\/Paris/);

  // every query above is in the audit trail, in order, with its row count
  const audit = cli(['audit', '--config', cfgFile, '--json']);
  t.equal(audit.code, 0, audit.stderr);
  const a = JSON.parse(audit.stdout) as { ok: boolean; entries: Array<{ signed: boolean; body: Record<string, unknown> }> };
  t.equal(a.ok, true);
  t.equal(a.entries.length, cases.length + 3);
  t.match(a.entries[0]!, { signed: true, body: { action: 'query', operator: 'root', requisition: 'PV-2025-0042', authority: 'Gendarmerie BR Lyon', basis: '60-1', rows: 1, criteria: { client: '10.1.0.5' } } });
  const human = cli(['audit', '--config', cfgFile]);
  t.match(human.stdout, /query {2}root {2}req PV-2025-0042 {2}Gendarmerie BR Lyon {2}CPP 60-1/);

  // the trail is chained: editing an entry is reported, exit 1
  const adb = new Database(path.join(dir, 'journal.audit.db'));
  adb.prepare(`UPDATE audit SET body = replace(body, '"rows":1', '"rows":0') WHERE seq = 1`).run();
  adb.close();
  const bad = cli(['audit', '--config', cfgFile]);
  t.equal(bad.code, 1);
  t.match(bad.stdout, /!! entry altered/);
});

t.test('query: bad input exits 2 with one clear line, and audits nothing', async (t) => {
  const dir = t.testdir();
  const { cfgFile } = await fixture(dir);
  const day = ['--from', '2025-03-14T00:00:00Z', '--to', '2025-03-14T23:59:59Z'];
  const bad: Array<[string[], RegExp]> = [
    [[...REQ, ...day], /at least one criterion is required/],
    [[...REQ, '--client', '10.1.0.5'], /a time window is required/],
    [[...REQ, '--from', '2025-03-14T10:00:00', '--to', '2025-03-14T11:00:00Z', '--client', '10.1.0.5'], /has no time zone/],
    [[...REQ, '--from', '2025-03-15T00:00:00Z', '--to', '2025-03-14T00:00:00Z', '--client', '10.1.0.5'], /--to .* is before --from/],
    [['--requisition', 'X', '--authority', 'Y', '--basis', '60-2', ...day, '--client', '10.1.0.5'], /--basis: expected 60-1, 77-1-1 or 99-3/],
    [[...REQ, ...day, '--client', 'not-an-ip'], /--client: expected an IP address/],
    [[...REQ, ...day, '--egress-ip', '198.51.100.7'], /--egress-ip needs --egress-port/],
    [[...REQ, ...day, '--egress-port', '70000'], /--egress-port: expected a port/],
    [[...REQ, ...day, '--client', '10.1.0.5', '--format', 'xml'], /--format: expected table, csv or json/],
  ];
  for (const [args, msg] of bad) {
    const r = cli(['query', '--config', cfgFile, ...args]);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, msg);
    t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  }
  const missing = cli(['query', '--config', cfgFile, '--authority', 'Y', '--basis', '60-1', ...day, '--client', '10.1.0.5']);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /--requisition/);
  const audit = cli(['audit', '--config', cfgFile]);
  t.match(audit.stdout, /audit trail empty/);
  const help = cli(['query', '--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /--egress-port/);
});

t.test('export: package verified offline with the public key only, alterations refused', async (t) => {
  const dir = t.testdir();
  const { cfgFile } = await fixture(dir);
  const out = path.join(dir, 'export-PV42');
  const r = cli(['export', '--config', cfgFile, '--requisition', 'PV-2025-0042', '--authority', 'Parquet de Lyon', '--basis', '77-1-1',
    '--from', '2025-03-14T00:00:00Z', '--to', '2025-03-14T23:59:59Z', '--workstation', 'salle1-pc4', '--out', out]);
  t.equal(r.code, 0, r.stderr);
  t.same(fs.readdirSync(out).sort(), ['manifest.json', 'manifest.sig', 'records.csv', 'records.json']);
  const m = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8')) as Record<string, any>;
  t.match(m, {
    format: 'gardefou-export/1', requestId: { countryCode: 'FR', authorisedOrganisationId: 'Parquet de Lyon', requestNumber: 'PV-2025-0042' },
    legalBasis: 'CPP art. 77-1-1', operator: 'root', counts: { records: 4, sealed: 4, unsealed: 0 }, criteria: { workstation: 'salle1-pc4' },
  });
  t.match(m['extractedAt'].utc, /Z$/);
  t.match(m['extractedAt'].paris, /[+-]\d\d:\d\d$/);
  t.ok(m['chain'].blocks.length >= 1);

  // offline: a copy of the package and the public key, nothing else
  const offline = path.join(tmpDir(t), 'offline');
  fs.cpSync(out, path.join(offline, 'pkg'), { recursive: true });
  fs.copyFileSync(path.join(dir, 'journal.pub'), path.join(offline, 'gateway.pub'));
  const ok = cli(['verify', '--export', path.join(offline, 'pkg'), '--pub', path.join(offline, 'gateway.pub')], { cwd: offline });
  t.equal(ok.code, 0, ok.stdout + ok.stderr);
  t.match(ok.stdout, /export OK: 4 record\(s\), 4 checked against \d+ signed block\(s\)/);

  const alter = (name: string, fn: (s: string) => string, expect: RegExp) => {
    const copy = path.join(tmpDir(t), name);
    fs.cpSync(out, copy, { recursive: true });
    const f = path.join(copy, name.split('--')[0]!);
    fs.writeFileSync(f, fn(fs.readFileSync(f, 'utf8')));
    const v = cli(['verify', '--export', copy, '--pub', path.join(offline, 'gateway.pub')]);
    t.equal(v.code, 1, `${name}: refused`);
    t.match(v.stdout, expect, name);
  };
  alter('records.csv--client', (s) => s.replace('10.1.0.4', '10.1.0.9'), /records\.csv altered/);
  alter('records.json--drop', (s) => JSON.stringify((JSON.parse(s) as unknown[]).slice(1)), /records\.json altered/);
  alter('manifest.json--count', (s) => s.replace('"records": 4', '"records": 3'), /manifest\.sig does not match/);
  // re-hash the altered records.json into the manifest and sign it with another key: still refused
  const other = path.join(tmpDir(t), 'other');
  await withJournal(journalCfg(other), async () => undefined);
  const forged = path.join(tmpDir(t), 'forged');
  fs.cpSync(out, forged, { recursive: true });
  const v = cli(['verify', '--export', forged, '--pub', path.join(other, 'journal.pub')]);
  t.equal(v.code, 1);
  t.match(v.stdout, /manifest\.sig does not match/);

  const again = cli(['export', '--config', cfgFile, ...REQ, '--from', '2025-03-14T00:00:00Z', '--to', '2025-03-14T23:59:59Z', '--client', '10.1.0.5', '--out', out]);
  t.equal(again.code, 2);
  t.match(again.stderr, /is not empty/);
  const audit = JSON.parse(cli(['audit', '--config', cfgFile, '--json']).stdout) as { entries: Array<{ body: Record<string, unknown> }> };
  t.match(audit.entries[0], { body: { action: 'export', rows: 4, basis: '77-1-1', authority: 'Parquet de Lyon' } });
});

t.test('purge deletes what is past retention, spares holds, and the chain still verifies', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  const old = Date.now() - 400 * DAY;
  await withJournal(cfg, async (j) => {
    for (let i = 0; i < 30; i++) {
      const h = await j.begin(sampleOpen(i, { startMs: old + i * 60_000 }));
      h.finish(sampleClose(i, { endMs: old + i * 60_000 + 5000 }));
    }
  });
  await withJournal(cfg, async (j) => {
    for (let i = 30; i < 40; i++) {
      const h = await j.begin(sampleOpen(i));
      h.finish(sampleClose(i));
    }
  });
  const cfgFile = writeConfig(dir, { path: cfg.path, retentionDays: 365 });
  const from = new Date(old).toISOString();
  const to = new Date(old + DAY).toISOString();
  const hold = cli(['hold', '--config', cfgFile, '--requisition', 'PV-77', '--from', from, '--to', to, '--workstation', 'salle1-pc3']);
  t.equal(hold.code, 0, hold.stderr);
  t.match(hold.stdout, /hold 1 placed for requisition PV-77/);
  const holds = cli(['holds', '--config', cfgFile]);
  t.match(holds.stdout, /PV-77 .*salle1-pc3.*ACTIVE/);

  const p1 = cli(['purge', '--config', cfgFile, '--json']);
  t.equal(p1.code, 0, p1.stderr);
  t.match(JSON.parse(p1.stdout), { deleted: 27, held: 3 });
  const count = () => {
    const db = new Database(cfg.path, { readonly: true });
    try {
      return db.prepare('SELECT count(*) AS n FROM records').get() as { n: number };
    } finally {
      db.close();
    }
  };
  t.equal(count().n, 13, '3 held + 10 recent remain');
  let v = cli(['verify', '--config', cfgFile, '--json']);
  t.equal(v.code, 0, v.stdout);
  t.match(JSON.parse(v.stdout), { ok: true, records: 13, purgedRecords: 27 });

  // a deletion disguised as a purge (recent records) is still caught
  const copy = path.join(tmpDir(t), 'copy');
  fs.mkdirSync(copy);
  for (const f of ['journal.db', 'journal.pub', 'journal.head']) fs.copyFileSync(path.join(dir, f), path.join(copy, f));
  const cdb = new Database(path.join(copy, 'journal.db'));
  cdb.prepare('DELETE FROM records WHERE id = 35').run();
  cdb.close();
  const vc = cli(['verify', '--journal', path.join(copy, 'journal.db')]);
  t.equal(vc.code, 1);
  t.match(vc.stdout, /first problem: record 35 deleted/);

  const rel = cli(['hold', '--config', cfgFile, '--requisition', 'PV-77', '--release']);
  t.equal(rel.code, 0, rel.stderr);
  t.match(rel.stdout, /released 1 hold/);
  t.equal(cli(['hold', '--config', cfgFile, '--requisition', 'PV-77', '--release']).code, 2, 'nothing left to release');
  const p2 = cli(['purge', '--config', cfgFile, '--json']);
  t.match(JSON.parse(p2.stdout), { deleted: 3, held: 0 });
  t.equal(count().n, 10);
  v = cli(['verify', '--config', cfgFile, '--json']);
  t.equal(v.code, 0, v.stdout);
  t.match(JSON.parse(v.stdout), { ok: true, records: 10, purgedRecords: 30 });

  const db = new Database(cfg.path, { readonly: true });
  t.teardown(() => db.close());
  t.same((db.prepare(`SELECT kind FROM events WHERE kind IN ('hold', 'release', 'purge') ORDER BY seq`).all() as Array<{ kind: string }>).map((e) => e.kind),
    ['hold', 'purge', 'release', 'purge'], 'holds, releases and purges are journaled');
  t.equal((db.prepare('SELECT count(*) AS n FROM blocks WHERE ids IS NULL').get() as { n: number }).n, 1, 'the purged block keeps its header as anchor');
});

t.test('purge from the serving process (purgeNow), chunked, while appending', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir, { retentionDays: 30 });
  await withJournal(cfg, async (j) => {
    for (let i = 0; i < 50; i++) {
      const h = await j.begin(sampleOpen(i, { startMs: Date.now() - 40 * DAY }));
      h.finish(sampleClose(i));
    }
  });
  await withJournal(cfg, async (j) => {
    const appending = Promise.all(Array.from({ length: 50 }, async (_, i) => {
      const h = await j.begin(sampleOpen(100 + i));
      h.finish(sampleClose(100 + i));
    }));
    const r = await j.purgeNow({ chunkRows: 7 });
    await appending;
    t.match(r, { deleted: 50, held: 0, blocks: 1 });
    t.ok(r.chunks >= 8, 'in chunks of at most 7 rows');
    t.match(j.stats(), { purges: 1, purgedRecords: 50 });
  });
  const v = cli(['verify', '--journal', cfg.path, '--json']);
  t.equal(v.code, 0, v.stdout);
  t.match(JSON.parse(v.stdout), { records: 50, purgedRecords: 50 });
});

t.test('access: users outside the operator group are refused (real uids)', async (t) => {
  const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
  if (process.getuid?.() !== 0 || !setpriv) {
    t.plan(0, 'needs root and setpriv to run the command line as another uid');
    return;
  }
  const group = lookupGroup('daemon') ?? lookupGroup('bin');
  if (!group) {
    t.plan(0, 'no daemon or bin group to use as operator group');
    return;
  }
  const groupName = lookupGroup('daemon') ? 'daemon' : 'bin';
  const dir = tmpDir(t);
  fs.chmodSync(dir, 0o755);
  const { cfgFile } = await fixture(dir, { operatorGroup: groupName });
  fs.chmodSync(cfgFile, 0o644);
  t.equal(fs.statSync(path.join(dir, 'journal.db')).gid, group.gid, 'journal given to the operator group');
  const args = [CLI, 'journal', 'query', '--config', cfgFile, ...REQ, '--from', '2025-03-14T00:00:00Z', '--to', '2025-03-14T23:59:59Z', '--client', '10.1.0.5', '--json'];
  // a clean environment: the test runner's NODE_OPTIONS hooks write files nobody may write
  const env = { PATH: process.env['PATH'] ?? '/usr/bin:/bin' };
  const as = (groups: string) => spawnSync(setpriv, ['--reuid=65534', '--regid=65534', `--groups=${groups}`, process.execPath, ...args], { encoding: 'utf8', timeout: 60_000, env });

  const outsider = as('65534');
  t.equal(outsider.status, 2, outsider.stderr);
  t.match(outsider.stderr, new RegExp(`^gardefou: journal access refused for .*: not a member of the operator group "${groupName}"`));

  const member = as(`65534,${group.gid}`);
  t.equal(member.status, 0, member.stderr);
  t.match(JSON.parse(member.stdout), { count: 1 });
  const audit = JSON.parse(cli(['audit', '--config', cfgFile, '--json']).stdout) as { entries: Array<{ signed: boolean; body: { operator: string } }> };
  t.equal(audit.entries.length, 1, 'only the member\'s query was audited');
  t.match(audit.entries[0], { signed: false, body: { operator: /nobody|65534/ } }, 'the member cannot read the key: chained, unsigned');

  // without an operator group, only root and the service user may query
  const cfg2 = writeConfig(dir, { path: path.join(dir, 'journal.db'), operatorGroup: null });
  fs.chmodSync(cfg2, 0o644);
  const r = spawnSync(setpriv, ['--reuid=65534', '--regid=65534', `--groups=${group.gid}`, process.execPath, CLI, 'journal', 'audit', '--config', cfg2], { encoding: 'utf8', env });
  t.equal(r.status, 2);
  t.match(r.stderr, /journal access refused .*only root and the service user/);
});
