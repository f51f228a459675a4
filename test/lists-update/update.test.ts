/**
 * The gateway side of the DASEN channel over a real feed served on loopback: fresh install,
 * full and delta updates changing decisions of a loaded engine, conditional GET, and every
 * refusal (rollback, freeze, arbitrary content, unknown key, truncated, oversized, endless,
 * silent server) leaving the last good lists live with the reason in status.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t, { type Test } from 'tap';
import { publish } from '../../src/lists/feed';
import { generateKeyPair } from '../../src/lists/sign';
import { AppliedInfo, UpdateAgent, UpdateAgentOptions, verifyInstalled } from '../../src/lists/update';
import { loadPolicyEngine } from '../../src/lists/load';
import type { PolicyEngine } from '../../src/policy/types';
import { addDomain, feedRoot, makeUt1, startFeedServer, tmp } from './helpers';

const dir = tmp();
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const A = generateKeyPair(path.join(dir, 'keyA'));
const B = generateKeyPair(path.join(dir, 'keyB'));
const C = generateKeyPair(path.join(dir, 'keyC'));
const ut1 = makeUt1(dir);
const dasenPolicy = path.join(dir, 'dasen-policy.json');
fs.writeFileSync(dasenPolicy, '{}');
const root = feedRoot(dir);
let serveRoot = root();
const feedDir = path.join(root(), 'feed');
const stateDir = path.join(dir, 'state');

const pub = (over: Partial<Parameters<typeof publish>[0]> = {}) =>
  publish({ source: ut1, policy: dasenPolicy, keys: [A.keyFile], feed: feedDir, ...over });

/** The "proxy": an engine swapped by onApplied, decisions asked all along. */
let engine: PolicyEngine | null = null;
const applied: AppliedInfo[] = [];
const decide = (host: string) => {
  if (!engine) return 'no-engine';
  return engine.decide({ kind: 'connect', host, port: 443, path: '' }, { ip: '10.0.0.1' }).action;
};

t.test('the channel, in order', async (t) => {
  const server = await startFeedServer(() => serveRoot);
  t.teardown(() => server.close());
  const opts: UpdateAgentOptions = {
    feed: server.url,
    trustedKeys: [A.pubFile, B.pubFile],
    stateDir,
    timeoutMs: 3000,
    onApplied: async (info) => {
      applied.push(info);
      engine = await loadPolicyEngine({ lists: info.listsPath, policy: info.policyPath, listSerial: info.serial });
    },
  };
  const agent = new UpdateAgent(opts);
  const refusedWith = async (t: Test, reason: string, serialInForce: string) => {
    const r = await agent.checkNow();
    t.equal(r.outcome, 'refused', `refused (${r.message})`);
    t.equal(r.reason, reason, 'with the reason');
    t.equal(r.serial, serialInForce, 'the last good serial stays in force');
    const s = agent.status();
    t.equal(s.running?.serial, serialInForce, 'status: serial in force');
    t.equal(s.lastRefusal?.reason, reason, 'status: last refusal names the reason');
    t.ok(s.lastRefusal?.message, 'status: and says why');
    t.equal(engine?.listSerial, serialInForce, 'the loaded engine was not touched');
    const v = await verifyInstalled(stateDir, [A.pubFile, B.pubFile]);
    t.same(v.problems, [], 'the installed version still matches its manifests');
    return r;
  };

  await t.test('fresh install pulls serial 1', async (t) => {
    t.equal(agent.status().running, null, 'nothing in force before');
    const p = await pub();
    t.equal(p.serial, 1);
    const r = await agent.checkNow();
    t.equal(r.outcome, 'applied', r.message ?? '');
    t.equal(r.serial, '1');
    t.equal(applied.length, 1, 'onApplied called once');
    t.equal(decide('casino.test'), 'block', 'gambling blocked by default');
    t.equal(decide('newsite.test'), 'allow', 'newsite.test not listed yet');
    const s = agent.status();
    t.equal(s.running?.serial, '1');
    t.equal(s.lastApplied?.serial, '1');
    t.equal(s.lastRefusal, null);
  });

  await t.test('a second check is a conditional GET answered 304', async (t) => {
    server.seen.length = 0;
    const r = await agent.checkNow();
    t.equal(r.outcome, 'not-modified');
    t.equal(server.seen.length, 1, 'only the pointer was asked');
    t.ok(server.seen[0]?.inm, 'with If-None-Match');
    t.equal(server.seen[0]?.status, 304);
  });

  await t.test('serial 2 applies while decisions flow, and changes one', async (t) => {
    addDomain(ut1, 'gambling', 'newsite.test');
    await pub();
    let asked = 0;
    let wrong = 0;
    let stop = false;
    const loop = () => {
      if (stop) return;
      const a = decide('casino.test');
      asked++;
      if (a !== 'block') wrong++;
      setImmediate(loop);
    };
    loop();
    const r = await agent.checkNow();
    stop = true;
    t.equal(r.outcome, 'applied', r.message ?? '');
    t.equal(r.serial, '2');
    t.ok(asked > 0, `${asked} decisions during the update`);
    t.equal(wrong, 0, 'every decision during the update was right');
    t.equal(decide('newsite.test'), 'block', 'newsite.test is now blocked');
  });

  await t.test('an emergency delta is small and applies', async (t) => {
    addDomain(ut1, 'gambling', 'urgent.test');
    const p = await pub({ delta: true });
    t.equal(p.kind, 'delta');
    t.equal(p.base, 2);
    const r = await agent.checkNow();
    t.equal(r.outcome, 'applied', r.message ?? '');
    t.equal(r.serial, '3');
    t.ok(r.bytes < 8000, `downloaded ${r.bytes} bytes only`);
    t.equal(decide('urgent.test'), 'block');
    t.equal(decide('newsite.test'), 'block', 'the full bundle entries are still there');
    t.equal(agent.status().running?.kind, 'delta');
  });

  await t.test('a second cumulative delta builds on the same full bundle', async (t) => {
    addDomain(ut1, 'gambling', 'urgent2.test');
    await pub({ delta: true });
    server.seen.length = 0;
    const r = await agent.checkNow();
    t.equal(r.outcome, 'applied', r.message ?? '');
    t.equal(r.serial, '4');
    t.notOk(server.seen.some((s) => s.path.includes('bundles/') || s.path === 'feed/manifests/2.json'), 'the full bundle was not downloaded again');
    t.equal(decide('urgent.test'), 'block');
    t.equal(decide('urgent2.test'), 'block');
    const v = await verifyInstalled(stateDir, [A.pubFile]);
    t.same(v, { ok: true, serial: 4, problems: [] }, 'installed tree matches full + delta manifests');
  });

  await t.test('replaying serial 1 is refused (rollback)', async (t) => {
    // an old copy of the feed: serial 1 alone, properly signed
    const old = path.join(dir, 'old');
    const oldFeed = path.join(old, 'feed');
    const src1 = makeUt1(path.join(dir, 'old-src'));
    await publish({ source: src1, policy: dasenPolicy, keys: [A.keyFile], feed: oldFeed });
    serveRoot = old;
    await refusedWith(t, 'rollback', '4');
    serveRoot = root();
  });

  await t.test('an expired bundle is refused (freeze)', async (t) => {
    await pub({ now: new Date(Date.now() - 40 * 86_400_000), expiresDays: 30 });
    await refusedWith(t, 'expired', '4');
  });

  await t.test('a bundle signed by an unknown key is refused', async (t) => {
    await pub({ keys: [C.keyFile] });
    await refusedWith(t, 'unknown-key', '4');
  });

  await t.test('a flipped byte in the bundle is refused', async (t) => {
    addDomain(ut1, 'gambling', 'flip.test');
    const p = await pub();
    const file = path.join(feedDir, p.archive.path);
    const buf = fs.readFileSync(file);
    const at = Math.floor(buf.length / 2);
    buf[at] = (buf[at] ?? 0) ^ 0x01;
    fs.writeFileSync(file, buf);
    await refusedWith(t, 'hash-mismatch', '4');
    buf[at] = (buf[at] ?? 0) ^ 0x01;
    fs.writeFileSync(file, buf);
  });

  await t.test('a truncated download is refused', async (t) => {
    server.hook = (_req, res, rel, file) => {
      if (!rel.includes('bundles/') || !file) return false;
      const body = fs.readFileSync(file);
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, body.length >> 1), () => res.destroy());
      return true;
    };
    await refusedWith(t, 'size-mismatch', '4');
    server.hook = null;
  });

  await t.test('an oversized download is stopped at the manifest size', async (t) => {
    let sent = 0;
    server.hook = (_req, res, rel, file) => {
      if (!rel.includes('bundles/') || !file) return false;
      res.writeHead(200); // chunked: no length announced
      res.write(fs.readFileSync(file));
      const more = () => {
        if (res.destroyed || sent > 50 << 20) return res.destroy();
        sent += 65536;
        if (res.write(Buffer.alloc(65536, 7))) setImmediate(more);
        else res.once('drain', more);
      };
      more();
      return true;
    };
    await refusedWith(t, 'too-large', '4');
    t.ok(sent < 50 << 20, `the server was cut off after ${sent} extra bytes`);
    server.hook = null;
  });

  await t.test('an announced size above the cap is refused before reading', async (t) => {
    server.hook = (_req, res, rel) => {
      if (!rel.includes('bundles/')) return false;
      res.writeHead(200, { 'content-length': 10 * 2 ** 30 });
      res.write('x');
      return true;
    };
    await refusedWith(t, 'too-large', '4');
    server.hook = null;
  });

  await t.test('a bundle larger than update maxBytes is refused from its manifest', async (t) => {
    const small = new UpdateAgent({ ...opts, maxBytes: 100 });
    server.seen.length = 0;
    const r = await small.checkNow();
    t.equal(r.outcome, 'refused');
    t.equal(r.reason, 'too-large', r.message ?? '');
    t.notOk(server.seen.some((s) => s.path.includes('bundles/')), 'the archive was not requested');
  });

  await t.test('an endless pointer is cut at its cap', async (t) => {
    server.hook = (_req, res, rel) => {
      if (rel !== 'feed/feed.json') return false;
      res.writeHead(200);
      const more = () => {
        if (res.destroyed) return;
        if (res.write(Buffer.alloc(65536, 32))) setImmediate(more);
        else res.once('drain', more);
      };
      more();
      return true;
    };
    await refusedWith(t, 'too-large', '4');
    server.hook = null;
  });

  await t.test('a feed that accepts and never answers times out', async (t) => {
    server.hook = () => true; // never answers
    const quick = new UpdateAgent({ ...opts, timeoutMs: 300 });
    const t0 = Date.now();
    const r = await quick.checkNow();
    t.equal(r.outcome, 'refused');
    t.equal(r.reason, 'timeout', r.message ?? '');
    t.ok(Date.now() - t0 < 10_000, 'bounded');
    t.equal(agent.status().lastRefusal?.reason, 'timeout', 'status read from disk by another agent says why');
    server.hook = null;
  });

  await t.test('key rotation: a bundle signed by the new key, trusted beside the old', async (t) => {
    addDomain(ut1, 'gambling', 'rotated.test');
    await pub({ keys: [B.keyFile] });
    const r = await agent.checkNow();
    t.equal(r.outcome, 'applied', r.message ?? '');
    t.equal(decide('rotated.test'), 'block');
    t.equal(decide('flip.test'), 'block');
    t.equal(agent.status().running?.keyid, B.keyid, 'status names the signing key');
    t.equal(agent.status().consecutiveFailures, 0);
    // a gateway that only knows the old key refuses it; one that knows only the new key takes it
    const oldOnly = await new UpdateAgent({ ...opts, stateDir: path.join(dir, 'state-old'), trustedKeys: [A.pubFile], onApplied: () => undefined }).checkNow();
    t.equal(oldOnly.reason, 'unknown-key');
    // during the overlap the DASEN signs with both: old-key gateways and new-key gateways agree
    addDomain(ut1, 'gambling', 'both.test');
    await pub({ keys: [A.keyFile, B.keyFile] });
    for (const k of [A.pubFile, B.pubFile]) {
      const r2 = await new UpdateAgent({ ...opts, stateDir: path.join(dir, `state-${path.basename(path.dirname(k))}`), trustedKeys: [k], onApplied: () => undefined }).checkNow();
      t.equal(r2.outcome, 'applied', `trusting only ${path.basename(path.dirname(k))}: ${r2.message ?? 'applied'}`);
    }
  });

  await t.test('status and metrics from another process view', async (t) => {
    const { readStatus, renderUpdateMetrics } = await import('../../src/lists/update');
    const s = readStatus(stateDir, server.url);
    t.ok(s.running && Number(s.running.serial) >= 8);
    t.ok(s.counters.refused >= 8, 'refusals counted');
    const m = renderUpdateMetrics(s);
    t.match(m, new RegExp(`^gardefou_lists_serial ${s.running?.serial}$`, 'm'));
    t.match(m, /^gardefou_update_checks_total\{outcome="refused"\} \d+$/m);
    t.match(m, /^# TYPE gardefou_update_consecutive_failures gauge$/m);
  });

  await agent.stop();
});
