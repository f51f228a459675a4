/**
 * DASEN channel benchmarks (results in bench/README.md, section "DASEN channel").
 *   node dist/bench/update-bench.js [UT1DIR] [--interval SECONDS]
 * Output goes to a temp folder under /tmp; the UT1 folder is only read.
 *   1. publishFull     bundle size and time to publish the UT1 lists
 *   2. applyFull       a fresh gateway pulling that bundle over loopback HTTP (bytes, time)
 *   3. publishToLive   time from `publish --delta` (one domain) to a changed decision on a
 *                      gateway whose agent polls every N seconds, and the bytes it downloaded
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import type * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../src/config';
import { publish, PublishReport } from '../src/lists/feed';
import { generateKeyPair } from '../src/lists/sign';
import { AppliedInfo, UpdateAgent } from '../src/lists/update';
import { loadPolicyEngine } from '../src/lists/load';
import type { PolicyEngine } from '../src/policy/types';

const args = process.argv.slice(2);
const iv = args.indexOf('--interval');
const intervalSeconds = iv >= 0 ? Number(args[iv + 1]) : 5;
const src = args.find((a, i) => !a.startsWith('--') && args[i - 1] !== '--interval') ?? path.join(PACKAGE_ROOT, '..', 'shared', 'ut1', 'blacklists');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-update-bench-'));
const feedDir = path.join(work, 'www', 'feed');

function serveStatic(root: string): Promise<{ url: string; bytes: () => number; close: () => Promise<void> }> {
  let bytes = 0;
  const server = http.createServer((req, res) => {
    const file = path.join(root, decodeURIComponent((req.url ?? '/').split('?')[0] ?? '/'));
    if (!file.startsWith(root) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return void res.writeHead(404).end();
    const st = fs.statSync(file);
    const etag = `"${st.size}-${st.mtimeMs}"`;
    if (req.headers['if-none-match'] === etag) return void res.writeHead(304, { etag }).end();
    const body = fs.readFileSync(file);
    bytes += body.length;
    res.writeHead(200, { etag, 'content-length': body.length }).end(body);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/feed/`,
        bytes: () => bytes,
        close: () => new Promise((r) => server.close(() => r())),
      }),
    ),
  );
}

async function publishFull(keyFile: string, policy: string): Promise<PublishReport> {
  return publish({ source: src, policy, keys: [keyFile], feed: feedDir });
}

async function main(): Promise<void> {
  const keys = generateKeyPair(path.join(work, 'keys'));
  const policy = path.join(work, 'policy.json');
  fs.writeFileSync(policy, '{}');
  console.log(`source ${src}\nwork   ${work}\n`);

  const full = await publishFull(keys.keyFile, policy);
  console.log(`publishFull   serial ${full.serial}: ${full.files} files, ${full.domains} domains, ${full.urls} urls`);
  console.log(`              archive ${full.archive.size} bytes (unpacked ${full.archive.unpackedSize}), manifest ${full.manifest.size} bytes, ${full.ms.toFixed(0)} ms`);

  const server = await serveStatic(path.join(work, 'www'));
  let engine: PolicyEngine | null = null;
  let liveAt = 0;
  const applied: AppliedInfo[] = [];
  const agent = new UpdateAgent({
    feed: server.url,
    trustedKeys: [keys.pubFile],
    stateDir: path.join(work, 'state'),
    intervalSeconds,
    onApplied: async (info) => {
      applied.push(info);
      engine = await loadPolicyEngine({ lists: info.listsPath, policy: info.policyPath, listSerial: info.serial });
      liveAt = performance.now();
    },
  });
  const b0 = server.bytes();
  const r1 = await agent.checkNow();
  console.log(`applyFull     ${r1.outcome} serial ${r1.serial}: ${server.bytes() - b0} bytes downloaded, ${r1.ms} ms (verify + unpack + compile + switch; engine load not included)`);

  // emergency: one domain, published as a delta over the full bundle
  const copy = path.join(work, 'ut1-copy');
  fs.cpSync(src, copy, { recursive: true });
  for (const f of walk(copy)) fs.chmodSync(f, 0o644);
  fs.chmodSync(path.join(copy, 'gambling'), 0o755);
  fs.appendFileSync(path.join(copy, 'gambling', 'domains'), 'emergency-bench.example\n');
  const decide = () => (engine ? engine.decide({ kind: 'connect', host: 'emergency-bench.example', port: 443, path: '' }, { ip: '10.0.0.1' }).action : 'none');
  console.log(`before        emergency-bench.example: ${decide()}`);
  agent.start();
  await new Promise((r) => setTimeout(r, 200)); // the first tick (up to date) passes
  const bytesBefore = server.bytes();
  const t0 = performance.now();
  const delta = await publish({ source: copy, policy, keys: [keys.keyFile], feed: feedDir, delta: true });
  const published = performance.now();
  while (decide() !== 'block') await new Promise((r) => setTimeout(r, 20));
  await agent.stop();
  console.log(`publishDelta  serial ${delta.serial}: archive ${delta.archive.size} bytes, manifest ${delta.manifest.size} bytes, ${(published - t0).toFixed(0)} ms`);
  console.log(`publishToLive ${((liveAt - t0) / 1000).toFixed(2)} s from publish to a blocked decision, polling every ${intervalSeconds} s`);
  console.log(`              gateway downloaded ${server.bytes() - bytesBefore} bytes for the one-domain update (pointer + manifest + delta)`);
  await server.close();
  fs.rmSync(work, { recursive: true, force: true });
}

function* walk(d: string): Generator<string> {
  for (const n of fs.readdirSync(d)) {
    const p = path.join(d, n);
    if (fs.statSync(p).isDirectory()) {
      fs.chmodSync(p, 0o755);
      yield* walk(p);
    } else yield p;
  }
}

void main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
