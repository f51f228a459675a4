/**
 * Admin listener (loopback by default): `/healthz` for supervision (503 when the journal
 * cannot be written, or, in a cluster, when no worker listens), `/status` (JSON).
 * Never exposed to clients; it answers only on its own address.
 */
import * as http from 'node:http';
import type * as net from 'node:net';
import { parseHostPort } from '../config/hostport';
import type { JournalWriter } from '../journal/types';
import type { UpdateStatus } from '../lists/update';
import type { Logger } from '../log';
import type { PolicyEngine } from '../policy/types';

export interface AdminDeps {
  /** the proxy (ProxyServer), or in a cluster primary a view of the lists its workers loaded */
  proxy: { readonly policy: Pick<PolicyEngine, 'describe' | 'listSerial'> };
  journal: JournalWriter;
  log: Logger;
  /** Prometheus text of /metrics (a cluster primary collects it from its workers: a promise) */
  metrics?: { render(): string | Promise<string>; contentType: string } | null;
  /** more /status fields (a cluster primary: its workers) */
  extraStatus?: (() => Record<string, unknown>) | null;
  /** the DASEN update agent's status, when a feed is configured */
  updateStatus?: (() => UpdateStatus) | null;
  /** a cluster primary: how many of its workers listen now (none listening: /healthz is 503) */
  workers?: (() => { listening: number; total: number }) | null;
}

export class AdminServer {
  private server: http.Server | null = null;
  private readonly startedMs = Date.now();

  constructor(private readonly deps: AdminDeps) {}

  async listen(spec: string): Promise<string> {
    const { host, port } = parseHostPort(spec);
    const server = http.createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => resolve());
    });
    this.server = server;
    const a = server.address() as net.AddressInfo;
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  status(): Record<string, unknown> {
    const policy = this.deps.proxy.policy;
    return {
      uptimeSeconds: Math.round((Date.now() - this.startedMs) / 1000),
      lists: { ...policy.describe(), serial: policy.listSerial },
      journal: { healthy: this.deps.journal.healthy },
      update: this.deps.updateStatus ? this.deps.updateStatus() : null,
      ...(this.deps.extraStatus ? this.deps.extraStatus() : {}),
    };
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      const writable = this.deps.journal.healthy;
      const w = this.deps.workers ? this.deps.workers() : null;
      const healthy = writable && (w === null || w.listening > 0);
      const body = JSON.stringify({
        ok: healthy,
        journal: writable ? 'writable' : 'unwritable',
        lists: this.deps.proxy.policy.describe().domains >= 0 ? 'loaded' : 'none',
        ...(w === null ? {} : { workers: `${w.listening}/${w.total} listening` }),
      }) + '\n';
      res.writeHead(healthy ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(body);
      return;
    }
    const metrics = this.deps.metrics;
    if (path === '/metrics' && metrics) {
      Promise.resolve().then(() => metrics.render()).then(
        (text) => res.writeHead(200, { 'content-type': metrics.contentType, 'cache-control': 'no-store' }).end(text),
        (err: Error) => {
          this.deps.log.error({ err: err.message }, 'rendering /metrics failed');
          res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
        });
      return;
    }
    if (path === '/status') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(this.status(), null, 2) + '\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found; try /healthz, /status or /metrics\n');
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = null;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}
