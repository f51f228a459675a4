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
 *      Unless the policy names the host for TLS interception (interceptFor): then steps 6-7
 *      are intercept.ts's (decrypt, decide each request inside).
 */
import type * as http from 'node:http';
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import { parseConnectAuthority } from '../policy/normalise';
import type { Client, Decision, Target } from '../policy/types';
import { ProxyContext, Refusal, RefusalCode, openRecord, refusalRecord } from './context';
import { journalDownPage } from './http-handler';
import { infoPage } from './pages';
import { headerBytes } from './http-server';
import { newRef } from './ref';
import { relay } from './relay';
import { Interceptor } from './intercept';
import { beginConnection, tunnelAddress, type TunnelRefuse } from './upstream';
import { answerConnect, authStep } from './auth';
import { writeResponse } from './raw-response';

export class TunnelHandler {
  /** open tunnels, for orderly shutdown */
  readonly open = new Set<net.Socket>();

  /** TLS interception of the hosts the policy names (intercept.ts) */
  readonly interceptor: Interceptor;

  constructor(private readonly ctx: ProxyContext) {
    this.interceptor = Interceptor.of(ctx);
  }

  /** `authed`: the client once proxy authentication passed (auth.ts), on the second pass */
  handle(req: http.IncomingMessage, clientSocket: net.Socket, head: Buffer, authed?: Client): void {
    const ctx = this.ctx;
    const ref = newRef();
    const startMs = Date.now();
    const client = authed ?? ctx.identify(plainAddress(clientSocket.remoteAddress ?? ''));
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
    // proxy authentication (auth.ts): asynchronous, then this handler again with the user
    const pending = authed === undefined ? authStep(ctx, req, client, ref) : null;
    if (pending !== null) {
      void pending.then((o) => {
        if (o.ok) return this.handle(req, clientSocket, head, o.client);
        const t = parseConnectAuthority(authority);
        answerConnect(ctx, clientSocket, o, { ref, startMs, client, clientPort, host: t?.host ?? '', port: t?.port ?? 0 });
      });
      return;
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
      writeResponse(clientSocket, 403, ctx.blockPage.render({ host: target.host, decision, ref, atMs: startMs, user: client.user }));
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
    refuse: TunnelRefuse,
  ): Promise<void> {
    const ctx = this.ctx;
    const { ref, target } = t;
    // the policy names this host for TLS interception: decrypt, decide each request (intercept.ts)
    if (this.interceptor.wants(target, t.client, t.decision)) return this.interceptor.handle(clientSocket, head, t, refuse);
    const substitute = ctx.substituteHost(target, t.decision);
    const connectHost = substitute ?? target.host;
    const destIp = await tunnelAddress(ctx, connectHost, target, ref, refuse);
    if (destIp === undefined) return;
    const open = openRecord(ref, t.startMs, t.client, t.clientPort, target, 'CONNECT', t.decision);
    ctx.noteSubstitution(open, substitute);
    const handle = await beginConnection(ctx, clientSocket, open, destIp, 0,
      () => refuse(503, Refusal.journalDown, target.host, target.port, journalDownPage(ref)));
    if (handle === undefined) return;
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
