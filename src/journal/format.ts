/**
 * How journal times and records are printed. Stored times are UTC milliseconds; printed times
 * always carry an explicit offset: UTC ("...Z") for machines and exports, Europe/Paris with its
 * offset ("2025-07-01 14:00:00.123+02:00") for humans (RFC 6302 / BCP 162).
 */
import { RECORD_COLUMNS, type RecordRow } from './record';

// built on first use: a formatter with a time zone loads ICU data (~10 ms), which `serve`
// (importing this module through the CLI) would otherwise pay at every start
let paris: Intl.DateTimeFormat | null = null;
function parisFormat(): Intl.DateTimeFormat {
  paris ??= new Intl.DateTimeFormat('en-GB', {
    timeZone: 'Europe/Paris', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
    second: '2-digit', hourCycle: 'h23', timeZoneName: 'longOffset',
  });
  return paris;
}

export function utcIso(ms: number | null): string {
  return ms === null ? '' : new Date(ms).toISOString();
}

export function parisTime(ms: number | null): string {
  if (ms === null) return '';
  const p: Record<string, string> = {};
  for (const part of parisFormat().formatToParts(new Date(ms))) p[part.type] = part.value;
  const off = (p['timeZoneName'] ?? 'GMT').replace('GMT', '') || '+00:00';
  const milli = String(((ms % 1000) + 1000) % 1000).padStart(3, '0');
  return `${p['year']}-${p['month']}-${p['day']} ${p['hour']}:${p['minute']}:${p['second']}.${milli}${off}`;
}

/** A record for JSON output: every stored field, plus the times in both forms. */
export function recordJson(r: RecordRow): Record<string, string | number | null> {
  const o: Record<string, string | number | null> = {};
  for (const c of RECORD_COLUMNS) o[c] = r[c];
  o['start_utc'] = utcIso(r.start_ms);
  o['start_paris'] = parisTime(r.start_ms);
  o['end_utc'] = r.end_ms === null ? null : utcIso(r.end_ms);
  o['end_paris'] = r.end_ms === null ? null : parisTime(r.end_ms);
  return o;
}

export const CSV_COLUMNS = ['id', 'ref', 'start_utc', 'start_paris', 'end_utc', 'end_paris', ...RECORD_COLUMNS.slice(2)] as const;

function csvCell(v: string | number | null | undefined): string {
  if (v === null || v === undefined) return '';
  const s = String(v);
  return /[",\r\n]/.test(s) || /^[=+\-@]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function recordsCsv(rows: RecordRow[]): string {
  const lines = [CSV_COLUMNS.join(',')];
  for (const r of rows) {
    const o = recordJson(r);
    lines.push(CSV_COLUMNS.map((c) => csvCell(o[c])).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}

/** A compact table for a terminal: the columns an operator reads first. */
export function recordsTable(rows: RecordRow[]): string {
  const head = ['id', 'start (Europe/Paris)', 'end', 'client', 'user', 'workstation', 'egress', 'destination', 'proto', 'decision', 'status', 'bytes in/out', 'ref'];
  const body = rows.map((r) => [
    String(r.id), parisTime(r.start_ms), r.end_ms === null ? '(open)' : parisTime(r.end_ms).slice(11),
    `${r.client_ip}:${r.client_port}`, r.user ?? '', r.workstation ?? '',
    r.egress_ip === null ? '' : `${r.egress_ip}:${r.egress_port ?? ''}`,
    `${r.dest_host}:${r.dest_port}${r.dest_ip ? ` (${r.dest_ip})` : ''}`, r.protocol,
    r.category ? `${r.decision}/${r.category}` : r.decision, r.status === null ? '' : String(r.status),
    `${r.bytes_in}/${r.bytes_out}`, r.ref,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [fmt(head), fmt(widths.map((w) => '-'.repeat(w))), ...body.map(fmt)].join('\n');
}
