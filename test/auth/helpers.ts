/** Small proxy clients for the authentication tests: a chosen source address, raw CONNECT. */
import * as http from 'node:http';
import * as net from 'node:net';

export function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`, 'utf8').toString('base64')}`;
}

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** One absolute-form GET through the proxy, from `localAddress` (any 127/8 address works). */
export function get(proxyPort: number, url: string, opts: { auth?: string; localAddress?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port: proxyPort, path: url, agent: false,
      localAddress: opts.localAddress ?? '127.0.0.1',
      headers: opts.auth === undefined ? {} : { 'proxy-authorization': opts.auth },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(10_000, () => req.destroy(new Error('test client timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** CONNECT (optionally with credentials); resolves with the answer head; closes the socket. */
export function connect(proxyPort: number, authority: string, auth?: string): Promise<{ status: number; head: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: proxyPort, host: '127.0.0.1' });
    let buf = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error('connect timeout')); }, 10_000);
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      s.destroy();
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(buf)?.[1] ?? 0), head: buf.slice(0, end) });
    });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${auth === undefined ? '' : `Proxy-Authorization: ${auth}\r\n`}\r\n`);
  });
}
