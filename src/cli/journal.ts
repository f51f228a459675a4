/**
 * `gardefou journal query | export | verify | purge | hold | audit`: requisitions and retention.
 * Exit codes: 0 ok; 1 verify found an alteration (or the audit trail is broken); 2 bad input,
 * refused access or an unreadable journal.
 */
import type { Command } from 'commander';
import * as path from 'node:path';
import { loadConfig, validateConfig, type JournalConfig } from '../config';
import { InputError } from '../errors';
import { criteriaFromFlags, criteriaJson, type CriteriaFlags } from '../journal/criteria';
import { parisTime, recordJson, recordsCsv, recordsTable, utcIso } from '../journal/format';
import {
  journalAudit, journalExport, journalHold, journalHolds, journalPurge, journalQuery, journalRelease, journalVerify,
  journalVerifyExport, parseBasis,
} from '../journal/operations';
import { journalFiles } from '../journal/store';

interface CommonFlags {
  config?: string;
  journal?: string;
  json?: boolean;
}

interface ReqFlags extends CommonFlags, CriteriaFlags {
  requisition?: string;
  authority?: string;
  basis?: string;
  format?: string;
  out?: string;
}

function journalConfig(f: CommonFlags): JournalConfig {
  const cfg = loadConfig(f.config);
  if (f.journal) cfg.journal.path = path.resolve(f.journal);
  return validateConfig(cfg, f.config ?? '(defaults)').journal;
}

function common(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--journal <path>', 'journal database file (overrides config "journal.path")');
}

function criteriaOptions(cmd: Command): Command {
  return cmd
    .option('--from <iso>', 'start of the window, ISO 8601 with Z or an offset')
    .option('--to <iso>', 'end of the window, ISO 8601 with Z or an offset')
    .option('--at <iso>', 'a single instant (same as --from T --to T)')
    .option('--client <ip>', 'client IP address')
    .option('--user <id>', 'user identifier')
    .option('--workstation <name>', 'workstation identifier')
    .option('--host <name>', 'destination host as asked')
    .option('--egress-ip <ip>', 'egress (gateway) IP address, with --egress-port')
    .option('--egress-port <n>', 'egress source port; matches connections open at the time, +/- journal.skewToleranceSeconds');
}

function requisitionOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--requisition <ref>', 'reference (number) of the requisition')
    .requiredOption('--authority <name>', 'requesting authority (e.g. "Gendarmerie BR Lyon")')
    .requiredOption('--basis <article>', 'legal basis quoted: 60-1, 77-1-1 or 99-3 (Code de procédure pénale)');
}

function requisitionOf(f: ReqFlags) {
  return { requisition: need(f.requisition, '--requisition'), authority: need(f.authority, '--authority'), basis: parseBasis(need(f.basis, '--basis')) };
}

function need(v: string | undefined, flag: string): string {
  if (v === undefined || v.trim() === '') throw new InputError(`${flag} is required`);
  return v;
}

const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);

export function register(program: Command): void {
  const j = program.command('journal').description('the legal connection journal: requisitions, integrity, retention');

  requisitionOptions(criteriaOptions(common(j.command('query')
    .description('answer a requisition: records matching a time window and at least one criterion (audited)'))))
    .option('--format <fmt>', 'table, csv or json', 'table')
    .option('--json', 'same as --format json')
    .action((f: ReqFlags) => {
      const format = f.json ? 'json' : (f.format ?? 'table');
      if (!['table', 'csv', 'json'].includes(format)) throw new InputError(`--format: expected table, csv or json, got "${format}"`);
      const req = requisitionOf(f);
      const cfg = journalConfig(f);
      const c = criteriaFromFlags(f, true);
      const rows = journalQuery(cfg, req, c, format);
      if (format === 'json') out(JSON.stringify({ criteria: criteriaJson(c), count: rows.length, records: rows.map(recordJson) }, null, 1));
      else if (format === 'csv') process.stdout.write(recordsCsv(rows));
      else out(rows.length === 0 ? 'no matching record' : `${recordsTable(rows)}\n${rows.length} record(s); times Europe/Paris`);
    });

  requisitionOptions(criteriaOptions(common(j.command('export')
    .description('write a signed export package for a requisition (audited): records.csv, records.json, manifest.json, manifest.sig'))))
    .requiredOption('--out <dir>', 'directory to create (must be empty or absent)')
    .option('--json', 'print the manifest as JSON')
    .action((f: ReqFlags) => {
      const req = requisitionOf(f);
      const cfg = journalConfig(f);
      const c = criteriaFromFlags(f, true);
      const m = journalExport(cfg, req, c, path.resolve(need(f.out, '--out')));
      if (f.json) out(JSON.stringify(m, null, 1));
      else out(`exported ${m.counts.records} record(s) to ${path.resolve(f.out!)} (${m.chain.blocks.length} sealing block(s)); check with: gardefou journal verify --export ${f.out} --pub ${journalFiles(cfg.path, cfg.keyFile).pub}`);
    });

  common(j.command('verify')
    .description('check the journal chain (or an export package, offline) and report the first altered, inserted or deleted record'))
    .option('--pub <file>', 'public key (default: beside the journal)')
    .option('--export <dir>', 'verify an export package instead of the journal (needs only --pub)')
    .option('--json', 'machine-readable report')
    .action((f: CommonFlags & { pub?: string; export?: string }) => {
      if (f.export) {
        const cfg = f.pub ? null : journalConfig(f);
        const pub = f.pub ? path.resolve(f.pub) : journalFiles(cfg!.path, cfg!.keyFile).pub;
        const r = journalVerifyExport(path.resolve(f.export), pub);
        if (f.json) out(JSON.stringify({ ok: r.ok, records: r.records, sealed: r.sealed, blocks: r.blocks, problems: r.problems }));
        else if (r.ok) out(`export OK: ${r.records} record(s), ${r.sealed} checked against ${r.blocks} signed block(s), manifest signature and file hashes valid`);
        else out(`export ALTERED: ${r.problems[0]}${r.problems.length > 1 ? ` (+${r.problems.length - 1} more)` : ''}`);
        if (!r.ok) process.exitCode = 1;
        return;
      }
      const cfg = journalConfig(f);
      const r = journalVerify(cfg, f.pub ? path.resolve(f.pub) : null);
      if (f.json) out(JSON.stringify(r));
      else {
        out(`${r.ok ? 'journal OK' : 'journal ALTERED'}: ${r.records} record(s) in ${r.blocks} block(s), ${r.events} event(s); purged ${r.purgedRecords} record(s) in ${r.purgedBlocks} block(s); ${r.openRecords} open`);
        if (r.first) out(`first problem: ${r.first.message}`);
        for (const p of r.problems.slice(1, 10)) out(`  also: ${p.message}`);
      }
      if (!r.ok) process.exitCode = 1;
    });

  common(j.command('purge')
    .description('delete records older than journal.retentionDays (except held ones), in small chunks; for the systemd timer'))
    .option('--json', 'machine-readable result')
    .action(async (f: CommonFlags) => {
      const cfg = journalConfig(f);
      const r = await journalPurge(cfg);
      if (f.json) out(JSON.stringify(r));
      else out(`purged ${r.deleted} record(s) started before ${utcIso(r.cutoffMs)} from ${r.blocks} block(s); ${r.held} held record(s) kept; longest chunk ${r.maxChunkMs.toFixed(1)} ms`);
    });

  criteriaOptions(common(j.command('hold')
    .description('protect records matching a window and criteria from purge until --release (journaled)')))
    .requiredOption('--requisition <ref>', 'requisition the hold serves')
    .option('--release', 'release the holds of this requisition')
    .option('--json', 'machine-readable result')
    .action((f: ReqFlags & { release?: boolean }) => {
      const cfg = journalConfig(f);
      const req = need(f.requisition, '--requisition');
      if (f.release) {
        const hs = journalRelease(cfg, req);
        if (f.json) out(JSON.stringify(hs));
        else out(`released ${hs.length} hold(s) of requisition ${req}`);
        return;
      }
      const c = criteriaFromFlags(f, false);
      const h = journalHold(cfg, req, c);
      if (f.json) out(JSON.stringify(h));
      else out(`hold ${h.id} placed for requisition ${req}: records started ${parisTime(c.fromMs)} .. ${parisTime(c.toMs)} matching ${h.criteria} are kept until released`);
    });

  common(j.command('holds').description('list preservation holds'))
    .option('--json', 'machine-readable list')
    .action((f: CommonFlags) => {
      const hs = journalHolds(journalConfig(f));
      if (f.json) out(JSON.stringify(hs));
      else if (hs.length === 0) out('no hold');
      else for (const h of hs) out(`${h.id}  ${h.requisition}  ${h.criteria}  by ${h.created_by} ${parisTime(h.created_ms)}  ${h.released_ms === null ? 'ACTIVE' : `released ${parisTime(h.released_ms)} by ${h.released_by ?? '?'}`}`);
    });

  common(j.command('audit').description('list the audit trail of requisition queries and exports, checking its chain'))
    .option('--pub <file>', 'public key to check signed entries (default: beside the journal)')
    .option('--json', 'machine-readable list')
    .action((f: CommonFlags & { pub?: string }) => {
      const entries = journalAudit(journalConfig(f), f.pub ? path.resolve(f.pub) : null);
      const broken = entries.filter((e) => e.problem !== null);
      if (f.json) out(JSON.stringify({ ok: broken.length === 0, entries }));
      else {
        if (entries.length === 0) out('audit trail empty: no query or export yet');
        for (const e of entries) {
          const b = e.body;
          out(`${e.seq}  ${parisTime(b.time_ms)}  ${b.action}  ${b.operator}  req ${b.requisition}  ${b.authority}  CPP ${b.basis}  ${JSON.stringify(b.criteria)}  ${b.rows} row(s)${e.signed ? '' : '  [unsigned]'}${e.problem ? `  !! ${e.problem}` : ''}`);
        }
      }
      if (broken.length > 0) process.exitCode = 1;
    });
}
