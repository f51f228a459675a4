/**
 * `gardefou lists import SRC --out DIR|FILE.idx`: UT1 folder or tar.gz -> compiled index.
 * `gardefou lists info [--lists PATH] [--json]`: what an index (or a UT1 tree) holds.
 */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadConfig } from '../config';
import { compileLists, CompileReport, INDEX_FILE_NAME } from '../lists/compile';
import { loadLists } from '../lists/load';

interface ImportFlags { out: string; config?: string; json?: boolean }
interface InfoFlags { lists?: string; config?: string; json?: boolean }

export function register(program: Command): void {
  const lists = program.command('lists').description('compile and inspect filtering lists (UT1 format)');
  lists
    .command('import')
    .description(`compile a UT1 folder or blacklists.tar.gz into one index file (DIR/${INDEX_FILE_NAME})`)
    .argument('<src>', 'UT1 folder or blacklists.tar.gz')
    .requiredOption('--out <dir>', `output folder (the index is written to DIR/${INDEX_FILE_NAME}), or a file path ending in .idx`)
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--json', 'print the compile report as JSON')
    .action(async (src: string, flags: ImportFlags) => {
      loadConfig(flags.config); // validated for consistency with the other commands
      const out = flags.out.endsWith('.idx') ? flags.out : path.join(flags.out, INDEX_FILE_NAME);
      const r = await compileLists(src, out);
      process.stdout.write(flags.json ? JSON.stringify(r) + '\n' : formatReport(r));
    });
  lists
    .command('info')
    .description('describe the lists in force (compiled index, or UT1 tree compiled in memory)')
    .option('--lists <path>', 'index file, folder, or UT1 tar.gz (overrides config "lists")')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--json', 'print one JSON object')
    .action(async (flags: InfoFlags) => {
      const cfg = loadConfig(flags.config);
      const src = flags.lists ? path.resolve(flags.lists) : cfg.lists;
      const loaded = await loadLists(src);
      const h = loaded.index.header;
      const info = {
        source: loaded.source,
        compiledAtLoad: loaded.compiled !== null,
        formatVersion: h.version,
        created: h.created,
        compiledFrom: h.source,
        bytes: loaded.index.bytes,
        fileBytes: loaded.compiled === null ? fs.statSync(loaded.source).size : null,
        ...loaded.index.describe(),
        aliases: h.aliases,
        malformed: h.malformed,
        categories: h.categories,
      };
      if (flags.json) {
        process.stdout.write(JSON.stringify(info) + '\n');
        return;
      }
      const lines = [
        `lists      ${info.source}${info.compiledAtLoad ? ' (UT1, compiled in memory)' : ''}`,
        `format     version ${info.formatVersion}, created ${info.created}, ${info.bytes} bytes`,
        `entries    ${info.domains} domains, ${info.urls} urls, ${info.expressions} expressions in ${info.categories.length} categories`,
        `malformed  ${info.malformed.count} lines skipped`,
        '',
        pad('category', 24) + pad('usage', 12) + pad('domains', 10) + pad('urls', 8) + pad('expr', 6) + 'names (fr / en), aliases',
      ];
      for (const c of h.categories) {
        const names = [c.fr, c.en].filter(Boolean).join(' / ');
        const aliases = c.aliases.length ? ` [${c.aliases.join(', ')}]` : '';
        lines.push(pad(c.name, 24) + pad(c.usage.join('+') || '-', 12) + pad(String(c.domains), 10) + pad(String(c.urls), 8) + pad(String(c.expressions), 6) + names + aliases);
      }
      process.stdout.write(lines.join('\n') + '\n');
    });
}

function pad(s: string, n: number): string {
  return s.length >= n ? s + ' ' : s + ' '.repeat(n - s.length);
}

function formatReport(r: CompileReport): string {
  const lines = [
    `compiled   ${r.source}`,
    `wrote      ${r.out} (${r.bytes} bytes) in ${r.ms} ms`,
    `entries    ${r.domains} domains, ${r.urls} urls, ${r.expressions} expressions in ${r.categories} categories (${r.aliases} aliases)`,
    `malformed  ${r.malformed.count} lines skipped`,
  ];
  for (const m of r.malformed.first) lines.push(`  ${m.file} line ${m.line}: ${m.reason}: ${JSON.stringify(m.text)}`);
  if (r.malformed.count > r.malformed.first.length) lines.push(`  ... and ${r.malformed.count - r.malformed.first.length} more`);
  return lines.join('\n') + '\n';
}
