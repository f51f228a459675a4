/**
 * TLS interception end to end: the real `gardefou serve`, a school CA made by `gardefou ca init`,
 * TLS origins on loopback with certificates from a test CA (trusted upstream through
 * intercept.upstreamCAs), and TLS clients that trust the school CA (or not).
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import * as tls from 'node:tls';
import forge from 'node-forge';
import pino from 'pino';
import t from 'tap';
import { applyConfig, defaultConfig } from '../../src/config';
import { Identity } from '../../src/identity';
import { openJournal } from '../../src/journal';
import { loadPolicyEngine } from '../../src/lists/load';
import { ProxyContext } from '../../src/proxy/context';
import { Interceptor } from '../../src/proxy/intercept';
import { BlockPage } from '../../src/proxy/pages';
import { TransparentTlsHandler } from '../../src/proxy/transparent';
import { BIN, CHILD_ENV, journalRows, Running, startGardefou, tempDir, testConfig, waitFor, writeHosts } from '../helpers/gardefou';
import { closeServer, connectVia, listenLoopback, makeCert, Origin, startTlsOrigin, TestCert } from '../helpers/net';

/** Paths that must never reach the journal or a log line. */
const CANARY = '/secret/canary-4e1d';
const EXPR_CANARY = '/search?q=badword-77c2';

// ---- a test PKI for the origins ------------------------------------------------------------
interface TestCa { key: crypto.KeyObject; cert: forge.pki.Certificate; pem: string }

const originKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const originKeyPem = originKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;

function signForge(cert: forge.pki.Certificate, key: crypto.KeyObject): void {
  cert.sign(forge.pki.privateKeyFromPem(key.export({ type: 'pkcs1', format: 'pem' }) as string), forge.md.sha256.create());
}

function makeTestCa(): TestCa {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }) as string);
  cert.serialNumber = '0a01';
  cert.validity.notBefore = new Date(Date.now() - 86400_000);
  cert.validity.notAfter = new Date(Date.now() + 10 * 86400_000);
  const subject = [{ name: 'commonName', value: 'Test Origin Root' }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([{ name: 'basicConstraints', cA: true, critical: true }, { name: 'keyUsage', keyCertSign: true, critical: true }]);
  signForge(cert, privateKey);
  return { key: privateKey, cert, pem: forge.pki.certificateToPem(cert) };
}

function issue(ca: TestCa, names: string[], validity: { from: number; to: number } = { from: -86400_000, to: 86400_000 }): TestCert {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(originKey.publicKey.export({ type: 'spki', format: 'pem' }) as string);
  cert.serialNumber = '0b' + crypto.randomBytes(6).toString('hex');
  cert.validity.notBefore = new Date(Date.now() + validity.from);
  cert.validity.notAfter = new Date(Date.now() + validity.to);
  cert.setSubject([{ name: 'commonName', value: names[0]! }]);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: names.map((n) => ({ type: 2, value: n })) },
  ]);
  signForge(cert, ca.key);
  return { key: originKeyPem, cert: forge.pki.certificateToPem(cert) };
}

// ---- the scene -------------------------------------------------------------------------------
const GOOD_NAMES = ['icpt.test', 'plain.test', 'bank-site.test', 'www.impots.gouv.fr', 'socnet.test'];
const testCa = makeTestCa();
let good: Origin;
let selfSigned: Origin;
let expired: Origin;
let wrongName: Origin;
/** a TLS origin answering Upgrade requests with 101 and then echoing in upper case */
let wsOrigin: { port: number; heads: string[]; close(): Promise<void> };
let gw: Running;
let dir: string;
let schoolCaPem: string;
/** the serve config, reused in-process by the transparent test */
let serveConfig: Record<string, unknown>;

function writeLists(root: string): string {
  const lists = path.join(root, 'lists');
  const cat = (name: string, usage: string, files: Record<string, string>) => {
    fs.mkdirSync(path.join(lists, name), { recursive: true });
    fs.writeFileSync(path.join(lists, name, 'usage'), `${usage}\n`);
    for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(lists, name, f), text);
  };
  cat('adult', 'black', { domains: 'blocked.test\n', urls: 'icpt.test/secret\n', expressions: 'badword\n' });
  cat('bank', 'white', { domains: 'bank-site.test\n' });
  cat('socnet', 'black', { domains: 'socnet.test\n' });
  return lists;
}

function policy(intercept: Record<string, unknown> | null): Record<string, unknown> {
  return {
    profiles: { default: { block: ['adult'] } },
    ...(intercept === null ? {} : { intercept }),
  };
}

function gardefouCli(args: string[], cwd: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, env: CHILD_ENV, timeout: 30_000 });
  return { code: r.status, stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8') };
}

t.before(async () => {
  good = await startTlsOrigin(issue(testCa, GOOD_NAMES));
  selfSigned = await startTlsOrigin(makeCert(['selfsigned.test']));
  expired = await startTlsOrigin(issue(testCa, ['expired.test'], { from: -10 * 86400_000, to: -86400_000 }));
  wrongName = await startTlsOrigin(issue(testCa, ['someone-else.test']));
  wsOrigin = await startUpgradeOrigin(issue(testCa, ['icpt.test']));
  dir = tempDir('gardefou-icpt-');
  const caDir = path.join(dir, 'school-ca');
  const init = gardefouCli(['ca', 'init', '--out', caDir, '--org', 'Collège Test'], dir);
  if (init.code !== 0) throw new Error(`ca init failed: ${init.stderr}`);
  schoolCaPem = fs.readFileSync(path.join(caDir, 'ca.crt'), 'utf8');
  const upstreamCa = path.join(dir, 'origin-root.pem');
  fs.writeFileSync(upstreamCa, testCa.pem);
  const policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify(policy({
    domains: ['icpt.test', 'bank-site.test', 'impots.gouv.fr', 'selfsigned.test', 'expired.test', 'wrongname.test'],
    categories: ['socnet'],
  })));
  const names = [...GOOD_NAMES, 'selfsigned.test', 'expired.test', 'wrongname.test'];
  serveConfig = testConfig(dir, {
    lists: writeLists(dir),
    policy: policyFile,
    hosts: writeHosts(dir, names),
    connectPorts: [good.port, selfSigned.port, expired.port, wrongName.port, wsOrigin.port],
    intercept: { caDir, upstreamCAs: [upstreamCa] },
  });
  gw = await startGardefou(serveConfig, dir);
});

t.teardown(async () => {
  await gw?.stop();
  await Promise.all([good, selfSigned, expired, wrongName, wsOrigin].map((o) => o?.close()));
});

/** TLS straight to `port` (a transparent listener) trusting `ca`, one GET `p`. */
function directGet(port: number, host: string, p: string, ca: string | string[]): Promise<TunnelGet> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: host, ca, ALPNProtocols: ['h2', 'http/1.1'] }, () => {
      s.write(`GET ${p} HTTP/1.1\r\nhost: ${host}\r\nconnection: close\r\n\r\n`);
    });
    readAnswer(s, 'direct GET', resolve, reject);
  });
}

/** Reads one HTTP answer from `s` until the server closes; with the certificate it presented. */
function readAnswer(s: tls.TLSSocket, what: string, resolve: (g: TunnelGet) => void, reject: (e: Error) => void, onError?: () => void): void {
  const timer = setTimeout(() => { s.destroy(); reject(new Error(`${what} timeout`)); }, 10_000);
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  s.on('error', (e) => { clearTimeout(timer); onError?.(); reject(e); });
  s.on('end', () => {
    clearTimeout(timer);
    const text = Buffer.concat(chunks).toString('utf8');
    const cert = s.getPeerCertificate();
    s.destroy();
    resolve({
      status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0),
      body: text.slice(text.indexOf('\r\n\r\n') + 4),
      issuer: String(cert.issuer?.CN ?? ''),
      alpn: s.alpnProtocol ?? false,
    });
  });
}

async function startUpgradeOrigin(cert: TestCert): Promise<{ port: number; heads: string[]; close(): Promise<void> }> {
  const heads: string[] = [];
  const server = tls.createServer({ key: cert.key, cert: cert.cert }, (s) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      heads.push(buf.slice(0, end));
      s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      const rest = buf.slice(end + 4);
      if (rest) s.write(rest.toUpperCase());
      s.on('data', (x: Buffer) => s.write(x.toString('latin1').toUpperCase()));
    };
    s.on('data', onData);
    s.on('error', () => s.destroy());
  });
  await listenLoopback(server);
  return { port: (server.address() as net.AddressInfo).port, heads, close: () => closeServer(server) };
}

interface TunnelGet {
  status: number;
  body: string;
  issuer: string;
  alpn: string | false;
}

/** CONNECT host:port through gardefou, TLS trusting `ca`, one GET `p`. */
async function tunnelGet(host: string, port: number, p: string, ca: string | string[], headers: Record<string, string> = {}): Promise<TunnelGet> {
  const c = await connectVia(gw.port, `${host}:${port}`);
  if (c.status !== 200) throw new Error(`CONNECT ${host} answered ${c.status}`);
  return new Promise((resolve, reject) => {
    const s = tls.connect({ socket: c.socket, servername: host, ca, ALPNProtocols: ['h2', 'http/1.1'] }, () => {
      const hdrs = { host: `${host}:${port}`, connection: 'close', ...headers };
      s.write(`GET ${p} HTTP/1.1\r\n${Object.entries(hdrs).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`);
    });
    readAnswer(s, 'tunnel GET', resolve, reject, () => c.socket.destroy());
  });
}

t.test('intercepted host: a urls entry blocks one path while another passes', async (t) => {
  const ok = await tunnelGet('icpt.test', good.port, '/ok/page', schoolCaPem);
  t.equal(ok.status, 200);
  t.equal(ok.body, `tls-origin:icpt.test:${good.port}`, 'forwarded to the origin over verified TLS');
  t.match(ok.issuer, /Collège Test gardefou CA/, 'the client saw a leaf of the school CA');
  t.equal(ok.alpn, 'http/1.1', 'ALPN http/1.1 even though the client offered h2');
  const blocked = await tunnelGet('icpt.test', good.port, CANARY, schoolCaPem);
  t.equal(blocked.status, 403, 'the path listed in adult/urls is blocked inside the tunnel');
  t.match(blocked.body, /icpt\.test/);
  t.notMatch(blocked.body, /canary/, 'the block page does not echo the path');
  // the CONNECT itself was allowed (same host): only the path could tell the two apart
  t.ok(good.seen.some((r) => r.url === '/ok/page'), 'origin saw the allowed path');
  t.notOk(good.seen.some((r) => r.url.startsWith('/secret')), 'origin never saw the blocked path');
});

t.test('intercepted host: an expressions entry applies to the path and query', async (t) => {
  const r = await tunnelGet('icpt.test', good.port, EXPR_CANARY, schoolCaPem);
  t.equal(r.status, 403);
  t.notOk(good.seen.some((x) => x.url.includes('badword')), 'origin never saw it');
});

t.test('a host named by an intercept category is intercepted', async (t) => {
  // socnet is also blocked? no: the profile blocks adult only, socnet is merely named for interception
  const r = await tunnelGet('socnet.test', good.port, '/', schoolCaPem);
  t.equal(r.status, 200);
  t.match(r.issuer, /gardefou CA/);
});

t.test('hosts the policy does not name are spliced: the client sees the origin certificate', async (t) => {
  const r = await tunnelGet('plain.test', good.port, '/anything', testCa.pem);
  t.equal(r.status, 200);
  t.equal(r.issuer, 'Test Origin Root', "origin's own certificate, end to end");
  await t.rejects(tunnelGet('plain.test', good.port, '/', schoolCaPem), 'a client trusting only the school CA cannot talk to it: not intercepted');
});

t.test('noIntercept always wins: bank category and the shipped list, even when named in intercept.domains', async (t) => {
  for (const host of ['bank-site.test', 'www.impots.gouv.fr']) {
    const r = await tunnelGet(host, good.port, '/', testCa.pem);
    t.equal(r.status, 200, host);
    t.equal(r.issuer, 'Test Origin Root', `${host} spliced, never decrypted`);
  }
});

t.test('a client that does not trust the school CA fails the handshake; the CONNECT is journaled', async (t) => {
  await t.rejects(tunnelGet('icpt.test', good.port, '/untrusted', testCa.pem), /certificate|self.signed|issuer/i);
  const row = await waitFor(() => journalRows(gw.journalPath).find((r) => r['protocol'] === 'connect' && r['dest_host'] === 'icpt.test' && r['reason'] === 'intercept-client-tls' && r['end_ms'] !== null), 'CONNECT record of the refused handshake');
  t.equal(row['decision'], 'allow');
  t.equal(row['status'], 200);
  t.notOk(good.seen.some((r) => r.url === '/untrusted'));
});

t.test('an upstream with an invalid certificate gets an explanatory page, never a pass', async (t) => {
  const cases: Array<[string, Origin, RegExp, RegExp]> = [
    ['selfsigned.test', selfSigned, /auto-signé/, /self-signed/],
    ['expired.test', expired, /expiré/, /expired/],
    ['wrongname.test', wrongName, /autre nom/, /another site name/],
  ];
  for (const [host, origin, fr, en] of cases) {
    const r = await tunnelGet(host, origin.port, '/private', schoolCaPem);
    t.equal(r.status, 502, `${host}: 502`);
    t.match(r.body, /Certificat du site invalide/, `${host}: title`);
    t.match(r.body, fr, `${host}: French reason`);
    t.match(r.body, en, `${host}: English reason`);
    t.ok(r.body.indexOf('lang="en"') > r.body.search(fr), `${host}: French first`);
    t.equal(origin.seen.length, 0, `${host}: nothing was sent to it`);
  }
  const rows = await waitFor(() => {
    const rs = journalRows(gw.journalPath).filter((r) => r['protocol'] === 'https' && r['decision'] === 'error');
    return rs.length >= 3 ? rs : undefined;
  }, 'error records');
  t.ok(rows.some((r) => r['dest_host'] === 'expired.test' && r['reason'] === 'upstream-CERT_HAS_EXPIRED'));
});

t.test('a Host header naming another site inside the tunnel is refused', async (t) => {
  const r = await tunnelGet('icpt.test', good.port, '/fronted', schoolCaPem, { host: 'plain.test' });
  t.equal(r.status, 400);
  t.notOk(good.seen.some((x) => x.url === '/fronted'));
});

t.test('journal: one https record per inner request, the CONNECT record, never a path', async (t) => {
  const rows = await waitFor(() => {
    const rs = journalRows(gw.journalPath);
    return rs.filter((r) => r['protocol'] === 'https' && r['dest_host'] === 'icpt.test' && r['end_ms'] !== null).length >= 4 ? rs : undefined;
  }, 'inner records');
  const inner = rows.filter((r) => r['protocol'] === 'https' && r['dest_host'] === 'icpt.test');
  t.ok(inner.some((r) => r['decision'] === 'allow' && r['method'] === 'GET' && r['status'] === 200 && r['dest_port'] === good.port), 'allowed request');
  t.ok(inner.some((r) => r['decision'] === 'block' && r['reason'] === 'category' && r['category'] === 'adult' && r['status'] === 403), 'blocked request');
  t.ok(inner.some((r) => r['decision'] === 'refused' && r['reason'] === 'intercept-host-mismatch'), 'host mismatch refusal');
  const allowed = inner.find((r) => r['decision'] === 'allow')!;
  t.equal(allowed['dest_ip'], '127.0.0.1');
  t.ok(Number(allowed['egress_port']) > 0, 'egress port of the upstream connection');
  t.ok(rows.some((r) => r['protocol'] === 'connect' && r['dest_host'] === 'icpt.test' && r['reason'] === 'intercepted'), 'CONNECT record marked intercepted');
  t.ok(rows.some((r) => r['protocol'] === 'connect' && r['dest_host'] === 'plain.test' && r['reason'] !== 'intercepted'), 'spliced CONNECT not marked');
  t.notOk(rows.some((r) => r['protocol'] === 'https' && r['dest_host'] === 'plain.test'), 'no inner records for a spliced tunnel');
  const raw = fs.readFileSync(gw.journalPath);
  for (const needle of ['canary-4e1d', 'badword-77c2', '/ok/page', '/fronted']) {
    t.equal(raw.indexOf(needle), -1, `journal file does not contain ${needle}`);
    t.notOk(JSON.stringify(gw.logs).includes(needle), `logs do not contain ${needle}`);
  }
});

t.test('the policy names hosts to intercept but there is no CA: serve refuses to start', async (t) => {
  const d = tempDir('gardefou-icpt-noca-');
  const policyFile = path.join(d, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify(policy({ domains: ['icpt.test'] })));
  const cfg = testConfig(d, { lists: writeLists(d), policy: policyFile, intercept: { caDir: path.join(d, 'nothing-here') } });
  fs.writeFileSync(path.join(d, 'gardefou.json'), JSON.stringify(cfg));
  const r = gardefouCli(['serve', '--config', path.join(d, 'gardefou.json')], d);
  t.equal(r.code, 2);
  t.match(r.stderr, /^gardefou: the policy names hosts to intercept but there is no CA in .*nothing-here.*gardefou ca init/);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  // without "intercept" the same config starts (the CA is only needed when something is intercepted)
  fs.writeFileSync(policyFile, JSON.stringify(policy(null)));
  const gw2 = await startGardefou({ ...cfg, hosts: writeHosts(d, ['icpt.test']), connectPorts: [good.port] }, d);
  t.teardown(() => gw2.stop());
  const before = await connectVia(gw2.port, `icpt.test:${good.port}`);
  t.equal(before.status, 200, 'nothing to intercept: spliced');
  before.socket.destroy();
  // a reload that starts naming the host while there is still no CA: refused, never spliced
  fs.writeFileSync(policyFile, JSON.stringify(policy({ domains: ['icpt.test'] })));
  const reloads = () => gw2.logs.filter((l) => l['msg'] === 'reloaded').length;
  gw2.proc.kill('SIGHUP');
  await waitFor(() => (reloads() >= 1 ? true : undefined), 'reload', 10_000);
  // with several proxy processes (config "workers") each applies the reload: poll, bounded
  let after = await connectVia(gw2.port, `icpt.test:${good.port}`);
  for (let i = 0; i < 20 && after.status === 200; i++) {
    after.socket.destroy();
    await new Promise((r) => setTimeout(r, 100));
    after = await connectVia(gw2.port, `icpt.test:${good.port}`);
  }
  t.equal(after.status, 503);
  t.match(after.body, /Inspection indisponible/);
  after.socket.destroy();
  const row = await waitFor(() => journalRows(gw2.journalPath).find((r) => r['reason'] === 'intercept-no-ca'), 'refusal record');
  t.equal(row['decision'], 'refused');
  t.equal(await gw2.stop(), 0);
});

t.test('transparent TLS: the SNI host named by the policy is intercepted, requests decided by path', async (t) => {
  // in-process: the transparent listener must reach the origin's port instead of 443
  const d = tempDir('gardefou-icpt-transparent-');
  const cfg = applyConfig(defaultConfig(), { ...serveConfig, journal: { path: path.join(d, 'journal.db') }, limits: { headerTimeoutMs: 700 } }, d, 'intercept test');
  const logLines: string[] = [];
  const log = pino({ level: 'info' }, new Writable({ write(c: Buffer, _e, cb) { logLines.push(c.toString('utf8')); cb(); } }));
  const journal = await openJournal(cfg.journal, log);
  const ctx = new ProxyContext(cfg, await loadPolicyEngine({ lists: cfg.lists, policy: cfg.policy }), journal, log, new Identity(), BlockPage.fromFile(cfg.blockPage));
  const handler = new TransparentTlsHandler(ctx, { upstreamPort: good.port });
  const server = handler.createServer();
  await listenLoopback(server);
  t.teardown(async () => {
    for (const s of handler.open) s.destroy();
    await closeServer(server);
    Interceptor.of(ctx).close();
    await journal.close();
  });
  const port = (server.address() as net.AddressInfo).port;
  const ok = await directGet(port, 'icpt.test', '/transparent-ok', schoolCaPem);
  t.equal(ok.status, 200);
  t.equal(ok.body, `tls-origin:icpt.test:${good.port}`);
  t.match(ok.issuer, /gardefou CA/, 'leaf of the school CA for the SNI name');
  t.equal(ok.alpn, 'http/1.1');
  const blocked = await directGet(port, 'icpt.test', '/secret/transparent', schoolCaPem);
  t.equal(blocked.status, 403, 'urls entry applies to transparent HTTPS');
  t.notOk(good.seen.some((r) => r.url === '/secret/transparent'));
  // a client that trickles its request headers inside the decrypted stream is cut (total time)
  const slow = tls.connect({ host: '127.0.0.1', port, servername: 'icpt.test', ca: schoolCaPem });
  await new Promise<void>((resolve, reject) => { slow.once('secureConnect', () => resolve()); slow.once('error', reject); });
  const t0 = Date.now();
  slow.write('GET /slow HTTP/1.1\r\n');
  const drip = setInterval(() => { if (!slow.destroyed) slow.write('X-Drip: 1\r\n'); }, 200);
  await new Promise<void>((resolve) => { slow.once('close', () => resolve()); slow.on('error', () => undefined); });
  clearInterval(drip);
  t.ok(Date.now() - t0 < 5000, `headers trickled inside the tunnel: closed after ${Date.now() - t0} ms (headerTimeoutMs 700)`);
  t.notOk(good.seen.some((r) => r.url === '/slow'));
  const spliced = await directGet(port, 'plain.test', '/', testCa.pem);
  t.equal(spliced.issuer, 'Test Origin Root', 'not named: spliced as before');
  const rows = await waitFor(() => {
    const rs = journalRows(cfg.journal.path).filter((r) => r['dest_host'] === 'icpt.test');
    return rs.filter((r) => r['protocol'] === 'https' && r['end_ms'] !== null).length >= 2 && rs.some((r) => r['method'] === 'TLS' && r['end_ms'] !== null) ? rs : undefined;
  }, 'transparent records');
  t.ok(rows.some((r) => r['method'] === 'TLS' && r['reason'] === 'intercepted'), 'the transparent connection record says intercepted');
  t.ok(rows.some((r) => r['protocol'] === 'https' && r['decision'] === 'block'));
  t.notOk(logLines.join('').includes('transparent-ok'), 'no path in the logs');
});

t.test('through a parent proxy: upstream TLS goes over CONNECT at the parent, still verified', async (t) => {
  // a minimal CONNECT-only parent that sends everything to loopback and remembers what it was asked
  const asked: string[] = [];
  const parent = net.createServer((s) => {
    s.once('data', (d: Buffer) => {
      const line = d.toString('latin1').split('\r\n')[0] ?? '';
      const m = /^CONNECT (\S+):(\d+) HTTP\/1\.1$/.exec(line);
      if (!m) { s.destroy(); return; }
      asked.push(`${m[1]}:${m[2]}`);
      const up = net.connect(Number(m[2]), '127.0.0.1', () => {
        s.write('HTTP/1.1 200 Connection established\r\n\r\n');
        s.pipe(up);
        up.pipe(s);
      });
      up.on('error', () => s.destroy());
      s.on('error', () => up.destroy());
    });
  });
  await listenLoopback(parent);
  t.teardown(() => closeServer(parent));
  const d = tempDir('gardefou-icpt-parent-');
  const gw3 = await startGardefou({ ...serveConfig, journal: { path: path.join(d, 'journal.db') }, parentProxy: `http://127.0.0.1:${(parent.address() as net.AddressInfo).port}` }, d);
  t.teardown(() => gw3.stop());
  const saved = gw;
  gw = gw3; // tunnelGet talks to `gw`
  try {
    const ok = await tunnelGet('icpt.test', good.port, '/via-parent', schoolCaPem);
    t.equal(ok.status, 200);
    t.equal(ok.body, `tls-origin:icpt.test:${good.port}`);
    t.match(ok.issuer, /gardefou CA/);
    const bad = await tunnelGet('expired.test', expired.port, '/', schoolCaPem);
    t.equal(bad.status, 502, 'verification is the same through the parent');
    t.match(bad.body, /expiré/);
  } finally {
    gw = saved;
  }
  t.ok(asked.includes(`icpt.test:${good.port}`), 'the parent was asked for the origin by name');
});

t.test('WebSocket inside an intercepted tunnel: decided on its path, then relayed', async (t) => {
  const open = async (p: string): Promise<{ s: tls.TLSSocket; head: string; body: string }> => {
    const c = await connectVia(gw.port, `icpt.test:${wsOrigin.port}`);
    const s = tls.connect({ socket: c.socket, servername: 'icpt.test', ca: schoolCaPem });
    await new Promise<void>((resolve, reject) => { s.once('secureConnect', () => resolve()); s.once('error', reject); });
    s.write(`GET ${p} HTTP/1.1\r\nHost: icpt.test:${wsOrigin.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
    let buf = Buffer.alloc(0);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('upgrade answer timeout')), 10_000);
      const onData = (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        clearTimeout(timer);
        s.off('data', onData);
        resolve({ s, head, body: buf.subarray(end + 4).toString('utf8') });
      };
      s.on('data', onData);
      s.once('error', (e) => { clearTimeout(timer); reject(e); });
    });
  };
  const ok = await open('/chat');
  t.match(ok.head, /^HTTP\/1\.1 101 /, 'the origin switched protocols');
  const echoed = new Promise<string>((resolve) => ok.s.once('data', (d: Buffer) => resolve(d.toString('utf8'))));
  ok.s.write('hello frames');
  t.equal(await echoed, 'HELLO FRAMES', 'bytes relayed both ways after the switch');
  ok.s.destroy();
  const seen = wsOrigin.heads.find((h) => h.startsWith('GET /chat '));
  t.ok(seen, 'origin got the upgrade request');
  t.match(seen!, new RegExp(`\r\nHost: icpt\\.test:${wsOrigin.port}\r\n`));
  t.match(seen!, /\r\nUpgrade: websocket\r\n/);
  t.match(seen!, /\r\nVia: 1\.1 gardefou$/);
  const blocked = await open('/secret/socket');
  t.match(blocked.head, /^HTTP\/1\.1 403 /, 'a urls entry blocks the upgrade');
  t.notOk(wsOrigin.heads.some((h) => h.startsWith('GET /secret')), 'never reached the origin');
  blocked.s.destroy();
  const row = await waitFor(() => journalRows(gw.journalPath).find((r) => r['protocol'] === 'https' && r['dest_port'] === wsOrigin.port && r['status'] === 101 && r['end_ms'] !== null), 'upgrade record');
  t.equal(row['decision'], 'allow');
  t.ok(Number(row['egress_port']) > 0);
  await waitFor(() => journalRows(gw.journalPath).find((r) => r['protocol'] === 'https' && r['dest_port'] === wsOrigin.port && r['decision'] === 'block'), 'blocked upgrade record');
});

t.test('keep-alive inside an intercepted tunnel: each request decided and journaled on its own', async (t) => {
  const c = await connectVia(gw.port, `icpt.test:${good.port}`);
  const s = tls.connect({ socket: c.socket, servername: 'icpt.test', ca: schoolCaPem });
  await new Promise<void>((resolve, reject) => { s.once('secureConnect', () => resolve()); s.once('error', reject); });
  let buf = Buffer.alloc(0);
  const waiters: Array<() => void> = [];
  s.on('data', (d: Buffer) => { buf = Buffer.concat([buf, d]); waiters.splice(0).forEach((w) => w()); });
  /** next complete response (head + content-length body) from the shared buffer */
  const next = async (): Promise<{ status: number; body: string }> => {
    for (let i = 0; i < 200; i++) {
      const end = buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const head = buf.subarray(0, end).toString('latin1');
        const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length >= end + 4 + len) {
          const body = buf.subarray(end + 4, end + 4 + len).toString('utf8');
          buf = buf.subarray(end + 4 + len);
          return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), body };
        }
      }
      await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 50); });
    }
    throw new Error('no complete response');
  };
  const get = (p: string) => s.write(`GET ${p} HTTP/1.1\r\nHost: icpt.test:${good.port}\r\n\r\n`);
  const before = journalRows(gw.journalPath).filter((r) => r['protocol'] === 'https').length;
  get('/ka/one');
  t.equal((await next()).status, 200);
  get('/secret/ka');
  t.equal((await next()).status, 403, 'a later request on the same connection is decided on its own path');
  get('/ka/three');
  const third = await next();
  t.equal(third.status, 200, 'the connection survives a block page');
  t.equal(third.body, `tls-origin:icpt.test:${good.port}`);
  s.destroy();
  await waitFor(() => (journalRows(gw.journalPath).filter((r) => r['protocol'] === 'https' && r['end_ms'] !== null).length >= before + 3 ? true : undefined), 'three request records');
});

t.test('TLS sessions resume on every gardefou process (shared session-ticket keys)', async (t) => {
  // regression: with several processes (config "workers") each had its own ticket keys, so
  // about half the resumptions fell back to a full handshake
  let session: Buffer | null = null;
  const reused: boolean[] = [];
  for (let i = 0; i < 6; i++) {
    const c = await connectVia(gw.port, `icpt.test:${good.port}`);
    const s = tls.connect({ socket: c.socket, servername: 'icpt.test', ca: schoolCaPem, ...(session ? { session } : {}) });
    s.on('session', (sess: Buffer) => { session = sess; });
    await new Promise<void>((resolve, reject) => { s.once('secureConnect', () => resolve()); s.once('error', reject); });
    s.write(`GET /resume HTTP/1.1\r\nHost: icpt.test:${good.port}\r\nConnection: close\r\n\r\n`);
    s.resume();
    await new Promise<void>((resolve) => s.once('end', () => resolve()));
    if (i > 0) reused.push(s.isSessionReused());
    s.destroy();
  }
  t.same(reused, [true, true, true, true, true], 'every later connection resumed');
});

t.test('SafeSearch substitution still applies to an intercepted host', async (t) => {
  // www.google.fr resolves where nothing listens: only the substitution can reach the origin,
  // which answers as www.google.fr (its certificate names it, as the real safe endpoint's does)
  const safeOrigin = await startTlsOrigin(issue(testCa, ['www.google.fr']));
  t.teardown(() => safeOrigin.close());
  const d = tempDir('gardefou-icpt-safe-');
  const policyFile = path.join(d, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify({ profiles: { default: { block: ['adult'], safeSearch: 'strict' } }, intercept: { domains: ['google.fr'] } }));
  const hosts = path.join(d, 'hosts');
  fs.writeFileSync(hosts, '127.0.0.1 forcesafesearch.google.com\n127.0.0.2 www.google.fr\n');
  const gw4 = await startGardefou({ ...serveConfig, policy: policyFile, hosts, connectPorts: [safeOrigin.port], journal: { path: path.join(d, 'journal.db') } }, d);
  t.teardown(() => gw4.stop());
  const saved = gw;
  gw = gw4;
  try {
    const r = await tunnelGet('www.google.fr', safeOrigin.port, '/search?q=x', schoolCaPem);
    t.equal(r.status, 200);
    t.equal(r.body, `tls-origin:www.google.fr:${safeOrigin.port}`, 'the safe endpoint answered, under the name asked');
    t.match(r.issuer, /gardefou CA/);
  } finally {
    gw = saved;
  }
  const row = await waitFor(() => journalRows(gw4.journalPath).find((x) => x['protocol'] === 'https' && x['end_ms'] !== null), 'inner record');
  t.equal(row['reason'], 'safesearch');
  t.equal(row['dest_host'], 'www.google.fr');
  t.equal(row['dest_ip'], '127.0.0.1', 'the address of the safe endpoint');
});
