/**
 * What the HTTP and CONNECT handlers share: configuration turned into ready objects once, the
 * policy engine in force (swapped by reference on reload), the journal, the log.
 */
import type * as http from 'node:http';
import type * as net from 'node:net';
import type { Config } from '../config';
import { CidrSet, plainAddress } from '../config/cidr';
import type { Identity } from '../identity';
import { LeaseTable } from '../identity/leases';
import { Authenticator } from '../identity/authenticator';
import type { JournalClose, JournalHandle, JournalOpen, JournalWriter } from '../journal/types';
import type { Logger } from '../log';
import type { Client, Decision, PolicyEngine, Target } from '../policy/types';
import type { BlockPage } from './pages';
import { DestinationGuard, Resolver, readHostsFile } from './destination';
import { loadSafeSearch, SafeSearch } from './safesearch';

/** Refusal codes of the proxy itself (the policy has its own, see policy/types.ts Reason). */
export const Refusal = {
  clientRefused: 'client-refused',
  originForm: 'origin-form',
  badRequest: 'bad-request',
  badUrl: 'bad-url',
  portRefused: 'port-refused',
  forbiddenDestination: 'forbidden-destination',
  dnsFailure: 'dns-failure',
  journalDown: 'journal-down',
  tooManyConnections: 'too-many-connections',
  upgradeRefused: 'upgrade-refused',
  shuttingDown: 'shutting-down',
} as const;
export type RefusalCode = (typeof Refusal)[keyof typeof Refusal];

/** Told of every request and tunnel once it ends (metrics); must not throw or block. */
export interface ProxyObserver {
  done(open: JournalOpen, close: JournalClose): void;
}

export interface ParentProxy {
  host: string;
  port: number;
}

export class ProxyContext {
  policy: PolicyEngine;
  config!: Config;
  clients!: CidrSet;
  connectPorts!: ReadonlySet<number>;
  resolver!: Resolver;
  parent!: ParentProxy | null;
  blockPage!: BlockPage;
  safeSearch!: SafeSearch;
  /** text shown on the usage page: the first listener */
  publicAddress!: string;
  failOpenWarned = false;
  /** proxy authentication (identity.subnets with "authenticate"), or null: nobody logs in */
  authenticator: Authenticator | null = null;
  /** DHCP leases (identity.dhcpLeases), or null */
  leases: LeaseTable | null = null;
  observer: ProxyObserver | null = null;
  /** open connections per client address, across every listener (proxy and transparent) */
  private readonly perClient = new Map<string, number>();

  constructor(
    config: Config,
    policy: PolicyEngine,
    readonly journal: JournalWriter,
    readonly log: Logger,
    public identity: Identity,
    blockPage: BlockPage,
  ) {
    this.policy = policy;
    this.reconfigure(config, blockPage);
  }

  /**
   * Applies a (re)loaded configuration. Everything is built first, then assigned, so a bad
   * value (unreadable hosts file...) throws before anything changes.
   */
  reconfigure(config: Config, blockPage: BlockPage): void {
    const clients = new CidrSet(config.clients);
    const resolver = new Resolver(
      new DestinationGuard(config.allowDestinations),
      config.hosts === null ? null : readHostsFile(config.hosts),
    );
    const safeSearch = loadSafeSearch(config.safeSearch);
    // identity: account files re-read here (SIGHUP), the credential cache starts empty
    const authenticator = Authenticator.fromConfig(config.identity);
    const leases = config.identity.dhcpLeases.length === 0 ? null : new LeaseTable(config.identity.dhcpLeases, {
      refreshMs: config.identity.leasesRefreshSeconds * 1000,
      warn: (msg) => this.log.warn(msg),
    });
    this.authenticator = authenticator;
    this.leases = leases;
    this.config = config;
    this.safeSearch = safeSearch;
    this.clients = clients;
    this.connectPorts = new Set(config.connectPorts);
    this.resolver = resolver;
    this.parent = config.parentProxy === null ? null : parseParent(config.parentProxy);
    this.publicAddress = config.listen[0] ?? '127.0.0.1:3128';
    this.blockPage = blockPage;
  }

  /**
   * The host to connect to instead of `target.host` when the client's profile enforces
   * SafeSearch and the host is a search or video site (rules/safesearch.json), else null. The
   * client keeps asking for the original name, so its certificate stays valid.
   */
  substituteHost(target: Target, decision: Decision): string | null {
    const mode = this.policy.safeSearch(decision.profile);
    return mode === null ? null : this.safeSearch.substitute(target.host, mode);
  }

  /** Marks a record whose connection goes to the SafeSearch endpoint `substitute` (and logs it). */
  noteSubstitution(open: JournalOpen, substitute: string | null): void {
    if (substitute === null) return;
    open.reason = SUBSTITUTED_REASON;
    this.log.info({ ref: open.ref, client: open.clientIp, host: open.destHost, upstream: substitute }, 'safesearch substitution');
  }

  /**
   * Admits a new connection unless its client already holds limits.maxConnectionsPerClient
   * (a slowloris from one machine cannot fill the gateway); a refused socket is destroyed.
   */
  admit(socket: net.Socket): boolean {
    const ip = plainAddress(socket.remoteAddress ?? '');
    const n = (this.perClient.get(ip) ?? 0) + 1;
    if (n > this.config.limits.maxConnectionsPerClient) {
      this.log.warn({ client: ip, reason: Refusal.tooManyConnections }, 'connection refused');
      socket.destroy();
      return false;
    }
    this.perClient.set(ip, n);
    socket.once('close', () => {
      const left = (this.perClient.get(ip) ?? 1) - 1;
      if (left <= 0) this.perClient.delete(ip);
      else this.perClient.set(ip, left);
    });
    return true;
  }

  identify(ip: string): Client {
    return this.identity.identify(ip, this.leases);
  }

  /**
   * Whether traffic may be forwarded now. False when the journal cannot record it and the
   * configuration is fail-closed (the default).
   */
  mayForward(): boolean {
    if (this.journal.healthy) return true;
    if (this.config.journal.failOpen) {
      if (!this.failOpenWarned) {
        this.failOpenWarned = true;
        this.log.error('journal unwritable and journal.failOpen is true: forwarding traffic WITHOUT recording it');
      }
      return true;
    }
    return false;
  }

  /**
   * Starts a journal record. When the journal refuses (unwritable), returns null: the caller
   * must then refuse the traffic unless fail-open.
   */
  async journalBegin(open: JournalOpen): Promise<JournalHandle | null> {
    try {
      const handle = await this.journal.begin(open);
      const observer = this.observer;
      if (observer === null) return handle;
      return {
        connected: (info) => handle.connected(info),
        finish: (close) => {
          handle.finish(close);
          observer.done(open, close);
        },
      };
    } catch (err) {
      this.log.error({ ref: open.ref, err: (err as Error).message }, 'journal write failed');
      return null;
    }
  }
}

/** Journal reason of an allowed connection sent to a SafeSearch endpoint instead of the host asked. */
export const SUBSTITUTED_REASON = 'safesearch';

/** Fills a journal record for a decision (allowed or blocked by policy). */
export function openRecord(
  ref: string,
  startMs: number,
  client: Client,
  clientPort: number,
  target: Target,
  method: string,
  decision: Decision,
): JournalOpen {
  return {
    ref,
    startMs,
    clientIp: client.ip,
    clientPort,
    user: client.user ?? null,
    workstation: client.workstation ?? null,
    protocol: target.kind === 'connect' ? 'connect' : 'http',
    method,
    destHost: target.host,
    destPort: target.port,
    decision: decision.action,
    reason: decision.reason,
    profile: decision.profile,
    category: decision.category,
    listSerial: decision.listSerial,
  };
}

/** Fills a journal record for a refusal by the proxy itself. */
export function refusalRecord(
  ref: string,
  startMs: number,
  client: Client,
  clientPort: number,
  protocol: 'http' | 'connect',
  method: string,
  destHost: string,
  destPort: number,
  reason: RefusalCode | string,
  listSerial: string | null,
): JournalOpen {
  return {
    ref,
    startMs,
    clientIp: client.ip,
    clientPort,
    user: client.user ?? null,
    workstation: client.workstation ?? null,
    protocol,
    method,
    destHost,
    destPort,
    decision: 'refused',
    reason,
    profile: null,
    category: null,
    listSerial,
  };
}

function parseParent(url: string): ParentProxy {
  const u = new URL(url);
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  return { host, port: u.port === '' ? 3128 : Number(u.port) };
}

/** Remote port of a request's socket (0 if already gone). */
export function remotePort(req: http.IncomingMessage): number {
  return req.socket.remotePort ?? 0;
}
