/** Shared helpers of the journal tests: real journals in temp dirs, the CLI in a child process. */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { defaultConfig, type JournalConfig } from '../../src/config';
import { openJournal, type Journal } from '../../src/journal';
import type { JournalClose, JournalOpen } from '../../src/journal/types';
import { silentLogger } from '../../src/log';

export const CLI = path.join(__dirname, 'fixtures', 'cli.js');

export function journalCfg(dir: string, over: Partial<JournalConfig> = {}): JournalConfig {
  return { ...defaultConfig().journal, path: path.join(dir, 'journal.db'), batchMs: 2, ...over };
}

/** A config file for the CLI, with the journal section given. */
export function writeConfig(dir: string, j: Partial<JournalConfig>): string {
  const file = path.join(dir, 'gardefou.json');
  fs.writeFileSync(file, JSON.stringify({ journal: j }));
  return file;
}

export function sampleOpen(i: number, over: Partial<JournalOpen> = {}): JournalOpen {
  return {
    ref: `R${i.toString(36).toUpperCase().padStart(6, '0')}`,
    startMs: Date.now(),
    clientIp: `10.1.${(i >> 8) & 255}.${i & 255}`,
    clientPort: 30000 + (i % 30000),
    user: i % 3 === 0 ? `eleve${i % 7}` : null,
    workstation: `salle1-pc${i % 10}`,
    protocol: i % 2 === 0 ? 'http' : 'connect',
    method: i % 2 === 0 ? 'GET' : 'CONNECT',
    destHost: `site${i % 5}.example`,
    destPort: i % 2 === 0 ? 80 : 443,
    decision: i % 4 === 1 ? 'block' : 'allow',
    reason: i % 4 === 1 ? 'category' : 'not-listed',
    profile: 'college',
    category: i % 4 === 1 ? 'adult' : null,
    listSerial: '2025031401',
    ...over,
  };
}

export function sampleClose(i: number, over: Partial<JournalClose> = {}): JournalClose {
  return {
    endMs: Date.now(), destIp: `192.0.2.${i % 250}`, egressIp: '198.51.100.7', egressPort: 20000 + (i % 40000),
    status: 200, bytesIn: 100 + i, bytesOut: 2000 + i, ...over,
  };
}

/** Writes `n` complete records (begin, connected, finish) and returns the ids in order. */
export async function writeRecords(j: Journal, n: number, open: (i: number) => JournalOpen = sampleOpen, close: (i: number) => JournalClose = sampleClose): Promise<void> {
  await Promise.all(Array.from({ length: n }, async (_, i) => {
    const h = await j.begin(open(i));
    const c = close(i);
    h.connected({ destIp: c.destIp, egressIp: c.egressIp, egressPort: c.egressPort });
    h.finish(c);
  }));
}

export async function withJournal<T>(cfg: JournalConfig, fn: (j: Journal) => Promise<T>): Promise<T> {
  const j = await openJournal(cfg, silentLogger());
  try {
    return await fn(j);
  } finally {
    await j.close();
  }
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], opts: SpawnSyncOptions = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, 'journal', ...args], { encoding: 'utf8', timeout: 60_000, ...opts });
  return { code: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** A fresh temp dir (t.testdir() gives one per test, and calling it again empties it). */
export function tmpDir(t: { teardown(fn: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-journal-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

export const REQ = ['--requisition', 'PV-2025-0042', '--authority', 'Gendarmerie BR Lyon', '--basis', '60-1'];
