/**
 * Proxy authentication against an htpasswd file, through the real `gardefou serve`: 407 and its
 * challenge, wrong and right passwords, CONNECT, group -> profile, a workstation subnet that
 * does not log in, the transparent listener, and what reaches the journal, the logs, the origin.
 */
import * as bcrypt from 'bcryptjs';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { BIN, CHILD_ENV, journalRows, startGardefou, tempDir, testConfig, waitFor, writeHosts } from '../helpers/gardefou';
import { startOrigin } from '../helpers/net';
import { basic, connect, get } from './helpers';

const ALICE_PW = 'Ré-sésame 42';
const BOB_PW = 'bob-secret-pw';

t.test('htpasswd login through the real proxy', async (t) => {
  const origin = await startOrigin();
  t.teardown(() => origin.close());
  const dir = tempDir();
  // cost 4: the tests check behaviour, not the hash cost
  fs.writeFileSync(path.join(dir, 'htpasswd'), `# comptes locaux\nalice:${bcrypt.hashSync(ALICE_PW, 4).replace('$2b$', '$2y$')}\nbob:${bcrypt.hashSync(BOB_PW, 4)}\n`);
  fs.writeFileSync(path.join(dir, 'htgroups'), 'profs: alice\n');
  fs.writeFileSync(path.join(dir, 'workstations'), '127.0.0.2 cdi-pc01 room=cdi profile=profs\n');
  fs.writeFileSync(path.join(dir, 'policy.json'), JSON.stringify({
    profiles: { eleves: { block: ['gambling'] }, profs: { block: [] } },
    defaultProfile: 'eleves',
  }));
  const cfg = testConfig(dir, {
    hosts: writeHosts(dir, ['allowed.test', 'casino.test']),
    policy: path.join(dir, 'policy.json'),
    workstations: path.join(dir, 'workstations'),
    connectPorts: [origin.port],
    transparent: { http: ['127.0.0.1:0'] },
    identity: {
      subnets: [{ cidr: '127.0.0.2/32', mode: 'workstation' }, { cidr: '127.0.0.0/8', mode: 'authenticate' }],
      realm: 'Collège test',
      htpasswd: 'htpasswd',
      htgroups: 'htgroups',
      groupProfiles: [{ group: 'profs', profile: 'profs' }],
    },
  });
  // "é" is not ASCII: the realm is refused at load, naming the key
  const bad = await startGardefou(cfg, dir).then(() => null, (e: Error) => e.message);
  t.match(bad, /identity\.realm/, 'a non-ASCII realm is refused at load');
  (cfg['identity'] as Record<string, unknown>)['realm'] = 'College test';
  const g = await startGardefou(cfg, dir);
  t.teardown(() => g.stop());
  const url = `http://allowed.test:${origin.port}/echo`;

  const none = await get(g.port, url);
  t.equal(none.status, 407, 'no credentials: 407');
  t.equal(none.headers['proxy-authenticate'], 'Basic realm="College test", charset="UTF-8"');
  t.match(none.text, /Identification requise/);

  const wrong = await get(g.port, url, { auth: basic('alice', 'not-her-password') });
  t.equal(wrong.status, 407, 'wrong password: 407 again');
  t.ok(wrong.headers['proxy-authenticate']);
  t.equal((await get(g.port, url, { auth: basic('mallory', 'x') })).status, 407, 'unknown user: 407');
  t.equal((await get(g.port, url, { auth: 'Bearer abc' })).status, 407, 'another scheme: 407');

  const ok = await get(g.port, url, { auth: basic('alice', ALICE_PW) });
  t.equal(ok.status, 200, 'right password: through');
  const echoed = JSON.parse(ok.text) as { headers: Record<string, string> };
  t.notOk('proxy-authorization' in echoed.headers, 'Proxy-Authorization is not forwarded to the origin');
  t.notOk(origin.seen.some((s) => 'proxy-authorization' in s.headers));
  t.equal((await get(g.port, url, { auth: basic('alice', ALICE_PW) })).status, 200, 'second time (cache)');

  // the profile follows the user's group: casino.test (gambling) is blocked for eleves only
  const casino = `http://casino.test:${origin.port}/`;
  const bob = await get(g.port, casino, { auth: basic('bob', BOB_PW) });
  t.equal(bob.status, 403, 'bob (no group: default profile eleves) is blocked');
  t.match(bob.text, /<dd>bob<\/dd>/, 'the block page names the logged-in user');
  const alice = await get(g.port, casino, { auth: basic('alice', ALICE_PW) });
  t.equal(alice.status, 200, 'alice (group profs -> profile profs) is allowed');

  // CONNECT: the same step before the decision
  const authority = `allowed.test:${origin.port}`;
  const c0 = await connect(g.port, authority);
  t.equal(c0.status, 407, 'CONNECT without credentials: 407');
  t.match(c0.head, /\r\nProxy-Authenticate: Basic realm="College test"/);
  t.equal((await connect(g.port, authority, basic('alice', 'nope'))).status, 407, 'CONNECT with a wrong password: 407');
  t.equal((await connect(g.port, authority, basic('alice', ALICE_PW))).status, 200, 'CONNECT with the right password: 200');
  t.equal((await connect(g.port, `casino.test:${origin.port}`, basic('bob', BOB_PW))).status, 403, 'CONNECT: the profile applies too');

  // a workstation subnet: no login, identified by the map
  const ws = await get(g.port, url, { localAddress: '127.0.0.2' });
  t.equal(ws.status, 200, 'workstation subnet: no authentication');
  t.equal((await get(g.port, casino, { localAddress: '127.0.0.2' })).status, 200, 'the profile of the workstation map applies');

  // the transparent listener cannot ask for credentials: an authenticating subnet is refused there
  const tAddr = (await g.waitForLog((l) => l['msg'] === 'ready'))['transparent'] as string[];
  const tPort = Number(tAddr[0]!.split(':').pop());
  const tr = await new Promise<number>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: tPort, path: '/', headers: { host: 'allowed.test' }, agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0); }).on('error', reject);
  });
  t.equal(tr, 403, 'transparent listener: refused for an authenticating subnet');

  // the journal: users on what was let through, none on refusals, the reasons
  const rows = await waitFor(() => {
    const r = journalRows(g.journalPath);
    return r.length >= 15 && r.every((x) => x['end_ms'] !== null) ? r : undefined;
  }, 'journal rows');
  const by = (f: (r: Record<string, unknown>) => boolean) => rows.filter(f);
  t.equal(by((r) => r['reason'] === 'auth-required').length, 3, 'two GET + one CONNECT challenges (the Bearer one too)');
  t.equal(by((r) => r['reason'] === 'auth-failed').length, 3, 'wrong password, unknown user, CONNECT wrong password');
  t.ok(by((r) => r['reason'] === 'auth-failed' || r['reason'] === 'auth-required').every((r) => r['user'] === null && r['decision'] === 'refused'), 'refusals carry no user');
  const allowed = by((r) => r['decision'] === 'allow' && r['user'] === 'alice');
  t.equal(allowed.length, 4, 'alice: 2 GET allowed.test, GET casino.test, CONNECT');
  t.ok(allowed.some((r) => r['protocol'] === 'connect' && r['profile'] === 'profs'), 'the CONNECT record has the user and profile');
  t.ok(allowed.every((r) => r['profile'] === 'profs'));
  t.equal(by((r) => r['user'] === 'bob' && r['decision'] === 'block').length, 2);
  t.ok(by((r) => r['user'] === 'bob').every((r) => r['profile'] === 'eleves'));
  const wsRow = by((r) => r['workstation'] === 'cdi-pc01');
  t.equal(wsRow.length, 2);
  t.ok(wsRow.every((r) => r['profile'] === 'profs' && r['decision'] === 'allow'));
  t.equal(wsRow[0]?.['user'], null);
  t.equal(wsRow[0]?.['client_ip'], '127.0.0.2');
  t.equal(by((r) => r['reason'] === 'auth-required-transparent').length, 1);

  // the requisition query by user
  const q = spawnSync(process.execPath, [BIN, 'journal', 'query', '--config', g.configPath, '--requisition', 'T-8',
    '--authority', 'Gendarmerie test', '--basis', '77-1-1', '--from', new Date(Date.now() - 60_000).toISOString(),
    '--to', new Date(Date.now() + 60_000).toISOString(), '--user', 'alice', '--json'], { encoding: 'utf8', env: CHILD_ENV });
  t.equal(q.status, 0, q.stderr);
  const found = JSON.stringify(JSON.parse(q.stdout));
  t.match(found, /casino\.test/);
  t.notMatch(found, /"bob"/, 'only alice\'s records');

  // logs: the failed user name yes, never a password or the header
  const logText = JSON.stringify(g.logs);
  t.match(logText, /"user":"alice","why":"bad-password"/);
  t.match(logText, /"user":"mallory","why":"unknown-user"/);
  for (const secret of [ALICE_PW, BOB_PW, 'not-her-password', basic('alice', ALICE_PW).slice(6), 'Basic ']) {
    t.notOk(logText.includes(secret), `no "${secret.slice(0, 12)}..." in the logs`);
  }
  const journalBytes = fs.readFileSync(g.journalPath);
  t.notOk(journalBytes.includes(Buffer.from(ALICE_PW)), 'no password in the journal file');

  // SIGHUP re-reads the account files (and empties the cache): bob is gone, carol is new
  fs.writeFileSync(path.join(dir, 'htpasswd'), `alice:${bcrypt.hashSync(ALICE_PW, 4)}\ncarol:${bcrypt.hashSync('carol-pw', 4)}\n`);
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => l['msg'] === 'reloaded');
  t.equal((await get(g.port, url, { auth: basic('carol', 'carol-pw') })).status, 200, 'new account after SIGHUP');
  t.equal((await get(g.port, url, { auth: basic('bob', BOB_PW) })).status, 407, 'removed account refused after SIGHUP');
  // a bad file on reload keeps the accounts in force
  fs.writeFileSync(path.join(dir, 'htpasswd'), 'carol:$apr1$x$y\n');
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => typeof l['msg'] === 'string' && /reload failed/.test(l['msg'] as string) && /htpasswd .* line 1/.test(JSON.stringify(l)));
  t.equal((await get(g.port, url, { auth: basic('carol', 'carol-pw') })).status, 200, 'previous accounts still in force');
});

t.test('a non-bcrypt htpasswd is refused at start with file and line', async (t) => {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, 'htpasswd'), `alice:${bcrypt.hashSync('x', 4)}\nbob:$apr1$abcdefgh$0123456789abcdefghijkl\n`);
  const cfg = testConfig(dir, { identity: { subnets: [{ cidr: '127.0.0.0/8', mode: 'authenticate' }], htpasswd: 'htpasswd' } });
  const err = await startGardefou(cfg, dir).then(() => '', (e: Error) => e.message);
  t.match(err, /htpasswd line 2: user "bob": only bcrypt hashes \(\$2y\$, \$2a\$, \$2b\$\) are accepted, got MD5 \(\$apr1\$\)/);
});
