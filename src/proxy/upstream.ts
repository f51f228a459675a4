/**
 * Steps shared by the connections gardefou dials on a client's behalf: plain CONNECT tunnels
 * (tunnel.ts), intercepted ones (intercept.ts) and transparent TLS (transparent.ts).
 *   tunnelAddress   the name is resolved once and checked against the forbidden destinations;
 *                   through a parent proxy nothing is resolved here (the parent does it)
 *   beginConnection the journal intent, durable before anything is dialled
 */
import type * as net from 'node:net';
import type { JournalHandle, JournalOpen } from '../journal/types';
import type { Target } from '../policy/types';
import { ProxyContext, Refusal, RefusalCode } from './context';
import { forbiddenPage } from './http-handler';
import { infoPage } from './pages';

/** Answers a tunnel the proxy refuses (writes the page, journals the refusal). */
export type TunnelRefuse = (status: number, code: RefusalCode, host: string, port: number, page: string) => void;

/**
 * The address to dial for `connectHost` (null through a parent proxy), or undefined after
 * refusing: 502 when the name does not resolve, 403 when it resolves to a forbidden address.
 */
export async function tunnelAddress(ctx: ProxyContext, connectHost: string, target: Target, ref: string, refuse: TunnelRefuse): Promise<string | null | undefined> {
  if (ctx.parent !== null) return null;
  const r = await ctx.resolver.resolve(connectHost);
  if (r.ok) return r.address;
  if (r.reason === 'dns-failure') {
    refuse(502, Refusal.dnsFailure, target.host, target.port, infoPage('Site introuvable', "Ce nom n'existe pas ou ne répond pas.", 'The name does not resolve.', ref));
  } else {
    refuse(403, Refusal.forbiddenDestination, target.host, target.port, forbiddenPage(ref));
  }
  return undefined;
}

/**
 * Writes the journal intent of a connection about to be dialled. Returns its handle (null when
 * journal.failOpen let it through unrecorded), or undefined when the caller must stop: the
 * journal cannot be written (fail-closed: `refuseDown` has answered the client), or the client
 * left while the record was written (the record is closed here, `bytesIn` read from it).
 */
export async function beginConnection(
  ctx: ProxyContext, client: net.Socket, open: JournalOpen, destIp: string | null, bytesIn: number, refuseDown: () => void,
): Promise<JournalHandle | null | undefined> {
  const handle = await ctx.journalBegin(open);
  if (handle === null && !ctx.config.journal.failOpen) {
    refuseDown();
    return undefined;
  }
  if (client.destroyed) {
    handle?.finish({ endMs: Date.now(), destIp, egressIp: null, egressPort: null, status: null, bytesIn, bytesOut: 0 });
    return undefined;
  }
  return handle;
}
