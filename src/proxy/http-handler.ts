/**
 * Absolute-form HTTP requests (`GET http://host/path HTTP/1.1`), forwarded with http-proxy.
 *
 * Order of steps for one request (each step may answer and stop):
 *   1. client network allowed?                       no  -> 403 page, journal "refused"
 *   2. origin-form (`GET / HTTP/1.1`)?               yes -> 400 usage page, journal "refused"
 *   3. absolute URI parses (normalise.ts)?           no  -> 400, journal "refused"
 *   4. policy decision                               block -> 403 block page, journal "block"
 *   5. journal writable (fail-closed)?               no  -> 503, journal attempt
 *   6. destination resolves to an allowed address?   no  -> 403 / 502, journal "refused"
 *   7. journal intent durable, then forward; the record is completed when the response ends.
 * Nothing of the path or query goes to any log or to the journal.
 */
import * as http from 'node:http';
import httpProxy from 'http-proxy';
import { plainAddress } from '../config/cidr';
import type { JournalClose, JournalHandle } from '../journal/types';
import { parseAbsoluteUrl } from '../policy/normalise';
import type { Client, Decision, Target } from '../policy/types';
import { ProxyContext, Refusal, RefusalCode, openRecord, refusalRecord, remotePort } from './context';
import { addVia, stripHopByHop } from './headers';
import { answerHttp, authStep } from './auth';
import { headerBytes } from './http-server';
import { infoPage, usagePage } from './pages';
import { defaultProxyHostPort, isPacPath, PAC_CONTENT_TYPE, renderPac } from './pac';
import { newRef } from './ref';

interface Exchange {
  ref: string;
  startMs: number;
  client: Client;
  clientPort: number;
  readAtStart: number;
  writtenAtStart: number;
  handle: JournalHandle | null;
  destIp: string | null;
  egressIp: string | null;
  egressPort: number | null;
  upstreamFailed: string | null;
}

export class HttpHandler {
  private readonly proxy: httpProxy;
  private readonly agent: http.Agent;

  constructor(private readonly ctx: ProxyContext) {
    this.agent = new http.Agent({ keepAlive: true, maxFreeSockets: 256, timeout: ctx.config.limits.idleTimeoutMs });
    this.proxy = httpProxy.createProxyServer({ xfwd: false, proxyTimeout: ctx.config.limits.idleTimeoutMs });
    this.proxy.on('proxyReq', (proxyReq, req) => this.onProxyReq(proxyReq, req));
    this.proxy.on('proxyRes', (proxyRes) => {
      stripHopByHop(proxyRes.headers);
      addVia(proxyRes.headers);
    });
    // Errors are handled by the per-request callback; this listener keeps an unexpected one
    // from crashing the process.
    this.proxy.on('error', (err) => ctx.log.warn({ err: err.message }, 'http-proxy error'));
  }

  close(): void {
    this.agent.destroy();
    this.proxy.close();
  }

  /** `authed`: the client once proxy authentication passed (auth.ts), on the second pass */
  handle(req: http.IncomingMessage, res: http.ServerResponse, authed?: Client): void {
    const ctx = this.ctx;
    const socket = req.socket;
    const ex: Exchange = {
      ref: newRef(),
      startMs: Date.now(),
      client: authed ?? ctx.identify(plainAddress(socket.remoteAddress ?? '')),
      clientPort: remotePort(req),
      readAtStart: socket.bytesRead,
      writtenAtStart: socket.bytesWritten,
      handle: null,
      destIp: null,
      egressIp: null,
      egressPort: null,
      upstreamFailed: null,
    };
    const method = req.method ?? 'GET';
    const url = req.url ?? '';

    if (headerBytes(req) > ctx.config.limits.maxHeaderBytes) {
      res.shouldKeepAlive = false;
      return this.refuse(req, res, ex, 431, Refusal.badRequest, '', 0,
        infoPage('En-têtes trop grands', 'La requête porte trop d’en-têtes.', 'The request headers are too large.', ex.ref));
    }
    if (!ctx.clients.has(ex.client.ip)) {
      return this.refuse(req, res, ex, 403, Refusal.clientRefused, '', 0,
        infoPage('Accès refusé', "Ce poste n'est pas sur un réseau autorisé à utiliser ce proxy.", 'This computer is not on a network allowed to use this proxy.', ex.ref));
    }
    // proxy authentication (auth.ts): asynchronous, then this handler again with the user
    const pending = authed === undefined && url.charCodeAt(0) !== 47 ? authStep(ctx, req, ex.client, ex.ref) : null;
    if (pending !== null) {
      void pending.then((o) => {
        if (o.ok) return this.handle(req, res, o.client);
        const t = /^http:\/\//i.test(url) ? parseAbsoluteUrl(url) : null;
        answerHttp(ctx, res, o, { ...ex, method, host: t?.host ?? '', port: t?.port ?? 0 });
      });
      return;
    }
    if (url.charCodeAt(0) === 47 /* '/' */) {
      if ((method === 'GET' || method === 'HEAD') && isPacPath(url.split('?')[0] ?? '')) {
        this.servePac(req, res);
        return;
      }
      return this.refuse(req, res, ex, 400, Refusal.originForm, '', 0, usagePage(ctx.publicAddress));
    }
    if (!/^http:\/\//i.test(url)) {
      return this.refuse(req, res, ex, 400, Refusal.badUrl, '', 0,
        infoPage('Requête invalide', 'Seules les adresses http:// sont acceptées ici ; les sites https:// passent par CONNECT.', 'Only http:// URLs are accepted here; https:// sites go through CONNECT.', ex.ref));
    }
    const target = parseAbsoluteUrl(url);
    if (target === null) {
      return this.refuse(req, res, ex, 400, Refusal.badUrl, '', 0,
        infoPage('Adresse invalide', "L'adresse demandée n'est pas valide.", 'The requested address is not valid.', ex.ref));
    }
    const decision = ctx.policy.decide(target, ex.client);
    if (decision.action === 'block') {
      this.block(req, res, ex, target, decision);
      return;
    }
    if (!ctx.mayForward()) {
      return this.refuse(req, res, ex, 503, Refusal.journalDown, target.host, target.port, journalDownPage(ex.ref));
    }
    this.forward(req, res, ex, target, decision).catch((err: unknown) => {
      ctx.log.error({ ref: ex.ref, err: (err as Error).message }, 'forwarding failed');
      if (!res.headersSent) sendPage(res, 502, bad502(ex.ref));
      else res.destroy();
    });
  }

  /**
   * proxy.pac / wpad.dat for allowed clients: local networks direct, everything else through
   * this proxy (announced with the address the client reached us on). Not a connection to a
   * destination, so not journaled.
   */
  private servePac(req: http.IncomingMessage, res: http.ServerResponse): void {
    const cfg = this.ctx.config;
    const body = renderPac({
      clients: cfg.clients,
      proxyHostPort: defaultProxyHostPort(cfg.listen, { address: req.socket.localAddress, port: req.socket.localPort }),
    });
    res.writeHead(200, { 'content-type': PAC_CONTENT_TYPE, 'content-length': Buffer.byteLength(body), 'cache-control': 'max-age=300' });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  private block(req: http.IncomingMessage, res: http.ServerResponse, ex: Exchange, target: Target, decision: Decision): void {
    const ctx = this.ctx;
    void ctx.journalBegin(openRecord(ex.ref, ex.startMs, ex.client, ex.clientPort, target, req.method ?? 'GET', decision))
      .then((h) => { ex.handle = h; if (res.writableFinished || res.destroyed) this.finish(res, ex); });
    res.once('close', () => this.finish(res, ex));
    sendPage(res, 403, ctx.blockPage.render({ host: target.host, decision, ref: ex.ref, atMs: ex.startMs, user: ex.client.user }));
    ctx.log.info({ ref: ex.ref, client: ex.client.ip, host: target.host, category: decision.category, reason: decision.reason, profile: decision.profile }, 'blocked');
  }

  private refuse(req: http.IncomingMessage, res: http.ServerResponse, ex: Exchange, status: number, code: RefusalCode, host: string, port: number, page: string): void {
    const ctx = this.ctx;
    void ctx.journalBegin(refusalRecord(ex.ref, ex.startMs, ex.client, ex.clientPort, 'http', req.method ?? 'GET', host, port, code, ctx.policy.listSerial))
      .then((h) => { ex.handle = h; if (res.writableFinished || res.destroyed) this.finish(res, ex); });
    res.once('close', () => this.finish(res, ex));
    sendPage(res, status, page);
    ctx.log.info({ ref: ex.ref, client: ex.client.ip, host: host || undefined, reason: code, status }, 'refused');
  }

  private async forward(req: http.IncomingMessage, res: http.ServerResponse, ex: Exchange, target: Target, decision: Decision): Promise<void> {
    const ctx = this.ctx;
    let upstreamHost: string;
    let upstreamPort: number;
    let substitute: string | null = null;
    if (ctx.parent) {
      upstreamHost = ctx.parent.host;
      upstreamPort = ctx.parent.port;
    } else {
      // (through a parent proxy the URI names the host, so no substitution is possible there)
      substitute = ctx.substituteHost(target, decision);
      const r = await ctx.resolver.resolve(substitute ?? target.host);
      if (!r.ok) {
        const status = r.reason === 'dns-failure' ? 502 : 403;
        const page = r.reason === 'dns-failure'
          ? infoPage('Site introuvable', `Le nom ${escapeText(target.host)} n'existe pas ou ne répond pas.`, `The name ${escapeText(target.host)} does not resolve.`, ex.ref)
          : forbiddenPage(ex.ref);
        return this.refuse(req, res, ex, status, r.reason === 'dns-failure' ? Refusal.dnsFailure : Refusal.forbiddenDestination, target.host, target.port, page);
      }
      upstreamHost = r.address;
      upstreamPort = target.port;
      ex.destIp = r.address;
    }
    // The record (intent) must be durable before anything leaves towards the destination.
    const open = openRecord(ex.ref, ex.startMs, ex.client, ex.clientPort, target, req.method ?? 'GET', decision);
    ctx.noteSubstitution(open, substitute);
    const handle = await ctx.journalBegin(open);
    if (handle === null && !ctx.config.journal.failOpen) {
      return this.refuse(req, res, ex, 503, Refusal.journalDown, target.host, target.port, journalDownPage(ex.ref));
    }
    ex.handle = handle;
    if (res.destroyed) { this.finish(res, ex); return; } // client left while we waited
    res.once('close', () => this.finish(res, ex));

    // Host comes from the absolute URI, never from a (possibly conflicting) Host header.
    stripHopByHop(req.headers);
    req.headers['host'] = target.port === 80 ? bracket(target.host) : `${bracket(target.host)}:${target.port}`;
    addVia(req.headers);
    req.url = ctx.parent ? `http://${req.headers['host']}${target.path}` : target.path;
    (req as RequestWithExchange).gardefou = ex;
    this.proxy.web(req, res, {
      target: { protocol: 'http:', host: upstreamHost, port: upstreamPort },
      agent: this.agent,
      toProxy: ctx.parent !== null,
      prependPath: false,
    }, (err) => {
      ex.upstreamFailed = (err as NodeJS.ErrnoException).code ?? 'upstream-error';
      ctx.log.warn({ ref: ex.ref, host: target.host, err: ex.upstreamFailed }, 'upstream failed');
      if (!res.headersSent) sendPage(res, 502, bad502(ex.ref));
      else res.destroy();
    });
  }

  /**
   * Records the egress address/port as soon as the upstream socket is known. http-proxy emits
   * 'proxyReq' from inside the request's 'socket' event, so the socket is already assigned.
   */
  private onProxyReq(proxyReq: http.ClientRequest, req: http.IncomingMessage): void {
    const ex = (req as RequestWithExchange).gardefou;
    const s = proxyReq.socket;
    if (!ex || !s) return;
    const report = () => {
      ex.egressIp = s.localAddress ? plainAddress(s.localAddress) : null;
      ex.egressPort = s.localPort ?? null;
      if (this.ctx.parent === null) ex.destIp = s.remoteAddress ? plainAddress(s.remoteAddress) : ex.destIp;
      ex.handle?.connected({ destIp: ex.destIp, egressIp: ex.egressIp, egressPort: ex.egressPort });
    };
    if (s.connecting) s.once('connect', report);
    else report();
  }

  private finish(res: http.ServerResponse, ex: Exchange): void {
    const h = ex.handle;
    if (h === null) return;
    ex.handle = null; // exactly once
    const socket = res.socket ?? (res as unknown as { req: http.IncomingMessage }).req?.socket;
    const close: JournalClose = {
      endMs: Date.now(),
      destIp: ex.destIp,
      egressIp: ex.egressIp,
      egressPort: ex.egressPort,
      status: res.headersSent ? res.statusCode : null,
      bytesIn: socket ? socket.bytesRead - ex.readAtStart : 0,
      bytesOut: socket ? socket.bytesWritten - ex.writtenAtStart : 0,
    };
    if (ex.upstreamFailed !== null) {
      close.decision = 'error';
      close.reason = `upstream-${ex.upstreamFailed}`;
    }
    h.finish(close);
  }
}

type RequestWithExchange = http.IncomingMessage & { gardefou?: Exchange };

function bracket(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function escapeText(s: string): string {
  return s.replace(/[&<>"']/g, '');
}

export function sendPage(res: http.ServerResponse, status: number, html: string): void {
  const body = Buffer.from(html, 'utf8');
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': body.length,
    'cache-control': 'no-store',
    via: '1.1 gardefou',
  });
  res.end(body);
}

export function journalDownPage(ref: string): string {
  return infoPage('Service momentanément indisponible',
    "Le journal de connexion ne peut pas être écrit ; par sécurité, l'accès est suspendu. Prévenez le référent numérique.",
    'The connection journal cannot be written; access is suspended until it is fixed. Please tell the IT contact.', ref);
}

export function forbiddenPage(ref: string): string {
  return infoPage('Destination interdite',
    "Cette adresse (réseau local, la passerelle elle-même, adresse de lien local) n'est pas accessible par le proxy.",
    'This address (local network, the gateway itself, link-local) cannot be reached through the proxy.', ref);
}

function bad502(ref: string): string {
  return infoPage('Le site ne répond pas', "Le site demandé n'a pas répondu correctement.", 'The requested site did not answer properly.', ref);
}
