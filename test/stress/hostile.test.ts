/**
 * Faults and hostile input against the real `gardefou serve`, bounded and on loopback only:
 * smuggling forms, malformed request lines, slowloris, connection caps, origin resets and
 * stalls, client aborts, many concurrent keep-alive connections, and a seeded fuzz of random and
 * mutated requests with no crash and no forward that was not journaled.
 *
 * CI runs the reduced sizes; GARDEFOU_STRESS=full runs the sizes of the issue (2,000
 * connections, 100,000 fuzzed requests).
 */
import * as http from 'node:http';
import * as net from 'node:net';
import t from 'tap';
import { journalRows, startGardefou, tempDir, testConfig, waitFor, writeHosts } from '../helpers/gardefou';
import { Origin, rawExchange, startOrigin, viaProxy } from '../helpers/net';

const FULL = process.env['GARDEFOU_STRESS'] === 'full';
const CONNECTIONS = FULL ? 2000 : 500;
const FUZZ = FULL ? 100_000 : 3000;

/** mulberry32: a small seeded PRNG, so a failing case can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

let origin: Origin;
let resets: net.Server;
let resetPort = 0;

t.before(async () => {
  origin = await startOrigin();
  // an origin that sends half a body and resets, or accepts and never answers
  resets = net.createServer((s) => {
    s.once('data', (d: Buffer) => {
      if (d.toString('latin1').includes('/stall')) return; // say nothing, ever
      s.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n' + 'x'.repeat(1000));
      setTimeout(() => s.resetAndDestroy(), 20);
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => resets.listen(0, '127.0.0.1', () => r()));
  resetPort = (resets.address() as net.AddressInfo).port;
});
t.teardown(async () => {
  await origin.close();
  await new Promise<void>((r) => resets.close(() => r()));
});

function gateway(overrides: Record<string, unknown> = {}) {
  const dir = tempDir();
  return startGardefou(testConfig(dir, { hosts: writeHosts(dir, ['allowed.test', 'blocked.test', 'reset.test']), ...overrides }), dir);
}

t.test('request smuggling forms and malformed requests get 400, the proxy lives on', async (t) => {
  const g = await gateway();
  t.teardown(() => g.stop());
  const u = `http://allowed.test:${origin.port}/upload`;
  const cases: Array<[string, string]> = [
    ['CL + TE', `POST ${u} HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`],
    ['two different Content-Length', `POST ${u} HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!`],
    ['obs-fold', `GET ${u} HTTP/1.1\r\nHost: allowed.test\r\nX-Folded: a\r\n b\r\n\r\n`],
    ['bad chunk size', `POST ${u} HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n`],
    ['TE not ending in chunked', `POST ${u} HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`],
    ['space before colon', `GET ${u} HTTP/1.1\r\nHost : allowed.test\r\n\r\n`],
    ['garbage', '\x00\x01\x02 nonsense\r\n\r\n'],
    ['bad version', `GET ${u} HTTP/9.9\r\nHost: allowed.test\r\n\r\n`],
    ['no target', 'GET  HTTP/1.1\r\n\r\n'],
    ['bare LF request line', `GET ${u} HTTP/1.1\nHost: allowed.test\n\n`],
    ['CONNECT without port', 'CONNECT allowed.test HTTP/1.1\r\nHost: allowed.test\r\n\r\n'],
  ];
  const before = origin.seen.length;
  for (const [name, raw] of cases) {
    const answer = await rawExchange(g.port, raw, 3000);
    t.match(answer, /^HTTP\/1\.1 4\d\d /, `${name}: refused with a 4xx`);
  }
  t.equal(origin.seen.length, before, 'nothing reached the origin');
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200, 'still serving');
});

t.test('oversize headers and URLs', async (t) => {
  const g = await gateway();
  t.teardown(() => g.stop());
  const longUrl = `http://allowed.test:${origin.port}/${'a'.repeat(20_000)}`;
  t.match(await rawExchange(g.port, `GET ${longUrl} HTTP/1.1\r\nHost: allowed.test\r\n\r\n`), /^HTTP\/1\.1 431 /);
  const many = Array.from({ length: 2000 }, (_, i) => `X-H${i}: v\r\n`).join('');
  t.match(await rawExchange(g.port, `GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n${many}\r\n`), /^HTTP\/1\.1 431 /);
  t.match(await rawExchange(g.port, `CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n${many}\r\n`), /^HTTP\/1\.1 431 /, 'CONNECT too');
});

t.test('slowloris: slow headers are cut at the header timeout; others are served meanwhile', async (t) => {
  const g = await gateway({ limits: { headerTimeoutMs: 1000 } });
  t.teardown(() => g.stop());
  const slow: net.Socket[] = [];
  const closed: Promise<number>[] = [];
  let closedCount = 0;
  const t0 = Date.now();
  for (let i = 0; i < 50; i++) {
    const s = net.connect(g.port, '127.0.0.1');
    s.on('error', () => undefined);
    s.write('GET http://allowed.test/ HTTP/1.1\r\n');
    const timer = setInterval(() => s.writable && s.write('X-Slow: 1\r\n'), 200);
    closed.push(new Promise((r) => s.once('close', () => { closedCount++; clearInterval(timer); r(Date.now() - t0); })));
    slow.push(s);
  }
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200, 'a normal client is served during the attack');
  const times = await Promise.race([
    Promise.all(closed),
    new Promise<null>((r) => setTimeout(() => r(null), 10_000)),
  ]);
  for (const s of slow) s.destroy();
  t.ok(times !== null, `every slow connection was closed by the proxy (bounded): ${closedCount} of ${slow.length}`);
});

t.test('connections per client are capped', async (t) => {
  const g = await gateway({ limits: { maxConnectionsPerClient: 20 } });
  t.teardown(() => g.stop());
  const socks = await Promise.all(Array.from({ length: 30 }, () => new Promise<{ s: net.Socket; closed: boolean }>((resolve) => {
    const s = net.connect(g.port, '127.0.0.1', () => {
      const st = { s, closed: false };
      s.once('close', () => { st.closed = true; });
      setTimeout(() => resolve(st), 300);
    });
    s.on('error', () => undefined);
  })));
  const refused = socks.filter((x) => x.closed).length;
  t.equal(refused, 10, 'connections over the cap are closed at once');
  for (const x of socks) x.s.destroy();
  await new Promise((r) => setTimeout(r, 100));
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200, 'served again once they are gone');
});

t.test('origin resets mid-body, origin stalls, client aborts mid-upload: no crash, all journaled', async (t) => {
  const g = await gateway({ limits: { idleTimeoutMs: 1000 } });
  t.teardown(() => g.stop());
  // origin resets after part of the body: the client sees a truncated answer
  await new Promise<void>((resolve) => {
    http.get({ host: '127.0.0.1', port: g.port, path: `http://reset.test:${resetPort}/big`, agent: false }, (res) => {
      t.equal(res.statusCode, 200);
      res.on('data', () => undefined);
      res.on('error', () => resolve());
      res.on('close', () => resolve());
    }).on('error', () => resolve());
  });
  // origin accepts and never answers: a 502 once the idle timeout passes
  const stalled = await viaProxy(g.port, `http://reset.test:${resetPort}/stall`);
  t.equal(stalled.status, 502);
  // client aborts in the middle of an upload
  await new Promise<void>((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: g.port, method: 'POST', path: `http://allowed.test:${origin.port}/upload`, agent: false, headers: { 'content-length': '1000000' } });
    req.on('error', () => resolve());
    req.write('x'.repeat(10_000));
    setTimeout(() => { req.destroy(); resolve(); }, 200);
  });
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200, 'still serving');
  const rows = await waitFor(() => {
    const all = journalRows(g.journalPath);
    return all.length >= 4 && all.every((r) => r['end_ms'] !== null) ? all : undefined;
  }, 'four finished records');
  t.ok(rows.some((r) => r['dest_host'] === 'reset.test' && r['decision'] === 'error'), 'the stalled upstream is journaled as an error');
  t.ok(rows.some((r) => r['method'] === 'POST' && r['dest_host'] === 'allowed.test'), 'the aborted upload is journaled');
});

t.test(`${CONNECTIONS} concurrent keep-alive connections`, async (t) => {
  const g = await gateway({ limits: { maxConnectionsPerClient: CONNECTIONS + 10 } });
  t.teardown(() => g.stop());
  const agents: http.Agent[] = [];
  const results = await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    agents.push(agent);
    const a = await viaProxy(g.port, `http://allowed.test:${origin.port}/`, { agent });
    const b = await viaProxy(g.port, `http://allowed.test:${origin.port}/`, { agent });
    return [a.status, b.status];
  }));
  for (const a of agents) a.destroy();
  const bad = results.flat().filter((s) => s !== 200);
  t.same(bad, [], `${CONNECTIONS * 2} requests on ${CONNECTIONS} connections, all 200`);
});

t.test(`seeded fuzz: ${FUZZ} random and mutated requests, no crash, no unjournaled forward`, async (t) => {
  const g = await gateway();
  t.teardown(() => g.stop());
  const rnd = prng(20261129);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  const valid = [
    `GET http://allowed.test:${origin.port}/a?b=c HTTP/1.1\r\nHost: allowed.test\r\n\r\n`,
    `GET http://blocked.test:${origin.port}/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n`,
    `POST http://allowed.test:${origin.port}/upload HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 3\r\n\r\nabc`,
    `CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n`,
    `GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n`,
  ];
  const junk = ['\r\n', ' ', ':', '\x00', '%00', '@', '[', ']', '\\', '..', 'http://', 'Content-Length: 9\r\n', 'Transfer-Encoding: chunked\r\n', '\xff', 'HTTP/1.1', '0x7f000001', '\t'];
  const mutate = (s: string): string => {
    let out = s;
    const n = 1 + Math.floor(rnd() * 4);
    for (let i = 0; i < n; i++) {
      const at = Math.floor(rnd() * out.length);
      const op = rnd();
      if (op < 0.4) out = out.slice(0, at) + pick(junk) + out.slice(at);
      else if (op < 0.7) out = out.slice(0, at) + out.slice(at + 1 + Math.floor(rnd() * 5));
      else out = out.slice(0, at) + String.fromCharCode(Math.floor(rnd() * 256)) + out.slice(at + 1);
    }
    return out;
  };
  const randomBytes = (): string => Array.from({ length: 1 + Math.floor(rnd() * 200) }, () => String.fromCharCode(Math.floor(rnd() * 256))).join('');
  const before = origin.seen.length;
  const inputs = Array.from({ length: FUZZ }, () => {
    const r = rnd();
    return r < 0.1 ? pick(valid) : r < 0.85 ? mutate(pick(valid)) : randomBytes();
  });
  // several at a time, each on its own connection, each bounded
  const CONC = 50;
  let next = 0;
  await Promise.all(Array.from({ length: CONC }, async () => {
    while (next < inputs.length) {
      const input = inputs[next++] as string;
      await rawExchange(g.port, Buffer.from(input, 'latin1'), 2000).catch(() => '');
    }
  }));
  t.equal(g.proc.exitCode, null, 'the proxy is still running');
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200, 'and serving');
  const reached = origin.seen.length - before;
  // every request the origin saw must have an 'allow' journal record for allowed.test
  const rows = await waitFor(() => {
    const all = journalRows(g.journalPath).filter((r) => r['decision'] === 'allow' && r['protocol'] === 'http');
    return all.length >= reached ? all : undefined;
  }, 'journal records for every forwarded request', 15_000);
  t.ok(rows.length >= reached, `${reached} forwards, ${rows.length} allow records`);
  t.ok(reached > 0, 'some fuzzed requests were valid and forwarded');
});
