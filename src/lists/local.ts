/**
 * The school's layer beside the DASEN bundle: composes the policy the engine loads from the
 * bundle's DASEN policy and the school's own policy file (config `policy`), and refuses the
 * school's allow entries that contradict a DASEN mandatory block.
 *
 * Who owns which key of the composed policy (format: src/policy/policy-file.ts):
 *   DASEN (bundle policy.json)   version, timezone, schedules, dasen, profiles, defaultProfile
 *                                (the school's file fills a key the bundle leaves out, so `{}`
 *                                means "the shipped defaults")
 *   school (config `policy`)     clients, local, localFile (the bundle fills them only when the
 *                                school's file has none). localFile is made absolute, so local
 *                                entries stay where the school keeps them and survive updates.
 *
 * Refusal of contradicting entries: every local allow entry (`local.allow`, the localFile's
 * `allow`, `profiles.*.allow`) is decided by a probe engine holding only the DASEN layer; an
 * entry the DASEN layer blocks (reason "mandatory") is dropped from the composed policy and
 * reported with the rule it contradicts. (The engine would block those hosts anyway: mandatory
 * checks come first; refusing them at load makes the contradiction visible to the school.)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigError, errorMessage } from '../errors';
import type { Logger } from '../log';
import { Engine } from '../policy/engine';
import { loadLists, LoadedLists } from './load';
import { parsePolicy, PolicySpec } from '../policy/policy-file';
import type { Target } from '../policy/types';
import { isObject } from './sign';
import { writeFileAtomic } from '../fsync';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

// intercept / noIntercept: which hosts TLS interception inspects is the supervising authority's
// call when its bundle says; a school policy's own sections apply only when the bundle is silent
const DASEN_KEYS = ['version', 'timezone', 'schedules', 'dasen', 'profiles', 'defaultProfile', 'intercept', 'noIntercept'] as const;
const SCHOOL_KEYS = ['clients', 'local', 'localFile'] as const;

export interface LocalRefusal {
  /** the entry as written by the school */
  entry: string;
  /** where it was written: "local.allow", "<localFile> allow", "profiles.college.allow" */
  where: string;
  /** the DASEN rule it contradicts: a dasen.deny entry, or category + list entry */
  rule: string;
  message: string;
}

export interface ComposeResult {
  policyPath: string;
  refused: LocalRefusal[];
}

function readJson(file: string, what: string): { [k: string]: Json } {
  let doc: unknown;
  try {
    doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError(`reading ${what} ${file}: ${errorMessage(err)}`);
  }
  if (!isObject(doc)) throw new ConfigError(`reading ${what} ${file}: expected a JSON object`);
  return doc as { [k: string]: Json };
}

/**
 * Writes the composed policy to `out` (temp + fsync + rename) and returns its path and the
 * refused local entries. `lists` (compiled index or UT1 folder) is needed to know which hosts
 * the DASEN's mandatory categories hold; pass `loaded` to reuse lists already in memory.
 */
export async function composePolicy(opts: {
  dasenPolicy: string;
  schoolPolicy: string | null;
  lists: string;
  out: string;
  loaded?: LoadedLists;
  log?: Logger;
}): Promise<ComposeResult> {
  const bundle = readJson(opts.dasenPolicy, 'DASEN policy');
  const school = opts.schoolPolicy ? readJson(opts.schoolPolicy, 'policy') : {};
  const schoolDir = opts.schoolPolicy ? path.dirname(path.resolve(opts.schoolPolicy)) : process.cwd();
  const bundleDir = path.dirname(path.resolve(opts.dasenPolicy));
  const composed: { [k: string]: Json } = {
    $comment: `composed by gardefou (do not edit): DASEN layer from ${opts.dasenPolicy}, school layer from ${opts.schoolPolicy ?? '(none)'}`,
  };
  for (const k of DASEN_KEYS) {
    const v = k in bundle ? bundle[k] : school[k];
    if (v !== undefined) composed[k] = v;
  }
  let localFileDir = schoolDir;
  for (const k of SCHOOL_KEYS) {
    const fromSchool = k in school;
    const v = fromSchool ? school[k] : bundle[k];
    if (v === undefined) continue;
    composed[k] = v;
    if (k === 'localFile' && !fromSchool) localFileDir = bundleDir;
  }
  if (typeof composed['localFile'] === 'string') composed['localFile'] = path.resolve(localFileDir, composed['localFile']);

  // validate once as composed (errors name the key), then probe the school's allow entries
  const spec = parsePolicy(composed, opts.out);
  const lists = opts.loaded ?? (await loadLists(opts.lists));
  const inline = isObject(composed['local']) ? (composed['local'] as { [k: string]: Json })['allow'] : undefined;
  const refused = findContradictions(spec, lists, new Set(Array.isArray(inline) ? inline.filter((x): x is string => typeof x === 'string') : []));
  if (refused.length) {
    dropRefused(composed, spec, refused);
    for (const r of refused) opts.log?.error({ entry: r.entry, where: r.where, rule: r.rule }, r.message);
  }
  writeFileAtomic(opts.out, JSON.stringify(composed, null, 1) + '\n');
  return { policyPath: opts.out, refused };
}

/**
 * Local allow entries the DASEN layer blocks (see the block comment at the top).
 * `inlineAllow`: the texts of the policy's own `local.allow` (the rest of spec.local.allow
 * came from the localFile), to name where each refused entry was written.
 */
export function findContradictions(spec: PolicySpec, lists: LoadedLists, inlineAllow: ReadonlySet<string> = new Set()): LocalRefusal[] {
  const probeJson: { [k: string]: Json } = { dasen: { block: spec.dasen.block, deny: spec.dasen.deny.map((e) => e.text) } };
  const probe = new Engine(lists.index, parsePolicy(probeJson, '(DASEN layer)'), lists.source, null);
  const out: LocalRefusal[] = [];
  const check = (e: { host: string; path: string; text: string }, where: string) => {
    const target: Target = e.path === '' || e.path === '/'
      ? { kind: 'connect', host: e.host, port: 443, path: '' }
      : { kind: 'http', host: e.host, port: 80, path: e.path.startsWith('/') ? e.path : `/${e.path}` };
    const d = probe.decide(target, { ip: '127.0.0.1' });
    if (d.reason !== 'mandatory') return;
    const rule = d.matchKind === 'rule' ? `dasen.deny "${d.match ?? ''}"` : `dasen.block category ${d.category ?? '?'} (${d.matchKind ?? 'entry'} ${d.match ?? ''})`;
    out.push({ entry: e.text, where, rule, message: `local allow entry "${e.text}" (${where}) refused: it contradicts the DASEN mandatory block ${rule}` });
  };
  for (const e of spec.local.allow) check(e, spec.local.file && !inlineAllow.has(e.text) ? `${spec.local.file} allow` : 'local.allow');
  for (const p of spec.profiles.values()) for (const e of p.allow) check(e, `profiles.${p.name}.allow`);
  return out;
}

/** Removes refused entries; the localFile's entries are inlined (minus the refused) and the key dropped. */
function dropRefused(composed: { [k: string]: Json }, spec: PolicySpec, refused: readonly LocalRefusal[]): void {
  const bad = new Set(refused.map((r) => r.entry));
  const local = isObject(composed['local']) ? (composed['local'] as { [k: string]: Json }) : {};
  composed['local'] = {
    ...local,
    allow: spec.local.allow.map((e) => e.text).filter((t) => !bad.has(t)),
    deny: spec.local.deny.map((e) => e.text),
  };
  delete composed['localFile'];
  const profiles = composed['profiles'];
  if (isObject(profiles)) {
    for (const p of Object.values(profiles as { [k: string]: Json })) {
      if (isObject(p) && Array.isArray((p as { [k: string]: Json })['allow'])) {
        const o = p as { [k: string]: Json };
        o['allow'] = (o['allow'] as Json[]).filter((t) => typeof t !== 'string' || !bad.has(t));
      }
    }
  }
}

