/**
 * The forward proxy: listeners, connection limits, malformed requests, orderly stop.
 * Request handling lives in http-handler.ts (absolute-form HTTP) and tunnel.ts (CONNECT).
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { TransparentTlsHandler, transparentHttpServer } from './transparent';
import type { Config } from '../config';
import { plainAddress } from '../config/cidr';
import { parseHostPort } from '../config/hostport';
import { Identity } from '../identity';
import type { JournalWriter } from '../journal/types';
import type { Logger } from '../log';
import type { PolicyEngine } from '../policy/types';
import { ProxyContext, ProxyObserver, Refusal, refusalRecord } from './context';
import { HttpHandler } from './http-handler';
import { createHttpServer } from './http-server';
import { BlockPage } from './pages';
import { newRef } from './ref';
import { endThenDestroy, writeResponse } from './raw-response';
import { TunnelHandler } from './tunnel';

export interface ProxyOptions {
  config: Config;
  policy: PolicyEngine;
  journal: JournalWriter;
  log: Logger;
  identity: Identity;
  blockPage?: BlockPage;
  observer?: ProxyObserver | null;
  /** cluster worker: listening sockets are shared through the primary (not `exclusive`) */
  shareListeners?: boolean;
  /**
   * Admission before a connection reaches its listener (cluster workers: the gateway-wide
   * per-client cap is counted by the primary). The socket stays paused until `done(true)`.
   */
  connectionGate?: ConnectionGate | null;
}

export type ConnectionGate = (socket: net.Socket, done: (admitted: boolean) => void) => void;

export class ProxyServer {
  readonly ctx: ProxyContext;
  private readonly http: HttpHandler;
  private readonly tunnels: TunnelHandler;
  private readonly servers: net.Server[] = [];
  /** gated listeners in front of `servers` (cluster workers) */
  private readonly fronts: net.Server[] = [];
  private tls: TransparentTlsHandler | null = null;
  readonly transparentAddresses: Array<{ kind: 'http' | 'tls'; host: string; port: number }> = [];
  private inFlight = 0;
  private stopping = false;
  private readonly exclusive: boolean;
  private readonly gate: ConnectionGate | null;

  constructor(opts: ProxyOptions) {
    this.exclusive = opts.shareListeners !== true;
    this.gate = opts.connectionGate ?? null;
    this.ctx = new ProxyContext(opts.config, opts.policy, opts.journal, opts.log, opts.identity,
      opts.blockPage ?? BlockPage.fromFile(opts.config.blockPage));
    this.ctx.observer = opts.observer ?? null;
    this.warnUnknownProfiles();
    this.http = new HttpHandler(this.ctx);
    this.tunnels = new TunnelHandler(this.ctx);
  }

  /**
   * Applies a reloaded configuration (SIGHUP). Listener addresses and limits need a restart;
   * everything else takes effect for the next request.
   */
  reconfigure(config: Config): void {
    const identity = Identity.fromFile(config.workstations); // read first: a bad file changes nothing
    this.ctx.reconfigure(config, BlockPage.fromFile(config.blockPage));
    this.ctx.identity = identity;
    this.warnUnknownProfiles();
  }

  /** Swaps the policy engine in force. Requests already decided keep their decision. */
  setPolicy(policy: PolicyEngine): void {
    this.ctx.policy = policy;
    this.warnUnknownProfiles();
  }

  /**
   * Profiles named by the workstation map or the LDAP group table that the policy does not
   * have: those clients fall back to the policy's `clients` rules. Said at start and at each
   * reload, so a typo is not silent.
   */
  private warnUnknownProfiles(): void {
    const known = new Set(this.ctx.policy.profileNames());
    const named = [...this.ctx.identity.profilesNamed(), ...(this.ctx.authenticator?.profilesNamed() ?? [])];
    const unknown = [...new Set(named.filter((p) => !known.has(p)))].sort();
    if (unknown.length > 0) {
      this.ctx.log.warn({ profiles: unknown, known: [...known] }, 'the workstation map or identity.groupProfiles names profiles the policy does not have: those clients get the policy\'s clients rules instead');
    }
  }

  /** Tunnels open right now (metrics). */
  get tunnelsOpen(): number {
    return this.tunnels.open.size + (this.tls?.open.size ?? 0);
  }

  get policy(): PolicyEngine {
    return this.ctx.policy;
  }

  /**
   * Opens every configured listener: the proxy's, then the transparent ones (port-80 HTTP decided
   * on the Host header, port-443 TLS decided on the SNI). Resolves with the proxy's bound
   * addresses (port 0 resolved); the transparent ones are in `transparentAddresses`.
   */
  async listen(): Promise<Array<{ host: string; port: number }>> {
    const cfg = this.ctx.config;
    const bound: Array<{ host: string; port: number }> = [];
    for (const spec of cfg.listen) bound.push(await this.bind(this.createServer(), spec));
    for (const spec of cfg.transparent.http) {
      const server = transparentHttpServer(this.ctx, this.http);
      server.on('request', (_req: http.IncomingMessage, res: http.ServerResponse) => this.countInFlight(res));
      this.transparentAddresses.push({ kind: 'http', ...(await this.bind(server, spec)) });
    }
    if (cfg.transparent.tls.length > 0) {
      this.tls = new TransparentTlsHandler(this.ctx);
      for (const spec of cfg.transparent.tls) {
        this.transparentAddresses.push({ kind: 'tls', ...(await this.bind(this.tls.createServer(), spec)) });
      }
    }
    return bound;
  }

  /** Requests in flight are waited for at SIGTERM (bounded by the shutdown grace). */
  private countInFlight(res: http.ServerResponse): void {
    if (this.stopping) res.shouldKeepAlive = false;
    this.inFlight++;
    res.once('close', () => { this.inFlight--; });
  }

  private async bind(server: net.Server, spec: string): Promise<{ host: string; port: number }> {
    const { host, port } = parseHostPort(spec);
    // with a gate, a paused front server listens and hands admitted sockets to the real one
    const gate = this.gate;
    const listener = gate === null ? server : net.createServer({ pauseOnConnect: true }, (socket) => {
      socket.on('error', () => undefined);
      gate(socket, (admitted) => {
        if (!admitted || socket.destroyed) {
          socket.destroy();
          return;
        }
        server.emit('connection', socket);
        socket.resume();
      });
    });
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen({ host, port, exclusive: this.exclusive }, () => {
        listener.off('error', reject);
        resolve();
      });
    });
    this.servers.push(server);
    if (listener !== server) {
      this.fronts.push(listener);
      // an http.Server starts its connection tracking (header timeout, idle close) on 'listening'
      server.emit('listening');
    }
    const a = listener.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  private createServer(): http.Server {
    const server = createHttpServer(this.ctx);
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.countInFlight(res);
      this.http.handle(req, res);
    });
    server.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => this.tunnels.handle(req, socket, head));
    server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => this.onUpgrade(req, socket));
    server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => this.onClientError(err, socket));
    return server;
  }

  /** Plain-HTTP Upgrade (e.g. ws:// in absolute form) is not tunnelled: browsers use CONNECT. */
  private onUpgrade(req: http.IncomingMessage, socket: net.Socket): void {
    this.recordRefusal(socket, req.method ?? 'GET', Refusal.upgradeRefused);
    writeResponse(socket, 400, 'upgrade through the proxy is not supported; use CONNECT\n');
  }

  /** Malformed requests, oversized headers, header timeouts: a proper HTTP error, then close. */
  private onClientError(err: NodeJS.ErrnoException, socket: net.Socket): void {
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'HPE_HEADERS_TIMEOUT' ? 408 : 400;
    const phrase = status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request';
    this.recordRefusal(socket, '', Refusal.badRequest);
    this.ctx.log.info({ client: plainAddress(socket.remoteAddress ?? ''), reason: Refusal.badRequest, code: err.code, status }, 'malformed request');
    endThenDestroy(socket, `HTTP/1.1 ${status} ${phrase}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
  }

  private recordRefusal(socket: net.Socket, method: string, reason: typeof Refusal[keyof typeof Refusal]): void {
    const ctx = this.ctx;
    const client = ctx.identify(plainAddress(socket.remoteAddress ?? ''));
    void ctx.journalBegin(refusalRecord(newRef(), Date.now(), client, socket.remotePort ?? 0, 'http', method, '', 0, reason, ctx.policy.listSerial))
      .then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: 400, bytesIn: 0, bytesOut: 0 }));
  }

  /**
   * Orderly stop: stop accepting, let in-flight requests and tunnels end for up to `graceMs`,
   * then close what remains. The journal is flushed by its owner afterwards.
   */
  async close(graceMs = this.ctx.config.limits.shutdownGraceMs): Promise<void> {
    this.stopping = true;
    const closed = Promise.all([...this.fronts, ...this.servers].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    const httpServers = this.servers.filter((s): s is http.Server => s instanceof http.Server);
    const tunnelsOpen = () => this.tunnels.open.size + (this.tls?.open.size ?? 0);
    for (const s of httpServers) s.closeIdleConnections();
    const deadline = Date.now() + graceMs;
    while ((this.inFlight > 0 || tunnelsOpen() > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
      for (const s of httpServers) s.closeIdleConnections();
    }
    for (const s of httpServers) s.closeAllConnections();
    for (const t of this.tunnels.open) t.destroy();
    for (const t of this.tls?.open ?? []) t.destroy();
    await closed;
    this.http.close();
  }
}
