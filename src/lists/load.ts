/**
 * Loading the lists and the policy into an engine: a compiled index file is read as is, a UT1
 * folder or tar.gz is compiled in memory first. This lives on the lists side so that the
 * policy engine depends on nothing but its index (cli -> lists -> policy).
 */
import * as fs from 'node:fs';
import { errorMessage, GardefouError } from '../errors';
import type { Logger } from '../log';
import { createPolicyEngine, Engine, EngineLists } from '../policy/engine';
import { ListIndex } from '../policy/list-index';
import { classifyLists, compileToBuffer, CompileReport } from './compile';

export interface LoadPolicyOptions {
  /** UT1 folder, UT1 tar.gz, compiled index file, or a folder holding gardefou-lists.idx */
  lists: string;
  /** policy JSON file */
  policy: string;
  listSerial?: string | null;
  log?: Logger;
}

export interface LoadedLists extends EngineLists {
  /** set when a UT1 source was compiled at load */
  compiled: CompileReport | null;
}

/** Loads a compiled index, or compiles a UT1 folder / tar.gz in memory. */
export async function loadLists(lists: string): Promise<LoadedLists> {
  const src = classifyLists(lists);
  if (src.kind === 'index') {
    let buf: Buffer;
    try {
      buf = fs.readFileSync(src.file);
    } catch (err) {
      throw new GardefouError('GARDEFOU_INDEX', `reading index ${src.file}: ${errorMessage(err)}`);
    }
    return { index: new ListIndex(buf, src.file), source: src.file, compiled: null };
  }
  const { buffer, report } = await compileToBuffer(src.path);
  return { index: new ListIndex(buffer, src.path), source: src.path, compiled: report };
}

/**
 * The entry point for `serve`, `check` and the updater: loads lists (index file, or UT1 tree
 * compiled in memory) and the policy file. Throws ConfigError naming the key on a bad policy,
 * InputError / GardefouError('GARDEFOU_INDEX') on bad lists.
 */
export async function loadPolicyEngine(opts: LoadPolicyOptions): Promise<Engine> {
  const lists = await loadLists(opts.lists);
  if (opts.log && lists.compiled) {
    const r = lists.compiled;
    opts.log.info({ source: r.source, domains: r.domains, urls: r.urls, expressions: r.expressions, malformed: r.malformed.count, ms: r.ms }, 'lists compiled');
    for (const m of r.malformed.first.slice(0, 5)) opts.log.warn({ file: m.file, line: m.line, reason: m.reason }, 'malformed list line skipped');
  }
  return createPolicyEngine(lists, opts.policy, opts.listSerial ?? null, opts.log);
}
