/**
 * Transparent mode: traffic the gateway's firewall redirects to gardefou (nftables REDIRECT of
 * TCP 80 and 443 from the school networks; see docs/transparent.md). The clients do not know a
 * proxy is there, so there is no CONNECT and no absolute-form URI:
 *
 * Port 80 (transparentHttpServer): origin-form requests (`GET /path`) decided on the Host
 * header. The request is rewritten to absolute form `http://HOST:PORT/path` and handed to the
 * ordinary HttpHandler, so policy, block page, journal and forwarding are the same code as for
 * the explicit proxy. Order of steps:
 *   1. client network allowed?                     no  -> 403 page, journal "refused"
 *   2. origin-form, exactly one valid Host?        no  -> 400 page, journal "refused"
 *   3. URL rebuilt on the redirected port (the Host header's port is ignored: the client aimed
 *      at port 80, a Host port must not open other ports), then HttpHandler steps 3-7.
 *
 * Port 443 (TransparentTlsHandler): the ClientHello is read WITHOUT terminating TLS, the
 * decision is taken on its SNI name exactly as for `CONNECT name:443`, then the connection is
 * spliced to the name's address (or through the parent proxy with CONNECT) and the buffered
 * hello bytes are replayed. Nothing is decrypted. Order of steps:
 *   1. client network allowed?                     no  -> close, journal "refused"
 *   2. complete ClientHello within the time/size cap (clienthello.ts)?
 *                                                  no  -> close, journal "refused" (not-tls,
 *                                                         tls-malformed, tls-truncated, tls-too-large)
 *   3. SNI present?                                no  -> close, journal "refused" (no-sni)
 *   4. policy decision on { kind 'connect', host: SNI, port }
 *                                                  block -> TLS alert access_denied, close,
 *                                                         journal "block"
 *   5. journal writable (fail-closed)?             no  -> close, journal attempt
 *   6. substitution (SafeSearch) hook: maybe another host to connect to
 *   7. name resolves to an allowed address?        no  -> close, journal "refused"
 *   8. original destination (when a source is configured) is an address of the name?
 *                                                  no  -> refuse, or connect by name (option)
 *   9. journal intent durable, connect, replay the hello, splice; completed on close.
 *
 * Connections that close or time out before sending a single byte asked for nothing and
 * reached nothing: they are logged at debug level, not journaled.
 */
import * as dns from 'node:dns';
import * as http from 'node:http';
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import type { JournalOpen } from '../journal/types';
import { normaliseHost } from '../policy/normalise';
import type { Client, Decision, Target } from '../policy/types';
import { AuthRefusal, markTransparent, refusedOnTransparent } from './auth';
import { MAX_CLIENT_HELLO_BYTES, parseClientHello, type ClientHelloResult } from './clienthello';
import { ProxyContext, Refusal, openRecord, refusalRecord } from './context';
import { relay } from './relay';
import { Interceptor } from './intercept';
import { sendPage } from './http-handler';
import { createHttpServer } from './http-server';
import { infoPage } from './pages';
import { newRef } from './ref';
import { beginConnection } from './upstream';

/** Refusal codes of transparent mode, in addition to context.ts Refusal. */
export const TransparentRefusal = {
  notTls: 'not-tls',
  tlsMalformed: 'tls-malformed',
  tlsTruncated: 'tls-truncated',
  tlsTooLarge: 'tls-too-large',
  noSni: 'no-sni',
  sniMismatch: 'sni-mismatch',
  missingHost: 'missing-host',
} as const;


/** TLS record: alert, version 3.3, length 2, fatal (2), access_denied (49). */
const ALERT_ACCESS_DENIED = Buffer.from([21, 3, 3, 0, 2, 2, 49]);

// ---------------------------------------------------------------------------------------------
// Port 80

export interface TransparentHttpOptions {
  /** port the requests are forwarded to: the redirected port (80 in production) */
  upstreamPort?: number;
}

/**
 * An http.Server for redirected port-80 traffic. `httpHandler` is the proxy's HttpHandler (it
 * accepts absolute-form requests; this server rewrites origin-form to absolute form first).
 */
export function transparentHttpServer(
  ctx: ProxyContext,
  httpHandler: { handle(req: http.IncomingMessage, res: http.ServerResponse): void },
  opts: TransparentHttpOptions = {},
): http.Server {
  const upstreamPort = opts.upstreamPort ?? 80;
  const server = createHttpServer(ctx);
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const ref = newRef();
    const startMs = Date.now();
    const refuse = (status: number, code: string, title: string, fr: string, en: string) => {
      const client = ctx.identify(plainAddress(req.socket.remoteAddress ?? ''));
      const open = refusalRecord(ref, startMs, client, req.socket.remotePort ?? 0, 'http', req.method ?? 'GET', '', 0, Refusal.badRequest, ctx.policy.listSerial);
      open.reason = code;
      void ctx.journalBegin(open).then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status, bytesIn: 0, bytesOut: 0 }));
      res.shouldKeepAlive = false; // a client that sends this once will again: start afresh
      sendPage(res, status, infoPage(title, fr, en, ref));
      ctx.log.info({ ref, client: client.ip, reason: code, status, transparent: 'http' }, 'refused');
    };
    if (!ctx.clients.has(plainAddress(req.socket.remoteAddress ?? ''))) {
      return refuse(403, Refusal.clientRefused, 'Accès refusé', "Ce poste n'est pas sur un réseau autorisé à utiliser ce proxy.", 'This computer is not on a network allowed to use this proxy.');
    }
    // a subnet that must log in cannot here (no 407 without a configured proxy): auth.ts
    if (refusedOnTransparent(ctx, plainAddress(req.socket.remoteAddress ?? ''))) {
      return refuse(403, AuthRefusal.transparent, 'Configuration du proxy requise', 'Ce réseau demande de vous identifier : configurez le proxy de l’établissement dans votre navigateur.', 'This network requires you to log in: set the school proxy in your browser.');
    }
    markTransparent(req);
    const url = req.url ?? '';
    if (url.charCodeAt(0) !== 47 /* '/' */) {
      return refuse(400, Refusal.badUrl, 'Requête invalide', 'Requête inattendue pour un site web.', 'Unexpected request for a web site.');
    }
    const host = hostFromHeaders(req.rawHeaders);
    if (host === null) {
      return refuse(400, TransparentRefusal.missingHost, 'Requête invalide', "La requête n'indique pas (ou mal) le site demandé (en-tête Host).", 'The request does not name the site it is for (Host header).');
    }
    req.url = `http://${host.indexOf(':') >= 0 ? `[${host}]` : host}:${upstreamPort}${url}`;
    httpHandler.handle(req, res);
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
    // WebSocket over plain port 80 is not relayed (HttpHandler forwards requests, not upgrades).
    const client = ctx.identify(plainAddress(socket.remoteAddress ?? ''));
    void ctx.journalBegin(refusalRecord(newRef(), Date.now(), client, socket.remotePort ?? 0, 'http', req.method ?? 'GET', '', 0, Refusal.upgradeRefused, ctx.policy.listSerial))
      .then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: 400, bytesIn: 0, bytesOut: 0 }));
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
    if (!socket.writable || err.code === 'ECONNRESET') { socket.destroy(); return; }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const client = ctx.identify(plainAddress(socket.remoteAddress ?? ''));
    void ctx.journalBegin(refusalRecord(newRef(), Date.now(), client, socket.remotePort ?? 0, 'http', '', '', 0, Refusal.badRequest, ctx.policy.listSerial))
      .then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status, bytesIn: 0, bytesOut: 0 }));
    socket.end(`HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
  });
  return server;
}

/**
 * The normalised host of the one Host header in `rawHeaders` (its port dropped), or null when
 * there is none, more than one, or it does not parse. node keeps only the first of duplicate
 * Host headers in `headers`, so the raw list is read.
 */
export function hostFromHeaders(rawHeaders: readonly string[]): string | null {
  let value: string | null = null;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (value !== null) return null;
      value = rawHeaders[i + 1] as string;
    }
  }
  return value === null ? null : hostOfAuthority(value);
}

/** `host[:port]` / `[v6][:port]` -> normalised host, or null. */
export function hostOfAuthority(value: string): string | null {
  const v = value.trim();
  if (v === '' || v.length > 300) return null;
  let host: string;
  let port = '';
  if (v.charCodeAt(0) === 91 /* [ */) {
    const close = v.indexOf(']');
    if (close < 0) return null;
    host = v.slice(0, close + 1);
    const rest = v.slice(close + 1);
    if (rest !== '') {
      if (rest.charCodeAt(0) !== 58) return null;
      port = rest.slice(1);
    }
  } else {
    const colon = v.indexOf(':');
    if (colon >= 0) {
      if (v.indexOf(':', colon + 1) >= 0) return null;
      host = v.slice(0, colon);
      port = v.slice(colon + 1);
    } else {
      host = v;
    }
  }
  if (port !== '' && !/^\d{1,5}$/.test(port)) return null;
  return host === '' ? null : normaliseHost(host);
}

// ---------------------------------------------------------------------------------------------
// Port 443

export interface TransparentTlsOptions {
  /** port spliced to on the SNI host: the redirected port (443 in production) */
  upstreamPort?: number;
  /** how long a client has to send its complete ClientHello; default limits.headerTimeoutMs */
  helloTimeoutMs?: number;
  /**
   * Where the client was going before the redirect, when the deployment can tell (Node cannot
   * read SO_ORIGINAL_DST without native code; see docs/transparent.md). null = unknown.
   */
  originalDestination?: (socket: net.Socket) => string | null | Promise<string | null>;
  /** when the original destination is known and is not an address of the SNI name:
   *  'by-name' (default) connects to the name's own address anyway; 'refuse' closes. */
  onMismatch?: 'by-name' | 'refuse';
  /** all addresses of a name, for the mismatch check (default: the system resolver) */
  lookupAll?: (host: string) => Promise<string[]>;
  /**
   * Upstream host substitution (SafeSearch): returns the host to connect to instead of the
   * SNI name, or null. The client keeps its TLS session with the name it asked for.
   */
  substitute?: (target: Target, client: Client, decision: Decision) => string | null;
}

interface Conn {
  ref: string;
  startMs: number;
  client: Client;
  clientPort: number;
}

export class TransparentTlsHandler {
  /** open client connections, for orderly shutdown */
  readonly open = new Set<net.Socket>();
  private readonly upstreamPort: number;

  constructor(private readonly ctx: ProxyContext, private readonly opts: TransparentTlsOptions = {}) {
    this.upstreamPort = opts.upstreamPort ?? 443;
  }

  /** A net.Server that hands every connection to this handler. */
  createServer(): net.Server {
    return net.createServer({ pauseOnConnect: false }, (s) => this.handle(s));
  }

  handle(socket: net.Socket): void {
    const ctx = this.ctx;
    socket.on('error', () => { /* reported through the journal record; never crash */ });
    if (!ctx.admit(socket)) return;
    this.open.add(socket);
    socket.once('close', () => this.open.delete(socket));
    const c: Conn = {
      ref: newRef(),
      startMs: Date.now(),
      client: ctx.identify(plainAddress(socket.remoteAddress ?? '')),
      clientPort: socket.remotePort ?? 0,
    };
    if (!ctx.clients.has(c.client.ip)) {
      this.refuse(socket, c, Refusal.clientRefused, '');
      return;
    }
    if (refusedOnTransparent(ctx, c.client.ip)) {
      this.refuse(socket, c, AuthRefusal.transparent, '');
      return;
    }
    readClientHello(socket, this.opts.helloTimeoutMs ?? ctx.config.limits.headerTimeoutMs, (buf, r, why) => {
      this.onHello(socket, c, buf, r, why).catch((err: unknown) => {
        ctx.log.error({ ref: c.ref, err: (err as Error).message }, 'transparent tls failed');
        socket.destroy();
      });
    });
  }

  private async onHello(socket: net.Socket, c: Conn, buf: Buffer, r: ClientHelloResult, why: string): Promise<void> {
    const ctx = this.ctx;
    if (!r.ok) {
      if (buf.length === 0) {
        ctx.log.debug({ client: c.client.ip, why }, 'transparent tls: no bytes');
        socket.destroy();
        return;
      }
      const code = r.error === 'not-tls' ? TransparentRefusal.notTls
        : r.error === 'too-large' ? TransparentRefusal.tlsTooLarge
          : r.error === 'truncated' ? TransparentRefusal.tlsTruncated : TransparentRefusal.tlsMalformed;
      this.refuse(socket, c, code, '', r.detail === 'need more bytes' ? why : r.detail);
      return;
    }
    if (r.sni === null) {
      this.refuse(socket, c, TransparentRefusal.noSni, '');
      return;
    }
    const target: Target = { kind: 'connect', host: r.sni, port: this.upstreamPort, path: '' };
    const decision = ctx.policy.decide(target, c.client);
    if (decision.action === 'block') {
      void ctx.journalBegin(openRecord(c.ref, c.startMs, c.client, c.clientPort, target, 'TLS', decision))
        .then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: null, bytesIn: buf.length, bytesOut: ALERT_ACCESS_DENIED.length }));
      socket.end(ALERT_ACCESS_DENIED);
      socket.resume(); // drain what the client still sends, so its close is seen
      socket.setTimeout(5000, () => socket.destroy());
      ctx.log.info({ ref: c.ref, client: c.client.ip, host: target.host, category: decision.category, reason: decision.reason, profile: decision.profile, transparent: 'tls' }, 'blocked');
      return;
    }
    if (!ctx.mayForward()) {
      this.refuse(socket, c, Refusal.journalDown, target.host);
      return;
    }
    const substitute = this.opts.substitute ? this.opts.substitute(target, c.client, decision) : ctx.substituteHost(target, decision);
    const connectHost = substitute ?? target.host;
    let destIp: string | null = null;
    if (ctx.parent === null) {
      const res = await ctx.resolver.resolve(connectHost);
      if (!res.ok) {
        this.refuse(socket, c, res.reason === 'dns-failure' ? Refusal.dnsFailure : Refusal.forbiddenDestination, target.host);
        return;
      }
      destIp = res.address;
    }
    if (this.opts.originalDestination) {
      const orig = await this.opts.originalDestination(socket);
      if (orig !== null && !(await this.nameHasAddress(target.host, plainAddress(orig), substitute === null ? destIp : null))) {
        if (this.opts.onMismatch === 'refuse') {
          this.refuse(socket, c, TransparentRefusal.sniMismatch, target.host);
          return;
        }
        ctx.log.warn({ ref: c.ref, client: c.client.ip, host: target.host, originalDestination: plainAddress(orig) }, 'sni name does not resolve to the original destination: connecting by name');
      }
    }
    const open = openRecord(c.ref, c.startMs, c.client, c.clientPort, target, 'TLS', decision);
    ctx.noteSubstitution(open, substitute);
    const handle = await beginConnection(ctx, socket, open, destIp, buf.length, () => this.refuse(socket, c, Refusal.journalDown, target.host));
    if (handle === undefined) return;
    // the policy names this host for TLS interception: decrypt, decide each request (intercept.ts)
    const interceptor = Interceptor.of(ctx);
    if (interceptor.wants(target, c.client, decision)) {
      interceptor.terminate(socket, buf, { ...c, target, decision }, { destIp, connectHost, substituted: substitute !== null }, handle, null);
      return;
    }
    relay(ctx, { client: socket, connectHost, port: this.upstreamPort, destIp, handle, first: buf, openStatus: null });
  }

  /** Whether `ip` is one of the addresses of `host` (the resolver's pick, then all of DNS). */
  private async nameHasAddress(host: string, ip: string, resolved: string | null): Promise<boolean> {
    if (resolved !== null && plainAddress(resolved) === ip) return true;
    const lookupAll = this.opts.lookupAll ?? defaultLookupAll;
    try {
      return (await lookupAll(host)).some((a) => plainAddress(a) === ip);
    } catch {
      return false;
    }
  }

  /** Closes a refused connection and journals the refusal. */
  private refuse(socket: net.Socket, c: Conn, code: string, host: string, detail?: string): void {
    const ctx = this.ctx;
    const open: JournalOpen = refusalRecord(c.ref, c.startMs, c.client, c.clientPort, 'connect', 'TLS', host, this.upstreamPort, Refusal.badRequest, ctx.policy.listSerial);
    open.reason = code;
    const bytesIn = socket.bytesRead;
    void ctx.journalBegin(open).then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: null, bytesIn, bytesOut: 0 }));
    socket.destroy();
    ctx.log.info({ ref: c.ref, client: c.client.ip, host: host || undefined, reason: code, detail, transparent: 'tls' }, 'refused');
  }
}

/**
 * Collects the first bytes of `socket` until they hold a complete ClientHello or a refusal
 * (not TLS, malformed, over the cap), the client closes, or `timeoutMs` passes. The socket is
 * left paused with nothing consumed beyond `buf`: the caller replays `buf` upstream.
 */
export function readClientHello(
  socket: net.Socket,
  timeoutMs: number,
  done: (buf: Buffer, r: ClientHelloResult, why: string) => void,
): void {
  let buf: Buffer = Buffer.alloc(0);
  let finished = false;
  const end = (r: ClientHelloResult, why: string) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('end', onEnd);
    socket.off('close', onEnd);
    socket.pause();
    done(buf, r, why);
  };
  const onData = (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    const r = parseClientHello(buf);
    if (r.ok || r.error !== 'truncated') return end(r, 'parsed');
    if (buf.length >= MAX_CLIENT_HELLO_BYTES) end(TOO_LARGE_READ, 'cap');
  };
  const onEnd = () => end(parseClientHello(buf), 'client closed before the end of the hello');
  const timer = setTimeout(() => end(parseClientHello(buf), 'timeout waiting for the hello'), timeoutMs);
  socket.on('data', onData);
  socket.once('end', onEnd);
  socket.once('close', onEnd);
}

const TOO_LARGE_READ: ClientHelloResult = Object.freeze({ ok: false, error: 'too-large', detail: 'client hello larger than the cap' } as const);

async function defaultLookupAll(host: string): Promise<string[]> {
  if (net.isIP(host) !== 0) return [host];
  return (await dns.promises.lookup(host, { all: true, verbatim: true })).map((a) => a.address);
}

/** Bounds connections per client address on a transparent listener. */

