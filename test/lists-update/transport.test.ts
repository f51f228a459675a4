/**
 * Transports of the channel: HTTPS with normal certificate checks (the test CA is given as an
 * extra CA; without it the server is refused), and the school's parent proxy (absolute-form GET
 * for http feeds, CONNECT for https feeds).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { publish } from '../../src/lists/feed';
import { generateKeyPair } from '../../src/lists/sign';
import { UpdateAgent } from '../../src/lists/update';
import { feedRoot, makePki, makeUt1, startFeedServer, startParentProxy, tmp } from './helpers';

const dir = tmp();
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const K = generateKeyPair(path.join(dir, 'key'));
const policy = path.join(dir, 'policy.json');
fs.writeFileSync(policy, '{}');
const root = feedRoot(dir);
const pki = makePki();

t.before(async () => {
  await publish({ source: makeUt1(dir), policy, keys: [K.keyFile], feed: path.join(root(), 'feed') });
});

const agentFor = (name: string, feed: string, extra: Partial<ConstructorParameters<typeof UpdateAgent>[0]> = {}) =>
  new UpdateAgent({ feed, trustedKeys: [K.pubFile], stateDir: path.join(dir, name), timeoutMs: 3000, ...extra });

t.test('https with the test CA added beside the system roots', async (t) => {
  const server = await startFeedServer(root, { key: pki.key, cert: pki.cert });
  t.teardown(() => server.close());
  const r = await agentFor('https-ok', server.url, { ca: pki.ca }).checkNow();
  t.equal(r.outcome, 'applied', r.message ?? '');
  t.equal(r.serial, '1');
});

t.test('https without that CA: the certificate is refused', async (t) => {
  const server = await startFeedServer(root, { key: pki.key, cert: pki.cert });
  t.teardown(() => server.close());
  const r = await agentFor('https-noca', server.url).checkNow();
  t.equal(r.outcome, 'refused');
  t.equal(r.reason, 'network');
  t.match(r.message ?? '', /certificate/i, r.message ?? '');
  t.equal(r.serial, null, 'nothing applied');
});

t.test('http feed through the parent proxy (absolute-form)', async (t) => {
  const server = await startFeedServer(root);
  const proxy = await startParentProxy();
  t.teardown(async () => {
    await proxy.close();
    await server.close();
  });
  const r = await agentFor('proxy-http', server.url, { parentProxy: proxy.url }).checkNow();
  t.equal(r.outcome, 'applied', r.message ?? '');
  t.ok(proxy.gets.some((g) => g === `${server.url}feed.json`), 'the pointer went through the proxy');
  t.ok(proxy.gets.some((g) => g.includes('/feed/bundles/')), 'the bundle too');
  t.equal(proxy.gets.length, server.seen.length, 'every request the feed saw came through the proxy');
});

t.test('https feed through the parent proxy (CONNECT)', async (t) => {
  const server = await startFeedServer(root, { key: pki.key, cert: pki.cert });
  const proxy = await startParentProxy();
  t.teardown(async () => {
    await proxy.close();
    await server.close();
  });
  const r = await agentFor('proxy-https', server.url, { parentProxy: proxy.url, ca: pki.ca }).checkNow();
  t.equal(r.outcome, 'applied', r.message ?? '');
  t.ok(proxy.connects.length >= 3, `${proxy.connects.length} CONNECT tunnels (pointer, manifest, bundle)`);
  t.ok(proxy.connects.every((c) => c === `127.0.0.1:${server.port}`), 'all to the feed');
  t.equal(proxy.gets.length, 0, 'no plain GET through the proxy');
});

t.test('a parent proxy that refuses CONNECT is a refusal, not a crash', async (t) => {
  const server = await startFeedServer(root, { key: pki.key, cert: pki.cert });
  const proxy = await startParentProxy();
  t.teardown(async () => {
    await proxy.close();
    await server.close();
  });
  const url = server.url.replace('127.0.0.1', 'localhost'); // the test proxy only tunnels to 127.0.0.1
  const r = await agentFor('proxy-403', url, { parentProxy: proxy.url, ca: pki.ca }).checkNow();
  t.equal(r.outcome, 'refused');
  t.equal(r.reason, 'network');
  t.match(r.message ?? '', /403/);
});
