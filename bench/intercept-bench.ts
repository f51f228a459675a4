/**
 * TLS interception benchmark (results and the exact command in bench/README.md, section
 * "TLS interception"):
 *   node dist/bench/intercept-bench.js [--connections N] [--concurrency C]
 *
 * Three ways to reach the same loopback TLS origin, N fresh connections each (no session
 * resumption: every connection is a full handshake), C at a time, one GET / per connection:
 *   direct     client -> origin (TLS terminated by the origin)
 *   splice     client -> gardefou CONNECT (not intercepted) -> origin: TLS end to end
 *   intercept  client -> gardefou CONNECT, TLS with a school-CA leaf, request decided, forwarded
 *              over verified TLS (keep-alive pool) to the origin
 *   intercept-resumed  the same, the client resuming an earlier TLS session as browsers do
 * For each: connections per second, and CPU time per connection of the process that
 * terminates the client's TLS (origin for direct; gardefou, all its processes, for the other
 * two), from /proc (utime + stime). The origin and gardefou run as child processes, so the
 * bench client's own cost is not counted in either.
 */
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import forge from 'node-forge';

const BUILD_ROOT = path.resolve(__dirname, '..');
const PACKAGE_ROOT = path.resolve(BUILD_ROOT, '..');
const BIN = path.join(PACKAGE_ROOT, 'bin', 'gardefou');
const args = process.argv.slice(2);
const flag = (name: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? Number(args[i + 1]) : def;
};

// ---- child mode: the origin ------------------------------------------------------------------
if (args[0] === '--origin') {
  const server = https.createServer({ key: fs.readFileSync(args[1]!), cert: fs.readFileSync(args[2]!) }, (req, res) => {
    req.resume();
    res.end('origin ok\n');
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`));
} else {
  void main();
}

/** A self-signed certificate for the origin's names (it is its own trust anchor). */
function originCert(names: string[]): { key: string; cert: string } {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }) as string);
  cert.serialNumber = '01' + crypto.randomBytes(6).toString('hex');
  cert.validity.notBefore = new Date(Date.now() - 86400_000);
  cert.validity.notAfter = new Date(Date.now() + 86400_000);
  cert.setSubject([{ name: 'commonName', value: names[0]! }]);
  cert.setIssuer([{ name: 'commonName', value: names[0]! }]);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true },
    { name: 'subjectAltName', altNames: names.map((n) => ({ type: 2, value: n })) },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(privateKey.export({ type: 'pkcs1', format: 'pem' }) as string), forge.md.sha256.create());
  return { key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, cert: forge.pki.certificateToPem(cert) };
}

/** CPU seconds (user + system) of `pid` and its live children, from /proc. */
function treeCpu(pid: number): number {
  const tick = 100; // USER_HZ on Linux
  const stat = (p: number): { ppid: number; cpu: number } | null => {
    try {
      const s = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      return { ppid: Number(f[1]), cpu: (Number(f[11]) + Number(f[12])) / tick };
    } catch {
      return null;
    }
  };
  let total = stat(pid)?.cpu ?? 0;
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = stat(Number(name));
    if (s && s.ppid === pid) total += s.cpu;
  }
  return total;
}

function connectTunnel(proxyPort: number, authority: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(proxyPort, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      if (!/^HTTP\/1\.1 200/.test(buf.toString('latin1'))) { s.destroy(); reject(new Error(`CONNECT refused: ${buf.toString('latin1').split('\r\n')[0]}`)); return; }
      resolve(s);
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  });
}

/** One full TLS handshake (over `socket` when given) and one GET /; resolves when the answer ends. */
function tlsGet(o: { socket?: net.Socket; port: number; servername: string; ca: string; sessions?: { last: Buffer | null; reused: number } }): Promise<void> {
  return new Promise((resolve, reject) => {
    const resume = o.sessions?.last ? { session: o.sessions.last } : {};
    const s = tls.connect({ host: '127.0.0.1', port: o.port, servername: o.servername, ca: o.ca, ...(o.socket ? { socket: o.socket } : {}), ...resume }, () => {
      s.write(`GET / HTTP/1.1\r\nHost: ${o.servername}\r\nConnection: close\r\n\r\n`);
    });
    if (o.sessions) s.on('session', (sess: Buffer) => { o.sessions!.last = sess; });
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    s.once('error', (e) => { o.socket?.destroy(); reject(e); });
    s.once('end', () => {
      if (o.sessions && s.isSessionReused()) o.sessions.reused++;
      s.destroy();
      o.socket?.destroy();
      if (!got.startsWith('HTTP/1.1 200')) reject(new Error(`unexpected answer: ${got.split('\r\n')[0]}`));
      else resolve();
    });
  });
}

async function run(n: number, concurrency: number, one: () => Promise<void>): Promise<{ ms: number; errors: number }> {
  let next = 0;
  let errors = 0;
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (next < n) {
      next++;
      try { await one(); } catch { errors++; }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, errors };
}

function waitLine(proc: ChildProcess, pred: (line: string) => boolean, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let pending = '';
    const timer = setTimeout(() => reject(new Error(`${what}: not ready in 20 s`)), 20_000);
    proc.stdout!.on('data', (c: Buffer) => {
      pending += c.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (pred(line)) { clearTimeout(timer); resolve(line); return; }
      }
    });
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${what} exited (${code})`)); });
  });
}

async function main(): Promise<void> {
  const n = flag('connections', 600);
  const concurrency = flag('concurrency', 8);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-icpt-bench-'));
  const names = ['icpt.bench.test', 'plain.bench.test'];
  const oc = originCert(names);
  fs.writeFileSync(path.join(dir, 'origin.key'), oc.key, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'origin.crt'), oc.cert);
  const origin = spawn(process.execPath, [__filename, '--origin', path.join(dir, 'origin.key'), path.join(dir, 'origin.crt')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const originPort = Number((await waitLine(origin, (l) => /^\d+$/.test(l.trim()), 'origin')).trim());

  const env = { ...process.env, GARDEFOU_DIST: BUILD_ROOT };
  const caDir = path.join(dir, 'ca');
  const init = spawnSync(process.execPath, [BIN, 'ca', 'init', '--out', caDir], { env });
  if (init.status !== 0) throw new Error(`ca init: ${init.stderr.toString()}`);
  const schoolCa = fs.readFileSync(path.join(caDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'hosts'), names.map((h) => `127.0.0.1 ${h}\n`).join(''));
  fs.writeFileSync(path.join(dir, 'policy.json'), JSON.stringify({ profiles: { default: {} }, intercept: { domains: ['icpt.bench.test'] } }));
  fs.mkdirSync(path.join(dir, 'lists', 'empty'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'lists', 'empty', 'domains'), 'nothing.invalid\n');
  fs.writeFileSync(path.join(dir, 'gardefou.json'), JSON.stringify({
    listen: ['127.0.0.1:0'],
    allowDestinations: ['127.0.0.0/8'],
    connectPorts: [originPort],
    lists: path.join(dir, 'lists'),
    policy: path.join(dir, 'policy.json'),
    hosts: path.join(dir, 'hosts'),
    journal: { path: path.join(dir, 'journal.db') },
    admin: { listen: null },
    logLevel: 'info', // for the "ready" line with the bound port; allowed requests log nothing
    intercept: { caDir, upstreamCAs: [path.join(dir, 'origin.crt')] },
  }));
  const gw = spawn(process.execPath, [BIN, 'serve', '--config', path.join(dir, 'gardefou.json')], { env, cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = await waitLine(gw, (l) => l.includes('"ready"'), 'gardefou');
  const listen = (JSON.parse(ready) as { listen: string[] }).listen[0] ?? '';
  const proxyPort = Number(listen.slice(listen.lastIndexOf(':') + 1));
  if (!proxyPort) throw new Error('gardefou did not report its port');

  const sessions: { last: Buffer | null; reused: number } = { last: null, reused: 0 };
  const modes: Array<{ name: string; pid: number; one: () => Promise<void> }> = [
    { name: 'direct', pid: origin.pid!, one: () => tlsGet({ port: originPort, servername: 'plain.bench.test', ca: oc.cert }) },
    { name: 'splice', pid: gw.pid!, one: async () => tlsGet({ socket: await connectTunnel(proxyPort, `plain.bench.test:${originPort}`), port: originPort, servername: 'plain.bench.test', ca: oc.cert }) },
    { name: 'intercept', pid: gw.pid!, one: async () => tlsGet({ socket: await connectTunnel(proxyPort, `icpt.bench.test:${originPort}`), port: originPort, servername: 'icpt.bench.test', ca: schoolCa }) },
    // as browsers do: the TLS session of an earlier connection is resumed (no signature)
    { name: 'intercept-resumed', pid: gw.pid!, one: async () => tlsGet({ socket: await connectTunnel(proxyPort, `icpt.bench.test:${originPort}`), port: originPort, servername: 'icpt.bench.test', ca: schoolCa, sessions }) },
  ];
  try {
    for (const m of modes) {
      await run(Math.min(50, n), concurrency, m.one); // warm-up: JIT, leaf certificate, upstream pool
      sessions.reused = 0;
      const cpu0 = treeCpu(m.pid);
      const originCpu0 = treeCpu(origin.pid!);
      const { ms, errors } = await run(n, concurrency, m.one);
      const cpu = treeCpu(m.pid) - cpu0;
      const reused = sessions.reused;
      sessions.reused = 0;
      const originCpu = treeCpu(origin.pid!) - originCpu0;
      console.log(JSON.stringify({
        bench: 'intercept', mode: m.name, connections: n, concurrency, errors,
        perSecond: Math.round((n / ms) * 1000),
        cpuMsPerConnection: Number(((cpu * 1000) / n).toFixed(3)),
        terminatingProcess: m.name === 'direct' ? 'origin' : 'gardefou',
        originCpuMsPerConnection: Number(((originCpu * 1000) / n).toFixed(3)),
        ...(m.name.endsWith('-resumed') ? { sessionsResumed: reused } : {}),
      }));
    }
  } finally {
    gw.kill('SIGTERM');
    origin.kill('SIGTERM');
  }
}
