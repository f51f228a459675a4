/**
 * The DASEN channel inside `gardefou serve`: a real feed on loopback, the real proxy pulling it
 * at start, a new serial changing a decision live, a refused (replayed) bundle leaving the
 * lists in force, and the status on the admin listener.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import t from 'tap';
import { publish } from '../../src/lists/feed';
import { BIN, CHILD_ENV, startGardefou, tempDir, testConfig, writeHosts } from '../helpers/gardefou';
import { startOrigin, viaProxy } from '../helpers/net';
import { addDomain, makeUt1, startFeedServer, startPublishedFeed } from '../lists-update/helpers';

function getJson(port: number, p: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p }, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => { s += c.toString(); });
      res.on('end', () => resolve(JSON.parse(s) as Record<string, unknown>));
    }).on('error', reject);
  });
}

t.test('serve pulls signed bundles, swaps them in live, and says what it runs', async (t) => {
  const dir = tempDir();
  const origin = await startOrigin();
  t.teardown(() => origin.close());
  const { keys, ut1, dasenPolicy, feedDir, server: feed } = await startPublishedFeed(dir);
  t.teardown(() => feed.close());

  const admin = await new Promise<number>((resolve) => {
    const s = http.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
  });
  const g = await startGardefou(testConfig(dir, {
    hosts: writeHosts(dir, ['allowed.test', 'blocked.test', 'new-threat.test']),
    admin: { listen: `127.0.0.1:${admin}` },
    update: { feed: feed.url, trustedKeys: [keys.pubFile], stateDir: path.join(dir, 'state'), intervalSeconds: 3600 },
  }), dir);
  t.teardown(() => g.stop());
  await g.waitForLog((l) => l['msg'] === 'bundle applied' && l['serial'] === '1');
  const url = (h: string) => `http://${h}:${origin.port}/`;
  t.equal((await viaProxy(g.port, url('blocked.test'))).status, 403, 'serial 1 in force');
  t.equal((await viaProxy(g.port, url('new-threat.test'))).status, 200);

  // an emergency addition, published as a delta; SIGHUP makes the gateway look now
  addDomain(ut1, 'adult', 'new-threat.test');
  await publish({ source: ut1, policy: dasenPolicy, keys: [keys.keyFile], feed: feedDir, delta: true });
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => l['msg'] === 'bundle applied' && l['serial'] === '2');
  const blocked = await viaProxy(g.port, url('new-threat.test'));
  t.equal(blocked.status, 403, 'serial 2 changed the decision live');
  const status = await getJson(admin, '/status');
  t.match(status, { lists: { serial: '2' }, update: { running: { serial: '2' } } });

  // replaying serial 1 (an attacker or a stale mirror): refused, serial 2 stays in force
  const staleRoot = path.join(dir, 'stale-www');
  const stale = path.join(staleRoot, 'feed');
  fs.mkdirSync(stale, { recursive: true });
  const ut1old = makeUt1(path.join(dir, 'old'));
  await publish({ source: ut1old, policy: dasenPolicy, keys: [keys.keyFile], feed: stale });
  const replay = await startFeedServer(() => staleRoot);
  t.teardown(() => replay.close());
  const cfg = JSON.parse(fs.readFileSync(g.configPath, 'utf8')) as { update: Record<string, unknown> };
  cfg.update['feed'] = replay.url;
  fs.writeFileSync(g.configPath, JSON.stringify(cfg));
  // the agent keeps the feed it started with; the replay goes through `gardefou update --once`
  // (asynchronously: the replay feed server lives in this process)
  const once = await new Promise<{ code: number | null; out: string }>((resolve) => {
    execFile(process.execPath, [BIN, 'update', '--once', '--config', g.configPath, '--json'], { env: CHILD_ENV }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: stdout + stderr });
    });
  });
  t.not(once.code, 0, 'update --once reports the refusal');
  t.match(once.out, /"reason":"rollback"/);
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => l['msg'] === 'reloaded' && l['serial'] === '2');
  t.equal((await viaProxy(g.port, url('new-threat.test'))).status, 403, 'serial 2 still in force');
});
