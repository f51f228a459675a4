/**
 * The http.Server every HTTP listener uses (proxy port, transparent port 80): bounded headers
 * and header time, keep-alive idle bounded, and the per-client connection cap.
 */
import * as http from 'node:http';
import type * as net from 'node:net';
import type { ProxyContext } from './context';

export function createHttpServer(ctx: ProxyContext): http.Server {
  const limits = ctx.config.limits;
  const server = http.createServer({
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headerTimeoutMs,
    requestTimeout: 0, // long uploads are fine; idleness is bounded below
    keepAliveTimeout: Math.min(limits.idleTimeoutMs, 60_000),
    connectionsCheckingInterval: Math.min(1000, limits.headerTimeoutMs),
  });
  // No blanket socket timeout: it would cut a request whose origin is merely slow before the
  // upstream timeout can answer 502. Idleness is bounded where it happens: headersTimeout
  // (slow headers), keepAliveTimeout (between requests), the upstream timeout (stalled origin
  // or a client that stops reading), the tunnel timeouts (idle tunnels).
  server.timeout = 0;
  // keep every header (none silently dropped before forwarding); their total size is bounded
  // by the request handlers (headerBytes), since the parser's limit misses many small headers
  server.maxHeadersCount = 0;
  server.on('connection', (socket: net.Socket) => ctx.admit(socket));
  return server;
}

/** Size of the request line and headers as received (separators counted as on the wire). */
export function headerBytes(req: http.IncomingMessage): number {
  const raw = req.rawHeaders;
  let n = (req.method?.length ?? 0) + (req.url?.length ?? 0) + 12;
  for (let i = 0; i < raw.length; i++) n += (raw[i] as string).length + 2;
  return n;
}
