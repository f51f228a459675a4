/**
 * Downloads for the update agent: http://, https:// (normal certificate checks; extra CA
 * certificates may be added beside the system roots, never a global disable) and file://.
 * Through the school's parent proxy when one is configured: absolute-form GET for http,
 * CONNECT then TLS for https. Every download is capped (declared Content-Length checked up
 * front, bytes counted as they arrive) and bounded in time (idle timeout and overall deadline).
 * Errors are UpdateRefusedError with a reason code; messages name the host and the feed file,
 * never credentials.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { errorMessage } from '../errors';
import { Refusal, RefusalCode, UpdateRefusedError } from './sign';

export interface FetchOptions {
  /** http://[user:pass@]host:port of the parent proxy, or null */
  proxy?: string | null;
  /** extra CA certificates (PEM) trusted beside the system roots */
  ca?: string | readonly string[] | null;
  /** idle limit: connecting, waiting for headers, and between two chunks (ms) */
  timeoutMs?: number;
  /** overall limit for one download (ms) */
  deadlineMs?: number;
  /** refuse anything larger (declared or received) */
  maxBytes: number;
  /** conditional GET validators */
  etag?: string | null;
  lastModified?: string | null;
  /** name used in messages (e.g. "feed.json") */
  what: string;
  signal?: AbortSignal;
}

export interface FetchResult {
  status: 200 | 304;
  body: Buffer | null;
  etag: string | null;
  lastModified: string | null;
}

const MAX_REDIRECTS = 3;
const USER_AGENT = `gardefou-update/${(require('../../../package.json') as { version: string }).version}`;

/** GET into memory (pointer, manifests, deltas). */
export async function fetchBuffer(url: string, opts: FetchOptions): Promise<FetchResult> {
  const parts: Buffer[] = [];
  const r = await fetchInto(url, opts, (c) => void parts.push(c));
  return { ...r, body: r.status === 200 ? Buffer.concat(parts) : null };
}

/** GET into a file (opened 'wx'), hashing on the way; refuses more than opts.maxBytes. */
export async function fetchToFile(url: string, file: string, opts: FetchOptions): Promise<{ sha256: string; size: number }> {
  const hash = crypto.createHash('sha256');
  let size = 0;
  const fh = await fs.promises.open(file, 'wx', 0o644);
  try {
    const r = await fetchInto(url, { ...opts, etag: null, lastModified: null }, async (c) => {
      hash.update(c);
      size += c.length;
      await fh.write(c);
    });
    if (r.status !== 200) throw new UpdateRefusedError(Refusal.httpStatus, `fetching ${opts.what}: unexpected ${r.status}`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { sha256: hash.digest('hex'), size };
}

type Sink = (chunk: Buffer) => void | Promise<void>;

async function fetchInto(url: string, opts: FetchOptions, sink: Sink): Promise<Omit<FetchResult, 'body'>> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UpdateRefusedError(Refusal.malformed, `fetching ${opts.what}: not a URL`);
  }
  if (u.protocol === 'file:') return readLocal(u, opts, sink);
  for (let hop = 0; ; hop++) {
    const res = await request(u, opts);
    const status = res.statusCode ?? 0;
    if ([301, 302, 303, 307, 308].includes(status) && res.headers.location) {
      res.resume();
      const next = new URL(res.headers.location, u);
      // signatures make content safe anyway; refusing https -> http keeps what we fetch private
      if (hop >= MAX_REDIRECTS || (next.protocol !== 'https:' && next.protocol !== 'http:') || (u.protocol === 'https:' && next.protocol !== 'https:')) {
        throw new UpdateRefusedError(Refusal.httpStatus, `fetching ${opts.what} from ${u.host}: redirect refused (${status} to ${next.protocol}//${next.host})`);
      }
      u = next;
      continue;
    }
    const meta = { etag: header(res, 'etag'), lastModified: header(res, 'last-modified') };
    if (status === 304) {
      res.resume();
      return { status: 304, ...meta };
    }
    if (status !== 200) {
      res.resume();
      throw new UpdateRefusedError(Refusal.httpStatus, `fetching ${opts.what} from ${u.host}: HTTP ${status}`);
    }
    const declared = Number(res.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared > opts.maxBytes) {
      res.destroy();
      throw new UpdateRefusedError(Refusal.tooLarge, `fetching ${opts.what} from ${u.host}: ${declared} bytes announced, limit ${opts.maxBytes}`);
    }
    let got = 0;
    try {
      for await (const chunk of res) {
        got += (chunk as Buffer).length;
        if (got > opts.maxBytes) {
          throw new UpdateRefusedError(Refusal.tooLarge, `fetching ${opts.what} from ${u.host}: more than ${opts.maxBytes} bytes, stopped`);
        }
        await sink(chunk as Buffer);
      }
    } catch (err) {
      res.destroy();
      throw toRefusal(err, opts.what, u.host, got);
    }
    if (!res.complete || (Number.isFinite(declared) && got !== declared)) {
      throw new UpdateRefusedError(Refusal.sizeMismatch, `fetching ${opts.what} from ${u.host}: connection closed after ${got} bytes${Number.isFinite(declared) ? ` of ${declared}` : ''}`);
    }
    return { status: 200, ...meta };
  }
}

function header(res: http.IncomingMessage, name: string): string | null {
  const v = res.headers[name];
  return typeof v === 'string' && v.length <= 512 ? v : null;
}

async function readLocal(u: URL, opts: FetchOptions, sink: Sink): Promise<Omit<FetchResult, 'body'>> {
  const file = fileURLToPath(u);
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (err) {
    throw new UpdateRefusedError(Refusal.network, `reading ${opts.what}: ${errorMessage(err)}`);
  }
  const etag = `"${st.size}-${Math.floor(st.mtimeMs)}-${st.ino}"`;
  if (opts.etag && opts.etag === etag) return { status: 304, etag, lastModified: null };
  if (st.size > opts.maxBytes) throw new UpdateRefusedError(Refusal.tooLarge, `reading ${opts.what}: ${st.size} bytes, limit ${opts.maxBytes}`);
  let got = 0;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
    got += (chunk as Buffer).length;
    if (got > opts.maxBytes) throw new UpdateRefusedError(Refusal.tooLarge, `reading ${opts.what}: more than ${opts.maxBytes} bytes`);
    await sink(chunk as Buffer);
  }
  return { status: 200, etag, lastModified: null };
}

function toRefusal(err: unknown, what: string, host: string, got?: number): UpdateRefusedError {
  if (err instanceof UpdateRefusedError) return err;
  const code = (err as NodeJS.ErrnoException).code ?? '';
  let reason: RefusalCode = Refusal.network;
  if (code === 'ETIMEDOUT' || code === 'GARDEFOU_TIMEOUT') reason = Refusal.timeout;
  else if (code === 'ECONNRESET' && got !== undefined) reason = Refusal.sizeMismatch;
  const tail = got !== undefined ? ` after ${got} bytes` : '';
  return new UpdateRefusedError(reason, `fetching ${what} from ${host}: ${errorMessage(err)}${tail}`, { cause: err });
}

function timeoutError(what: string): Error {
  return Object.assign(new Error(`no answer in time (${what})`), { code: 'GARDEFOU_TIMEOUT' });
}

/** Host for sockets: URL.hostname keeps IPv6 brackets. */
function bare(hostname: string): string {
  return hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
}

function caList(ca: FetchOptions['ca']): string[] | undefined {
  if (!ca) return undefined;
  return [...tls.rootCertificates, ...(typeof ca === 'string' ? [ca] : ca)];
}

/**
 * One GET, resolved once the response headers arrived. The idle timer covers connecting,
 * the proxy's CONNECT answer, the TLS handshake, the headers and then the body (socket idle);
 * the deadline covers everything and destroys the socket when it fires.
 */
function request(u: URL, opts: FetchOptions): Promise<http.IncomingMessage> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const deadlineMs = opts.deadlineMs ?? 15 * 60_000;
  const host = bare(u.hostname);
  const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
  const proxy = opts.proxy ? new URL(opts.proxy) : null;
  const headers: http.OutgoingHttpHeaders = { 'user-agent': USER_AGENT, accept: '*/*' };
  if (opts.etag) headers['if-none-match'] = opts.etag;
  if (opts.lastModified) headers['if-modified-since'] = opts.lastModified;
  const proxyAuth = proxy && proxy.username ? `Basic ${Buffer.from(`${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`).toString('base64')}` : null;
  const ca = caList(opts.ca);

  return new Promise<http.IncomingMessage>((resolve, reject) => {
    let done = false;
    const sockets: net.Socket[] = [];
    const deadline = setTimeout(() => fail(timeoutError(`deadline ${deadlineMs} ms`)), deadlineMs);
    deadline.unref();
    const onAbort = () => fail(new Error('stopped'));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = () => {
      clearTimeout(deadline);
      opts.signal?.removeEventListener('abort', onAbort);
    };
    function fail(err: unknown): void {
      for (const s of sockets) s.destroy();
      if (!done) {
        done = true;
        cleanup();
        reject(toRefusal(err, opts.what, u.host));
      } else {
        cleanup();
        for (const s of sockets) s.destroy(err instanceof Error ? err : new Error(String(err)));
      }
    }
    const onResponse = (res: http.IncomingMessage) => {
      if (done) return res.destroy();
      done = true;
      res.once('close', cleanup);
      resolve(res);
    };
    const watch = (req: http.ClientRequest) => {
      req.setTimeout(timeoutMs, () => req.destroy(timeoutError(`idle ${timeoutMs} ms`)));
      req.on('socket', (s) => sockets.push(s));
      req.on('error', fail);
    };

    if (u.protocol === 'http:') {
      const req = proxy
        ? http.request({ host: bare(proxy.hostname), port: Number(proxy.port || 80), method: 'GET', path: u.href, agent: false, headers: { ...headers, host: u.host, ...(proxyAuth ? { 'proxy-authorization': proxyAuth } : {}) } })
        : http.request({ host, port, method: 'GET', path: u.pathname + u.search, agent: false, headers: { ...headers, host: u.host } });
      watch(req);
      req.on('response', onResponse);
      req.end();
      return;
    }
    const servername = net.isIP(host) ? undefined : host;
    const get = (socket: net.Socket | null) => {
      const req = https.request({
        host, port, method: 'GET', path: u.pathname + u.search, agent: false, headers: { ...headers, host: u.host },
        ...(ca ? { ca } : {}),
        ...(servername ? { servername } : {}),
        ...(socket ? { createConnection: () => tls.connect({ socket, host, ...(servername ? { servername } : {}), ...(ca ? { ca } : {}) }) } : {}),
      });
      watch(req);
      req.on('response', onResponse);
      req.end();
    };
    if (!proxy) return get(null);
    const authority = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    const creq = http.request({ host: bare(proxy.hostname), port: Number(proxy.port || 80), method: 'CONNECT', path: authority, agent: false, headers: { host: authority, 'user-agent': USER_AGENT, ...(proxyAuth ? { 'proxy-authorization': proxyAuth } : {}) } });
    creq.setTimeout(timeoutMs, () => creq.destroy(timeoutError(`idle ${timeoutMs} ms at the parent proxy`)));
    creq.on('socket', (s) => sockets.push(s));
    creq.on('error', fail);
    creq.on('connect', (res, socket, head) => {
      creq.setTimeout(0);
      if (res.statusCode !== 200) {
        socket.destroy();
        return fail(new UpdateRefusedError(Refusal.network, `fetching ${opts.what}: parent proxy answered ${res.statusCode ?? 0} to CONNECT ${u.host}`));
      }
      if (head.length) socket.unshift(head);
      get(socket);
    });
    creq.end();
  });
}
