/**
 * The contract between the proxy (and `gardefou check`, and the journal) and the policy engine.
 * The policy engine knows nothing of sockets: it gets a parsed target and a client, returns data.
 */

/** What the proxy was asked to reach, after normalisation (see normalise.ts). */
export interface Target {
  /** 'http' for absolute-form requests, 'connect' for CONNECT tunnels (later 'tls' for SNI). */
  readonly kind: 'http' | 'connect';
  /** Lower-case ASCII (punycode) host, no trailing dot; IPv4 dotted quad; IPv6 without brackets. */
  readonly host: string;
  readonly port: number;
  /** Normalised path + query for http ('/' at least); '' for connect. Never logged or journaled. */
  readonly path: string;
}

/** Who asks. Filled by src/identity; the policy maps it to a profile. */
export interface Client {
  readonly ip: string;
  readonly user?: string | undefined;
  readonly workstation?: string | undefined;
  /**
   * Profile named by identity (the user's groups, or the workstation map); used when the policy
   * has a profile of that name, else the `clients` rules decide as for any IP.
   */
  readonly profile?: string | undefined;
}

/** Why a decision was taken: a small table of stable names (after AdGuard Home's reason.go). */
export const Reason = {
  /** no rule matched, the profile allows by default */
  notListed: 'not-listed',
  /** a local (school) allow entry matched */
  localAllow: 'local-allow',
  /** a category list (domains / urls / expressions) matched a category the profile blocks */
  category: 'category',
  /** a DASEN mandatory block matched (no local entry can lift it) */
  mandatory: 'mandatory',
  /** a local (school) deny entry matched */
  localDeny: 'local-deny',
  /** whitelist-only profile and nothing allowed this host */
  notWhitelisted: 'not-whitelisted',
  /** the host could not be parsed: refused, never allowed */
  badHost: 'bad-host',
  /** outside the profile's schedule */
  schedule: 'schedule',
  /** a category the profile allows (whitelist-only profiles: the categories that pass) matched */
  allowedCategory: 'allowed-category',
  /** the host is an IP address and the profile takes names only (ipLiterals: "block") */
  ipLiteral: 'ip-literal',
} as const;
export type ReasonCode = (typeof Reason)[keyof typeof Reason];

/** Where the deciding rule came from. */
export type Layer = 'dasen' | 'local' | 'lists' | 'default';

export interface Decision {
  action: 'allow' | 'block';
  reason: ReasonCode;
  /** profile name the client was mapped to */
  profile: string;
  /** UT1 category name that matched, or null */
  category: string | null;
  /** French and English display names of the category (from global_usage), or null */
  categoryFr: string | null;
  categoryEn: string | null;
  /** the list entry or rule that matched: a domain, a host/path url, or an expression */
  match: string | null;
  /** kind of entry that matched */
  matchKind: 'domain' | 'url' | 'expression' | 'rule' | null;
  layer: Layer;
  /** serial of the list bundle in force (null for lists not from a signed bundle) */
  listSerial: string | null;
}

export interface PolicyEngine {
  /** Decide one request. Pure and synchronous: no I/O, no awaiting. */
  decide(target: Target, client: Client, at?: Date): Decision;
  /** Serial of the lists in force, for the journal and status. */
  readonly listSerial: string | null;
  /** Names of the policy's profiles (identity may name them: groups, workstation map). */
  profileNames(): string[];
  /** SafeSearch mode of a profile: its search and video sites go to their safe endpoints. */
  safeSearch(profile: string): 'strict' | 'moderate' | null;
  /** Human description of what is loaded, for logs and `lists info`. */
  describe(): { categories: number; domains: number; urls: number; expressions: number; source: string };
  /** Whether the policy names hosts or categories to intercept (TLS); then a CA is required. */
  readonly intercepting: boolean;
  /**
   * Whether an allowed CONNECT is decrypted so each request inside is decided (`urls` and
   * `expressions` apply to HTTPS). Only what the policy's `intercept` names, never what
   * `noIntercept` names (banks, health, government, tax, updates by default).
   */
  interceptFor(target: Target, client: Client, decision: Decision): boolean;
}
