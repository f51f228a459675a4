/**
 * CONNECT tunnels. Order of steps (each may answer and stop):
 *   1. client network allowed?                       no  -> 403, journal "refused"
 *   2. authority parses (normalise.ts)?              no  -> 400, journal "refused"
 *   3. port in connectPorts?                         no  -> 403, journal "refused"
 *   4. policy decision on the host                   block -> 403 block page, tunnel never opened
 *   5. journal writable (fail-closed)?               no  -> 503
 *   6. destination resolves to an allowed address?   no  -> 403 / 502
 *   7. journal intent durable, then connect (directly or through the parent proxy), answer
 *      200 and splice both ways; the record is completed when either side closes.
 */
import type * as http from 'node:http';
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import { parseConnectAuthority } from '../policy/normalise';
import type { Client, Decision, Target } from '../policy/types';
import { ProxyContext, Refusal, RefusalCode, openRecord, refusalRecord, SUBSTITUTED_REASON } from './context';
import { forbiddenPage, journalDownPage } from './http-handler';
import { infoPage } from './pages';
import { headerBytes } from './http-server';
import { newRef } from './ref';
import { relay } from './relay';

const REASON_PHRASES: Record<number, string> = {
  400: 'Bad Request',
  431: 'Request Header Fields Too Large',
  403: 'Forbidden',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

export class TunnelHandler {
  /** open tunnels, for orderly shutdown */
  readonly open = new Set<net.Socket>();

  constructor(private readonly ctx: ProxyContext) {}

  handle(req: http.IncomingMessage, clientSocket: net.Socket, head: Buffer): void {
    const ctx = this.ctx;
    const ref = newRef();
    const startMs = Date.now();
    const client = ctx.identify(plainAddress(clientSocket.remoteAddress ?? ''));
    const clientPort = clientSocket.remotePort ?? 0;
    const authority = req.url ?? '';
    clientSocket.on('error', () => { /* reported through the journal record; never crash */ });

    const refuse = (status: number, code: RefusalCode, host: string, port: number, page: string) => {
      void ctx.journalBegin(refusalRecord(ref, startMs, client, clientPort, 'connect', 'CONNECT', host, port, code, ctx.policy.listSerial))
        .then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status, bytesIn: 0, bytesOut: 0 }));
      writeResponse(clientSocket, status, page);
      ctx.log.info({ ref, client: client.ip, host: host || undefined, port: port || undefined, reason: code, status }, 'refused');
    };

    if (headerBytes(req) > ctx.config.limits.maxHeaderBytes) {
      return refuse(431, Refusal.badRequest, '', 0, infoPage('En-têtes trop grands', 'La requête porte trop d’en-têtes.', 'The request headers are too large.', ref));
    }
    if (!ctx.clients.has(client.ip)) {
      return refuse(403, Refusal.clientRefused, '', 0, infoPage('Accès refusé', "Ce poste n'est pas sur un réseau autorisé à utiliser ce proxy.", 'This computer is not on a network allowed to use this proxy.', ref));
    }
    const target = parseConnectAuthority(authority);
    if (target === null) {
      return refuse(400, Refusal.badUrl, '', 0, infoPage('Requête invalide', 'CONNECT attend hôte:port.', 'CONNECT expects host:port.', ref));
    }
    if (!ctx.connectPorts.has(target.port)) {
      return refuse(403, Refusal.portRefused, target.host, target.port, infoPage('Port refusé', `Les tunnels ne sont permis que vers les ports ${[...ctx.connectPorts].join(', ')}.`, `Tunnels are only allowed to ports ${[...ctx.connectPorts].join(', ')}.`, ref));
    }
    const decision = ctx.policy.decide(target, client);
    if (decision.action === 'block') {
      void ctx.journalBegin(openRecord(ref, startMs, client, clientPort, target, 'CONNECT', decision))
        .then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: 403, bytesIn: 0, bytesOut: 0 }));
      writeResponse(clientSocket, 403, ctx.blockPage.render({ host: target.host, decision, ref, atMs: startMs }));
      ctx.log.info({ ref, client: client.ip, host: target.host, category: decision.category, reason: decision.reason, profile: decision.profile }, 'blocked');
      return;
    }
    if (!ctx.mayForward()) return refuse(503, Refusal.journalDown, target.host, target.port, journalDownPage(ref));
    this.open.add(clientSocket);
    clientSocket.once('close', () => this.open.delete(clientSocket));
    this.connect(clientSocket, head, { ref, startMs, client, clientPort, target, decision }, refuse).catch((err: unknown) => {
      ctx.log.error({ ref, err: (err as Error).message }, 'tunnel failed');
      clientSocket.destroy();
    });
  }

  private async connect(
    clientSocket: net.Socket,
    head: Buffer,
    t: { ref: string; startMs: number; client: Client; clientPort: number; target: Target; decision: Decision },
    refuse: (status: number, code: RefusalCode, host: string, port: number, page: string) => void,
  ): Promise<void> {
    const ctx = this.ctx;
    const { ref, target } = t;
    let destIp: string | null = null;
    const substitute = ctx.substituteHost(target, t.decision);
    const connectHost = substitute ?? target.host;
    if (ctx.parent === null) {
      const r = await ctx.resolver.resolve(connectHost);
      if (!r.ok) {
        return r.reason === 'dns-failure'
          ? refuse(502, Refusal.dnsFailure, target.host, target.port, infoPage('Site introuvable', "Ce nom n'existe pas ou ne répond pas.", 'The name does not resolve.', ref))
          : refuse(403, Refusal.forbiddenDestination, target.host, target.port, forbiddenPage(ref));
      }
      destIp = r.address;
    }
    const open = openRecord(ref, t.startMs, t.client, t.clientPort, target, 'CONNECT', t.decision);
    if (substitute !== null) {
      open.reason = SUBSTITUTED_REASON;
      ctx.log.info({ ref, client: t.client.ip, host: target.host, upstream: substitute }, 'safesearch substitution');
    }
    const handle = await ctx.journalBegin(open);
    if (handle === null && !ctx.config.journal.failOpen) {
      return refuse(503, Refusal.journalDown, target.host, target.port, journalDownPage(ref));
    }
    if (clientSocket.destroyed) {
      handle?.finish({ endMs: Date.now(), destIp, egressIp: null, egressPort: null, status: null, bytesIn: 0, bytesOut: 0 });
      return;
    }
    relay(ctx, {
      client: clientSocket,
      connectHost,
      port: target.port,
      destIp,
      handle,
      first: head,
      openStatus: 200,
      onOpen: () => clientSocket.write('HTTP/1.1 200 Connection established\r\nVia: 1.1 gardefou\r\n\r\n'),
      onFail: (parentStatus) => writeResponse(clientSocket, 502, parentStatus === null
        ? infoPage('Le site ne répond pas', "Le site demandé n'a pas accepté la connexion.", 'The requested site refused the connection.', ref)
        : infoPage('Le proxy amont refuse', "Le proxy amont n'a pas ouvert le tunnel.", 'The upstream proxy did not open the tunnel.', ref)),
    });
  }
}

/**
 * Ends a connection we refused, then destroys it shortly after: long enough for the client to
 * read the answer (an immediate destroy could reset it away), short enough that a client which
 * keeps sending (slowloris) cannot hold a half-open socket.
 */
export function endThenDestroy(socket: net.Socket, data: string | Buffer, graceMs = 1000): void {
  socket.end(data);
  setTimeout(() => socket.destroy(), graceMs).unref();
}

export function writeResponse(socket: net.Socket, status: number, html: string): void {
  if (socket.destroyed) return;
  const body = Buffer.from(html, 'utf8');
  const header = Buffer.from(
    `HTTP/1.1 ${status} ${REASON_PHRASES[status] ?? 'Error'}\r\n` +
      'Content-Type: text/html; charset=utf-8\r\n' +
      `Content-Length: ${body.length}\r\n` +
      'Cache-Control: no-store\r\nVia: 1.1 gardefou\r\nConnection: close\r\n\r\n',
    'latin1',
  );
  endThenDestroy(socket, Buffer.concat([header, body]));
}
