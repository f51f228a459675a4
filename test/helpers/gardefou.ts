/**
 * Starts the real `gardefou serve` as a child process (bin/gardefou) with a config file of the
 * test's own, and collects its JSON log lines.
 */
import Database from 'better-sqlite3';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../../src/config';

export const BIN = path.join(PACKAGE_ROOT, 'bin', 'gardefou');
/** The build these tests were compiled into (dist/ for `npm test`); bin/gardefou runs it. */
export const BUILD_ROOT = path.resolve(__dirname, '..', '..');
/** Environment for child processes: run the same build as the tests. */
export const CHILD_ENV = { ...process.env, GARDEFOU_DIST: BUILD_ROOT };
export const FIXTURES = path.join(PACKAGE_ROOT, 'test', 'fixtures');
export const REAL_UT1 = path.join(PACKAGE_ROOT, '..', 'shared', 'ut1', 'blacklists');

export interface Running {
  proc: ChildProcess;
  port: number;
  dir: string;
  configPath: string;
  journalPath: string;
  logs: Array<Record<string, unknown>>;
  /** resolves with the exit code once the process has exited */
  exited: Promise<number | null>;
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function tempDir(prefix = 'gardefou-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Writes a hosts file mapping every name to 127.0.0.1. */
export function writeHosts(dir: string, names: string[]): string {
  const file = path.join(dir, 'hosts');
  fs.writeFileSync(file, names.map((n) => `127.0.0.1 ${n}\n`).join(''));
  return file;
}

/**
 * A config for tests: listens on a free loopback port, allows loopback destinations explicitly
 * (origins run on 127.0.0.1), journal in the test's temp dir, no admin listener.
 */
export function testConfig(dir: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: ['127.0.0.1:0'],
    allowDestinations: ['127.0.0.0/8'],
    lists: path.join(FIXTURES, 'proxy-lists'),
    policy: path.join(FIXTURES, 'proxy-policy.json'),
    journal: { path: path.join(dir, 'journal.db') },
    admin: { listen: null },
    logLevel: 'info',
    ...overrides,
  };
}

export async function startGardefou(config: Record<string, unknown>, dir: string, args: string[] = []): Promise<Running> {
  const configPath = path.join(dir, 'gardefou.json');
  fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
  const proc = spawn(process.execPath, [BIN, 'serve', '--config', configPath, ...args], {
    cwd: dir,
    env: CHILD_ENV,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  const waiters: Array<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];
  let stderr = '';
  let pending = '';
  proc.stdout?.on('data', (c: Buffer) => {
    pending += c.toString('utf8');
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      let obj: Record<string, unknown>;
      try {
        obj = JSON.parse(line) as Record<string, unknown>;
      } catch {
        obj = { raw: line };
      }
      logs.push(obj);
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i];
        if (w && w.pred(obj)) { waiters.splice(i, 1); w.resolve(obj); }
      }
    }
  });
  proc.stderr?.on('data', (c: Buffer) => { stderr += c.toString('utf8'); });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));

  const waitForLog = (pred: (l: Record<string, unknown>) => boolean, timeoutMs = 15_000) => {
    const found = logs.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`log line not seen in ${timeoutMs} ms; stderr: ${stderr}; logs: ${JSON.stringify(logs.slice(-5))}`)), timeoutMs);
      waiters.push({ pred, resolve: (l) => { clearTimeout(timer); resolve(l); } });
      void exited.then((code) => { clearTimeout(timer); reject(new Error(`gardefou exited (${code}) before the log line; stderr: ${stderr}`)); });
    });
  };

  let ready: Record<string, unknown>;
  try {
    ready = await waitForLog((l) => l['msg'] === 'ready');
  } catch (err) {
    proc.kill('SIGKILL'); // never leave a half-started proxy behind
    throw err;
  }
  const listen = (ready['listen'] as string[])[0] ?? '';
  const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
  const journalPath = String((config['journal'] as { path: string }).path);
  return {
    proc,
    port,
    dir,
    configPath,
    journalPath,
    logs,
    exited,
    waitForLog,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Every record of a journal file, read the way an operator's SQLite client would. */
export function journalRows(file: string): Array<Record<string, unknown>> {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT * FROM records ORDER BY id').all() as Array<Record<string, unknown>>;
  } finally {
    db.close();
  }
}

/** Polls `fn` until it returns a value (bounded): records are committed asynchronously. */
export async function waitFor<T>(fn: () => T | undefined, what: string, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
