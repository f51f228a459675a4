/**
 * The admin listener of a running `gardefou serve` (/healthz, /status, /metrics) and the PAC
 * file on the proxy port.
 */
import * as http from 'node:http';
import * as vm from 'node:vm';
import t from 'tap';
import { startGardefou, tempDir, testConfig, writeHosts } from '../helpers/gardefou';
import { startOrigin, viaProxy } from '../helpers/net';

function get(port: number, p: string): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => { s += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), text: s }));
    }).on('error', reject);
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = http.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

t.test('health, status, metrics and proxy.pac', async (t) => {
  const origin = await startOrigin();
  t.teardown(() => origin.close());
  const dir = tempDir();
  const admin = await freePort();
  const g = await startGardefou(testConfig(dir, {
    hosts: writeHosts(dir, ['allowed.test', 'blocked.test']),
    admin: { listen: `127.0.0.1:${admin}` },
    clients: ['127.0.0.0/8', '10.20.0.0/16'],
  }), dir);
  t.teardown(() => g.stop());
  t.equal((await viaProxy(g.port, `http://allowed.test:${origin.port}/`)).status, 200);
  t.equal((await viaProxy(g.port, `http://blocked.test:${origin.port}/`)).status, 403);
  t.equal((await viaProxy(g.port, `http://blocked.test:${origin.port}/x`)).status, 403);

  const health = await get(admin, '/healthz');
  t.equal(health.status, 200);
  t.match(JSON.parse(health.text), { ok: true, journal: 'writable' });

  const status = JSON.parse((await get(admin, '/status')).text) as Record<string, unknown>;
  t.match(status, { lists: { domains: 4 }, journal: { healthy: true }, update: null });

  const metrics = await get(admin, '/metrics');
  t.equal(metrics.status, 200);
  t.match(metrics.type, /text\/plain; version=0\.0\.4/);
  // the journal finishes asynchronously; the counters follow the records
  let text = metrics.text;
  for (let i = 0; i < 50 && !/gardefou_requests_total\{decision="block",category="adult",profile="default"\} 2/.test(text); i++) {
    await new Promise((r) => setTimeout(r, 50));
    text = (await get(admin, '/metrics')).text;
  }
  t.match(text, /gardefou_requests_total\{decision="block",category="adult",profile="default"\} 2\n/);
  t.match(text, /gardefou_requests_total\{decision="allow",category="none",profile="default"\} 1\n/);
  t.match(text, /# TYPE gardefou_tunnels_open gauge\ngardefou_tunnels_open 0\n/);
  t.match(text, /gardefou_event_loop_lag_seconds/);
  t.equal((await get(admin, '/nothing')).status, 404);

  // proxy.pac on the proxy port: school networks direct, the rest through this proxy
  const pac = await get(g.port, '/proxy.pac');
  t.equal(pac.status, 200);
  t.equal(pac.type, 'application/x-ns-proxy-autoconfig');
  t.equal((await get(g.port, '/wpad.dat')).text, pac.text);
  const sandbox: Record<string, unknown> = {
    isPlainHostName: (h: string) => !h.includes('.'),
    dnsDomainIs: (h: string, d: string) => h.endsWith(d),
    isInNet: (h: string, net: string, mask: string) => {
      const n = (ip: string) => ip.split('.').reduce((a, b) => (a * 256) + Number(b), 0);
      if (!/^\d+\.\d+\.\d+\.\d+$/.test(h)) return false;
      return ((n(h) & n(mask)) >>> 0) === ((n(net) & n(mask)) >>> 0);
    },
    shExpMatch: () => false,
    dnsResolve: (h: string) => h,
    myIpAddress: () => '127.0.0.1',
  };
  vm.runInNewContext(pac.text, sandbox);
  const find = sandbox['FindProxyForURL'] as (u: string, h: string) => string;
  t.equal(find('http://10.20.3.4/', '10.20.3.4'), 'DIRECT', 'school network direct');
  t.equal(find('http://intranet/', 'intranet'), 'DIRECT', 'plain host names direct');
  t.equal(find('https://example.org/', 'example.org'), `PROXY 127.0.0.1:${g.port}`, 'the rest through the proxy, no DIRECT fallback');
});
