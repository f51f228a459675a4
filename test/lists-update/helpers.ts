/**
 * Test helpers for the DASEN channel: a small UT1 tree, a static feed server on loopback (HTTP
 * or HTTPS, ETag / If-None-Match, with hooks to misbehave), a test CA, and a tiny parent proxy
 * that speaks CONNECT and absolute-form GET.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import forge from 'node-forge';
import { PACKAGE_ROOT } from '../../src/config';
import { publish } from '../../src/lists/feed';
import { generateKeyPair } from '../../src/lists/sign';

export const FIXTURE_UT1 = path.join(PACKAGE_ROOT, 'test', 'fixtures', 'proxy-lists');
export const REAL_UT1 = path.join(PACKAGE_ROOT, '..', 'shared', 'ut1', 'blacklists');

export function tmp(prefix = 'gardefou-dasen-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A writable copy of the small UT1 fixture. */
export function makeUt1(dir: string): string {
  const out = path.join(dir, 'ut1');
  fs.cpSync(FIXTURE_UT1, out, { recursive: true });
  return out;
}

export function addDomain(ut1: string, category: string, domain: string): void {
  fs.mkdirSync(path.join(ut1, category), { recursive: true });
  fs.appendFileSync(path.join(ut1, category, 'domains'), `${domain}\n`);
}

/**
 * What the server does for one request; return true when the hook answered.
 * `file` is the feed file the request names (or null).
 */
export type Hook = (req: http.IncomingMessage, res: http.ServerResponse, rel: string, file: string | null) => boolean;

export interface FeedServer {
  port: number;
  url: string;
  /** paths requested, with the If-None-Match header seen */
  seen: Array<{ path: string; inm: string | null; status: number }>;
  hook: Hook | null;
  /** sockets accepted (to see that a hanging server got the connection) */
  accepted: number;
  close(): Promise<void>;
}

export async function startFeedServer(feedDir: () => string, tlsCert?: { key: string; cert: string }): Promise<FeedServer> {
  const state: FeedServer = { port: 0, url: '', seen: [], hook: null, accepted: 0, close: async () => undefined };
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const rel = decodeURIComponent((req.url ?? '/').split('?')[0] ?? '/').replace(/^\/+/, '');
    const file = rel && !rel.split('/').includes('..') ? path.join(feedDir(), rel) : null;
    const inm = typeof req.headers['if-none-match'] === 'string' ? req.headers['if-none-match'] : null;
    const record = (status: number) => state.seen.push({ path: rel, inm, status });
    if (state.hook && state.hook(req, res, rel, file)) {
      record(-1);
      return;
    }
    if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      record(404);
      res.writeHead(404).end();
      return;
    }
    const body = fs.readFileSync(file);
    const etag = `"${createHash('sha256').update(body).digest('hex').slice(0, 16)}"`;
    if (inm === etag) {
      record(304);
      res.writeHead(304, { etag }).end();
      return;
    }
    record(200);
    res.writeHead(200, { etag, 'content-length': body.length, 'content-type': 'application/octet-stream' }).end(body);
  };
  const server = tlsCert ? https.createServer({ key: tlsCert.key, cert: tlsCert.cert }, handler) : http.createServer(handler);
  server.on('connection', () => state.accepted++);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  state.port = (server.address() as net.AddressInfo).port;
  state.url = `${tlsCert ? 'https' : 'http'}://127.0.0.1:${state.port}/feed/`;
  state.close = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(() => resolve()));
  };
  return state;
}

/** URL path "feed/x" -> file x of the feed folder. */
export function feedRoot(dir: string): () => string {
  const root = path.join(dir, 'www');
  fs.mkdirSync(root, { recursive: true });
  return () => root;
}

export interface PublishedFeed {
  keys: ReturnType<typeof generateKeyPair>;
  /** the UT1 tree the bundles are made from (addDomain, then publish again) */
  ut1: string;
  dasenPolicy: string;
  /** the feed folder, served under `feed/` of the server's root */
  feedDir: string;
  server: FeedServer;
}

/** A DASEN key, a small UT1 tree, its first bundle published, and the feed served on loopback. */
export async function startPublishedFeed(dir: string): Promise<PublishedFeed> {
  const keys = generateKeyPair(path.join(dir, 'keys'));
  const ut1 = makeUt1(dir);
  const dasenPolicy = path.join(dir, 'dasen-policy.json');
  fs.writeFileSync(dasenPolicy, '{}');
  // the feed server serves a root folder; the feed lives in its `feed/` subfolder
  const root = path.join(dir, 'www');
  const feedDir = path.join(root, 'feed');
  await publish({ source: ut1, policy: dasenPolicy, keys: [keys.keyFile], feed: feedDir });
  const server = await startFeedServer(() => root);
  return { keys, ut1, dasenPolicy, feedDir, server };
}

export interface TestPki {
  ca: string;
  key: string;
  cert: string;
}

/** A CA and a server certificate it signed for 127.0.0.1 and localhost (made at test time). */
export function makePki(): TestPki {
  const rsa = () => generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs1', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const caKeys = rsa();
  const leafKeys = rsa();
  const caCert = forge.pki.createCertificate();
  caCert.publicKey = forge.pki.publicKeyFromPem(caKeys.publicKey);
  caCert.serialNumber = '01';
  caCert.validity.notBefore = new Date(Date.now() - 3600_000);
  caCert.validity.notAfter = new Date(Date.now() + 86400_000);
  const caName = [{ name: 'commonName', value: 'gardefou test CA' }];
  caCert.setSubject(caName);
  caCert.setIssuer(caName);
  caCert.setExtensions([{ name: 'basicConstraints', cA: true }, { name: 'keyUsage', keyCertSign: true, cRLSign: true }]);
  caCert.sign(forge.pki.privateKeyFromPem(caKeys.privateKey), forge.md.sha256.create());
  const leaf = forge.pki.createCertificate();
  leaf.publicKey = forge.pki.publicKeyFromPem(leafKeys.publicKey);
  leaf.serialNumber = '02';
  leaf.validity.notBefore = new Date(Date.now() - 3600_000);
  leaf.validity.notAfter = new Date(Date.now() + 86400_000);
  leaf.setSubject([{ name: 'commonName', value: 'localhost' }]);
  leaf.setIssuer(caName);
  leaf.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] },
  ]);
  leaf.sign(forge.pki.privateKeyFromPem(caKeys.privateKey), forge.md.sha256.create());
  return { ca: forge.pki.certificateToPem(caCert), key: leafKeys.privateKey, cert: forge.pki.certificateToPem(leaf) };
}

export interface ParentProxy {
  port: number;
  url: string;
  connects: string[];
  gets: string[];
  close(): Promise<void>;
}

/** A tiny parent proxy on loopback: CONNECT tunnels and absolute-form GET, loopback targets only. */
export async function startParentProxy(): Promise<ParentProxy> {
  const st: ParentProxy = { port: 0, url: '', connects: [], gets: [], close: async () => undefined };
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    st.gets.push(req.url ?? '');
    let u: URL;
    try {
      u = new URL(req.url ?? '');
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (u.hostname !== '127.0.0.1') {
      res.writeHead(403).end();
      return;
    }
    const up = http.request({ host: '127.0.0.1', port: Number(u.port), path: u.pathname + u.search, method: req.method, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('connect', (req, client, head) => {
    st.connects.push(req.url ?? '');
    const [host, port] = (req.url ?? '').split(':');
    if (host !== '127.0.0.1') {
      client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
      return;
    }
    const up = net.connect(Number(port), '127.0.0.1', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    sockets.add(up);
    up.on('close', () => sockets.delete(up));
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  st.port = (server.address() as net.AddressInfo).port;
  st.url = `http://127.0.0.1:${st.port}`;
  st.close = () => {
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => server.close(() => resolve()));
  };
  return st;
}
