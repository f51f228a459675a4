/**
 * /healthz of the admin listener with a real journal: 200 while the journal is writable and
 * (in a cluster primary) at least one worker listens; 503 when no worker listens.
 */
import * as http from 'node:http';
import * as path from 'node:path';
import t from 'tap';
import { defaultConfig } from '../../src/config';
import { AdminServer } from '../../src/admin/server';
import { openJournal } from '../../src/journal';
import { silentLogger } from '../../src/log';
import { tempDir } from '../helpers/gardefou';

function get(address: string, p: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    http.get({ host, port, path: p, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString('utf8'); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
    }).on('error', reject);
  });
}

t.test('/healthz: 503 when no worker listens, 200 again when one does', async (t) => {
  const dir = tempDir('gardefou-healthz-');
  const journal = await openJournal({ ...defaultConfig().journal, path: path.join(dir, 'journal.db') }, silentLogger());
  t.teardown(() => journal.close());
  let listening = 2;
  const admin = new AdminServer({
    proxy: { policy: { describe: () => ({ categories: 1, domains: 10, urls: 0, expressions: 0, source: 'test' }), listSerial: null } },
    journal,
    log: silentLogger(),
    workers: () => ({ listening, total: 2 }),
  });
  const address = await admin.listen('127.0.0.1:0');
  t.teardown(() => admin.close());
  t.match(await get(address, '/healthz'), { status: 200, body: { ok: true, journal: 'writable', workers: '2/2 listening' } });
  listening = 0;
  t.match(await get(address, '/healthz'), { status: 503, body: { ok: false, journal: 'writable', workers: '0/2 listening' } }, 'no worker listening: unhealthy');
  listening = 1;
  t.match(await get(address, '/healthz'), { status: 200, body: { ok: true, workers: '1/2 listening' } });
});
