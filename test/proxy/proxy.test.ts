/**
 * The forward proxy end to end: the real `gardefou serve` process, a real HTTP origin and a
 * real TLS origin on loopback, the fixture lists in test/fixtures/proxy-lists, a real journal.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import t from 'tap';
import {
  connectVia, makeCert, Origin, pollStatus, rawExchange, sha256OfPattern, startOrigin, startTlsOrigin, streamPattern,
  tlsGetOverSocket, viaProxy,
} from '../helpers/net';
import { FIXTURES, journalRows, Running, startGardefou, tempDir, testConfig, waitFor, writeHosts } from '../helpers/gardefou';

const NAMES = ['allowed.test', 'blocked.test', 'www.blocked.test', 'a.b.blocked.test', 'xblocked.test',
  'blocked.test.example', 'mixed.test', 'bank.test', 'casino.test', 'tls.test', 'tls-blocked.test', 'img.blocked-two.test'];
/** A path that must never appear in any log or in the journal file. */
const CANARY = '/canary-path-7f3a/secret';
const CANARY_QUERY = 'q=canary-query-91bd';

let origin: Origin;
let tlsOrigin: Origin;
let gw: Running;
const cert = makeCert(['tls.test', 'tls-blocked.test']);

t.before(async () => {
  origin = await startOrigin();
  tlsOrigin = await startTlsOrigin(cert);
  const dir = tempDir();
  gw = await startGardefou(testConfig(dir, { hosts: writeHosts(dir, NAMES), connectPorts: [tlsOrigin.port] }), dir);
});

t.teardown(async () => {
  await gw?.stop();
  await origin?.close();
  await tlsOrigin?.close();
});

const url = (host: string, p = '/') => `http://${host}:${origin.port}${p}`;

t.test('allowed host is forwarded with Host from the URI, Via added, hop-by-hop removed', async (t) => {
  const r = await viaProxy(gw.port, url('allowed.test', '/echo'), {
    headers: { host: 'blocked.test', connection: 'x-private', 'x-private': 'drop-me', 'proxy-authorization': 'Basic Zm9vOmJhcg==' },
  });
  t.equal(r.status, 200);
  const seen = JSON.parse(r.text) as { headers: Record<string, string>; url: string };
  t.equal(seen.headers['host'], `allowed.test:${origin.port}`, 'Host comes from the absolute URI, not the header');
  t.equal(seen.url, '/echo', 'origin gets origin-form');
  t.match(seen.headers['via'], /1\.1 gardefou/);
  t.notOk('x-private' in seen.headers, 'header named by Connection is removed');
  t.notOk('proxy-authorization' in seen.headers, 'proxy-authorization is not forwarded');
  t.notOk('x-forwarded-for' in seen.headers, 'client address is not disclosed to the origin');
  t.notOk('x-secret-hop' in r.headers, "origin's Connection-listed header is not passed back");
  t.match(r.headers['via'] as string, /gardefou/);
});

t.test('conflicting Host header cannot unblock or block', async (t) => {
  const blocked = await viaProxy(gw.port, url('blocked.test'), { headers: { host: 'allowed.test' } });
  t.equal(blocked.status, 403, 'blocked URI with an innocent Host header stays blocked');
  const allowed = await viaProxy(gw.port, url('allowed.test'), { headers: { host: 'blocked.test' } });
  t.equal(allowed.status, 200);
  t.equal(allowed.text, `origin:allowed.test:${origin.port}`);
});

t.test('domains: the domain and its subdomains, on label boundaries', async (t) => {
  const cases: Array<[string, number]> = [
    ['blocked.test', 403],
    ['www.blocked.test', 403],
    ['a.b.blocked.test', 403],
    ['BLOCKED.TEST', 403],
    ['img.blocked-two.test', 403], // listed in upper case in the fixture
    ['xblocked.test', 200], // not a label boundary
    ['blocked.test.example', 200], // listed name left of another domain
    ['allowed.test', 200],
    ['casino.test', 403], // second black category
    ['bank.test', 200], // white-usage category is never a block list by default
  ];
  for (const [host, status] of cases) {
    const r = await viaProxy(gw.port, url(host));
    t.equal(r.status, status, `${host} -> ${status}`);
  }
});

t.test('urls on path-segment boundaries, and expressions', async (t) => {
  const cases: Array<[string, number]> = [
    ['/forbidden', 403],
    ['/forbidden/deeper?x=1', 403],
    ['/forbiddenx', 200],
    ['/', 200],
    ['/some/badword/page', 403],
  ];
  for (const [p, status] of cases) {
    const r = await viaProxy(gw.port, url('mixed.test', p));
    t.equal(r.status, status, `mixed.test${p} -> ${status}`);
  }
});

t.test('block page: French then English, site, category with its French name, time, reference', async (t) => {
  const r = await viaProxy(gw.port, url('www.blocked.test', CANARY + '?' + CANARY_QUERY));
  t.equal(r.status, 403);
  t.match(r.headers['content-type'], /text\/html; charset=utf-8/);
  t.match(r.text, /<html lang="fr">/);
  t.match(r.text, /www\.blocked\.test/);
  t.match(r.text, /Adulte \(X\) \(adult\)/, 'French category name from global_usage');
  t.match(r.text, /Adult \(X\)/, 'English name too');
  t.match(r.text, /Europe\/Paris/);
  t.ok(r.text.indexOf('lang="en"') > r.text.indexOf('Ce site'), 'English below French');
  const ref = /class="ref">([0-9A-Z]{5}-[0-9A-Z]{5})</.exec(r.text)?.[1];
  t.ok(ref, 'reference id shown');
  t.notMatch(r.text, /canary/, 'the page does not echo the path or query');
  const row = await waitFor(() => journalRows(gw.journalPath).find((x) => x['ref'] === ref && x['end_ms'] !== null), 'journal row of the block');
  t.equal(row['decision'], 'block');
  t.equal(row['category'], 'adult');
  t.equal(row['dest_host'], 'www.blocked.test');
  t.equal(row['status'], 403);
});

t.test('origin-form request gets a 400 usage page, never a forward', async (t) => {
  const before = origin.seen.length;
  const r = await viaProxy(gw.port, '/', { headers: { host: `allowed.test:${origin.port}` } });
  t.equal(r.status, 400);
  t.match(r.text, /proxy/);
  t.match(r.text, /curl -x/);
  t.equal(origin.seen.length, before, 'nothing reached the origin');
});

t.test('malformed request line gets 400 and a closed connection', async (t) => {
  const answer = await rawExchange(gw.port, 'GARBAGE\r\n\r\n');
  t.match(answer, /^HTTP\/1\.1 400 /);
  const smuggle = await rawExchange(gw.port,
    `POST ${url('allowed.test', '/upload')} HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`);
  t.match(smuggle, /^HTTP\/1\.1 400 /, 'Content-Length with Transfer-Encoding is refused');
});

t.test('oversized headers get 431', async (t) => {
  const answer = await rawExchange(gw.port, `GET ${url('allowed.test')} HTTP/1.1\r\nHost: allowed.test\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`);
  t.match(answer, /^HTTP\/1\.1 431 /);
});

t.test('streaming: a large body both ways, no buffering', async (t) => {
  // download: 16 MiB through the proxy, checksum intact
  const size = 16 * 1024 * 1024;
  const down = await viaProxy(gw.port, url('allowed.test', `/big?bytes=${size}`));
  t.equal(down.status, 200);
  t.equal(down.body.length, size);
  t.equal(require('node:crypto').createHash('sha256').update(down.body).digest('hex'), sha256OfPattern(size));

  // upload: 8 MiB streamed in chunks
  const upSize = 8 * 1024 * 1024;
  const up = await new Promise<string>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: gw.port, method: 'POST', path: url('allowed.test', '/upload'), agent: false }, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => { s += c.toString(); });
      res.on('end', () => resolve(s));
    });
    req.on('error', reject);
    streamPattern(req, upSize);
  });
  t.same(JSON.parse(up), { bytes: upSize, sha256: sha256OfPattern(upSize) });
});

t.test('streaming: the first bytes arrive before the origin has finished (both directions)', async (t) => {
  // An origin that sends one chunk, then waits until the test says it has seen that chunk
  // through the proxy. A buffering proxy would deadlock here (and the test time out).
  let release: () => void = () => undefined;
  const released = new Promise<void>((r) => { release = r; });
  let uploadFirstChunk: () => void = () => undefined;
  const sawUploadChunk = new Promise<void>((r) => { uploadFirstChunk = r; });
  const server = http.createServer((req, res) => {
    if (req.url === '/drip') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first-chunk;');
      void released.then(() => res.end('rest'));
      return;
    }
    req.once('data', () => uploadFirstChunk());
    req.resume();
    req.on('end', () => res.end('upload-done'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));

  const body = await new Promise<string>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: gw.port, path: `http://allowed.test:${port}/drip`, agent: false }, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => { s += c.toString(); if (s === 'first-chunk;') release(); });
      res.on('end', () => resolve(s));
    }).on('error', reject);
  });
  t.equal(body, 'first-chunk;rest', 'download streamed');

  const answer = await new Promise<string>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: gw.port, method: 'POST', path: `http://allowed.test:${port}/up`, agent: false, headers: { 'transfer-encoding': 'chunked' } }, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => { s += c.toString(); });
      res.on('end', () => resolve(s));
    });
    req.on('error', reject);
    req.write('part-one;');
    void sawUploadChunk.then(() => req.end('part-two'));
  });
  t.equal(answer, 'upload-done', 'upload streamed');
});

t.test('keep-alive towards the client: several requests on one connection', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const ports = new Set<number>();
  for (let i = 0; i < 5; i++) {
    const r = await viaProxy(gw.port, url('allowed.test', '/echo'), { agent });
    t.equal(r.status, 200);
  }
  for (const s of Object.values(agent.freeSockets).flat()) ports.add(s?.localPort ?? 0);
  t.equal(ports.size, 1, 'one client connection carried all requests');
});

t.test('CONNECT: allowed host is tunnelled to a real TLS origin', async (t) => {
  const c = await connectVia(gw.port, `tls.test:${tlsOrigin.port}`);
  t.equal(c.status, 200);
  const body = await tlsGetOverSocket(c.socket, 'tls.test', cert.cert);
  t.equal(body, `tls-origin:tls.test`);
});

t.test('CONNECT: blocked host gets 403 with the block page, no tunnel', async (t) => {
  const before = tlsOrigin.seen.length;
  const c = await connectVia(gw.port, `a.b.blocked.test:${tlsOrigin.port}`);
  t.equal(c.status, 403);
  t.match(c.body, /a\.b\.blocked\.test/);
  t.match(c.body, /Adulte/);
  c.socket.destroy();
  t.equal(tlsOrigin.seen.length, before);
});

t.test('CONNECT: port not in connectPorts is refused', async (t) => {
  const c = await connectVia(gw.port, 'tls.test:25');
  t.equal(c.status, 403);
  t.match(c.body, /Port/);
  c.socket.destroy();
});

t.test('journal: one record per request and tunnel, with the right fields and no path', async (t) => {
  // an allowed request with a canary path and query
  const r = await viaProxy(gw.port, url('allowed.test', `${CANARY}?${CANARY_QUERY}`));
  t.equal(r.status, 200);
  const c = await connectVia(gw.port, `tls.test:${tlsOrigin.port}`);
  await tlsGetOverSocket(c.socket, 'tls.test', cert.cert);
  const rows = await waitFor(() => {
    const all = journalRows(gw.journalPath);
    const http1 = all.find((x) => x['protocol'] === 'http' && x['dest_host'] === 'allowed.test' && x['end_ms'] !== null && x['status'] === 200);
    const tun = all.find((x) => x['protocol'] === 'connect' && x['dest_host'] === 'tls.test' && x['decision'] === 'allow' && x['end_ms'] !== null);
    return http1 && tun ? { all, http1, tun } : undefined;
  }, 'journal rows for the request and the tunnel');
  const h = rows.http1;
  t.equal(h['client_ip'], '127.0.0.1');
  t.ok((h['client_port'] as number) > 0);
  t.equal(h['dest_port'], origin.port);
  t.equal(h['dest_ip'], '127.0.0.1');
  t.equal(h['egress_ip'], '127.0.0.1');
  t.ok((h['egress_port'] as number) > 0, 'egress port recorded');
  t.equal(h['method'], 'GET');
  t.equal(h['decision'], 'allow');
  t.ok((h['bytes_out'] as number) > 0);
  t.ok((h['end_ms'] as number) >= (h['start_ms'] as number));
  const tun = rows.tun;
  t.equal(tun['method'], 'CONNECT');
  t.equal(tun['status'], 200);
  t.ok((tun['egress_port'] as number) > 0);
  t.ok((tun['bytes_in'] as number) > 0 && (tun['bytes_out'] as number) > 0, 'tunnel byte counts');
  // every refusal kind seen so far is journaled
  const reasons = new Set(rows.all.map((x) => x['reason']));
  for (const reason of ['origin-form', 'port-refused', 'category', 'bad-request']) t.ok(reasons.has(reason), `a record with reason ${reason}`);
  // nothing of a path or query, anywhere in the journal files or the logs
  for (const f of fs.readdirSync(path.dirname(gw.journalPath))) {
    const bytes = fs.readFileSync(path.join(path.dirname(gw.journalPath), f));
    t.equal(bytes.indexOf('canary'), -1, `no path or query in ${f}`);
  }
  t.notMatch(JSON.stringify(gw.logs), /canary/, 'no path or query in the operational log');
});

t.test('never an open proxy', async (t) => {
  const dir = tempDir();
  // no allowDestinations: loopback origins must be refused; clients only 10/8 for the second instance
  const strict = await startGardefou(testConfig(dir, { allowDestinations: [], hosts: writeHosts(dir, NAMES), connectPorts: [tlsOrigin.port] }), dir);
  t.teardown(() => strict.stop());
  const before = origin.seen.length;
  for (const target of [url('allowed.test'), `http://127.0.0.1:${origin.port}/`, `http://[::1]:${origin.port}/`, 'http://169.254.169.254/latest/meta-data/', `http://2130706433:${origin.port}/`]) {
    const r = await viaProxy(strict.port, target);
    t.equal(r.status, 403, `${target.replace(/\/[^/]*$/, '')} refused`);
  }
  const c = await connectVia(strict.port, `tls.test:${tlsOrigin.port}`);
  t.equal(c.status, 403, 'CONNECT to a name resolving to loopback refused');
  c.socket.destroy();
  t.equal(origin.seen.length, before, 'nothing reached the loopback origin');

  const dir2 = tempDir();
  const closed = await startGardefou(testConfig(dir2, { clients: ['10.0.0.0/8'], hosts: writeHosts(dir2, NAMES) }), dir2);
  t.teardown(() => closed.stop());
  const r = await viaProxy(closed.port, url('allowed.test'));
  t.equal(r.status, 403, 'client outside configured networks refused');
  t.match(r.text, /réseau autorisé/);
  const c2 = await connectVia(closed.port, `tls.test:${tlsOrigin.port}`);
  t.equal(c2.status, 403, 'CONNECT from outside refused');
  c2.socket.destroy();
  await waitFor(() => journalRows(closed.journalPath).find((x) => x['reason'] === 'client-refused'), 'journal row of the refused client');
});

t.test('SIGHUP reloads the lists: a decision changes, open connections survive', async (t) => {
  const dir = tempDir();
  const lists = path.join(dir, 'lists');
  fs.cpSync(path.join(FIXTURES, 'proxy-lists'), lists, { recursive: true });
  const g = await startGardefou(testConfig(dir, { lists, hosts: writeHosts(dir, NAMES) }), dir);
  t.teardown(() => g.stop());
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  t.equal((await viaProxy(g.port, url('allowed.test'), { agent })).status, 200);
  fs.appendFileSync(path.join(lists, 'gambling', 'domains'), 'allowed.test\n');
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => l['msg'] === 'reloaded');
  const r = await viaProxy(g.port, url('allowed.test'), { agent });
  t.equal(r.status, 403, 'now blocked');
  t.match(r.text, /Jeux d'argent|Jeux d&#39;argent/);
  // a broken policy file: reload fails, the old lists stay in force
  const badPolicy = path.join(dir, 'bad-policy.json');
  fs.writeFileSync(badPolicy, '{ not json');
  const cfg = JSON.parse(fs.readFileSync(g.configPath, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(g.configPath, JSON.stringify({ ...cfg, policy: badPolicy }));
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('reload failed'));
  t.equal((await viaProxy(g.port, url('allowed.test'))).status, 403, 'previous lists still in force');
  t.equal((await viaProxy(g.port, url('mixed.test'))).status, 200, 'and still serving');
});

t.test('SIGTERM lets an in-flight request finish, flushes the journal, exits 0', async (t) => {
  const dir = tempDir();
  const g = await startGardefou(testConfig(dir, { hosts: writeHosts(dir, NAMES) }), dir);
  const pending = viaProxy(g.port, url('allowed.test', '/slow?ms=700'));
  await waitFor(() => origin.seen.find((s) => s.url.startsWith('/slow')), 'origin to receive the slow request');
  const code = g.stop('SIGTERM');
  const r = await pending;
  t.equal(r.status, 200);
  t.equal(r.text, 'slow done');
  t.equal(await code, 0, 'exit code 0');
  const rows = journalRows(g.journalPath);
  const slow = rows.find((x) => x['dest_host'] === 'allowed.test' && x['status'] === 200);
  t.ok(slow, 'the in-flight request was journaled');
  t.ok(slow && slow['end_ms'] !== null, 'and completed');
});

t.test('IPv6: a [::1] listener, an IPv6 client and an IPv6 origin', async (t) => {
  const dir = tempDir();
  const v6origin = http.createServer((req, res) => { req.resume(); res.end(`v6-origin:${req.headers.host ?? ''}`); });
  await new Promise<void>((r) => v6origin.listen(0, '::1', () => r()));
  t.teardown(() => new Promise<void>((r) => { v6origin.closeAllConnections(); v6origin.close(() => r()); }));
  const v6port = (v6origin.address() as { port: number }).port;
  const g = await startGardefou(testConfig(dir, { listen: ['[::1]:0'], allowDestinations: ['::1/128'] }), dir);
  t.teardown(() => g.stop());
  const r = await viaProxy(g.port, `http://[::1]:${v6port}/`, { host: '::1' });
  t.equal(r.status, 200);
  t.equal(r.text, `v6-origin:[::1]:${v6port}`);
  const row = await waitFor(() => journalRows(g.journalPath).find((x) => x['end_ms'] !== null && x['status'] === 200), 'journal row');
  t.equal(row['client_ip'], '::1');
  t.equal(row['dest_host'], '::1');
  t.equal(row['egress_ip'], '::1');
});

t.test('parentProxy: requests and tunnels go through the upstream proxy', async (t) => {
  // A minimal parent proxy on loopback: absolute-form requests are answered directly,
  // CONNECT is spliced to the TLS origin; it records what it was asked.
  const asked: string[] = [];
  const tunnels = new Set<import('node:net').Socket>();
  const parent = http.createServer((req, res) => {
    asked.push(`${req.method} ${req.url}`);
    req.resume();
    res.end(`parent-saw:${req.url}`);
  });
  parent.on('connect', (req: http.IncomingMessage, sock: import('node:net').Socket) => {
    asked.push(`CONNECT ${req.url}`);
    tunnels.add(sock);
    const up = require('node:net').connect(tlsOrigin.port, '127.0.0.1', () => {
      sock.write('HTTP/1.1 200 Connection established\r\n\r\n');
      sock.pipe(up);
      up.pipe(sock);
    });
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
  });
  await new Promise<void>((r) => parent.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => {
    for (const s of tunnels) s.destroy();
    parent.closeAllConnections();
    parent.close(() => r());
  }));
  const pport = (parent.address() as { port: number }).port;
  const dir = tempDir();
  // no hosts file and no allowDestinations: with a parent, the gateway never resolves names
  const g = await startGardefou(testConfig(dir, { parentProxy: `http://127.0.0.1:${pport}`, allowDestinations: [], connectPorts: [443] }), dir);
  t.teardown(() => g.stop());
  const r = await viaProxy(g.port, 'http://www.unresolvable-name.test/page?x=1');
  t.equal(r.status, 200);
  t.equal(r.text, 'parent-saw:http://www.unresolvable-name.test/page?x=1', 'absolute-form to the parent');
  const b = await viaProxy(g.port, 'http://blocked.test/');
  t.equal(b.status, 403, 'filtering still applies before the parent');
  const c = await connectVia(g.port, 'tls.test:443');
  t.equal(c.status, 200);
  t.equal(await tlsGetOverSocket(c.socket, 'tls.test', cert.cert), 'tls-origin:tls.test');
  c.socket.destroy();
  t.same(asked, ['GET http://www.unresolvable-name.test/page?x=1', 'CONNECT tls.test:443']);
});

t.test('fail-closed: when the journal cannot be written, traffic is refused with 503, then recovers', async (t) => {
  const dir = tempDir();
  const varDir = path.join(dir, 'var');
  fs.mkdirSync(varDir);
  const g = await startGardefou(testConfig(dir, { hosts: writeHosts(dir, NAMES), connectPorts: [tlsOrigin.port], journal: { path: path.join(varDir, 'journal.db') } }), dir);
  t.teardown(() => g.stop());
  t.equal((await viaProxy(g.port, url('allowed.test'))).status, 200);
  fs.renameSync(varDir, path.join(dir, 'moved')); // the open file descriptors would still accept writes
  const before = origin.seen.length;
  const status = await pollStatus(async () => (await viaProxy(g.port, url('allowed.test'))).status, 503);
  t.equal(status, 503, 'refused while the journal is down');
  const down = await viaProxy(g.port, url('allowed.test'));
  t.equal(down.status, 503);
  t.match(down.text, /journal de connexion/);
  const c = await connectVia(g.port, `tls.test:${tlsOrigin.port}`);
  t.equal(c.status, 503, 'tunnels refused too');
  c.socket.destroy();
  t.equal(origin.seen.length - before, 0, 'nothing forwarded unrecorded');
  t.ok(g.logs.some((l) => l['level'] === 'error'), 'an error was logged');
  fs.renameSync(path.join(dir, 'moved'), varDir);
  let back = 0;
  for (let i = 0; i < 200 && back !== 200; i++) {
    back = (await viaProxy(g.port, url('allowed.test'))).status;
    if (back !== 200) await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(back, 200, 'serving again once the journal is writable');
});
