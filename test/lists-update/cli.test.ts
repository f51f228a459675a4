/**
 * `gardefou update --once / --status` as the systemd timer and the operator run them.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { PACKAGE_ROOT } from '../../src/config';
import { publish } from '../../src/lists/feed';
import { generateKeyPair } from '../../src/lists/sign';
import { makeUt1, tmp } from './helpers';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'gardefou');
const DIST = path.resolve(__dirname, '..', '..');
const cli = (args: string[]) => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, GARDEFOU_DIST: DIST }, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

t.test('update --once, --status', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const K = generateKeyPair(path.join(dir, 'key'));
  const other = generateKeyPair(path.join(dir, 'other'));
  const policy = path.join(dir, 'policy.json');
  fs.writeFileSync(policy, '{}');
  const feed = path.join(dir, 'feed');
  const ut1 = makeUt1(dir);
  await publish({ source: ut1, policy, keys: [K.keyFile], feed });
  const config = path.join(dir, 'gardefou.json');
  fs.writeFileSync(config, JSON.stringify({ update: { feed: pathToFileURL(feed).href + '/', trustedKeys: [K.pubFile], stateDir: path.join(dir, 'state') } }));

  const s0 = cli(['update', '--status', '--config', config, '--json']);
  t.equal(s0.code, 0, s0.err);
  t.equal(JSON.parse(s0.out).running, null, 'nothing in force yet');
  const once = cli(['update', '--once', '--config', config, '--json']);
  t.equal(once.code, 0, once.err);
  t.match(JSON.parse(once.out), { outcome: 'applied', serial: '1' });
  const again = cli(['update', '--once', '--config', config]);
  t.equal(again.code, 0);
  t.match(again.out, /^feed not modified \(serial 1\)/);

  await publish({ source: ut1, policy, keys: [other.keyFile], feed });
  const refused = cli(['update', '--once', '--config', config]);
  t.equal(refused.code, 1, 'a refusal fails the unit');
  t.match(refused.out, /^REFUSED \(unknown-key\)/);
  const status = cli(['update', '--status', '--config', config]);
  t.equal(status.code, 0);
  t.match(status.out, /in force +serial 1 \(full\)/);
  t.match(status.out, /last refusal +\S+ unknown-key: /);

  const noFeed = path.join(dir, 'nofeed.json');
  fs.writeFileSync(noFeed, JSON.stringify({ update: { stateDir: path.join(dir, 'state2') } }));
  const bad = cli(['update', '--once', '--config', noFeed]);
  t.equal(bad.code, 2);
  t.match(bad.err, /^gardefou: update: no feed/);
  const badFlag = cli(['update', '--once', '--config', config, '--feed', 'ftp://x']);
  t.equal(badFlag.code, 2);
  t.match(badFlag.err, /^gardefou: flag --feed/);
});
