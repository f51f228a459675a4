/**
 * The proxy-authentication step, shared by absolute-form HTTP requests and CONNECT, placed after
 * the client-network check and before the policy decision:
 *
 *   client address in an `identity.subnets` row with mode "authenticate"?   no -> go on as today
 *   Proxy-Authorization: Basic ... absent or unreadable   -> 407 + Proxy-Authenticate, journal "auth-required"
 *   wrong password or unknown user                        -> 407 + Proxy-Authenticate, journal "auth-failed"
 *   no account source answers (directory down)            -> 503 page, journal "auth-unavailable" (fail closed:
 *                                                            a 407 would make the browser ask again as if the
 *                                                            password were wrong)
 *   right                                                 -> the client gains `user` and, when a group maps
 *                                                            to one, `profile`; the journal records the user
 *
 * Refusals are journaled with no user (a name that was not proven is not an identity); the name
 * tried goes to the operational log only. Neither the password nor the header is ever logged.
 * Proxy-Authorization is hop-by-hop (headers.ts): it is never forwarded.
 *
 * Transparent listeners cannot ask for credentials (the client does not know a proxy is there).
 * An "authenticate" subnet seen there is refused (identity.transparent = "refuse", default: a
 * user would otherwise escape authentication by not configuring the proxy), or identified by
 * workstation only ("workstation").
 */
import type * as http from 'node:http';
import type * as net from 'node:net';
import type { Client } from '../policy/types';
import type { ProxyContext } from './context';
import { refusalRecord } from './context';
import { infoPage } from './pages';
import { writeResponse } from './raw-response';

export const AuthRefusal = {
  required: 'auth-required',
  failed: 'auth-failed',
  unavailable: 'auth-unavailable',
  /** an authenticating subnet on a transparent listener */
  transparent: 'auth-required-transparent',
} as const;

export type AuthOutcome =
  | { ok: true; client: Client }
  | { ok: false; status: 407 | 503; reason: string; page: string; headers: Record<string, string> };

/** Requests the HTTP handler gets from the transparent port-80 listener: never challenged. */
const transparentRequests = new WeakSet<http.IncomingMessage>();

export function markTransparent(req: http.IncomingMessage): void {
  transparentRequests.add(req);
}

/** Whether a transparent listener must refuse this client (it must log in, and cannot here). */
export function refusedOnTransparent(ctx: ProxyContext, ip: string): boolean {
  const a = ctx.authenticator;
  return a !== null && ctx.config.identity.transparent === 'refuse' && a.requiredFor(ip);
}

/**
 * Null when this client does not log in (the caller goes on synchronously with its client as
 * identified by workstation); else the outcome of checking its credentials.
 */
export function authStep(ctx: ProxyContext, req: http.IncomingMessage, client: Client, ref: string): Promise<AuthOutcome> | null {
  const auth = ctx.authenticator;
  if (auth === null || transparentRequests.has(req) || !auth.requiredFor(client.ip)) return null;
  const challenge = { 'proxy-authenticate': `Basic realm="${auth.realm}", charset="UTF-8"` };
  return auth.check(req.headers['proxy-authorization']).then((v): AuthOutcome => {
    switch (v.kind) {
      case 'ok': {
        const next: Client = v.profile === undefined ? { ...client, user: v.user } : { ...client, user: v.user, profile: v.profile };
        if (!v.cached) ctx.log.info({ ref, client: client.ip, user: v.user, profile: v.profile }, 'user authenticated');
        return { ok: true, client: next };
      }
      case 'missing':
        return { ok: false, status: 407, reason: AuthRefusal.required, page: loginPage(ref), headers: challenge };
      case 'failed':
        ctx.log.warn({ ref, client: client.ip, user: v.user, why: v.why }, 'proxy authentication failed');
        return { ok: false, status: 407, reason: AuthRefusal.failed, page: loginPage(ref), headers: challenge };
      case 'unavailable':
        ctx.log.error({ ref, client: client.ip, user: v.user, err: v.detail }, 'proxy authentication: no account source answers; refusing');
        return { ok: false, status: 503, reason: AuthRefusal.unavailable, page: unavailablePage(ref), headers: {} };
    }
  }, (err: unknown): AuthOutcome => {
    ctx.log.error({ ref, client: client.ip, err: (err as Error).message }, 'proxy authentication failed unexpectedly; refusing');
    return { ok: false, status: 503, reason: AuthRefusal.unavailable, page: unavailablePage(ref), headers: {} };
  });
}

/** Journals a refused login (no destination reached: host and port as asked, if known). */
function journalRefusal(ctx: ProxyContext, ref: string, startMs: number, client: Client, clientPort: number, protocol: 'http' | 'connect', method: string, host: string, port: number, o: { status: number; reason: string }): void {
  void ctx.journalBegin(refusalRecord(ref, startMs, client, clientPort, protocol, method, host, port, o.reason, ctx.policy.listSerial))
    .then((h) => h?.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: o.status, bytesIn: 0, bytesOut: 0 }));
}

/** Answers a refused login on a plain HTTP request (the connection stays usable for the retry). */
export function answerHttp(ctx: ProxyContext, res: http.ServerResponse, o: Extract<AuthOutcome, { ok: false }>,
  rec: { ref: string; startMs: number; client: Client; clientPort: number; method: string; host: string; port: number }): void {
  journalRefusal(ctx, rec.ref, rec.startMs, rec.client, rec.clientPort, 'http', rec.method, rec.host, rec.port, o);
  if (res.headersSent || res.destroyed) return;
  const body = Buffer.from(o.page, 'utf8');
  res.writeHead(o.status, {
    ...o.headers,
    'content-type': 'text/html; charset=utf-8',
    'content-length': body.length,
    'cache-control': 'no-store',
    via: '1.1 gardefou',
  });
  res.end(body);
}

/** Answers a refused login on CONNECT, then closes (the client retries on a new connection). */
export function answerConnect(ctx: ProxyContext, socket: net.Socket, o: Extract<AuthOutcome, { ok: false }>,
  rec: { ref: string; startMs: number; client: Client; clientPort: number; host: string; port: number }): void {
  journalRefusal(ctx, rec.ref, rec.startMs, rec.client, rec.clientPort, 'connect', 'CONNECT', rec.host, rec.port, o);
  const headers = Object.fromEntries(Object.entries(o.headers).map(([k, v]) => [k === 'proxy-authenticate' ? 'Proxy-Authenticate' : k, v]));
  writeResponse(socket, o.status, o.page, headers);
}

function loginPage(ref: string): string {
  return infoPage('Identification requise',
    'Ce réseau demande de vous identifier (identifiant et mot de passe de l’établissement) pour accéder à internet.',
    'This network asks you to log in (your school account) to reach the internet.', ref);
}

function unavailablePage(ref: string): string {
  return infoPage('Identification momentanément impossible',
    "L'annuaire qui vérifie les mots de passe ne répond pas ; par sécurité, l'accès est suspendu. Prévenez le référent numérique.",
    'The directory that checks passwords does not answer; access is suspended until it is back. Please tell the IT contact.', ref);
}
