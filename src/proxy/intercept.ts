/**
 * Optional TLS interception of CONNECT tunnels and transparent TLS: only for hosts the policy's
 * `intercept` names and `noIntercept` does not (PolicyEngine.interceptFor); every other tunnel
 * is spliced. Transparent TLS (transparent.ts) joins at step 3 with its own record (the
 * ClientHello already read is replayed into the TLS server; no 200).
 *
 * Steps for one intercepted tunnel (after tunnel.ts allowed the host):
 *   1. the school CA is loaded?                          no  -> 503, journal "refused" (never a
 *                                                             silent splice of what the policy
 *                                                             asked to inspect)
 *   2. destination resolves to an allowed address?       no  -> 403 / 502 (as for a splice)
 *   3. CONNECT record durable (reason "intercepted"), answer 200, TLS handshake with the client
 *      using the leaf for the CONNECT host (LeafFactory), ALPN http/1.1 only. A client that
 *      does not trust the CA fails here; the CONNECT record keeps reason
 *      "intercept-client-tls".
 *   4. the decrypted stream goes to an http.Server that never listens (emit('connection')).
 *      For EACH request inside:
 *        a. origin-form path, Host naming the CONNECT host?  no  -> 400, journal "refused"
 *        b. policy decision with kind 'http' and the real path (urls, expressions apply)
 *                                                            block -> 403 block page
 *        c. journal writable?                                no  -> 503
 *        d. journal intent durable (protocol "https"), then forward over TLS to the origin
 *           (SafeSearch endpoint address when substituted), verified strictly: node's CA
 *           store (+ intercept.upstreamCAs), servername = the CONNECT host. An invalid
 *           certificate gets a 502 page that explains why (French, then English), never a pass.
 *      An Upgrade (WebSocket) takes steps a-c too, then its head is written to a verified TLS
 *      connection to the origin and both sides are spliced.
 * Nothing decrypted is stored or logged: records carry method, host, port, decision, status
 * and byte counts, never a path, query, header or body.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { plainAddress } from '../config/cidr';
import { ConfigError, errorMessage } from '../errors';
import type { JournalClose, JournalHandle, JournalOpen } from '../journal/types';
import { normaliseHost, parseAbsoluteUrl } from '../policy/normalise';
import type { Client, Decision, Target } from '../policy/types';
import { caPaths, defaultCaDir, LeafFactory, loadCa, LoadedCa } from '../tls/ca';
import { openRecord, ProxyContext, Refusal, RefusalCode, refusalRecord, SUBSTITUTED_REASON } from './context';
import { addVia, stripHopByHop } from './headers';
import { journalDownPage, sendPage } from './http-handler';
import { headerBytes } from './http-server';
import { escapeHtml, infoPage } from './pages';
import { newRef } from './ref';
import { writeResponse } from './raw-response';
import { readParentAnswer } from './relay';
import { beginConnection, tunnelAddress, type TunnelRefuse } from './upstream';

/** Session-ticket keys rotate every 12 hours (tickets older than that make a full handshake). */
const TICKET_PERIOD_MS = 12 * 3600_000;

/** Journal reason of a CONNECT whose requests were decrypted and decided one by one. */
export const INTERCEPTED_REASON = 'intercepted';
/** Journal reason of an intercepted CONNECT whose client refused the gateway's certificate. */
export const CLIENT_TLS_REASON = 'intercept-client-tls';
/** Refusal codes of interception (journal reason text). */
export const InterceptRefusal = {
  noCa: 'intercept-no-ca',
  hostMismatch: 'intercept-host-mismatch',
} as const;

export interface TunnelInfo {
  ref: string;
  startMs: number;
  client: Client;
  clientPort: number;
  target: Target;
  decision: Decision;
}



interface Exchange {
  ref: string;
  startMs: number;
  tun: Tunnel;
  readAtStart: number;
  writtenAtStart: number;
  handle: JournalHandle | null;
  egressIp: string | null;
  egressPort: number | null;
  failure: string | null;
}

/** What `terminate` needs to know of the upstream side, already checked by the caller. */
export interface UpstreamLink {
  /** address checked by the resolver (null through a parent proxy) */
  destIp: string | null;
  /** host to dial: the SafeSearch endpoint when substituted, else the requested host */
  connectHost: string;
  substituted: boolean;
}

/** One intercepted tunnel, found again from the decrypted socket of each inner request. */
interface Tunnel extends UpstreamLink {
  info: TunnelInfo;
  raw: net.Socket;
  secure: tls.TLSSocket;
  /**
   * Bounds the wait for a request's headers (limits.headerTimeoutMs, total time, like the
   * proxy's own listener): the inner http.Server never listens, so Node's headersTimeout
   * does not run for it. Armed after the handshake and after each response.
   */
  headerTimer: NodeJS.Timeout | null;
}

const byContext = new WeakMap<ProxyContext, Interceptor>();

export class Interceptor {
  /**
   * The interceptor of a proxy context, made on first use: one CA, one leaf key and certificate
   * cache and one upstream pool shared by CONNECT (tunnel.ts) and transparent TLS.
   */
  static of(ctx: ProxyContext): Interceptor {
    let i = byContext.get(ctx);
    if (i === undefined) {
      i = new Interceptor(ctx);
      byContext.set(ctx, i);
    }
    return i;
  }

  private readonly ca: LoadedCa | null;
  private leavesMade: LeafFactory | null = null;
  /** session-ticket keys of the current period, and the leaf contexts that already have them */
  private tickets: { period: number; keys: Buffer; applied: WeakSet<tls.SecureContext> } | null = null;
  private readonly inner: http.Server;
  private readonly agent: https.Agent;
  private readonly tunnels = new WeakMap<net.Socket, Tunnel>();
  private readonly upstreamCa: string[] | undefined;
  /** handshakes completed with clients (metrics, bench) */
  handshakes = 0;

  /**
   * Loads the CA when it exists. Throws ConfigError when the policy names hosts to intercept
   * and there is no usable CA: the gateway refuses to start rather than splice blindly what the
   * DASEN asked to inspect.
   */
  constructor(private readonly ctx: ProxyContext) {
    const cfg = ctx.config;
    const dir = defaultCaDir(cfg);
    let ca: LoadedCa | null = null;
    const p = caPaths(dir);
    if (fs.existsSync(p.cert) || fs.existsSync(p.key)) {
      try {
        ca = loadCa(dir);
      } catch (err) {
        if (ctx.policy.intercepting) throw new ConfigError(`TLS interception: ${errorMessage(err)}`);
        ctx.log.warn({ err: errorMessage(err) }, 'CA unusable; TLS interception unavailable');
      }
    } else if (ctx.policy.intercepting) {
      throw new ConfigError(`the policy names hosts to intercept but there is no CA in ${dir}: create it with "gardefou ca init --out ${dir}" (key "intercept.caDir"), or remove "intercept" from the policy`);
    }
    this.ca = ca;
    this.upstreamCa = cfg.intercept.upstreamCAs.length === 0 ? undefined : [...tls.rootCertificates, ...cfg.intercept.upstreamCAs.map(readPem)];
    this.agent = new https.Agent({ keepAlive: true, maxFreeSockets: 256, timeout: cfg.limits.idleTimeoutMs });
    // through the parent proxy (read per connection: a reload may set or remove it)
    const agent = this.agent as unknown as { createConnection: (o: ParentOptions, cb: ConnectCallback) => net.Socket | undefined };
    const direct = agent.createConnection.bind(this.agent);
    agent.createConnection = (o, cb) => (ctx.parent === null ? direct(o, cb) : viaParent(ctx, o, cb));
    this.inner = http.createServer({ maxHeaderSize: cfg.limits.maxHeaderBytes });
    this.inner.keepAliveTimeout = cfg.limits.idleTimeoutMs;
    this.inner.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res));
    this.inner.on('clientError', (_err: Error, socket: net.Socket) => socket.destroy());
    this.inner.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => this.onUpgrade(req, socket, head));
  }

  /** Whether this allowed CONNECT is to be intercepted (the policy decides; never the socket layer). */
  wants(target: Target, client: Client, decision: Decision): boolean {
    return this.ctx.policy.interceptFor(target, client, decision);
  }

  /** Certificates issued so far (LRU misses). */
  get certificatesIssued(): number {
    return this.leavesMade?.issued ?? 0;
  }

  close(): void {
    this.agent.destroy();
  }

  private leaves(): LeafFactory | null {
    if (this.leavesMade === null && this.ca !== null) {
      this.leavesMade = new LeafFactory(this.ca, { max: this.ctx.config.intercept.maxCertificates });
    }
    return this.leavesMade;
  }

  /**
   * Session-ticket keys the same in every gardefou process (config `workers`): derived from the
   * CA key and the current 12-hour period (so they rotate), set on each leaf context. Without
   * this a browser resuming its session on another process than the first makes a full
   * handshake (an RSA signature) again. Uses the context's native setTicketKeys, as
   * tls.Server.setTicketKeys does: a per-connection TLSSocket has no Server to call it on.
   */
  private shareTickets(context: tls.SecureContext): void {
    const ca = this.ca;
    if (ca === null) return;
    const period = Math.floor(Date.now() / TICKET_PERIOD_MS);
    if (this.tickets === null || this.tickets.period !== period) {
      const keys = crypto.createHmac('sha384', ca.key.export({ type: 'pkcs8', format: 'der' })).update(`gardefou session tickets ${period}`).digest();
      this.tickets = { period, keys, applied: new WeakSet() };
    }
    if (this.tickets.applied.has(context)) return;
    const native = (context as unknown as { context?: { setTicketKeys?: (keys: Buffer) => void } }).context;
    native?.setTicketKeys?.(this.tickets.keys);
    this.tickets.applied.add(context);
  }

  /** Whether the CA is loaded (else an intercepted host is refused, never spliced). */
  get ready(): boolean {
    return this.ca !== null;
  }

  /** Steps 1 to 3 for an allowed CONNECT that interceptFor() chose. */
  async handle(clientSocket: net.Socket, head: Buffer, t: TunnelInfo, refuse: TunnelRefuse): Promise<void> {
    const ctx = this.ctx;
    const { ref, target } = t;
    const leaves = this.leaves();
    if (leaves === null) {
      ctx.log.error({ ref, host: target.host }, 'interception required by the policy but no CA is loaded: refused');
      return refuse(503, InterceptRefusal.noCa as string as RefusalCode, target.host, target.port, infoPage('Inspection indisponible',
        "L'établissement demande l'inspection de ce site mais la passerelle n'a pas d'autorité de certification ; l'accès est suspendu. Prévenez le référent numérique.",
        'The school requires this site to be inspected but the gateway has no certificate authority; access is suspended. Please tell the IT contact.', ref));
    }
    const substitute = ctx.substituteHost(target, t.decision);
    const connectHost = substitute ?? target.host;
    const destIp = await tunnelAddress(ctx, connectHost, target, ref, refuse);
    if (destIp === undefined) return;
    const open = openRecord(ref, t.startMs, t.client, t.clientPort, target, 'CONNECT', t.decision);
    open.reason = INTERCEPTED_REASON;
    const handle = await beginConnection(ctx, clientSocket, open, destIp, 0,
      () => refuse(503, Refusal.journalDown, target.host, target.port, journalDownPage(ref)));
    if (handle === undefined) return;
    clientSocket.write('HTTP/1.1 200 Connection established\r\nVia: 1.1 gardefou\r\n\r\n');
    this.terminate(clientSocket, head, t, { destIp, connectHost, substituted: substitute !== null }, handle, 200);
  }

  /**
   * Terminates the client's TLS with the leaf for `t.target.host` (bytes already read from the
   * client in `first`: a CONNECT head, a transparent ClientHello) and serves the decrypted
   * requests (step 4). Completes `handle`, the tunnel's record (reason "intercepted", or
   * "intercept-client-tls" when the client refused the certificate), when the socket closes.
   */
  terminate(clientSocket: net.Socket, first: Buffer, t: TunnelInfo, link: UpstreamLink, handle: JournalHandle | null, status: number | null): void {
    const ctx = this.ctx;
    const { ref, target } = t;
    const readAtStart = clientSocket.bytesRead - first.length;
    const writtenAtStart = clientSocket.bytesWritten;
    let failure: string | null = null;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      handle?.finish({
        endMs: Date.now(), destIp: link.destIp, egressIp: null, egressPort: null, status,
        bytesIn: clientSocket.bytesRead - readAtStart, bytesOut: clientSocket.bytesWritten - writtenAtStart,
        reason: failure === null ? INTERCEPTED_REASON : failure === InterceptRefusal.noCa ? failure : CLIENT_TLS_REASON,
      });
    };
    // deferred: the TLS layer reports a failed handshake on its own 'close', which may come after
    clientSocket.once('close', () => setImmediate(finish));
    if (clientSocket.destroyed) return finish();
    const leaves = this.leaves();
    let leaf;
    try {
      if (leaves === null) throw new Error('no CA loaded');
      leaf = leaves.get(target.host);
      this.shareTickets(leaf.context);
    } catch (err) {
      failure = InterceptRefusal.noCa;
      ctx.log.error({ ref, host: target.host, err: errorMessage(err) }, 'interception impossible: connection closed');
      clientSocket.destroy();
      return;
    }
    if (first.length > 0) clientSocket.unshift(first);
    const secure = new tls.TLSSocket(clientSocket, { isServer: true, secureContext: leaf.context, ALPNProtocols: ['http/1.1'] });
    const tun: Tunnel = { info: t, raw: clientSocket, secure, headerTimer: null, ...link };
    // a client that neither completes the handshake nor leaves is cut after the header timeout
    secure.setTimeout(ctx.config.limits.headerTimeoutMs, () => secure.destroy());
    secure.once('secure', () => {
      this.handshakes++;
      secure.setTimeout(ctx.config.limits.idleTimeoutMs, () => secure.destroy());
      this.tunnels.set(secure, tun);
      this.awaitHeaders(tun);
      this.inner.emit('connection', secure);
    });
    // A client refusing the leaf (it does not trust the school CA) usually just sends an alert
    // and closes: the server side sees a close before 'secure', often without an 'error'.
    const handshakeFailed = (code: string) => {
      if (this.tunnels.has(secure) || failure !== null) return;
      failure = code;
      ctx.log.info({ ref, client: t.client.ip, host: target.host, err: code }, 'interception handshake failed (does the client trust the school CA?)');
    };
    secure.on('error', (err: NodeJS.ErrnoException) => {
      handshakeFailed(err.code ?? 'tls-error');
      clientSocket.destroy();
    });
    // the proxy's sockets allow half-open connections: a client leaving mid-handshake only ends
    secure.once('end', () => {
      if (!this.tunnels.has(secure)) secure.destroy();
    });
    secure.once('close', () => {
      if (tun.headerTimer !== null) clearTimeout(tun.headerTimer);
      handshakeFailed('closed-during-handshake');
      clientSocket.destroy();
    });
  }

  /** (Re)starts the header timer of a tunnel waiting for its next request. */
  private awaitHeaders(tun: Tunnel): void {
    if (tun.headerTimer !== null) clearTimeout(tun.headerTimer);
    tun.headerTimer = tun.secure.destroyed ? null : setTimeout(() => tun.secure.destroy(), this.ctx.config.limits.headerTimeoutMs);
    tun.headerTimer?.unref();
  }

  /** Step 4: one decrypted request. */
  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const tun = this.tunnels.get(req.socket);
    if (tun === undefined) {
      res.destroy();
      return;
    }
    if (tun.headerTimer !== null) clearTimeout(tun.headerTimer);
    tun.headerTimer = null;
    res.once('finish', () => this.awaitHeaders(tun));
    const ctx = this.ctx;
    const ex = exchange(tun);
    const method = req.method ?? 'GET';
    const host = tun.info.target.host;
    const checked = this.check(req, ex);
    if (!checked.ok) {
      if (checked.status === 431) res.shouldKeepAlive = false;
      return this.refuse(req, res, ex, checked.status, checked.code, checked.page);
    }
    const target = checked.target;
    const decision = ctx.policy.decide(target, tun.info.client);
    if (decision.action === 'block') {
      void ctx.journalBegin(this.record(ex, method, target, decision))
        .then((h) => { ex.handle = h; if (res.writableFinished || res.destroyed) this.finish(res, ex); });
      res.once('close', () => this.finish(res, ex));
      sendPage(res, 403, ctx.blockPage.render({ host, decision, ref: ex.ref, atMs: ex.startMs, user: tun.info.client.user }));
      ctx.log.info({ ref: ex.ref, tunnel: tun.info.ref, client: tun.info.client.ip, host, category: decision.category, reason: decision.reason, profile: decision.profile }, 'blocked inside intercepted tunnel');
      return;
    }
    if (!ctx.mayForward()) return this.refuse(req, res, ex, 503, Refusal.journalDown, journalDownPage(ex.ref));
    this.forward(req, res, ex, target, decision).catch((err: unknown) => {
      ctx.log.error({ ref: ex.ref, err: errorMessage(err) }, 'forwarding inside intercepted tunnel failed');
      if (!res.headersSent) sendPage(res, 502, infoPage('Le site ne répond pas', "Le site demandé n'a pas répondu correctement.", 'The requested site did not answer properly.', ex.ref));
      else res.destroy();
    });
  }

  /** Steps 4a: the request's target, or why it is refused. */
  private check(req: http.IncomingMessage, ex: Exchange): { ok: true; target: Target } | { ok: false; status: number; code: string; page: string } {
    const { host, port } = ex.tun.info.target;
    const url = req.url ?? '';
    if (headerBytes(req) > this.ctx.config.limits.maxHeaderBytes) {
      return { ok: false, status: 431, code: Refusal.badRequest, page: infoPage('En-têtes trop grands', 'La requête porte trop d’en-têtes.', 'The request headers are too large.', ex.ref) };
    }
    const target = url.charCodeAt(0) === 47 /* '/' */ ? parseAbsoluteUrl(`https://${bracket(host)}:${port}${url}`) : null;
    if (target === null) {
      return { ok: false, status: 400, code: Refusal.badUrl, page: infoPage('Adresse invalide', "L'adresse demandée n'est pas valide.", 'The requested address is not valid.', ex.ref) };
    }
    // the request must be for the host the tunnel was decided and certified for: no fronting
    if (hostOfHeader(req.headers.host) !== host) {
      return { ok: false, status: 400, code: InterceptRefusal.hostMismatch, page: infoPage('Requête refusée', "L'en-tête Host ne correspond pas au site de la connexion.", 'The Host header does not name the site of this connection.', ex.ref) };
    }
    return { ok: true, target };
  }

  /**
   * An Upgrade (WebSocket) inside an intercepted tunnel: steps 4a-4c as for a request, then a
   * verified TLS connection to the origin, the request head written there and both sides
   * spliced. The record (protocol "https") carries the origin's status (101) and the bytes.
   */
  private onUpgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const tun = this.tunnels.get(socket);
    if (tun === undefined) {
      socket.destroy();
      return;
    }
    if (tun.headerTimer !== null) clearTimeout(tun.headerTimer);
    tun.headerTimer = null;
    const ctx = this.ctx;
    const ex = exchange(tun);
    const method = req.method ?? 'GET';
    let status: number | null = null;
    const done = () => {
      const h = ex.handle;
      if (h === null) return;
      ex.handle = null;
      const close: JournalClose = {
        endMs: Date.now(), destIp: tun.destIp, egressIp: ex.egressIp, egressPort: ex.egressPort, status,
        bytesIn: tun.raw.bytesRead - ex.readAtStart, bytesOut: tun.raw.bytesWritten - ex.writtenAtStart,
      };
      if (ex.failure !== null) {
        close.decision = 'error';
        close.reason = `upstream-${ex.failure}`;
      }
      h.finish(close);
    };
    socket.once('close', done);
    const answer = (code: number, html: string) => {
      status = code;
      writeResponse(socket, code, html);
    };
    const begin = (open: JournalOpen) => {
      void ctx.journalBegin(open).then((h) => { ex.handle = h; if (socket.destroyed) done(); });
    };
    const checked = this.check(req, ex);
    if (!checked.ok) {
      const open = refusalRecord(ex.ref, ex.startMs, tun.info.client, tun.info.clientPort, 'http', method, tun.info.target.host, tun.info.target.port, checked.code, ctx.policy.listSerial);
      open.protocol = 'https';
      begin(open);
      return answer(checked.status, checked.page);
    }
    const target = checked.target;
    const decision = ctx.policy.decide(target, tun.info.client);
    if (decision.action === 'block') {
      begin(this.record(ex, method, target, decision));
      ctx.log.info({ ref: ex.ref, tunnel: tun.info.ref, client: tun.info.client.ip, host: target.host, category: decision.category, reason: decision.reason, profile: decision.profile }, 'blocked inside intercepted tunnel');
      return answer(403, ctx.blockPage.render({ host: target.host, decision, ref: ex.ref, atMs: ex.startMs, user: tun.info.client.user }));
    }
    if (!ctx.mayForward()) return answer(503, journalDownPage(ex.ref));
    void (async () => {
      const handle = await ctx.journalBegin(this.record(ex, method, target, decision));
      if (handle === null && !ctx.config.journal.failOpen) return answer(503, journalDownPage(ex.ref));
      ex.handle = handle;
      if (socket.destroyed) return done();
      const opts = { ...this.upstreamTls(target), host: tun.destIp ?? tun.connectHost, port: target.port, ALPNProtocols: ['http/1.1'] } as ParentOptions;
      const onUp = (err: NodeJS.ErrnoException | null, up?: tls.TLSSocket) => {
        if (err !== null || up === undefined) {
          const code = err?.code ?? 'error';
          ex.failure = code;
          ctx.log.warn({ ref: ex.ref, tunnel: tun.info.ref, host: target.host, err: code }, 'upstream failed (upgrade)');
          return answer(502, upstreamErrorPage(target.host, code, ex.ref));
        }
        ex.egressIp = up.localAddress ? plainAddress(up.localAddress) : null;
        ex.egressPort = up.localPort ?? null;
        ex.handle?.connected({ destIp: tun.destIp, egressIp: ex.egressIp, egressPort: ex.egressPort });
        up.write(upgradeHead(req, target));
        if (head.length > 0) up.write(head);
        up.once('data', (d: Buffer) => {
          const m = /^HTTP\/1\.[01] (\d{3})/.exec(d.subarray(0, 16).toString('latin1'));
          status = m ? Number(m[1]) : null;
        });
        up.on('error', () => socket.destroy());
        up.once('close', () => socket.destroy());
        socket.once('close', () => up.destroy());
        socket.pipe(up);
        up.pipe(socket);
      };
      if (ctx.parent === null) {
        const up = tls.connect(opts);
        up.once('secureConnect', () => { up.removeAllListeners('error'); onUp(null, up); });
        up.once('error', (e: NodeJS.ErrnoException) => onUp(e));
      } else {
        viaParent(ctx, opts, (err, s) => {
          if (err !== null || s === undefined) return onUp(err);
          const up = s as tls.TLSSocket;
          up.once('secureConnect', () => { up.removeAllListeners('error'); onUp(null, up); });
          up.once('error', (e: NodeJS.ErrnoException) => onUp(e));
        });
      }
    })().catch((err: unknown) => {
      ctx.log.error({ ref: ex.ref, err: errorMessage(err) }, 'upgrade inside intercepted tunnel failed');
      socket.destroy();
    });
  }

  /** TLS options towards an origin: strict verification of the name the client asked for. */
  private upstreamTls(target: Target): tls.ConnectionOptions {
    const isIp = net.isIP(target.host) !== 0;
    return {
      servername: isIp ? '' : target.host,
      rejectUnauthorized: true,
      ...(this.upstreamCa === undefined ? {} : { ca: this.upstreamCa }),
      // an IP literal is checked against the certificate's IP addresses, a name against its names
      checkServerIdentity: (_h: string, cert: tls.PeerCertificate) => tls.checkServerIdentity(target.host, cert),
    };
  }

  private async forward(req: http.IncomingMessage, res: http.ServerResponse, ex: Exchange, target: Target, decision: Decision): Promise<void> {
    const ctx = this.ctx;
    const tun = ex.tun;
    const handle = await ctx.journalBegin(this.record(ex, req.method ?? 'GET', target, decision));
    if (handle === null && !ctx.config.journal.failOpen) {
      return this.refuse(req, res, ex, 503, Refusal.journalDown, journalDownPage(ex.ref));
    }
    ex.handle = handle;
    if (res.destroyed) { this.finish(res, ex); return; }
    res.once('close', () => this.finish(res, ex));

    stripHopByHop(req.headers);
    req.headers['host'] = target.port === 443 ? bracket(target.host) : `${bracket(target.host)}:${target.port}`;
    addVia(req.headers);
    const upstream = https.request({
      // through a parent proxy the agent dials it and asks CONNECT connectHost:port (viaParent)
      host: tun.destIp ?? tun.connectHost,
      port: target.port,
      method: req.method ?? 'GET',
      path: target.path,
      headers: req.headers,
      agent: this.agent,
      ...this.upstreamTls(target),
    });
    upstream.setTimeout(ctx.config.limits.idleTimeoutMs, () => upstream.destroy(Object.assign(new Error('idle'), { code: 'idle-timeout' })));
    upstream.once('socket', (s: net.Socket) => {
      const report = () => {
        ex.egressIp = s.localAddress ? plainAddress(s.localAddress) : null;
        ex.egressPort = s.localPort ?? null;
        ex.handle?.connected({ destIp: tun.destIp, egressIp: ex.egressIp, egressPort: ex.egressPort });
      };
      if (s.connecting) s.once('connect', report);
      else report();
    });
    upstream.on('response', (up: http.IncomingMessage) => {
      stripHopByHop(up.headers);
      addVia(up.headers);
      if (!res.destroyed) {
        res.writeHead(up.statusCode ?? 502, up.statusMessage, up.headers);
        up.pipe(res);
      } else {
        up.destroy();
      }
      up.on('error', () => res.destroy());
    });
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? 'error';
      ex.failure = code;
      const why = certReason(code);
      ctx.log.warn({ ref: ex.ref, tunnel: tun.info.ref, host: target.host, err: code }, why !== null ? 'upstream certificate refused' : 'upstream failed');
      if (res.headersSent) { res.destroy(); return; }
      sendPage(res, 502, upstreamErrorPage(target.host, code, ex.ref));
    });
    res.on('close', () => { if (!upstream.destroyed && !res.writableFinished) upstream.destroy(); });
    req.pipe(upstream);
  }

  private record(ex: Exchange, method: string, target: Target, decision: Decision): JournalOpen {
    const i = ex.tun.info;
    const open = openRecord(ex.ref, ex.startMs, i.client, i.clientPort, target, method, decision);
    open.protocol = 'https';
    if (ex.tun.substituted && decision.action === 'allow') open.reason = SUBSTITUTED_REASON;
    return open;
  }

  private refuse(req: http.IncomingMessage, res: http.ServerResponse, ex: Exchange, status: number, code: RefusalCode | string, page: string): void {
    const ctx = this.ctx;
    const i = ex.tun.info;
    const open = refusalRecord(ex.ref, ex.startMs, i.client, i.clientPort, 'http', req.method ?? 'GET', i.target.host, i.target.port, code, ctx.policy.listSerial);
    open.protocol = 'https';
    void ctx.journalBegin(open).then((h) => { ex.handle = h; if (res.writableFinished || res.destroyed) this.finish(res, ex); });
    res.once('close', () => this.finish(res, ex));
    res.shouldKeepAlive = false;
    sendPage(res, status, page);
    ctx.log.info({ ref: ex.ref, tunnel: i.ref, client: i.client.ip, host: i.target.host, reason: code, status }, 'refused inside intercepted tunnel');
  }

  private finish(res: http.ServerResponse, ex: Exchange): void {
    const h = ex.handle;
    if (h === null) return;
    ex.handle = null; // exactly once
    const close: JournalClose = {
      endMs: Date.now(),
      destIp: ex.tun.destIp,
      egressIp: ex.egressIp,
      egressPort: ex.egressPort,
      status: res.headersSent ? res.statusCode : null,
      bytesIn: ex.tun.raw.bytesRead - ex.readAtStart,
      bytesOut: ex.tun.raw.bytesWritten - ex.writtenAtStart,
    };
    if (ex.failure !== null) {
      close.decision = 'error';
      close.reason = `upstream-${ex.failure}`;
    }
    h.finish(close);
  }
}

/**
 * Upstream connections through the parent proxy: CONNECT host:port there, then TLS over it
 * (verification unchanged: the options carry servername, ca and checkServerIdentity).
 */
type ParentOptions = tls.ConnectionOptions & { host?: string; port?: number };
type ConnectCallback = (err: Error | null, socket?: net.Socket) => void;

function viaParent(ctx: ProxyContext, options: ParentOptions, cb: ConnectCallback): undefined {
  const parent = ctx.parent!;
  const host = options.host ?? '';
  const auth = host.includes(':') ? `[${host}]:${options.port}` : `${host}:${options.port}`;
  const raw = net.connect(parent.port, parent.host);
  raw.once('error', (err) => cb(err));
  raw.once('connect', () => {
    raw.write(`CONNECT ${auth} HTTP/1.1\r\nHost: ${auth}\r\nVia: 1.1 gardefou\r\n\r\n`);
    readParentAnswer(raw, (code, rest) => {
      if (code !== 200) {
        raw.destroy();
        cb(Object.assign(new Error(`parent proxy answered ${code}`), { code: `parent-${code}` }));
        return;
      }
      if (rest.length > 0) raw.unshift(rest);
      raw.resume();
      raw.removeAllListeners('error');
      cb(null, tls.connect({ ...options, socket: raw }));
    });
  });
  return undefined;
}

function exchange(tun: Tunnel): Exchange {
  return {
    ref: newRef(), startMs: Date.now(), tun,
    readAtStart: tun.raw.bytesRead, writtenAtStart: tun.raw.bytesWritten,
    handle: null, egressIp: null, egressPort: null, failure: null,
  };
}

/** The 502 page for an upstream failure: an invalid certificate says why (French, then English). */
function upstreamErrorPage(host: string, code: string, ref: string): string {
  const why = certReason(code);
  return why !== null
    ? infoPage('Certificat du site invalide',
      `Le site ${escapeHtml(host)} présente un certificat qui n'est pas valide : ${why.fr}. Par sécurité, la page n'est pas affichée. (${escapeHtml(code)})`,
      `The site ${escapeHtml(host)} presents an invalid certificate: ${why.en}. For your safety the page is not shown. (${escapeHtml(code)})`, ref)
    : infoPage('Le site ne répond pas', "Le site demandé n'a pas répondu correctement.", 'The requested site did not answer properly.', ref);
}

/** Headers never passed on an Upgrade (connection-specific or ours); Connection/Upgrade are kept. */
const UPGRADE_DROP = new Set(['host', 'via', 'proxy-authorization', 'proxy-connection', 'keep-alive', 'te', 'trailer']);

/** The Upgrade request as sent to the origin: origin-form path, Host of the tunnel, our Via. */
function upgradeHead(req: http.IncomingMessage, target: Target): string {
  let out = `${req.method ?? 'GET'} ${target.path} HTTP/1.1\r\nHost: ${target.port === 443 ? bracket(target.host) : `${bracket(target.host)}:${target.port}`}\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (!UPGRADE_DROP.has(raw[i]!.toLowerCase())) out += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  const via = req.headers['via'];
  return `${out}Via: ${typeof via === 'string' && via !== '' ? `${via}, 1.1 gardefou` : '1.1 gardefou'}\r\n\r\n`;
}

interface CertReason { fr: string; en: string }

/** Why an upstream certificate was refused, from node's TLS error code; null when not a certificate error. */
export function certReason(code: string): CertReason | null {
  switch (code) {
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
      return { fr: 'il est auto-signé (aucune autorité ne le garantit)', en: 'it is self-signed (no authority vouches for it)' };
    case 'SELF_SIGNED_CERT_IN_CHAIN':
      return { fr: 'sa chaîne remonte à une autorité auto-signée non reconnue', en: 'its chain ends at an untrusted self-signed authority' };
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'CERT_UNTRUSTED':
    case 'INVALID_CA':
      return { fr: "il n'est émis par aucune autorité reconnue", en: 'it is not issued by a trusted authority' };
    case 'CERT_HAS_EXPIRED':
      return { fr: 'il a expiré', en: 'it has expired' };
    case 'CERT_NOT_YET_VALID':
      return { fr: "il n'est pas encore valide", en: 'it is not valid yet' };
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
    case 'HOSTNAME_MISMATCH':
      return { fr: 'il est établi pour un autre nom de site', en: 'it was issued for another site name' };
    case 'CERT_REVOKED':
      return { fr: 'il a été révoqué', en: 'it has been revoked' };
    case 'CERT_SIGNATURE_FAILURE':
    case 'CERT_REJECTED':
      return { fr: 'sa signature est invalide ou il est rejeté', en: 'its signature is invalid or it is rejected' };
    default:
      return /CERT/.test(code) ? { fr: 'il est refusé', en: 'it is refused' } : null;
  }
}

/** Host of a Host header, normalised like targets ('' when absent or unparseable). */
function hostOfHeader(h: string | undefined): string {
  if (h === undefined) return '';
  let host = h.trim();
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    host = end < 0 ? '' : host.slice(1, end);
  } else {
    const colon = host.lastIndexOf(':');
    if (colon >= 0) host = host.slice(0, colon);
  }
  return normaliseHost(host) ?? '';
}

function bracket(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function readPem(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`reading intercept.upstreamCAs ${file}: ${errorMessage(err)}`);
  }
}
