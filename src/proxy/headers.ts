/**
 * Hop-by-hop header handling (RFC 9110 §7.6.1): these headers concern one connection only and
 * are never forwarded, nor are the headers that `Connection` names.
 * `Transfer-Encoding: chunked` is kept on messages whose body we stream, because Node re-frames
 * the body from that header; any other transfer coding was already rejected by the parser.
 */
import type { IncomingHttpHeaders } from 'node:http';

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'upgrade',
];

export function stripHopByHop(headers: IncomingHttpHeaders): void {
  const connection = headers['connection'];
  if (typeof connection === 'string' && connection !== 'keep-alive' && connection !== 'close') {
    for (const name of connection.split(',')) {
      const n = name.trim().toLowerCase();
      // never let a client remove framing or the host through Connection
      if (n !== '' && n !== 'host' && n !== 'content-length' && n !== 'transfer-encoding') delete headers[n];
    }
  }
  for (const h of HOP_BY_HOP) {
    if (headers[h] !== undefined) delete headers[h];
  }
}

export const VIA = '1.1 gardefou';

/** Appends our Via entry (RFC 9110 §7.6.3). */
export function addVia(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): void {
  const via = headers['via'];
  headers['via'] = typeof via === 'string' && via !== '' ? `${via}, ${VIA}` : VIA;
}
