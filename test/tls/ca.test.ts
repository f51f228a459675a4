/**
 * The school CA: creation (key 0600), refusal to overwrite, export (PEM/DER) parsed back with
 * node's X509Certificate, the `gardefou ca` commands, and leaf certificates accepted by a real
 * TLS client that trusts the CA (and refused by one that does not).
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import t from 'tap';
import { caPaths, createCa, exportCa, LeafFactory, loadCa } from '../../src/tls/ca';
import { BIN, CHILD_ENV } from '../helpers/gardefou';

function gardefou(args: string[], cwd: string): { code: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, env: CHILD_ENV, timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString('utf8') };
}

t.test('createCa: files, modes, a CA certificate valid 10 years, self-signed', async (t) => {
  const dir = path.join(t.testdir(), 'ca');
  const now = new Date('2026-09-01T08:00:00Z');
  const info = createCa({ dir, organisation: 'Collège Jean Moulin', now });
  const p = caPaths(dir);
  t.equal(fs.statSync(p.key).mode & 0o777, 0o600, 'key 0600');
  t.equal(fs.statSync(p.cert).mode & 0o777, 0o644, 'certificate 0644');
  t.same(fs.readdirSync(dir).sort(), ['ca.crt', 'ca.key'], 'no temp file left');
  const x = new crypto.X509Certificate(fs.readFileSync(p.cert));
  t.ok(x.ca, 'basicConstraints CA');
  t.match(x.subject, /O=Collège Jean Moulin/);
  t.match(x.subject, /CN=Collège Jean Moulin gardefou CA/);
  t.equal(x.subject, x.issuer, 'self-issued');
  t.ok(x.verify(x.publicKey), 'self-signed signature verifies (signed with node crypto over forge TBS)');
  t.ok(x.checkPrivateKey(crypto.createPrivateKey(fs.readFileSync(p.key))), 'key matches');
  t.equal(new Date(x.validTo).toISOString(), '2036-09-01T08:00:00.000Z', '10 years');
  t.ok(new Date(x.validFrom).getTime() < now.getTime(), 'valid from before now (clock skew)');
  t.equal(x.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
  t.equal(info.fingerprint256, x.fingerprint256);
});

t.test('createCa refuses to overwrite an existing CA unless forced', async (t) => {
  const dir = t.testdir();
  const first = createCa({ dir });
  t.throws(() => createCa({ dir }), { code: 'GARDEFOU_INPUT', message: /already exists.*--force/ });
  t.equal(new crypto.X509Certificate(fs.readFileSync(caPaths(dir).cert)).fingerprint256, first.fingerprint256, 'untouched');
  fs.unlinkSync(caPaths(dir).cert);
  t.throws(() => createCa({ dir }), { code: 'GARDEFOU_INPUT' }, 'a key alone is not overwritten either');
  const second = createCa({ dir, force: true });
  t.not(second.fingerprint256, first.fingerprint256, '--force makes a new CA');
  t.throws(() => createCa({ dir: path.join(dir, 'sub'), organisation: 'a\nb' }), { code: 'GARDEFOU_INPUT' });
});

t.test('exportCa: PEM and DER, the key never', async (t) => {
  const dir = t.testdir();
  createCa({ dir });
  const pem = exportCa(dir, 'pem').toString('utf8');
  t.match(pem, /^-----BEGIN CERTIFICATE-----\n/);
  t.notMatch(pem, /PRIVATE KEY/);
  const der = exportCa(dir, 'der');
  t.same(new crypto.X509Certificate(der).raw, new crypto.X509Certificate(pem).raw, 'DER and PEM are the same certificate');
  t.throws(() => exportCa(path.join(dir, 'nope'), 'pem'), { code: 'GARDEFOU_INPUT', message: /gardefou ca init/ });
});

t.test('loadCa refuses a key readable by others, and a mismatched key', async (t) => {
  const dir = t.testdir();
  createCa({ dir });
  t.ok(loadCa(dir).x509.ca);
  fs.chmodSync(caPaths(dir).key, 0o644);
  t.throws(() => loadCa(dir), { code: 'GARDEFOU_INPUT', message: /chmod 600/ });
  fs.chmodSync(caPaths(dir).key, 0o600);
  const other = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-ca-'));
  t.teardown(() => fs.rmSync(other, { recursive: true, force: true }));
  createCa({ dir: other });
  fs.copyFileSync(caPaths(other).key, caPaths(dir).key);
  t.throws(() => loadCa(dir), { code: 'GARDEFOU_INPUT', message: /is not the key of/ });
});

t.test('gardefou ca init / export / info (the real command)', async (t) => {
  const base = t.testdir();
  const caDir = path.join(base, 'ca-out');
  const init = gardefou(['ca', 'init', '--out', caDir, '--org', 'Lycée test', '--json'], base);
  t.equal(init.code, 0, init.stderr);
  const info = JSON.parse(init.stdout.toString('utf8')) as { fingerprint256: string; key: string };
  t.equal(info.key, path.join(caDir, 'ca.key'));
  t.equal(fs.statSync(info.key).mode & 0o777, 0o600);

  const again = gardefou(['ca', 'init', '--out', caDir], base);
  t.equal(again.code, 2, 'refuses to overwrite');
  t.match(again.stderr, /^gardefou: creating CA: .*already exists/);
  t.equal(again.stderr.trim().split('\n').length, 1, 'one line');

  const pem = gardefou(['ca', 'export', '--dir', caDir], base);
  t.equal(pem.code, 0);
  t.equal(new crypto.X509Certificate(pem.stdout).fingerprint256, info.fingerprint256);
  const der = gardefou(['ca', 'export', '--dir', caDir, '--der'], base);
  t.equal(der.code, 0);
  t.equal(der.stdout[0], 0x30, 'DER starts with a SEQUENCE');
  t.equal(new crypto.X509Certificate(der.stdout).fingerprint256, info.fingerprint256);

  // --config: the default CA directory is ca/ beside the journal
  const cfgFile = path.join(base, 'gardefou.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ journal: { path: path.join(base, 'var', 'journal.db') } }));
  t.equal(gardefou(['ca', 'init', '--config', cfgFile], base).code, 0);
  t.ok(fs.existsSync(path.join(base, 'var', 'ca', 'ca.crt')));
  const shown = gardefou(['ca', 'info', '--config', cfgFile, '--json'], base);
  t.equal(shown.code, 0);
  t.match(JSON.parse(shown.stdout.toString('utf8')), { keyType: 'rsa-2048', cert: path.join(base, 'var', 'ca', 'ca.crt') });

  const missing = gardefou(['ca', 'export', '--dir', path.join(base, 'none')], base);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /^gardefou: reading CA certificate/);
  const badYears = gardefou(['ca', 'init', '--out', path.join(base, 'y'), '--years', 'ten'], base);
  t.equal(badYears.code, 2);
  t.equal(gardefou(['ca', '--help'], base).code, 0);
});

/** A TLS server presenting leaves from `factory` (chosen by SNI); returns its port. */
async function leafServer(t: { teardown(f: () => Promise<void>): void }, factory: LeafFactory): Promise<number> {
  const server = tls.createServer(factory.tlsServerOptions(), (s) => {
    s.end(`hello ${s.servername} ${s.alpnProtocol}`);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as net.AddressInfo).port;
}

function connect(port: number, servername: string, ca: string | undefined): Promise<{ text?: string; error?: NodeJS.ErrnoException }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, ALPNProtocols: ['h2', 'http/1.1'], ...(ca === undefined ? {} : { ca }) });
    let text = '';
    s.on('data', (c: Buffer) => { text += c.toString(); });
    s.on('end', () => { s.destroy(); resolve({ text }); });
    s.on('error', (error: NodeJS.ErrnoException) => resolve({ error }));
  });
}

t.test('leaf certificates: accepted by a client trusting the CA, refused otherwise; one key; bounded cache', async (t) => {
  const dir = t.testdir();
  createCa({ dir });
  const ca = loadCa(dir);
  const factory = new LeafFactory(ca, { max: 2 });
  const port = await leafServer(t, factory);

  const ok = await connect(port, 'intercept.test', ca.certPem);
  t.error(ok.error, 'client trusting the CA accepts the leaf');
  t.equal(ok.text, 'hello intercept.test http/1.1', 'ALPN is http/1.1 even when the client offers h2');

  const refused = await connect(port, 'intercept.test', undefined);
  t.ok(refused.error, `client not trusting the CA refuses (${refused.error?.code})`);

  const wrongName = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'other.test', ca: ca.certPem, checkServerIdentity: (_h, cert) => tls.checkServerIdentity('intercept.test', cert) });
    s.on('secureConnect', () => { s.destroy(); resolve(undefined); });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e));
  });
  t.equal(wrongName?.code, 'ERR_TLS_CERT_ALTNAME_INVALID', 'the leaf names only its own host');

  const a = factory.get('a.test');
  const b = factory.get('b.test');
  t.equal(factory.get('a.test'), a, 'cache hit returns the same leaf');
  const issuedBefore = factory.issued;
  factory.get('c.test'); // evicts b (least recently used)
  t.equal(factory.size, 2, 'bounded');
  t.equal(factory.get('a.test'), a, 'a was used recently: kept');
  t.not(factory.get('b.test'), b, 'b was evicted and is issued again');
  t.equal(factory.issued, issuedBefore + 2);

  const leafKey = (pem: string) => new crypto.X509Certificate(pem).publicKey.export({ type: 'spki', format: 'pem' });
  t.equal(leafKey(a.certPem), leafKey(b.certPem), 'one shared leaf key');
  t.equal(leafKey(a.certPem), factory.publicKeyPem);
  const x = new crypto.X509Certificate(a.certPem);
  t.ok(x.checkIssued(ca.x509) && x.verify(ca.x509.publicKey), 'issued and signed by the CA');
  t.notOk(x.ca);
  t.ok(new Date(x.validTo).getTime() - Date.now() <= 397 * 86_400_000, 'leaf validity within the browsers\' 397-day limit');
  t.equal(x.subjectAltName, 'DNS:a.test');
});
