/**
 * The address a tunnel dials, shared by plain CONNECT tunnels (tunnel.ts) and intercepted ones
 * (intercept.ts): the name is resolved once and checked against the forbidden destinations;
 * through a parent proxy nothing is resolved here (the parent does it).
 */
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
