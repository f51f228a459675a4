/**
 * Transparent listeners on the paths the main transparent test does not take: IPv6 clients and
 * IPv6 origins (HTTP on Host, TLS on SNI), and a journal that cannot be written (fail-closed:
 * nothing reaches the origin, the client gets a 503 or a closed connection, the refusal is
 * logged). Real sockets on [::1] and 127.0.0.1, the real policy engine, a real journal.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import * as tls from 'node:tls';
import pino from 'pino';
import t from 'tap';
import { applyConfig, defaultConfig } from '../../src/config';
import { Identity } from '../../src/identity';
import { openJournal, type Journal } from '../../src/journal';
import { loadPolicyEngine } from '../../src/lists/load';
import { ProxyContext } from '../../src/proxy/context';
import { HttpHandler } from '../../src/proxy/http-handler';
import { BlockPage } from '../../src/proxy/pages';
import { TransparentTlsHandler, transparentHttpServer } from '../../src/proxy/transparent';
import { FIXTURES, journalRows, tempDir, waitFor } from '../helpers/gardefou';
import { closeServer, listenLoopback, makeCert } from '../helpers/net';

const cert = makeCert(['v6.test', 'v4.test']);

function ipv6Available(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(0, '::1', () => s.close(() => resolve(true)));
  });
}

interface Setup {
  dir: string;
  ctx: ProxyContext;
  journal: Journal;
  handler: HttpHandler;
  logs: string[];
  servers: net.Server[];
  seen: string[];
  httpOriginPort: number;
  tlsOriginPort: number;
}

/** A context with its own journal, and HTTP + TLS origins listening on `originHost`. */
async function setup(originHost: string, hostsLine: string): Promise<Setup> {
  const dir = tempDir('gardefou-tedge-');
  fs.writeFileSync(path.join(dir, 'hosts'), `${hostsLine}\n`);
  const seen: string[] = [];
  const httpOrigin = http.createServer((req, res) => {
    seen.push(`http ${req.headers.host ?? ''} from ${req.socket.remoteAddress ?? ''}`);
    req.resume();
    res.end(`origin:${req.headers.host ?? ''}`);
  });
  const tlsOrigin = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    seen.push(`tls ${req.headers.host ?? ''} from ${req.socket.remoteAddress ?? ''}`);
    req.resume();
    res.end(`tls-origin:${req.headers.host ?? ''}`);
  });
  await listenLoopback(httpOrigin, originHost);
  await listenLoopback(tlsOrigin, originHost);
  const cfg = applyConfig(defaultConfig(), {
    listen: ['127.0.0.1:0'],
    clients: ['127.0.0.0/8', '::1/128'],
    hosts: path.join(dir, 'hosts'),
    allowDestinations: ['127.0.0.0/8', '::1/128'],
    lists: path.join(FIXTURES, 'proxy-lists'),
    policy: path.join(FIXTURES, 'proxy-policy.json'),
    journal: { path: path.join(dir, 'j', 'journal.db'), batchMs: 2 },
    admin: { listen: null },
  }, dir, 'transparent edge test');
  const logs: string[] = [];
  const log = pino({ level: 'debug' }, new Writable({ write(c: Buffer, _e, cb) { logs.push(c.toString('utf8')); cb(); } }));
  const policy = await loadPolicyEngine({ lists: cfg.lists, policy: cfg.policy });
  const journal = await openJournal(cfg.journal, log, { retryMs: 100 });
  const ctx = new ProxyContext(cfg, policy, journal, log, new Identity(), BlockPage.fromFile(cfg.blockPage));
  return {
    dir, ctx, journal, handler: new HttpHandler(ctx), logs, servers: [httpOrigin, tlsOrigin], seen,
    httpOriginPort: (httpOrigin.address() as net.AddressInfo).port, tlsOriginPort: (tlsOrigin.address() as net.AddressInfo).port,
  };
}

async function teardown(s: Setup): Promise<void> {
  for (const srv of s.servers) await closeServer(srv);
  s.handler.close();
  await s.journal.close();
}

/** Starts the transparent HTTP and TLS listeners of `s` on `host`; returns their ports. */
async function listeners(s: Setup, host: string): Promise<{ httpPort: number; tlsPort: number; tlsHandler: TransparentTlsHandler }> {
  const httpServer = transparentHttpServer(s.ctx, s.handler, { upstreamPort: s.httpOriginPort });
  const tlsHandler = new TransparentTlsHandler(s.ctx, { upstreamPort: s.tlsOriginPort, helloTimeoutMs: 1000 });
  const tlsServer = tlsHandler.createServer();
  await listenLoopback(httpServer, host);
  await listenLoopback(tlsServer, host);
  s.servers.push(httpServer, tlsServer);
  return { httpPort: (httpServer.address() as net.AddressInfo).port, tlsPort: (tlsServer.address() as net.AddressInfo).port, tlsHandler };
}

function httpGet(host: string, port: number, hostHeader: string): Promise<{ status: number; text: string; localPort: number }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path: '/secret-path?q=1', headers: { host: hostHeader }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), localPort: req.socket?.localPort ?? 0 }));
    });
    req.on('error', reject);
    req.setTimeout(8000, () => req.destroy(new Error('test timeout')));
    req.end();
  });
}

function tlsGet(host: string, port: number, servername: string): Promise<{ body?: string; error?: string; localPort: number }> {
  return new Promise((resolve) => {
    let localPort = 0;
    const s = tls.connect({ host, port, servername, ca: cert.cert }, () => {
      s.write(`GET /secret-path HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`);
    });
    s.once('connect', () => { localPort = s.localPort ?? 0; });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); resolve({ error: 'test timeout', localPort }); }, 8000);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      resolve({ body: text.slice(text.indexOf('\r\n\r\n') + 4), localPort });
    });
    s.on('error', (e: Error) => { clearTimeout(timer); resolve({ error: e.message, localPort }); });
  });
}

function rowOf(s: Setup, port: number): Promise<Record<string, unknown>> {
  return waitFor(() => {
    const r = journalRows(path.join(s.dir, 'j', 'journal.db')).filter((x) => x['client_port'] === port).pop();
    return r !== undefined && r['end_ms'] !== null ? r : undefined;
  }, `journal row of client port ${port}`);
}

t.test('IPv6 clients and IPv6 origins on both transparent listeners', async (t) => {
  if (!(await ipv6Available())) return t.plan(0, 'skip: no IPv6 loopback on this machine');
  const s = await setup('::1', '::1 v6.test');
  t.teardown(() => teardown(s));
  const { httpPort, tlsPort } = await listeners(s, '::1');

  const h = await httpGet('::1', httpPort, 'v6.test');
  t.equal(h.status, 200);
  t.equal(h.text, `origin:v6.test:${s.httpOriginPort}`, 'forwarded to the IPv6 origin');
  t.match(await rowOf(s, h.localPort), { client_ip: '::1', dest_host: 'v6.test', dest_ip: '::1', egress_ip: '::1', protocol: 'http', decision: 'allow', status: 200 });

  const r = await tlsGet('::1', tlsPort, 'v6.test');
  t.equal(r.error, undefined, 'TLS through the transparent listener over IPv6');
  t.equal(r.body, 'tls-origin:v6.test', 'spliced to the IPv6 origin, TLS end to end');
  t.match(await rowOf(s, r.localPort), { client_ip: '::1', dest_host: 'v6.test', dest_ip: '::1', decision: 'allow' });
  t.ok(s.seen.every((x) => x.endsWith('from ::1')), 'the origin saw IPv6 connections');

  const blocked = await httpGet('::1', httpPort, 'www.blocked.test');
  t.equal(blocked.status, 403, 'the block page over IPv6 too');
});

t.test('a journal that cannot be written: transparent HTTP answers 503, TLS is closed, nothing reaches the origin', async (t) => {
  const s = await setup('127.0.0.1', '127.0.0.1 v4.test');
  t.teardown(() => teardown(s));
  const { httpPort, tlsPort } = await listeners(s, '127.0.0.1');
  const ok = await httpGet('127.0.0.1', httpPort, 'v4.test');
  t.equal(ok.status, 200, 'works while the journal is writable');
  const before = s.seen.length;

  fs.rmSync(path.join(s.dir, 'j'), { recursive: true, force: true });
  // the first request after the loss fails its commit; from then on the journal is unhealthy
  const first = await httpGet('127.0.0.1', httpPort, 'v4.test');
  t.equal(first.status, 503, 'refused when its record cannot be written');
  await waitFor(() => (s.journal.healthy ? undefined : true), 'journal unhealthy');
  const h = await httpGet('127.0.0.1', httpPort, 'v4.test');
  t.equal(h.status, 503, 'transparent HTTP: 503 while the journal is down');
  t.match(h.text, /journal/i, 'the page says why');
  t.notMatch(h.text, /secret-path/, 'and does not echo the path');
  const r = await tlsGet('127.0.0.1', tlsPort, 'v4.test');
  t.ok(r.error !== undefined || r.body === '', `transparent TLS: no answer from the origin (${r.error ?? 'empty'})`);
  t.equal(s.seen.length, before, 'nothing reached the origin while the journal was down');
  t.ok(s.logs.some((l) => l.includes('journal cannot be written')), 'the refusal is logged');
  t.notOk(s.logs.some((l) => l.includes('secret-path')), 'no path in any log line');
});
