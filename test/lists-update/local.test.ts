/**
 * The school's layer beside the bundle: local entries live in the school's own files, survive
 * updates, and an allow entry contradicting a DASEN mandatory block is refused with the rule.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { publish } from '../../src/lists/feed';
import { generateKeyPair } from '../../src/lists/sign';
import { composePolicy } from '../../src/lists/local';
import { AppliedInfo, UpdateAgent } from '../../src/lists/update';
import { loadPolicyEngine } from '../../src/lists/load';
import { addDomain, makeUt1, tmp } from './helpers';
import { pathToFileURL } from 'node:url';

t.test('local entries: composed, refused when contradicting, surviving updates', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const K = generateKeyPair(path.join(dir, 'key'));
  const ut1 = makeUt1(dir);
  const feed = path.join(dir, 'feed');
  const dasen = path.join(dir, 'dasen.json');
  fs.writeFileSync(dasen, JSON.stringify({ dasen: { block: ['adult'], deny: ['evil.test'] } }));
  // the school's files, outside the state folder
  const school = path.join(dir, 'etc', 'policy.json');
  fs.mkdirSync(path.dirname(school), { recursive: true });
  fs.writeFileSync(school, JSON.stringify({ localFile: 'local.json', local: { allow: ['inline-ok.test'] } }));
  fs.writeFileSync(path.join(dir, 'etc', 'local.json'), JSON.stringify({ allow: ['blocked.test', 'evil.test', 'casino.test'], deny: ['school-deny.test'] }));

  const logs: Array<Record<string, unknown>> = [];
  const pino = (await import('pino')).default;
  const log = pino({ level: 'info' }, { write: (s: string) => void logs.push(JSON.parse(s) as Record<string, unknown>) });
  let info: AppliedInfo | null = null;
  const agent = new UpdateAgent({
    feed: pathToFileURL(feed).href + '/',
    trustedKeys: [K.pubFile],
    stateDir: path.join(dir, 'state'),
    schoolPolicy: school,
    log,
    onApplied: (i) => {
      info = i;
    },
  });

  await publish({ source: ut1, policy: dasen, keys: [K.keyFile], feed });
  const r = await agent.checkNow();
  t.equal(r.outcome, 'applied', r.message ?? '');
  const refusals = logs.filter((l) => typeof l['msg'] === 'string' && (l['msg'] as string).includes('refused: it contradicts'));
  t.equal(refusals.length, 2, 'two entries refused');
  t.match(refusals.map((l) => l['msg']).join('\n'), /"blocked\.test" \(.*local\.json allow\) refused: it contradicts the DASEN mandatory block dasen\.block category adult \(domain blocked\.test\)/);
  t.match(refusals.map((l) => l['msg']).join('\n'), /"evil\.test" .* dasen\.deny "evil\.test"/);

  const check = async (serial: string) => {
    const i = info as AppliedInfo | null;
    if (!i) throw new Error('not applied');
    t.equal(i.serial, serial);
    const engine = await loadPolicyEngine({ lists: i.listsPath, policy: i.policyPath, listSerial: i.serial });
    const d = (host: string) => engine.decide({ kind: 'connect', host, port: 443, path: '' }, { ip: '10.0.0.1' });
    t.equal(d('casino.test').reason, 'local-allow', 'a non-mandatory block lifted by the school');
    t.equal(d('blocked.test').reason, 'mandatory', 'the mandatory block holds');
    t.equal(d('evil.test').reason, 'mandatory');
    t.equal(d('school-deny.test').reason, 'local-deny', 'school deny entries apply');
    const composed = JSON.parse(fs.readFileSync(i.policyPath, 'utf8')) as { local: { allow: string[] } };
    t.same(composed.local.allow.sort(), ['casino.test', 'inline-ok.test'], 'the refused entries are not in the policy in force');
  };
  await check('1');

  // the next bundle: the school's entries are still there (they never lived in the bundle)
  addDomain(ut1, 'gambling', 'another.test');
  await publish({ source: ut1, policy: dasen, keys: [K.keyFile], feed });
  t.equal((await agent.checkNow()).outcome, 'applied');
  await check('2');

  // the school edits its local file; the running version is recomposed (serve: on SIGHUP)
  fs.writeFileSync(path.join(dir, 'etc', 'local.json'), JSON.stringify({ allow: ['casino.test', 'another.test'] }));
  const c = await agent.recomposeLocal();
  t.same(c?.refused, [], 'nothing to refuse now');
  const composed = JSON.parse(fs.readFileSync(agent.current()?.policyPath ?? '', 'utf8')) as { localFile: string };
  t.equal(composed.localFile, path.join(dir, 'etc', 'local.json'), 'the local file is referenced where the school keeps it');
});

t.test('interception sections: the bundle decides, the school only when the bundle is silent', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ut1 = makeUt1(dir);
  const school = path.join(dir, 'school.json');
  fs.writeFileSync(school, JSON.stringify({ intercept: { domains: ['school-pick.test'] }, local: { allow: [] } }));
  const compose = async (bundlePolicy: object) => {
    const dasen = path.join(dir, 'dasen.json');
    fs.writeFileSync(dasen, JSON.stringify(bundlePolicy));
    const out = path.join(dir, 'composed.json');
    await composePolicy({ dasenPolicy: dasen, schoolPolicy: school, lists: ut1, out });
    return JSON.parse(fs.readFileSync(out, 'utf8')) as Record<string, unknown>;
  };
  const withDasen = await compose({ dasen: { block: ['adult'] }, intercept: { domains: ['dasen-pick.test'] }, noIntercept: { domains: ['bank.test'] } });
  t.same(withDasen['intercept'], { domains: ['dasen-pick.test'] }, "the bundle's intercept section is kept (it used to be dropped)");
  t.same(withDasen['noIntercept'], { domains: ['bank.test'] }, 'and its noIntercept section');
  const silent = await compose({ dasen: { block: ['adult'] } });
  t.same(silent['intercept'], { domains: ['school-pick.test'] }, "the school's section applies when the bundle has none");
});
