/**
 * Real servers and clients on loopback for the tests: an HTTP origin, a TLS origin with a
 * certificate made at test time, and small proxy clients. Everything binds 127.0.0.1 port 0.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import forge from 'node-forge';

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  remotePort: number;
}

export interface Origin {
  port: number;
  seen: SeenRequest[];
  close(): Promise<void>;
}

/**
 * The HTTP origin. Routes:
 *   /echo            JSON of method, url, headers
 *   /big?bytes=N     N bytes of a known pattern, streamed in 64 KiB chunks
 *   /upload          reads the whole body, answers its length and sha256
 *   /slow?ms=N       answers after N ms
 *   anything else    "origin:" + host header
 */
export async function startOrigin(): Promise<Origin> {
  const seen: SeenRequest[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, remotePort: req.socket.remotePort ?? 0 });
    const u = new URL(req.url ?? '/', 'http://x');
    if (u.pathname === '/echo') {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json', connection: 'x-secret-hop', 'x-secret-hop': 'must-not-pass' });
        res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers }));
      });
      return;
    }
    if (u.pathname === '/big') {
      const total = Number(u.searchParams.get('bytes') ?? 1048576);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
      streamPattern(res, total);
      return;
    }
    if (u.pathname === '/upload') {
      const h = createHash('sha256');
      let n = 0;
      req.on('data', (c: Buffer) => { h.update(c); n += c.length; });
      req.on('end', () => res.end(JSON.stringify({ bytes: n, sha256: h.digest('hex') })));
      return;
    }
    if (u.pathname === '/slow') {
      req.resume();
      setTimeout(() => res.end('slow done'), Number(u.searchParams.get('ms') ?? 500));
      return;
    }
    req.resume();
    res.end(`origin:${req.headers.host ?? ''}`);
  });
  await listenLoopback(server);
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    close: () => closeServer(server),
  };
}

/** Writes `total` bytes of a repeating pattern, respecting backpressure. */
export function streamPattern(out: NodeJS.WritableStream & { once(e: 'drain', f: () => void): unknown }, total: number): void {
  const chunk = patternChunk();
  let left = total;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      left -= n;
      const more = out.write(n === chunk.length ? chunk : chunk.subarray(0, n));
      if (left === 0) { out.end(); return; }
      if (!more) { out.once('drain', pump); return; }
    }
    out.end();
  };
  pump();
}

export function patternChunk(): Buffer {
  const b = Buffer.alloc(65536);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

export function sha256OfPattern(total: number): string {
  const h = createHash('sha256');
  const chunk = patternChunk();
  for (let left = total; left > 0; left -= chunk.length) h.update(left >= chunk.length ? chunk : chunk.subarray(0, left));
  return h.digest('hex');
}

export interface TestCert {
  key: string;
  cert: string;
}

/** A self-signed certificate for `names` (made once per test file: RSA keygen costs ~50 ms). */
export function makeCert(names: string[]): TestCert {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = '01' + Date.now().toString(16);
  cert.validity.notBefore = new Date(Date.now() - 3600_000);
  cert.validity.notAfter = new Date(Date.now() + 86400_000);
  const attrs = [{ name: 'commonName', value: names[0] ?? 'localhost' }];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true },
    { name: 'subjectAltName', altNames: names.map((n) => (net.isIP(n) ? { type: 7, ip: n } : { type: 2, value: n })) },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  return { key: privateKey, cert: forge.pki.certificateToPem(cert) };
}

export async function startTlsOrigin(cert: TestCert): Promise<Origin> {
  const seen: SeenRequest[] = [];
  const server = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, remotePort: req.socket.remotePort ?? 0 });
    req.resume();
    res.end(`tls-origin:${req.headers.host ?? ''}`);
  });
  await listenLoopback(server);
  return { port: (server.address() as net.AddressInfo).port, seen, close: () => closeServer(server) };
}

export function listenLoopback(server: net.Server, host = '127.0.0.1'): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
}

export function closeServer(server: http.Server | net.Server): Promise<void> {
  if ('closeAllConnections' in server) server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

export interface ProxyResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
}

/** Sends one absolute-form (or any-form) request through the proxy. */
export function viaProxy(
  proxyPort: number,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: Buffer | string; agent?: http.Agent | false; host?: string } = {},
): Promise<ProxyResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: opts.host ?? '127.0.0.1',
      port: proxyPort,
      method: opts.method ?? 'GET',
      path,
      headers: opts.headers ?? {},
      agent: opts.agent ?? false,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') });
      });
      res.on('error', reject);
    });
    req.setTimeout(10_000, () => req.destroy(new Error('test client timeout')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Raw request bytes to the proxy; returns everything it answers until it closes (or 5 s). */
export function rawExchange(proxyPort: number, bytes: string | Buffer, waitMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(proxyPort, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); resolve(Buffer.concat(chunks).toString('latin1')); }, waitMs);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(chunks).toString('latin1')); });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.write(bytes);
  });
}

export interface ConnectResult {
  status: number;
  head: string;
  body: string;
  socket: net.Socket;
}

/** Sends CONNECT and reads the answer head (and the body if the proxy refused). */
export function connectVia(proxyPort: number, authority: string): Promise<ConnectResult> {
  return new Promise((resolve, reject) => {
    const s = net.connect(proxyPort, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { s.destroy(); reject(new Error('connect timeout')); }, 10_000);
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      if (status === 200) {
        s.off('data', onData);
        clearTimeout(timer);
        resolve({ status, head, body: '', socket: s });
        return;
      }
      const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (buf.length >= end + 4 + len) {
        s.off('data', onData);
        clearTimeout(timer);
        resolve({ status, head, body: buf.subarray(end + 4, end + 4 + len).toString('utf8'), socket: s });
      }
    };
    s.on('data', onData);
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  });
}

/** TLS over an established tunnel, then one GET; returns the body. */
export function tlsGetOverSocket(socket: net.Socket, servername: string, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const t = tls.connect({ socket, servername, ca }, () => {
      t.write(`GET / HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`);
    });
    const chunks: Buffer[] = [];
    t.on('data', (c: Buffer) => chunks.push(c));
    t.on('end', () => {
      t.destroy();
      socket.destroy();
      const text = Buffer.concat(chunks).toString('utf8');
      resolve(text.slice(text.indexOf('\r\n\r\n') + 4));
    });
    t.on('error', reject);
  });
}

/**
 * Asks `status()` again (every 50 ms, at most `tries` times) until it answers `want`; returns
 * the last answer (the caller asserts it).
 */
export async function pollStatus(status: () => Promise<number>, want: number, tries = 100): Promise<number> {
  let last = 0;
  for (let i = 0; i < tries; i++) {
    last = await status();
    if (last === want) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return last;
}
