/**
 * Transparent mode through real sockets on loopback: a real TLS client sending SNI to the
 * transparent TLS listener, spliced to a real TLS origin; plain HTTP decided on Host; the real
 * policy engine over the fixture lists, a real journal, the shipped SafeSearch map.
 * The upstream port is a handler option (443/80 in production) so the origins can use port 0.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import * as tls from 'node:tls';
import pino from 'pino';
import t from 'tap';
import { applyConfig, defaultConfig, PACKAGE_ROOT, type Config } from '../../src/config';
import { Identity } from '../../src/identity';
import { openJournal, type Journal } from '../../src/journal';
import { loadPolicyEngine } from '../../src/lists/load';
import { ProxyContext } from '../../src/proxy/context';
import { HttpHandler } from '../../src/proxy/http-handler';
import { BlockPage } from '../../src/proxy/pages';
import { loadSafeSearch } from '../../src/proxy/safesearch';
import { hostOfAuthority, TransparentTlsHandler, transparentHttpServer } from '../../src/proxy/transparent';
import { FIXTURES, journalRows as readJournal, tempDir, waitFor } from '../helpers/gardefou';
import { closeServer, listenLoopback, makeCert, Origin, startOrigin, startTlsOrigin } from '../helpers/net';
import { captureClientHello, reframe } from '../tls/hello-helpers';

interface Row { [k: string]: unknown }
const CANARY = '/canary-path-5e1d/secret?q=canary-query';

const cert = makeCert(['tls.test', 'www.google.fr', 'blocked.test']);
let origin: Origin;
let tlsOrigin: Origin;
let journal: Journal;
let ctx: ProxyContext;
let httpHandler: HttpHandler;
let httpServer: http.Server;
let tlsHandler: TransparentTlsHandler;
let tlsServer: net.Server;
let httpPort = 0;
let tlsPort = 0;
let dir = '';
const logLines: string[] = [];
const extraServers: net.Server[] = [];

function journalRows(file = 'journal.db'): Row[] {
  return readJournal(path.join(dir, file));
}

/** The journal row of the connection whose client port is `port`, once completed. */
const claimed = new Set<unknown>();
/**
 * The newest record of client port `port` not returned before, once completed (ephemeral ports
 * are reused across tests, so the first match could be an older connection's).
 */
function rowOfPort(port: number): Promise<Row> {
  return waitFor(() => {
    const rows = journalRows().filter((r) => r['client_port'] === port && !claimed.has(r['id']));
    const r = rows[rows.length - 1];
    if (r === undefined || r['end_ms'] === null) return undefined;
    claimed.add(r['id']);
    return r;
  }, `journal row of client port ${port}`);
}

/** A real TLS client through the transparent listener: one GET, returns the body or the error. */
function tlsGet(port: number, servername: string | undefined): Promise<{ body?: string; error?: NodeJS.ErrnoException; localPort: number }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: cert.cert, ...(servername === undefined ? {} : { servername }) }, () => {
      s.write(`GET ${CANARY} HTTP/1.1\r\nHost: ${servername ?? 'x'}\r\nConnection: close\r\n\r\n`);
    });
    let localPort = 0;
    let secured = false;
    s.once('connect', () => { localPort = s.localPort ?? 0; });
    s.once('secureConnect', () => { secured = true; });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); resolve({ error: Object.assign(new Error('test timeout'), { code: 'TIMEOUT' }), localPort }); }, 8000);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      s.destroy();
      if (!secured) { resolve({ error: Object.assign(new Error('closed before the handshake'), { code: 'CLOSED_BEFORE_HANDSHAKE' }), localPort }); return; }
      resolve({ body: text.slice(text.indexOf('\r\n\r\n') + 4), localPort });
    });
    s.on('error', (error: NodeJS.ErrnoException) => { clearTimeout(timer); resolve({ error, localPort }); });
  });
}

/** Raw bytes to a listener, in chunks with pauses; resolves with what came back until close. */
function rawSend(port: number, chunks: Buffer[], waitMs = 3000, untilData = false): Promise<{ data: Buffer; localPort: number }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    let localPort = 0;
    const timer = setTimeout(() => { s.destroy(); resolve({ data: Buffer.concat(got), localPort }); }, waitMs);
    s.on('data', (c: Buffer) => { got.push(c); if (untilData) s.destroy(); });
    s.on('close', () => { clearTimeout(timer); resolve({ data: Buffer.concat(got), localPort }); });
    s.on('error', (e: NodeJS.ErrnoException) => { if (e.code !== 'ECONNRESET') reject(e); });
    s.on('connect', async () => {
      localPort = s.localPort ?? 0;
      for (const c of chunks) {
        if (s.destroyed) return;
        s.write(c);
        await new Promise((r) => setTimeout(r, 5));
      }
    });
  });
}

/** Sends a raw HTTP request (for header shapes http.request will not produce). */
function rawHttp(port: number, text: string): Promise<string> {
  return rawSend(port, [Buffer.from(text, 'latin1')]).then((r) => r.data.toString('utf8'));
}

function httpGet(port: number, p: string, headers: Record<string, string>): Promise<{ status: number; text: string; localPort: number }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), localPort: req.socket?.localPort ?? 0 }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function makeContext(overrides: Record<string, unknown>): Promise<{ ctx: ProxyContext; journal: Journal; config: Config }> {
  const hosts = path.join(dir, 'hosts');
  const cfg = applyConfig(defaultConfig(), {
    listen: ['127.0.0.1:0'],
    hosts,
    allowDestinations: ['127.0.0.0/8'],
    lists: path.join(FIXTURES, 'proxy-lists'),
    policy: path.join(FIXTURES, 'proxy-policy.json'),
    journal: { path: path.join(dir, 'journal.db') },
    admin: { listen: null },
    ...overrides,
  }, dir, 'transparent test');
  const log = pino({ level: 'debug' }, new Writable({ write(c: Buffer, _e, cb) { logLines.push(c.toString('utf8')); cb(); } }));
  const policy = await loadPolicyEngine({ lists: cfg.lists, policy: cfg.policy });
  const j = await openJournal(cfg.journal, log);
  return { ctx: new ProxyContext(cfg, policy, j, log, new Identity(), BlockPage.fromFile(cfg.blockPage)), journal: j, config: cfg };
}

const safe = loadSafeSearch(path.join(PACKAGE_ROOT, 'rules', 'safesearch.json'));

t.before(async () => {
  dir = tempDir('gardefou-transparent-');
  // www.google.fr points where nothing listens: only the SafeSearch substitution reaches the origin
  fs.writeFileSync(path.join(dir, 'hosts'), [
    '127.0.0.1 allowed.test blocked.test tls.test forcesafesearch.google.com',
    '127.0.0.2 www.google.fr',
    '',
  ].join('\n'));
  origin = await startOrigin();
  tlsOrigin = await startTlsOrigin(cert);
  ({ ctx, journal } = await makeContext({}));
  httpHandler = new HttpHandler(ctx);
  httpServer = transparentHttpServer(ctx, httpHandler, { upstreamPort: origin.port });
  await listenLoopback(httpServer);
  httpPort = (httpServer.address() as net.AddressInfo).port;
  tlsHandler = new TransparentTlsHandler(ctx, {
    upstreamPort: tlsOrigin.port,
    helloTimeoutMs: 500,
    substitute: (target) => safe.substitute(target.host, 'strict'),
  });
  tlsServer = tlsHandler.createServer();
  await listenLoopback(tlsServer);
  tlsPort = (tlsServer.address() as net.AddressInfo).port;
});

t.teardown(async () => {
  for (const s of extraServers) await closeServer(s);
  for (const s of tlsHandler?.open ?? []) s.destroy();
  if (tlsServer) await closeServer(tlsServer);
  if (httpServer) await closeServer(httpServer);
  httpHandler?.close();
  await journal?.close();
  await origin?.close();
  await tlsOrigin?.close();
});

t.test('TLS: an allowed SNI name is spliced to the origin, TLS end to end, journaled', async (t) => {
  const r = await tlsGet(tlsPort, 'tls.test');
  t.error(r.error);
  t.equal(r.body, 'tls-origin:tls.test', 'the origin answered over the client\'s own TLS session');
  const row = await rowOfPort(r.localPort);
  t.match(row, { decision: 'allow', protocol: 'connect', method: 'TLS', dest_host: 'tls.test', dest_port: tlsOrigin.port, dest_ip: '127.0.0.1', client_ip: '127.0.0.1' });
  t.ok((row['egress_port'] as number) > 0, 'egress port recorded');
  t.ok((row['bytes_in'] as number) > 200 && (row['bytes_out'] as number) > 200, 'byte counts include the replayed hello');
});

t.test('TLS: a blocked SNI name gets a TLS alert, never reaches the origin', async (t) => {
  const before = tlsOrigin.seen.length;
  const r = await tlsGet(tlsPort, 'blocked.test');
  t.equal(r.error?.code, 'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED', 'access_denied alert');
  t.equal(tlsOrigin.seen.length, before);
  const row = await rowOfPort(r.localPort);
  t.match(row, { decision: 'block', category: 'adult', dest_host: 'blocked.test', method: 'TLS', dest_ip: null });
});

t.test('TLS: SafeSearch substitution connects to the safe endpoint, the client keeps its name', async (t) => {
  const r = await tlsGet(tlsPort, 'www.google.fr');
  t.error(r.error);
  t.equal(r.body, 'tls-origin:www.google.fr', 'reached the stand-in safe endpoint (www.google.fr itself is unreachable)');
  const row = await rowOfPort(r.localPort);
  t.match(row, { decision: 'allow', reason: 'safesearch', dest_host: 'www.google.fr', dest_ip: '127.0.0.1' });
});

t.test('TLS: no SNI is refused and journaled', async (t) => {
  const before = tlsOrigin.seen.length;
  const r = await tlsGet(tlsPort, undefined);
  t.ok(r.error, `client sees the connection closed (${r.error?.code})`);
  const row = await rowOfPort(r.localPort);
  t.match(row, { decision: 'refused', reason: 'no-sni', method: 'TLS', dest_host: '' });
  t.equal(tlsOrigin.seen.length, before);
});

t.test('TLS: not TLS, an incomplete hello (timeout), a malformed hello: refused and journaled', async (t) => {
  const plain = await rawSend(tlsPort, [Buffer.from('GET / HTTP/1.1\r\nHost: tls.test\r\n\r\n')]);
  t.equal(plain.data.length, 0, 'nothing answered');
  t.match(await rowOfPort(plain.localPort), { decision: 'refused', reason: 'not-tls' });

  const hello = await captureClientHello({ servername: 'tls.test' });
  const partial = await rawSend(tlsPort, [hello.subarray(0, 40)]);
  t.match(await rowOfPort(partial.localPort), { decision: 'refused', reason: 'tls-truncated' }, 'closed after the hello timeout');

  const badLen = Buffer.from(hello);
  const at = badLen.indexOf(Buffer.from('tls.test'));
  badLen[at - 1] = 0x40; // server_name entry length now overruns its list
  const bad = await rawSend(tlsPort, [badLen]);
  t.match(await rowOfPort(bad.localPort), { decision: 'refused', reason: 'tls-malformed' });
});

t.test('TLS: a hello split over records and TCP chunks is reassembled and replayed intact', async (t) => {
  const hello = await captureClientHello({ servername: 'tls.test' });
  for (const [name, bytes] of [['one record', hello], ['records of 100 bytes', reframe(hello, [100])]] as const) {
    const chunks: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += 37) chunks.push(bytes.subarray(i, i + 37));
    const r = await rawSend(tlsPort, chunks, 5000, true);
    t.equal(r.data[0], 22, `${name}: the origin's ServerHello came back through the splice`);
    const row = await rowOfPort(r.localPort);
    t.match(row, { decision: 'allow', dest_host: 'tls.test' });
  }
});

t.test('TLS: a connection that sends nothing is not journaled', async (t) => {
  const silent = await new Promise<number>((resolve) => {
    const s = net.connect(tlsPort, '127.0.0.1', () => { const p = s.localPort ?? 0; s.end(); s.on('close', () => resolve(p)); });
  });
  // barrier: a later refused connection is journaled; the silent one must not be
  const after = await rawSend(tlsPort, [Buffer.from('x')]);
  await rowOfPort(after.localPort);
  t.notOk(journalRows().some((r) => r['client_port'] === silent), 'no record for the silent connection');
});

t.test('TLS: original destination disagreeing with the SNI name (domain fronting)', async (t) => {
  const refuse = new TransparentTlsHandler(ctx, { upstreamPort: tlsOrigin.port, originalDestination: () => '127.0.0.9', onMismatch: 'refuse', lookupAll: async () => [] });
  const byName = new TransparentTlsHandler(ctx, { upstreamPort: tlsOrigin.port, originalDestination: () => '127.0.0.9', lookupAll: async () => [] });
  const agree = new TransparentTlsHandler(ctx, { upstreamPort: tlsOrigin.port, originalDestination: () => '127.0.0.1', onMismatch: 'refuse', lookupAll: async () => [] });
  const ports: number[] = [];
  for (const h of [refuse, byName, agree]) {
    const s = h.createServer();
    extraServers.push(s);
    await listenLoopback(s);
    ports.push((s.address() as net.AddressInfo).port);
  }
  const r1 = await tlsGet(ports[0]!, 'tls.test');
  t.ok(r1.error, 'mismatch refused');
  t.match(await rowOfPort(r1.localPort), { decision: 'refused', reason: 'sni-mismatch', dest_host: 'tls.test' });
  const r2 = await tlsGet(ports[1]!, 'tls.test');
  t.equal(r2.body, 'tls-origin:tls.test', 'by-name: connected to the address of the name, not the one the client aimed at');
  t.ok(logLines.some((l) => l.includes('sni name does not resolve to the original destination')), 'mismatch logged');
  const r3 = await tlsGet(ports[2]!, 'tls.test');
  t.equal(r3.body, 'tls-origin:tls.test', 'agreeing destination passes');
});

t.test('HTTP: origin-form decided on Host, forwarded on the redirected port', async (t) => {
  const r = await httpGet(httpPort, '/echo', { host: 'allowed.test' });
  t.equal(r.status, 200);
  const seen = JSON.parse(r.text) as { url: string; headers: Record<string, string> };
  t.equal(seen.url, '/echo');
  t.equal(seen.headers['host'], `allowed.test:${origin.port}`);
  const row = await rowOfPort(r.localPort);
  t.match(row, { decision: 'allow', protocol: 'http', method: 'GET', dest_host: 'allowed.test', dest_port: origin.port, status: 200 });

  const withPort = await httpGet(httpPort, '/', { host: 'allowed.test:9' });
  t.equal(withPort.status, 200, 'a port in Host does not choose the upstream port');
  t.equal(withPort.text, `origin:allowed.test:${origin.port}`);
});

t.test('HTTP: blocked Host gets the block page; the path is in no log and no record', async (t) => {
  const before = origin.seen.length;
  const r = await httpGet(httpPort, CANARY, { host: 'www.blocked.test' });
  t.equal(r.status, 403);
  t.match(r.text, /www\.blocked\.test/);
  t.notMatch(r.text, /canary/);
  t.equal(origin.seen.length, before);
  const row = await rowOfPort(r.localPort);
  t.match(row, { decision: 'block', category: 'adult', dest_host: 'www.blocked.test', status: 403 });
  t.notOk(logLines.some((l) => l.includes('canary')), 'no path or query in the log');
  t.notOk(fs.readFileSync(path.join(dir, 'journal.db')).includes('canary'), 'no path or query in the journal file');
});

t.test('HTTP: missing, duplicate or invalid Host, absolute-form: 400, journaled', async (t) => {
  const cases: Array<[string, string]> = [
    ['no Host (HTTP/1.0)', 'GET / HTTP/1.0\r\n\r\n'],
    ['two Host headers', 'GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: blocked.test\r\n\r\n'],
    ['Host with userinfo', 'GET / HTTP/1.1\r\nHost: allowed.test@blocked.test\r\n\r\n'],
    ['Host with a path', 'GET / HTTP/1.1\r\nHost: blocked.test/x\r\n\r\n'],
    ['absolute-form', `GET http://allowed.test:${origin.port}/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n`],
  ];
  const before = origin.seen.length;
  for (const [name, text] of cases) {
    const answer = await rawHttp(httpPort, text);
    t.match(answer, /^HTTP\/1\.1 400 /, name);
  }
  t.equal(origin.seen.length, before, 'nothing forwarded');
  const rows = await waitFor(() => {
    const rs = journalRows().filter((r) => r['protocol'] === 'http' && r['decision'] === 'refused' && r['end_ms'] !== null);
    return rs.length >= cases.length ? rs : undefined;
  }, 'refusal rows');
  t.ok(rows.some((r) => r['reason'] === 'missing-host'));
});

t.test('hostOfAuthority', async (t) => {
  const cases: Array<[string, string | null]> = [
    ['Example.COM', 'example.com'],
    ['example.com:8080', 'example.com'],
    ['example.com.', 'example.com'],
    ['[::1]:80', '::1'],
    ['[::ffff:10.0.0.1]', '10.0.0.1'],
    ['', null],
    [':80', null],
    ['a:b:c', null],
    ['example.com:http', null],
    ['a b.com', null],
    ['x@y.com', null],
  ];
  for (const [v, want] of cases) t.equal(hostOfAuthority(v), want, JSON.stringify(v));
});

t.test('TLS through the parent proxy: CONNECT to the SNI name (or its SafeSearch endpoint)', async (t) => {
  const asked: string[] = [];
  const parent = net.createServer((c) => {
    c.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      c.off('data', onData);
      asked.push(buf.subarray(0, buf.indexOf('\r\n')).toString('latin1'));
      const up = net.connect(tlsOrigin.port, '127.0.0.1', () => {
        c.write('HTTP/1.1 200 Connection established\r\n\r\n');
        up.write(buf.subarray(end + 4));
        c.pipe(up);
        up.pipe(c);
      });
      up.on('error', () => c.destroy());
    };
    c.on('data', onData);
  });
  extraServers.push(parent);
  await listenLoopback(parent);
  const pctx = await makeContext({ parentProxy: `http://127.0.0.1:${(parent.address() as net.AddressInfo).port}`, journal: { path: path.join(dir, 'journal-parent.db') } });
  t.teardown(() => pctx.journal.close());
  const h = new TransparentTlsHandler(pctx.ctx, { upstreamPort: tlsOrigin.port, substitute: (target) => safe.substitute(target.host, 'strict') });
  const s = h.createServer();
  extraServers.push(s);
  await listenLoopback(s);
  const port = (s.address() as net.AddressInfo).port;
  const a = await tlsGet(port, 'tls.test');
  t.equal(a.body, 'tls-origin:tls.test');
  const b = await tlsGet(port, 'www.google.fr');
  t.equal(b.body, 'tls-origin:www.google.fr');
  t.same(asked, [`CONNECT tls.test:${tlsOrigin.port} HTTP/1.1`, `CONNECT forcesafesearch.google.com:${tlsOrigin.port} HTTP/1.1`]);
  const row = await waitFor(() => journalRows('journal-parent.db').find((r) => r['client_port'] === b.localPort && r['end_ms'] !== null), 'parent row');
  t.match(row, { decision: 'allow', reason: 'safesearch', dest_host: 'www.google.fr', dest_ip: null });
});
