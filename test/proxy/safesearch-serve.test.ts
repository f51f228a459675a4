/**
 * SafeSearch without interception, through the real `gardefou serve`: for a profile with
 * `safeSearch`, a CONNECT to www.google.com is sent to the address of forcesafesearch.google.com
 * (a loopback TLS origin standing in for it), the client's TLS still names www.google.com, and
 * the journal records the substitution. Without it, the name's own address is used.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { journalRows, startGardefou, tempDir, testConfig, waitFor } from '../helpers/gardefou';
import { connectVia, makeCert, startTlsOrigin, tlsGetOverSocket } from '../helpers/net';

t.test('CONNECT to a search engine goes to its safe endpoint when the profile says so', async (t) => {
  const cert = makeCert(['www.google.com']);
  const safeOrigin = await startTlsOrigin(cert);
  t.teardown(() => safeOrigin.close());
  const dir = tempDir();
  // the safe endpoint is on 127.0.0.1; the real name points to 127.0.0.2, where nothing listens
  const hosts = path.join(dir, 'hosts');
  fs.writeFileSync(hosts, '127.0.0.1 forcesafesearch.google.com\n127.0.0.2 www.google.com\n');
  const policy = (safeSearch: string | null) => {
    const f = path.join(dir, `policy-${safeSearch}.json`);
    fs.writeFileSync(f, JSON.stringify({ profiles: { default: { blockBlackUsage: true, safeSearch } } }));
    return f;
  };

  const g = await startGardefou(testConfig(dir, { hosts, connectPorts: [safeOrigin.port], policy: policy('strict') }), dir);
  t.teardown(() => g.stop());
  const c = await connectVia(g.port, `www.google.com:${safeOrigin.port}`);
  t.equal(c.status, 200);
  t.equal(await tlsGetOverSocket(c.socket, 'www.google.com', cert.cert), 'tls-origin:www.google.com', 'TLS to the safe endpoint, certificate valid for the name asked');
  const row = await waitFor(() => journalRows(g.journalPath).find((r) => r['end_ms'] !== null && r['dest_host'] === 'www.google.com'), 'journal row');
  t.equal(row['reason'], 'safesearch', 'the substitution is journaled');
  t.equal(row['dest_ip'], '127.0.0.1', 'with the address actually reached');
  t.ok(g.logs.some((l) => l['msg'] === 'safesearch substitution' && l['upstream'] === 'forcesafesearch.google.com'));

  const dir2 = tempDir();
  const plain = await startGardefou(testConfig(dir2, { hosts, connectPorts: [safeOrigin.port], policy: policy(null) }), dir2);
  t.teardown(() => plain.stop());
  const c2 = await connectVia(plain.port, `www.google.com:${safeOrigin.port}`);
  t.equal(c2.status, 502, 'without safeSearch the name itself is used (nothing listens there)');
  c2.socket.destroy();
});
