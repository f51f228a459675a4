/**
 * The proxy on several cores: the real `gardefou serve` with `workers: 2` (node:cluster), a real
 * origin on loopback, the real journal owned by the primary. Which worker served a request is
 * read from /metrics (gardefou_worker_requests_total{worker}) or from the workers' log lines,
 * never from the journal. Fresh connections are handed to the workers in turn (round-robin).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import t, { type Test } from 'tap';
import { publish } from '../../src/lists/feed';
import { BIN, CHILD_ENV, FIXTURES, journalRows, Running, startGardefou, tempDir, testConfig, waitFor, writeHosts } from '../helpers/gardefou';
import { Origin, pollStatus, startOrigin, viaProxy } from '../helpers/net';
import { addDomain, startPublishedFeed } from '../lists-update/helpers';

const NAMES = ['allowed.test', 'blocked.test', 'mixed.test', 'new-threat.test'];
let origin: Origin;
t.before(async () => { origin = await startOrigin(); });
t.teardown(() => origin?.close());
const url = (host: string, p = '/') => `http://${host}:${origin.port}${p}`;

function config(dir: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return testConfig(dir, { hosts: writeHosts(dir, NAMES), admin: { listen: '127.0.0.1:0' }, workers: 2, ...extra });
}

function adminPort(g: Running): number {
  const ready = g.logs.find((l) => l['msg'] === 'ready');
  const a = String(ready?.['admin'] ?? '');
  return Number(a.slice(a.lastIndexOf(':') + 1));
}

function get(port: number, p: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => { s += c.toString(); });
      res.on('end', () => resolve(s));
    }).on('error', reject);
  });
}

/** gardefou_worker_requests_total by worker slot. */
async function perWorker(g: Running): Promise<Map<string, number>> {
  const text = await get(adminPort(g), '/metrics');
  const m = new Map<string, number>();
  for (const [, w, v] of text.matchAll(/^gardefou_worker_requests_total\{worker="(\d+)"\} (\d+)$/gm)) m.set(w as string, Number(v));
  return m;
}

function metric(text: string, line: string): number | null {
  const re = new RegExp(`^${line.replace(/[{}"=]/g, (c) => `\\${c}`)} (\\S+)$`, 'm');
  const m = re.exec(text);
  return m ? Number(m[1]) : null;
}

async function status(g: Running): Promise<{ workers: Array<{ worker: number; pid: number; listening: boolean; restarts: number; openRecords: number }> }> {
  return JSON.parse(await get(adminPort(g), '/status')) as { workers: Array<{ worker: number; pid: number; listening: boolean; restarts: number; openRecords: number }> };
}

/** `n` requests on fresh connections; returns their statuses. */
async function burst(g: Running, host: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await viaProxy(g.port, url(host))).status);
  return out;
}

const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);

/**
 * Runs `fn` (which makes `n` requests) and checks that every worker served part of it (its
 * counter grew). A record is counted when it is finished, which for a block page can be just
 * after the answer: wait (bounded) until all `n` are counted.
 */
async function everyWorker(t: Test, g: Running, what: string, n: number, fn: () => Promise<void>): Promise<void> {
  const before = await perWorker(g);
  await fn();
  let after = await perWorker(g);
  for (let i = 0; i < 40 && total(after) - total(before) < n; i++) {
    await new Promise((r) => setTimeout(r, 50));
    after = await perWorker(g);
  }
  t.equal(after.size, 2, `${what}: two workers report`);
  t.equal(total(after) - total(before), n, `${what}: ${n} counted`);
  for (const [w, v] of after) t.ok(v > (before.get(w) ?? 0), `${what}: worker ${w} served some of it (${before.get(w) ?? 0} -> ${v})`);
}

function verify(configPath: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'journal', 'verify', '--config', configPath], { env: CHILD_ENV }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

t.test('two workers serve, one journal record per request, one valid chain', async (t) => {
  const dir = tempDir();
  const g = await startGardefou(config(dir), dir);
  t.teardown(() => g.stop());
  t.equal(g.logs.filter((l) => l['msg'] === 'ready').length, 1, 'one ready line');
  t.equal(g.logs.find((l) => l['msg'] === 'ready')?.['workers'], 2);
  const st = await status(g);
  t.equal(st.workers.length, 2);
  t.equal(new Set(st.workers.map((w) => w.pid)).size, 2, 'two worker processes');
  t.notOk(st.workers.some((w) => w.pid === g.proc.pid), 'workers are not the primary');
  t.match(JSON.parse(await get(adminPort(g), '/healthz')), { ok: true, workers: '2/2 listening' }, '/healthz counts the listening workers');
  await everyWorker(t, g, 'allowed and blocked', 14, async () => {
    t.same(await burst(g, 'allowed.test', 10), Array(10).fill(200));
    t.same(await burst(g, 'blocked.test', 4), Array(4).fill(403));
  });
  const text = await get(adminPort(g), '/metrics');
  t.equal(metric(text, 'gardefou_workers'), 2);
  t.equal(metric(text, 'gardefou_requests_total{decision="allow",category="none",profile="default"}'), 10, 'summed over the workers');
  const counts = await perWorker(g);
  t.equal([...counts.values()].reduce((a, b) => a + b, 0), 14);
  t.equal(await g.stop(), 0);
  const rows = journalRows(g.journalPath);
  t.equal(rows.length, 14, 'journal rows = requests');
  t.ok(rows.every((r) => r['end_ms'] !== null), 'every record closed');
  const v = await verify(g.configPath);
  t.equal(v.code, 0, v.out);
  t.match(v.out, /journal OK: 14 record/);
});

t.test('SIGHUP changes a decision in every worker; a failed reload keeps the old lists everywhere', async (t) => {
  const dir = tempDir();
  const lists = path.join(dir, 'lists');
  fs.cpSync(path.join(FIXTURES, 'proxy-lists'), lists, { recursive: true });
  const g = await startGardefou(config(dir, { lists }), dir);
  t.teardown(() => g.stop());
  t.same(await burst(g, 'allowed.test', 2), [200, 200]);
  fs.appendFileSync(path.join(lists, 'gambling', 'domains'), 'allowed.test\n');
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => l['msg'] === 'reloaded');
  await everyWorker(t, g, 'after SIGHUP', 6, async () => {
    t.same(await burst(g, 'allowed.test', 6), Array(6).fill(403), 'blocked by every worker');
  });
  const badPolicy = path.join(dir, 'bad-policy.json');
  fs.writeFileSync(badPolicy, '{ not json');
  const cfg = JSON.parse(fs.readFileSync(g.configPath, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(g.configPath, JSON.stringify({ ...cfg, policy: badPolicy }));
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('reload failed'));
  await everyWorker(t, g, 'after a failed reload', 6, async () => {
    t.same(await burst(g, 'allowed.test', 6), Array(6).fill(403), 'previous lists in force in every worker');
  });
});

t.test('a list update from the DASEN feed reaches every worker', async (t) => {
  const dir = tempDir();
  const { keys, ut1, dasenPolicy, feedDir, server: feed } = await startPublishedFeed(dir);
  t.teardown(() => feed.close());
  const g = await startGardefou(config(dir, {
    update: { feed: feed.url, trustedKeys: [keys.pubFile], stateDir: path.join(dir, 'state'), intervalSeconds: 3600 },
  }), dir);
  t.teardown(() => g.stop());
  await g.waitForLog((l) => l['msg'] === 'bundle applied' && l['serial'] === '1');
  t.same(await burst(g, 'new-threat.test', 2), [200, 200]);
  addDomain(ut1, 'adult', 'new-threat.test');
  await publish({ source: ut1, policy: dasenPolicy, keys: [keys.keyFile], feed: feedDir, delta: true });
  g.proc.kill('SIGHUP');
  await g.waitForLog((l) => l['msg'] === 'bundle applied' && l['serial'] === '2');
  await everyWorker(t, g, 'serial 2', 6, async () => {
    t.same(await burst(g, 'new-threat.test', 6), Array(6).fill(403), 'blocked by every worker');
  });
  const text = await get(adminPort(g), '/metrics');
  t.equal(metric(text, 'gardefou_list_serial'), 2);
});

t.test('kill -9 of a worker: restarted, its open record closed, the proxy keeps serving, chain valid', async (t) => {
  const dir = tempDir();
  const g = await startGardefou(config(dir), dir);
  t.teardown(() => g.stop());
  const slow = viaProxy(g.port, url('allowed.test', '/slow?ms=8000')).then((r) => r.status, () => 'cut');
  let found: { worker: number; pid: number } | undefined;
  for (let i = 0; i < 100 && !found; i++) {
    found = (await status(g)).workers.find((x) => x.openRecords > 0);
    if (!found) await new Promise((r) => setTimeout(r, 50));
  }
  if (!found) throw new Error('no worker with an open record');
  const busy = found;
  process.kill(busy.pid, 'SIGKILL');
  t.equal(await slow, 'cut', 'the request the worker held is cut');
  const exited = await g.waitForLog((l) => l['msg'] === 'worker exited; restarting');
  t.equal(exited['worker'], busy.worker);
  t.equal(exited['signal'], 'SIGKILL');
  t.equal(exited['recordsClosed'], 1, 'its open record was closed by the primary');
  await g.waitForLog((l) => l['msg'] === 'worker restarted' && l['worker'] === busy.worker);
  const st = await status(g);
  t.equal(st.workers.find((w) => w.worker === busy.worker)?.restarts, 1);
  t.not(st.workers.find((w) => w.worker === busy.worker)?.pid, busy.pid, 'a new process');
  const text = await get(adminPort(g), '/metrics');
  t.equal(metric(text, 'gardefou_workers'), 2);
  t.equal(metric(text, `gardefou_worker_restarts_total{worker="${busy.worker}"}`), 1);
  await everyWorker(t, g, 'after the restart', 6, async () => {
    t.same(await burst(g, 'allowed.test', 6), Array(6).fill(200));
  });
  t.equal(await g.stop(), 0);
  const rows = journalRows(g.journalPath);
  t.equal(rows.length, 7);
  const cut = rows.filter((r) => r['reason'] === 'worker-exit');
  t.equal(cut.length, 1, 'the cut request is recorded as ended by the worker exit');
  t.equal(cut[0]?.['decision'], 'error');
  t.ok(rows.every((r) => r['end_ms'] !== null), 'nothing left open');
  const v = await verify(g.configPath);
  t.equal(v.code, 0, v.out);
});

t.test('journal unwritable: every worker answers 503, then every worker recovers', async (t) => {
  const dir = tempDir();
  const varDir = path.join(dir, 'var');
  fs.mkdirSync(varDir);
  const g = await startGardefou(config(dir, { journal: { path: path.join(varDir, 'journal.db') } }), dir);
  t.teardown(() => g.stop());
  t.same(await burst(g, 'allowed.test', 2), [200, 200]);
  fs.renameSync(varDir, path.join(dir, 'moved'));
  const before = origin.seen.length;
  const s = await pollStatus(async () => (await viaProxy(g.port, url('allowed.test'))).status, 503);
  t.equal(s, 503, 'refused once the journal is down');
  const logsBefore = g.logs.length;
  t.same(await burst(g, 'allowed.test', 6), Array(6).fill(503), 'refused by every connection');
  const refusedBy = new Set(g.logs.slice(logsBefore).filter((l) => l['msg'] === 'journal write failed').map((l) => l['worker']));
  t.same([...refusedBy].sort(), [1, 2], 'both workers refused');
  t.equal(origin.seen.length - before, 0, 'nothing forwarded unrecorded');
  fs.renameSync(path.join(dir, 'moved'), varDir);
  let back = 0;
  for (let i = 0; i < 200 && back !== 200; i++) {
    back = (await viaProxy(g.port, url('allowed.test'))).status;
    if (back !== 200) await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(back, 200, 'serving again');
  await everyWorker(t, g, 'after recovery', 6, async () => {
    t.same(await burst(g, 'allowed.test', 6), Array(6).fill(200));
  });
});

t.test('SIGTERM: the request in flight completes, the journal is flushed, exit 0', async (t) => {
  const dir = tempDir();
  const g = await startGardefou(config(dir), dir);
  const pending = viaProxy(g.port, url('allowed.test', '/slow?ms=700'));
  await waitFor(() => origin.seen.find((x) => x.url === '/slow?ms=700' && x.headers.host === `allowed.test:${origin.port}`), 'the slow request at the origin');
  const code = g.stop('SIGTERM');
  const r = await pending;
  t.equal(r.status, 200);
  t.equal(r.text, 'slow done');
  t.equal(await code, 0, 'exit code 0');
  const rows = journalRows(g.journalPath);
  t.equal(rows.length, 1);
  t.equal(rows[0]?.['status'], 200);
  t.ok(rows[0]?.['end_ms'] !== null);
  t.ok(g.logs.some((l) => l['msg'] === 'stopped'));
  const v = await verify(g.configPath);
  t.equal(v.code, 0, v.out);
});

t.test('workers: 1 is the one-process proxy; bad values are refused', async (t) => {
  const dir = tempDir();
  const g = await startGardefou(config(dir, { workers: 1 }), dir);
  t.teardown(() => g.stop());
  t.notOk('workers' in (g.logs.find((l) => l['msg'] === 'ready') ?? {}), 'no cluster');
  t.same(await burst(g, 'allowed.test', 2), [200, 200]);
  const text = await get(adminPort(g), '/metrics');
  t.equal(metric(text, 'gardefou_workers'), null);
  for (const bad of [0, -1, 1.5, 'many', null]) {
    const d = tempDir();
    const file = path.join(d, 'g.json');
    fs.writeFileSync(file, JSON.stringify(config(d, { workers: bad })));
    const r = await new Promise<{ code: number; err: string }>((resolve) => {
      execFile(process.execPath, [BIN, 'serve', '--config', file], { env: CHILD_ENV }, (err, _o, stderr) => {
        resolve({ code: err ? Number((err as { code?: number }).code) : 0, err: stderr });
      });
    });
    t.equal(r.code, 2, `workers: ${JSON.stringify(bad)} refused`);
    t.match(r.err, /key "workers": expected "auto" or an integer/);
  }
});
