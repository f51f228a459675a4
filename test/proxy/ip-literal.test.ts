/**
 * CONNECT and plain HTTP to an IP literal through the real `gardefou serve`: decided like a
 * name by default (the tunnel opens to the loopback origin), blocked with the block page and a
 * journal record when the client's profile takes names only (`ipLiterals: "block"`).
 * Two client addresses on loopback map to the two profiles.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import t from 'tap';
import { journalRows, startGardefou, tempDir, testConfig, waitFor } from '../helpers/gardefou';
import { Origin, startOrigin } from '../helpers/net';

let origin: Origin;
t.before(async () => {
  origin = await startOrigin();
});
t.teardown(() => origin.close());

/** CONNECT from `localAddress`; resolves with the status line's code and the body (if refused). */
function connectFrom(proxyPort: number, localAddress: string, authority: string): Promise<{ status: number; text: string; localPort: number }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: proxyPort, host: '127.0.0.1', localAddress });
    let buf = Buffer.alloc(0);
    let localPort = 0;
    const timer = setTimeout(() => { s.destroy(); reject(new Error('connect timeout')); }, 10_000);
    s.on('connect', () => {
      localPort = s.localPort ?? 0;
      s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
    });
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (status === 200 || buf.length >= end + 4 + len) {
        clearTimeout(timer);
        s.destroy();
        resolve({ status, text: buf.subarray(end + 4).toString('utf8'), localPort });
      }
    });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

t.test('IP literals: decided like names, or blocked for a names-only profile', async (t) => {
  const dir = tempDir('gardefou-ipl-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const policy = path.join(dir, 'policy.json');
  fs.writeFileSync(policy, JSON.stringify({
    clients: [{ cidr: '127.0.0.2/32', profile: 'names' }],
    profiles: { names: { ipLiterals: 'block' }, default: {} },
  }));
  const g = await startGardefou(testConfig(dir, { policy, connectPorts: [443, origin.port] }), dir);
  t.teardown(() => g.stop());
  const authority = `127.0.0.1:${origin.port}`;

  const open = await connectFrom(g.port, '127.0.0.1', authority);
  t.equal(open.status, 200, 'default profile: the tunnel to an address opens (decided like a name)');

  const blocked = await connectFrom(g.port, '127.0.0.2', authority);
  t.equal(blocked.status, 403, 'names-only profile: CONNECT to an address is blocked');
  t.match(blocked.text, /ce profil n’accepte que les noms/, 'the block page says why');
  const row = await waitFor(() => journalRows(path.join(dir, 'journal.db')).find((r) => r['client_port'] === blocked.localPort && r['end_ms'] !== null), 'journal row of the blocked tunnel');
  t.match(row, { client_ip: '127.0.0.2', dest_host: '127.0.0.1', decision: 'block', reason: 'ip-literal', profile: 'names', protocol: 'connect' });
  t.equal(origin.seen.length, 0, 'the origin saw nothing');
});
