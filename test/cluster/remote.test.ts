/**
 * RemoteJournal (worker side) and JournalHost (primary side) over an in-process channel that
 * JSON-copies every message like the cluster IPC does, in front of a real journal (SQLite file,
 * writer thread): batching (one message per turn, many ops), begin resolves only after the
 * commit, records a dead worker left open are closed with reason 'worker-exit'.
 */
import * as path from 'node:path';
import t from 'tap';
import { defaultConfig } from '../../src/config';
import { openJournal } from '../../src/journal';
import { FromJournalHost, JournalHost, RemoteJournal, ToJournalHost } from '../../src/journal/remote';
import type { JournalOpen } from '../../src/journal/types';
import { silentLogger } from '../../src/log';
import { journalRows, tempDir } from '../helpers/gardefou';

function open(i: number): JournalOpen {
  return {
    ref: `r${i}`, startMs: Date.now(), clientIp: '10.0.0.1', clientPort: 40000 + i, user: null, workstation: null,
    protocol: 'http', method: 'GET', destHost: `h${i}.test`, destPort: 80, decision: 'allow', reason: 'default-allow',
    profile: 'default', category: null, listSerial: null,
  };
}

const close = { endMs: Date.now(), destIp: '127.0.0.1', egressIp: '127.0.0.1', egressPort: 5000, status: 200, bytesIn: 10, bytesOut: 20 };

/** A worker connected to the host through a JSON-copying, asynchronous channel; counts messages. */
function connect(host: JournalHost, id: string) {
  const up: ToJournalHost[] = [];
  const down: FromJournalHost[] = [];
  let remote: RemoteJournal | null = null;
  host.attach(id, (m) => {
    down.push(m);
    const copy = JSON.parse(JSON.stringify(m)) as FromJournalHost;
    setImmediate(() => remote?.receive(copy));
    return true;
  });
  remote = new RemoteJournal((m) => {
    up.push(m);
    const copy = JSON.parse(JSON.stringify(m)) as ToJournalHost;
    setImmediate(() => host.receive(id, copy));
    return true;
  }, 5);
  return { remote, up, down };
}

t.test('batched ops, durable begins, one chain, worker-exit closes what a dead worker left', async (t) => {
  const dir = tempDir();
  const cfg = { ...defaultConfig().journal, path: path.join(dir, 'journal.db') };
  const journal = await openJournal(cfg, silentLogger());
  t.teardown(() => journal.close());
  const host = new JournalHost(journal);
  const a = connect(host, 'a');
  await new Promise((r) => setImmediate(r));
  t.same(a.down, [{ t: 'j.health', healthy: true, error: null }], 'health told at attach');

  const before = journal.stats().recordsWritten;
  const handles = await Promise.all(Array.from({ length: 50 }, (_, i) => a.remote.begin(open(i))));
  t.equal(a.up.length, 1, '50 begins of one turn: one message');
  t.equal(a.up[0]?.ops.length, 50);
  t.ok(journal.stats().recordsWritten - before >= 50, 'begin resolved after the commit of its record');
  const acks = a.down.filter((m) => m.t === 'j.ack');
  t.ok(acks.length >= 1 && acks.length <= journal.stats().commits, 'acks batched per commit');
  t.equal(acks.reduce((n, m) => n + (m.t === 'j.ack' ? m.ok.length : 0), 0), 50);

  for (const h of handles) { h.connected({ destIp: '127.0.0.1', egressIp: '127.0.0.1', egressPort: 5000 }); h.finish(close); }
  handles[0]?.finish(close); // a second finish is ignored
  await new Promise((r) => setTimeout(r, 30));
  t.equal(a.up.length, 2, 'connected + finish of one turn: one more message');
  t.equal(a.up[1]?.ops.length, 100);

  // a second worker begins three records, then dies
  const b = connect(host, 'b');
  await Promise.all([0, 1, 2].map((i) => b.remote.begin(open(100 + i))));
  t.equal(host.openRecords('b'), 3);
  t.equal(host.detach('b'), 3, 'three records closed for the dead worker');
  t.equal(host.openRecords('b'), 0);

  // a worker whose channel is gone fails closed at once
  const c = connect(host, 'c');
  c.remote.onDisconnect('gone');
  t.notOk(c.remote.healthy);
  await t.rejects(c.remote.begin(open(200)), { code: 'GARDEFOU_JOURNAL_DOWN' });

  await a.remote.close();
  await journal.close();
  const rows = journalRows(cfg.path);
  t.equal(rows.length, 53);
  t.ok(rows.every((r) => r['end_ms'] !== null), 'every record closed');
  const cut = rows.filter((r) => r['reason'] === 'worker-exit');
  t.equal(cut.length, 3);
  t.ok(cut.every((r) => r['decision'] === 'error'));
  t.ok(rows.filter((r) => r['reason'] !== 'worker-exit').every((r) => r['status'] === 200 && r['egress_port'] === 5000));
});
