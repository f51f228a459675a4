/**
 * Evasion forms through the live proxy (the real `gardefou serve`, fixture lists ut1-mini,
 * default policy): every spelling of a listed host is blocked over HTTP and CONNECT, and
 * unparseable hosts are refused, never forwarded.
 */
import * as path from 'node:path';
import t from 'tap';
import { FIXTURES, Running, startGardefou, tempDir, testConfig, writeHosts } from '../helpers/gardefou';
import { connectVia, Origin, rawExchange, startOrigin } from '../helpers/net';

let gf: Running;
let origin: Origin;

t.before(async () => {
  origin = await startOrigin();
  const dir = tempDir();
  const hosts = writeHosts(dir, ['allowed.test']);
  gf = await startGardefou(testConfig(dir, {
    lists: path.join(FIXTURES, 'ut1-mini'),
    policy: path.join(FIXTURES, 'proxy-policy.json'),
    hosts,
  }), dir);
});

t.teardown(async () => {
  await gf?.stop();
  await origin?.close();
});

function get(url: string): Promise<string> {
  return rawExchange(gf.port, `GET ${url} HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n`);
}

t.test('control: an unlisted host is forwarded', async (t) => {
  const r = await get(`http://allowed.test:${origin.port}/x`);
  t.match(r, /^HTTP\/1\.1 200/);
});

t.test('HTTP: every spelling of a listed host is blocked', async (t) => {
  const urls = [
    'http://blocked.test/',
    'http://BLOCKED.TEST/',
    'http://blocked.test./',
    'http://www.Blocked.Test:80/',
    'http://allowed.test@blocked.test/',
    'http://user:pw@blocked.test/',
    'http://bl%6Fcked.test/',
    'http://blocked%2etest/',
    'http://203.0.113.7/',
    'http://3405803783/',
    'http://0xCB007107/',
    'http://0313.0.0161.07/',
    'http://203.0.28935/',
    'http://[::ffff:203.0.113.7]/',
    'http://[::ffff:cb00:7107]/',
    'http://mixed.test/forbidden',
    'http://mixed.test/FORBIDDEN/x',
    'http://mixed.test/%66orbidden',
    'http://mixed.test/a/../forbidden',
    'http://mixed.test/a/%2e%2e/forbidden',
    'http://mixed.test/.//forbidden'.replace('.//', './'),
    'http://mixed.test/ok\\..\\forbidden',
    'http://www.sexe12.test/',
  ];
  for (const u of urls) {
    const r = await get(u);
    t.match(r, /^HTTP\/1\.1 403/, `${u} blocked`);
    t.match(r, /adult|Adulte/i, `${u}: block page names the category`);
  }
});

t.test('HTTP: unparseable hosts are refused (400), never forwarded', async (t) => {
  const seenBefore = origin.seen.length;
  // raw non-ASCII in the request target: Node's parser already refuses it
  t.match(await get('http://ｂｌｏｃｋｅｄ.test/'), /^HTTP\/1\.1 400/, 'full-width host refused');
  for (const u of ['http://good.test\\@blocked.test/', 'http://a..b/', 'http://exa*mple.test/', 'http://256.0.0.1/', 'http://[::1/']) {
    const r = await get(u);
    t.match(r, /^HTTP\/1\.1 400/, `${u} refused`);
  }
  t.equal(origin.seen.length, seenBefore, 'nothing reached the origin');
});

t.test('CONNECT: every spelling of a listed host is blocked', async (t) => {
  for (const a of ['blocked.test:443', 'BLOCKED.test.:443', 'www.blocked.test:443', '203.0.113.7:443', '3405803783:443',
    '0xcb.0.0x71.7:443', '[::ffff:203.0.113.7]:443', 'bl%6fcked.test:443', 'whole.test:443']) {
    const r = await connectVia(gf.port, a);
    r.socket.destroy();
    t.equal(r.status, 403, `CONNECT ${a} blocked`);
  }
  for (const a of ['blocked.test', 'a..b:443', 'good.test@blocked.test:443', '[::1:443']) {
    const r = await connectVia(gf.port, a);
    r.socket.destroy();
    t.equal(r.status, 400, `CONNECT ${a} refused`);
  }
});
