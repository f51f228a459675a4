/**
 * The policy engine: a loaded list index + a validated policy file -> decide(target, client).
 *
 * decide() is synchronous and pure (no I/O; the clock only when `at` is not given). Per request
 * it normalises nothing (the target is already normalised), walks the host once in the list
 * index, then answers mask questions on the recorded hits. The common answer (allowed, nothing
 * listed) is a frozen Decision prepared per profile: no allocation. Callers must not mutate
 * returned decisions.
 *
 * ORDER OF CHECKS (first that answers wins):
 *   1. host not in normalised form                        -> block  bad-host         (default)
 *   2. profile := client.profile when the policy has it (identity: groups, workstation map),
 *      else first `clients` CIDR rule matching the client IP, else defaultProfile
 *   3. profile has a schedule and `at` is outside it:
 *        outside = "block-all"                            -> block  schedule         (default)
 *        outside = another profile                        -> continue with that profile
 *   4. DASEN mandatory entries (dasen.deny)                -> block  mandatory        (dasen)
 *   5. DASEN mandatory categories (dasen.block): domains, urls, expressions
 *                                                         -> block  mandatory        (dasen)
 *   6. local deny entries (local + profile.deny), if dasen.localMayDeny
 *                                                         -> block  local-deny       (local)
 *   7. local allow entries (local + profile.allow): allow, unless the host is also in a
 *      category the profile blocks that dasen.localMayAllow does not list
 *                                                         -> allow  local-allow      (local)
 *  7b. profile takes names only (ipLiterals "block") and the host is an IP address
 *                                                         -> block  ip-literal       (default)
 *   8. a category in profile.allowCategories               -> allow  allowed-category (lists)
 *   9. a category the profile blocks (block + black-usage categories when blockBlackUsage):
 *      domains, then urls, then expressions               -> block  category         (lists)
 *  10. profile.whitelistOnly                               -> block  not-whitelisted  (default)
 *  11.                                                     -> allow  not-listed       (default)
 *
 * Expressions are tested only for the categories of steps 5 and 9 (the ones that can change
 * the answer), each category's expressions in one combined RegExp, against `host + path`
 * (no scheme, no port) for http and `host` for CONNECT.
 */
import { isIP } from 'node:net';
import { CidrSet, plainAddress } from '../config/cidr';
import type { Logger } from '../log';
import { EntrySet } from './entries';
import type { CategoryMeta } from './index-format';
import { CompiledExpression, ListIndex } from './list-index';
import { isNormalisedHost } from './normalise';
import { PolicySpec, ProfileSpec, readPolicyFile, SafeSearchMode } from './policy-file';
import { LocalClock, Schedule } from './schedule';
import { Client, Decision, Layer, PolicyEngine, Reason, ReasonCode, Target } from './types';


interface ExprGroup {
  category: number;
  combined: RegExp;
  members: CompiledExpression[];
}

interface Profile {
  name: string;
  spec: ProfileSpec;
  /** categories blocked by the profile (mandatory ones excluded: checked before) */
  block: Uint32Array;
  hasBlock: boolean;
  /** blocked categories a local allow entry cannot lift */
  locked: Uint32Array;
  hasLocked: boolean;
  allowCats: Uint32Array;
  hasAllowCats: boolean;
  blockExprs: ExprGroup[];
  lockedExprs: ExprGroup[];
  allow: EntrySet;
  deny: EntrySet;
  whitelistOnly: boolean;
  namesOnly: boolean;
  schedule: Schedule | null;
  outside: 'block-all' | Profile | null;
  /** the frozen "allowed, nothing listed" answer */
  allowed: Decision;
}

const NONE = 0;
const DOMAIN = 1;
const URL_ENTRY = 2;
const EXPRESSION = 3;

export class Engine implements PolicyEngine {
  readonly listSerial: string | null;
  readonly warnings: string[] = [];
  private readonly profiles = new Map<string, Profile>();
  private readonly defaultProfile: Profile;
  private readonly clientRules: Array<{ set: CidrSet; profile: Profile }> = [];
  private readonly clientCache = new Map<string, Profile>();
  private readonly mandatory: Uint32Array;
  private readonly hasMandatory: boolean;
  private readonly mandatoryExprs: ExprGroup[];
  private readonly mandatoryDeny: EntrySet;
  private readonly localAllow: EntrySet;
  private readonly localDeny: EntrySet;
  private readonly exprGroups = new Map<number, ExprGroup>();

  // match details of the last listsMatch()
  private mCat = -1;
  private mText: string | null = null;

  constructor(
    readonly index: ListIndex,
    readonly spec: PolicySpec,
    readonly source: string,
    listSerial: string | null,
  ) {
    this.listSerial = listSerial;
    const idx = index;
    for (const e of idx.expressions) {
      let g = this.exprGroups.get(e.category);
      if (!g) {
        g = { category: e.category, combined: /(?!)/, members: [] };
        this.exprGroups.set(e.category, g);
      }
      g.members.push(e);
    }
    for (const g of this.exprGroups.values()) {
      // one RegExp per category; members are retried one by one only to name the match.
      // A member with a backreference keeps its own numbering: no combining then.
      const combinable = g.members.every((m) => !/\\[1-9]/.test(m.source));
      g.combined = combinable ? new RegExp(g.members.map((m) => `(?:${m.source})`).join('|'), 'i') : /(?!)/;
      if (!combinable) g.combined = { test: (s: string) => g!.members.some((m) => m.re.test(s)) } as unknown as RegExp;
    }

    const missing = new Set<string>();
    const mask = (names: readonly string[]): Uint32Array => {
      const m = idx.newMask();
      for (const n of names) {
        const c = idx.categoryIndex(n);
        if (c === undefined) missing.add(n);
        else m[c >>> 5]! |= 1 << (c & 31);
      }
      return m;
    };
    this.mandatory = mask(spec.dasen.block);
    this.hasMandatory = !isEmpty(this.mandatory);
    this.mandatoryExprs = this.exprsFor(this.mandatory);
    this.mandatoryDeny = new EntrySet(spec.dasen.deny);
    this.localAllow = new EntrySet(spec.local.allow);
    this.localDeny = new EntrySet(spec.dasen.localMayDeny ? spec.local.deny : []);
    const liftable = spec.dasen.localMayAllow === null ? null : mask(spec.dasen.localMayAllow);

    const blackOnly = idx.categories.map((c, i) => ({ c, i })).filter(({ c }) => isBlackOnly(c)).map(({ c }) => c.name);
    for (const ps of spec.profiles.values()) {
      const block = mask(ps.blockBlackUsage ? [...ps.block, ...blackOnly] : ps.block);
      andNot(block, this.mandatory);
      const locked = liftable === null ? idx.newMask() : block.slice();
      if (liftable !== null) andNot(locked, liftable);
      const allowCats = mask(ps.allowCategories);
      const p: Profile = {
        name: ps.name,
        spec: ps,
        block,
        hasBlock: !isEmpty(block),
        locked,
        hasLocked: !isEmpty(locked),
        allowCats,
        hasAllowCats: !isEmpty(allowCats),
        blockExprs: this.exprsFor(block),
        lockedExprs: this.exprsFor(locked),
        allow: new EntrySet(ps.allow),
        deny: new EntrySet(spec.dasen.localMayDeny ? ps.deny : []),
        whitelistOnly: ps.whitelistOnly,
        namesOnly: ps.namesOnly,
        schedule: null,
        outside: null,
        allowed: Object.freeze(decision('allow', Reason.notListed, ps.name, null, null, null, 'default', listSerial)),
      };
      this.profiles.set(ps.name, p);
    }
    const clock = new LocalClock(spec.timezone);
    for (const p of this.profiles.values()) {
      const ps = p.spec;
      if (ps.schedule !== null) p.schedule = new Schedule(ps.schedule, clock, spec.schedules.get(ps.schedule)!);
      if (ps.outside !== null) p.outside = ps.outside === 'block-all' ? 'block-all' : this.profiles.get(ps.outside)!;
    }
    this.defaultProfile = this.profiles.get(spec.defaultProfile)!;
    for (const c of spec.clients) this.clientRules.push({ set: new CidrSet([c.cidr]), profile: this.profiles.get(c.profile)! });
    if (missing.size > 0) {
      const names = [...missing].sort();
      const shown = names.slice(0, 8).join(', ') + (names.length > 8 ? `, ... (${names.length - 8} more)` : '');
      this.warnings.push(`policy names ${names.length} categories the lists do not have (ignored): ${shown}`);
    }
  }

  private exprsFor(mask: Uint32Array): ExprGroup[] {
    const out: ExprGroup[] = [];
    for (const g of this.exprGroups.values()) {
      if ((mask[g.category >>> 5]! & (1 << (g.category & 31))) !== 0) out.push(g);
    }
    return out;
  }

  /** Profile of a client IP (first matching rule, else the default). Cached per IP. */
  profileFor(ip: string): Profile {
    const cached = this.clientCache.get(ip);
    if (cached !== undefined) return cached;
    let p = this.defaultProfile;
    const plain = plainAddress(ip);
    for (const r of this.clientRules) {
      if (r.set.has(plain)) {
        p = r.profile;
        break;
      }
    }
    if (this.clientCache.size >= 65536) this.clientCache.clear();
    this.clientCache.set(ip, p);
    return p;
  }

  decide(target: Target, client: Client, at?: Date): Decision {
    const host = target.host;
    const serial = this.listSerial;
    let p = (client.profile === undefined ? undefined : this.profiles.get(client.profile)) ?? this.profileFor(client.ip);
    // 1
    if (!isNormalisedHost(host)) return decision('block', Reason.badHost, p.name, null, null, null, 'default', serial);
    // 3
    if (p.schedule !== null && !p.schedule.contains(at === undefined ? Date.now() : at.getTime())) {
      if (p.outside === 'block-all' || p.outside === null) {
        return decision('block', Reason.schedule, p.name, null, null, null, 'default', serial);
      }
      p = p.outside;
    }
    const path = target.kind === 'http' ? target.path : '';
    const idx = this.index;
    const hits = idx.collect(host);
    // 4
    let e = this.mandatoryDeny.match(host, path);
    if (e !== null) return decision('block', Reason.mandatory, p.name, null, e, 'rule', 'dasen', serial);
    // 5
    if (this.hasMandatory) {
      const k = this.listsMatch(hits, target, this.mandatory, this.mandatoryExprs);
      if (k !== NONE) return this.listDecision('block', Reason.mandatory, p, k, 'dasen');
    }
    // 6
    e = this.localDeny.match(host, path) ?? p.deny.match(host, path);
    if (e !== null) return decision('block', Reason.localDeny, p.name, null, e, 'rule', 'local', serial);
    // 7
    e = this.localAllow.match(host, path) ?? p.allow.match(host, path);
    if (e !== null) {
      if (p.hasLocked) {
        const k = this.listsMatch(hits, target, p.locked, p.lockedExprs);
        if (k !== NONE) return this.listDecision('block', Reason.category, p, k, 'lists');
      }
      return decision('allow', Reason.localAllow, p.name, null, e, 'rule', 'local', serial);
    }
    // 7b
    if (p.namesOnly && isIP(host) !== 0) return decision('block', Reason.ipLiteral, p.name, null, null, null, 'default', serial);
    // 8
    if (p.hasAllowCats && hits > 0) {
      const k = this.listsMatch(hits, target, p.allowCats, null);
      if (k !== NONE) return this.listDecision('allow', Reason.allowedCategory, p, k, 'lists');
    }
    // 9
    if (p.hasBlock) {
      const k = this.listsMatch(hits, target, p.block, p.blockExprs);
      if (k !== NONE) return this.listDecision('block', Reason.category, p, k, 'lists');
    }
    // 10
    if (p.whitelistOnly) return decision('block', Reason.notWhitelisted, p.name, null, null, null, 'default', serial);
    // 11
    return p.allowed;
  }

  /**
   * Does the host (hits of the last collect) match a category of `mask`: domain entries, then
   * url entries, then the expressions of those categories. Sets mCat / mText.
   */
  private listsMatch(hits: number, target: Target, mask: Uint32Array, exprs: ExprGroup[] | null): number {
    const idx = this.index;
    if (hits > 0) {
      if (idx.domainMatch(hits, mask)) {
        this.mCat = idx.matchCategory;
        this.mText = target.host.slice(idx.matchStart);
        return DOMAIN;
      }
      if (idx.urlMatch(hits, target.kind === 'http' ? target.path : '', mask)) {
        this.mCat = idx.matchCategory;
        this.mText = idx.urlEntryText(target.host, idx.matchStart, idx.matchEntry);
        return URL_ENTRY;
      }
    }
    if (exprs !== null && exprs.length > 0) {
      const subject = target.kind === 'http' ? target.host + target.path : target.host;
      for (const g of exprs) {
        if (!g.combined.test(subject)) continue;
        const m = g.members.find((x) => x.re.test(subject));
        this.mCat = g.category;
        this.mText = m ? m.source : g.members[0]!.source;
        return EXPRESSION;
      }
    }
    return NONE;
  }

  private listDecision(action: 'allow' | 'block', reason: ReasonCode, p: Profile, kind: number, layer: Layer): Decision {
    const meta = this.index.categories[this.mCat]!;
    const matchKind = kind === DOMAIN ? 'domain' : kind === URL_ENTRY ? 'url' : 'expression';
    return {
      action,
      reason,
      profile: p.name,
      category: meta.name,
      categoryFr: meta.fr,
      categoryEn: meta.en,
      match: this.mText,
      matchKind,
      layer,
      listSerial: this.listSerial,
    };
  }

  /** Every category listing the target (any suffix, url entries, expressions): for `check`. */
  listedCategories(target: Target): string[] {
    const idx = this.index;
    const out = new Set<string>();
    const hits = idx.collect(target.host);
    for (let k = 0; k < hits; k++) {
      for (const c of idx.setMembers(idx.hitSet[k]!)) out.add(idx.categories[c]!.name);
    }
    for (const c of idx.urlCategories(hits, target.kind === 'http' ? target.path : '')) out.add(idx.categories[c]!.name);
    const subject = target.kind === 'http' ? target.host + target.path : target.host;
    for (const g of this.exprGroups.values()) if (g.combined.test(subject)) out.add(idx.categories[g.category]!.name);
    return [...out].sort();
  }

  /** SafeSearch mode of a profile (policy key `profiles.NAME.safeSearch`), or null. */
  safeSearch(profile: string): SafeSearchMode | null {
    return this.profiles.get(profile)?.spec.safeSearch ?? null;
  }

  profileNames(): string[] {
    return [...this.profiles.keys()];
  }

  describe(): { categories: number; domains: number; urls: number; expressions: number; source: string } {
    return { ...this.index.describe(), source: this.source };
  }

  // --- TLS interception (policy keys intercept / noIntercept) -------------------------------
  private icpt: InterceptState | null = null;

  /** Whether the policy names anything to intercept (then the gateway needs its CA). */
  get intercepting(): boolean {
    return this.spec.intercept.domains.length > 0 || this.spec.intercept.categories.length > 0;
  }

  /**
   * Whether an allowed CONNECT to `target` is to be decrypted and its requests decided one by
   * one. Order: nothing named -> no; not allowed -> no (a block never opens anything); profile
   * not in intercept.profiles -> no; noIntercept domain or category -> no (always wins);
   * intercept domain or category (domain lists) -> yes; else no. Per CONNECT, not per request.
   */
  interceptFor(target: Target, _client: Client, decision: Decision): boolean {
    if (!this.intercepting || decision.action !== 'allow') return false;
    const spec = this.spec.intercept;
    if (spec.profiles !== null && !spec.profiles.includes(decision.profile)) return false;
    let st = this.icpt;
    if (st === null) {
      const mask = (names: readonly string[]): Uint32Array => {
        const m = this.index.newMask();
        for (const n of names) {
          const c = this.index.categoryIndex(n);
          if (c !== undefined) m[c >>> 5]! |= 1 << (c & 31);
        }
        return m;
      };
      st = this.icpt = {
        yes: new EntrySet(spec.domains),
        no: new EntrySet(spec.noIntercept.domains),
        yesCats: mask(spec.categories),
        noCats: mask(spec.noIntercept.categories),
      };
    }
    const host = target.host;
    if (st.no.match(host, '') !== null) return false;
    const hits = this.index.collect(host);
    if (hits > 0 && this.index.domainMatch(hits, st.noCats)) return false;
    if (st.yes.match(host, '') !== null) return true;
    return hits > 0 && this.index.domainMatch(hits, st.yesCats);
  }
}

interface InterceptState {
  yes: EntrySet;
  no: EntrySet;
  yesCats: Uint32Array;
  noCats: Uint32Array;
}

function decision(
  action: 'allow' | 'block', reason: ReasonCode, profile: string, category: CategoryMeta | null,
  match: string | null, matchKind: Decision['matchKind'], layer: Layer, listSerial: string | null,
): Decision {
  return {
    action, reason, profile,
    category: category?.name ?? null, categoryFr: category?.fr ?? null, categoryEn: category?.en ?? null,
    match, matchKind, layer, listSerial,
  };
}

function isBlackOnly(c: CategoryMeta): boolean {
  return c.usage.length === 1 && c.usage[0] === 'black';
}

function isEmpty(m: Uint32Array): boolean {
  for (let i = 0; i < m.length; i++) if (m[i] !== 0) return false;
  return true;
}

function andNot(a: Uint32Array, b: Uint32Array): void {
  for (let i = 0; i < a.length; i++) a[i] = a[i]! & ~b[i]!;
}

/** Lists as the engine needs them (src/lists/load.ts reads or compiles them). */
export interface EngineLists {
  index: ListIndex;
  /** what was loaded (index file or UT1 source) */
  source: string;
}

/** Builds an engine from loaded lists and a policy file path. */
export function createPolicyEngine(lists: EngineLists, policyFile: string, listSerial: string | null = null, log?: Logger): Engine {
  const spec = readPolicyFile(policyFile);
  const engine = new Engine(lists.index, spec, lists.source, listSerial);
  if (log) {
    for (const w of engine.warnings) log.warn(w);
    if (lists.index.badExpressions.length > 0) log.warn({ count: lists.index.badExpressions.length }, 'expressions that do not compile were skipped');
  }
  return engine;
}

