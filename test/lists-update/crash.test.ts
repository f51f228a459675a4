/**
 * Kill the updater (a child process, SIGKILL) at each phase of an apply: afterwards the state
 * folder holds the old lists or the new ones, complete and matching their manifests, never a
 * mix; the next run recovers (stale lock, half-built version) and applies.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { publish } from '../../src/lists/feed';
import { generateKeyPair } from '../../src/lists/sign';
import { readCurrent, UpdateAgent, verifyInstalled } from '../../src/lists/update';
import { addDomain, makeUt1, tmp } from './helpers';

const CHILD = path.join(__dirname, 'child-apply.js');

/** Runs the child until it prints `phase <stallAt>`, then SIGKILLs it. Resolves with the phases seen. */
function runAndKill(args: Record<string, unknown>, stallAt: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, JSON.stringify({ ...args, stallAt })], { stdio: ['ignore', 'pipe', 'pipe'] });
    const phases: string[] = [];
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`phase ${stallAt} not reached in 20 s; saw ${phases.join(', ')}; stderr ${err}`));
    }, 20_000);
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      let nl: number;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        if (line.startsWith('phase ')) phases.push(line.slice(6));
        if (line === `phase ${stallAt}`) child.kill('SIGKILL');
        if (line.startsWith('result ')) {
          clearTimeout(timer);
          reject(new Error(`the child finished before ${stallAt}: ${line}`));
        }
      }
    });
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('exit', (_code, signal) => {
      clearTimeout(timer);
      if (signal === 'SIGKILL') resolve(phases);
    });
  });
}

t.test('SIGKILL at each phase: old or new, never a mix', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const K = generateKeyPair(path.join(dir, 'key'));
  const ut1 = makeUt1(dir);
  const policy = path.join(dir, 'policy.json');
  fs.writeFileSync(policy, '{}');
  const feed = path.join(dir, 'feed');
  const stateDir = path.join(dir, 'state');
  const args = { feed: pathToFileURL(feed).href + '/', keys: [K.pubFile], stateDir };
  const agent = new UpdateAgent({ feed: args.feed, trustedKeys: [K.pubFile], stateDir });
  await publish({ source: ut1, policy, keys: [K.keyFile], feed });
  t.equal((await agent.checkNow()).serial, '1', 'serial 1 in force');

  // full updates, then a delta: kill at every phase each goes through
  const rounds: Array<{ delta: boolean; phases: string[] }> = [
    { delta: false, phases: ['verified', 'downloaded', 'half-unpacked', 'unpacked', 'compiled', 'synced', 'switched'] },
    { delta: true, phases: ['verified', 'unpacked', 'compiled', 'synced', 'switched'] },
  ];
  let n = 0;
  for (const round of rounds) {
    for (const phase of round.phases) {
      const before = readCurrent(stateDir)?.serial ?? null;
      addDomain(ut1, 'gambling', `kill-${n++}.test`);
      const p = await publish({ source: ut1, policy, keys: [K.keyFile], feed, delta: round.delta });
      const seen = await runAndKill(args, phase);
      t.equal(seen[seen.length - 1], phase, `killed at ${phase} (${round.delta ? 'delta' : 'full'} ${p.serial})`);
      const after = readCurrent(stateDir)?.serial ?? null;
      t.ok(after === before || after === p.serial, `${phase}: serial in force ${after} is the old ${before} or the new ${p.serial}`);
      if (phase === 'switched') t.equal(after, p.serial, 'after the switch the new one is in force');
      if (phase !== 'switched') t.equal(after, before, 'before the switch the old one is in force');
      const v = await verifyInstalled(stateDir, [K.pubFile]);
      t.same(v.problems, [], `${phase}: every file in force matches its manifest`);
      // the next run recovers: stale lock, half-built version, leftover downloads
      const r = await agent.checkNow();
      t.ok(r.outcome === 'applied' || (phase === 'switched' && r.outcome === 'up-to-date'), `${phase}: next run ${r.outcome} ${r.message ?? ''}`);
      t.equal(readCurrent(stateDir)?.serial, p.serial);
      t.same((await verifyInstalled(stateDir, [K.pubFile])).problems, []);
      t.ok(fs.readdirSync(path.join(stateDir, 'versions')).length <= 2, 'old and half-built versions cleaned');
      t.notOk(fs.existsSync(path.join(stateDir, 'update.lock')), 'lock released');
    }
  }
});
