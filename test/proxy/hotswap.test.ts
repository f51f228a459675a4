/**
 * Hot swap of a compiled index under traffic: the file is replaced (rename over), the running
 * proxy swaps it in, and no request in between is answered by anything but the old or the new
 * lists (every answer is 200 or 403, never an error).
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import t from 'tap';
import { compileLists } from '../../src/lists/compile';
import { FIXTURES, startGardefou, tempDir, testConfig, writeHosts } from '../helpers/gardefou';
import { startOrigin, viaProxy } from '../helpers/net';

t.test('replacing the compiled index swaps it in live, without a gap', async (t) => {
  const origin = await startOrigin();
  t.teardown(() => origin.close());
  const dir = tempDir();
  const src = path.join(dir, 'ut1');
  fs.cpSync(path.join(FIXTURES, 'proxy-lists'), src, { recursive: true });
  const index = path.join(dir, 'lists.idx');
  await compileLists(src, index);
  const g = await startGardefou(testConfig(dir, { lists: index, hosts: writeHosts(dir, ['allowed.test', 'blocked.test']) }), dir);
  t.teardown(() => g.stop());
  const url = (h: string) => `http://${h}:${origin.port}/`;
  t.equal((await viaProxy(g.port, url('allowed.test'))).status, 200);
  t.equal((await viaProxy(g.port, url('blocked.test'))).status, 403);

  // traffic on keep-alive connections while the index is replaced
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  t.teardown(() => agent.destroy());
  const statuses: number[] = [];
  let running = true;
  const loops = [0, 1, 2, 3].map(async () => {
    for (let i = 0; running && i < 2000; i++) {
      statuses.push((await viaProxy(g.port, url('allowed.test'), { agent })).status);
    }
  });

  fs.appendFileSync(path.join(src, 'gambling', 'domains'), 'allowed.test\n');
  const tmp = path.join(dir, 'next.idx');
  await compileLists(src, tmp);
  fs.renameSync(tmp, index);
  await g.waitForLog((l) => l['msg'] === 'reloaded' && l['why'] === 'index file changed');
  // let a few requests run on the new lists, then stop the loops
  const seenAfter = statuses.length;
  const deadline = Date.now() + 5000;
  while (statuses.length < seenAfter + 20 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  running = false;
  await Promise.all(loops);

  t.ok(statuses.length > 20, `${statuses.length} requests during the swap`);
  t.same(statuses.filter((s) => s !== 200 && s !== 403), [], 'every answer came from the old or the new lists');
  t.equal(statuses[0], 200, 'old lists first');
  t.equal(statuses[statuses.length - 1], 403, 'new lists at the end');
  t.equal((await viaProxy(g.port, url('blocked.test'))).status, 403, 'old entries still blocked');
});
