/**
 * A workstation map naming a profile the policy lacks is said at start (not a silent fallback
 * to the policy's clients rules), through the real `gardefou serve`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { startGardefou, tempDir, testConfig } from '../helpers/gardefou';

t.test('profiles named by the workstation map but absent from the policy are logged at start', async (t) => {
  const dir = tempDir('gardefou-unknown-profile-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const map = path.join(dir, 'workstations');
  fs.writeFileSync(map, '127.0.0.5 salle1-pc01 profile=colege\n127.0.0.6 salle1-pc02\n');
  const g = await startGardefou(testConfig(dir, { workstations: map }), dir);
  t.teardown(() => g.stop());
  const warn = g.logs.find((l) => typeof l['msg'] === 'string' && (l['msg'] as string).includes('names profiles the policy does not have'));
  t.ok(warn, 'warned at start');
  t.same(warn?.['profiles'], ['colege'], 'naming the unknown profile');
  t.equal(warn?.['level'], 'warn', 'as a warning');
});
