/**
 * Answers written straight on a socket, where no http.ServerResponse exists: a refused CONNECT
 * (tunnel.ts), a refused proxy login on CONNECT (auth.ts), an Upgrade refused on the proxy port
 * (server.ts) or inside an intercepted tunnel (intercept.ts). Each closes the connection.
 */
import type * as net from 'node:net';

const REASON_PHRASES: Record<number, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  407: 'Proxy Authentication Required',
  431: 'Request Header Fields Too Large',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

/**
 * Ends a connection we refused, then destroys it shortly after: long enough for the client to
 * read the answer (an immediate destroy could reset it away), short enough that a client which
 * keeps sending (slowloris) cannot hold a half-open socket.
 */
export function endThenDestroy(socket: net.Socket, data: string | Buffer, graceMs = 1000): void {
  socket.end(data);
  setTimeout(() => socket.destroy(), graceMs).unref();
}

/** An HTML answer with `status`, extra `headers` first (e.g. Proxy-Authenticate), then close. */
export function writeResponse(socket: net.Socket, status: number, html: string, headers: Record<string, string> = {}): void {
  if (socket.destroyed) return;
  const body = Buffer.from(html, 'utf8');
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  const header = Buffer.from(
    `HTTP/1.1 ${status} ${REASON_PHRASES[status] ?? 'Error'}\r\n${extra}` +
      'Content-Type: text/html; charset=utf-8\r\n' +
      `Content-Length: ${body.length}\r\n` +
      'Cache-Control: no-store\r\nVia: 1.1 gardefou\r\nConnection: close\r\n\r\n',
    'latin1',
  );
  endThenDestroy(socket, Buffer.concat([header, body]));
}
