/**
 * UT1 directory or tar.gz -> one compiled index file (layout: src/policy/index-format.ts,
 * docs/index-format.md). Used by `gardefou lists import`, by the DASEN updater, and by the
 * policy engine when it is given a UT1 tree at start.
 *
 * The file is written atomically: temp file beside the target, fsync, rename, fsync of the
 * folder. A failure leaves the previous index in place.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncPath, replaceFile } from '../fsync';
import { GardefouError, InputError, errorMessage } from '../errors';
import { IndexBuilder } from '../policy/index-builder';
import { isIndexFile, Malformed, parseIndex } from '../policy/index-format';
import { readUt1 } from './ut1';

/** Name of the index file inside a lists folder (`lists import --out DIR`). */
export const INDEX_FILE_NAME = 'gardefou-lists.idx';

export interface CompileReport {
  source: string;
  /** file written (compileLists) or null (in-memory compile) */
  out: string | null;
  categories: number;
  aliases: number;
  domains: number;
  urls: number;
  expressions: number;
  lines: number;
  malformed: { count: number; first: Malformed[] };
  bytes: number;
  ms: number;
}

export interface CompileOptions {
  /** how many malformed lines are reported with file and line (default 20) */
  maxReported?: number;
}

/** Compiles a UT1 source into index bytes held in memory. */
export async function compileToBuffer(src: string, opts: CompileOptions = {}): Promise<{ buffer: Buffer; report: CompileReport }> {
  const t0 = performance.now();
  const b = new IndexBuilder();
  if (opts.maxReported !== undefined) b.maxReported = opts.maxReported;
  const stats = await readUt1(src, b);
  if (stats.categories === 0) throw new InputError(`reading lists ${src}: no UT1 category found (expected folders with domains, urls or usage)`);
  const buffer = b.serialize(path.resolve(src));
  const { header } = parseIndex(buffer, src); // self-check of what was just written
  return {
    buffer,
    report: {
      source: path.resolve(src),
      out: null,
      categories: header.categories.length,
      aliases: Object.keys(header.aliases).length,
      domains: header.domains.count,
      urls: header.urls.entries,
      expressions: header.expressions.length,
      lines: stats.lines,
      malformed: header.malformed,
      bytes: buffer.length,
      ms: Math.round(performance.now() - t0),
    },
  };
}

/** Compiles a UT1 source to `outFile` (atomic replace). */
export async function compileLists(src: string, outFile: string, opts: CompileOptions = {}): Promise<CompileReport> {
  const { buffer, report } = await compileToBuffer(src, opts);
  writeAtomic(outFile, buffer);
  report.out = path.resolve(outFile);
  return report;
}

export function writeAtomic(file: string, data: Buffer): void {
  const dir = path.dirname(path.resolve(file));
  try {
    fs.mkdirSync(dir, { recursive: true });
    replaceFile(file, data);
  } catch (err) {
    throw new GardefouError('GARDEFOU_IO', `writing index ${file}: ${errorMessage(err)}`);
  }
  try {
    fsyncPath(dir);
  } catch { /* some filesystems refuse fsync on a folder: the rename is still atomic */ }
}

export type ListsSource =
  | { kind: 'index'; file: string }
  | { kind: 'ut1'; path: string };

/**
 * What a `lists` path is: a compiled index file, a folder holding one (INDEX_FILE_NAME), a UT1
 * folder, or a UT1 tar.gz.
 */
export function classifyLists(p: string): ListsSource {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (err) {
    throw new InputError(`reading lists ${p}: ${errorMessage(err)}`);
  }
  if (st.isDirectory()) {
    const idx = path.join(p, INDEX_FILE_NAME);
    if (fs.existsSync(idx)) return { kind: 'index', file: idx };
    return { kind: 'ut1', path: p };
  }
  const head = Buffer.alloc(8);
  const fd = fs.openSync(p, 'r');
  try {
    fs.readSync(fd, head, 0, 8, 0);
  } finally {
    fs.closeSync(fd);
  }
  if (isIndexFile(head)) return { kind: 'index', file: p };
  if (head[0] === 0x1f && head[1] === 0x8b) return { kind: 'ut1', path: p };
  throw new InputError(`reading lists ${p}: neither a UT1 folder, a UT1 tar.gz, nor a gardefou index`);
}
