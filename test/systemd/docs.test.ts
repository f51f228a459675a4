/**
 * The install and firewall guides stay true: the example configuration loads with the real
 * validator and writes only where the unit lets the service write; the nftables rules parse
 * (`nft -c`, when nft is installed); the metric names the guide lists exist.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { createGardefouMetrics } from '../../src/admin/metrics';
import { applyConfig, defaultConfig, PACKAGE_ROOT } from '../../src/config';

const DOCS = path.join(PACKAGE_ROOT, 'docs');

function blocks(file: string, lang: string): string[] {
  const text = fs.readFileSync(path.join(DOCS, file), 'utf8');
  const re = new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g');
  return [...text.matchAll(re)].map((m) => m[1] as string);
}

t.test('install.md: the example /etc/gardefou/gardefou.json is a valid configuration', async (t) => {
  const json = blocks('install.md', 'json');
  t.equal(json.length, 1, 'one JSON example');
  const parsed = JSON.parse(json[0] as string) as Parameters<typeof applyConfig>[1];
  const cfg = applyConfig(defaultConfig(), parsed, '/etc/gardefou', '/etc/gardefou/gardefou.json');
  // ProtectSystem=strict: only StateDirectory (/var/lib/gardefou) is writable by the service
  t.match(cfg.journal.path, /^\/var\/lib\/gardefou\//, 'journal inside the state directory');
  t.match(cfg.update.stateDir, /^\/var\/lib\/gardefou\//, 'lists state inside the state directory');
  t.equal(cfg.journal.failOpen, false, 'the example stays fail-closed');
  t.equal(cfg.admin.listen, '127.0.0.1:3129', 'admin listener on loopback');
  t.ok(cfg.listen.every((l) => !l.startsWith('0.0.0.0') && !l.startsWith('[::]')), 'no wildcard listener');
  t.throws(() => applyConfig(defaultConfig(), { ...(parsed as object), bogus: 1 } as Parameters<typeof applyConfig>[1], '/etc/gardefou', 'x'), /unknown key/,
    'the validator used here does refuse bad files');
});

t.test('install.md: every gardefou_* metric it names exists', async (t) => {
  const text = fs.readFileSync(path.join(DOCS, 'install.md'), 'utf8');
  const named = new Set(text.match(/\bgardefou_[a-z_]+[a-z]\b/g) ?? []);
  t.ok(named.size >= 8, `${named.size} metric names in the guide`);
  const m = createGardefouMetrics({ eventLoop: false });
  const families = new Set(m.registry.snapshot().map((f) => f.name));
  m.close();
  for (const n of named) t.ok(families.has(n), n);
});

function nftCheck(ruleset: string): { ok: boolean; out: string; denied: boolean } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-nft-'));
  try {
    const file = path.join(dir, 'rules.nft');
    fs.writeFileSync(file, ruleset);
    const r = spawnSync('nft', ['-c', '-f', file], { encoding: 'utf8', timeout: 30_000 });
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
    return { ok: r.status === 0, out, denied: /Operation not permitted|Permission denied/i.test(out) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const nft = spawnSync('nft', ['--version'], { encoding: 'utf8' });
const nftMissing = nft.error || nft.status !== 0 ? 'nft not installed (apt-get install nftables); firewall rules not checked' : false;

t.test('firewall.md: the nftables ruleset parses, with and without the transparent section', { skip: nftMissing }, async (t) => {
  const [main, transparent] = blocks('firewall.md', 'nft');
  t.ok(main && transparent, 'the ruleset and the transparent-mode section are there');
  const base = nftCheck(main as string);
  if (base.denied) {
    t.pass('nft -c', { skip: `nft -c needs CAP_NET_ADMIN here: ${base.out.trim()}` });
    return;
  }
  t.ok(base.ok, `nft -c accepts the ruleset${base.ok ? '' : `: ${base.out}`}`);
  // the transparent block is commented out; uncomment its table and check it with the defines
  const lines = (transparent as string).split('\n').map((l) => l.replace(/^# ?/, ''));
  const start = lines.findIndex((l) => l.startsWith('table '));
  const end = lines.findIndex((l, i) => i > start && l === '}');
  t.ok(start >= 0 && end > start, 'transparent table found');
  const both = nftCheck(`${main as string}\n${lines.slice(start, end + 1).join('\n')}\n`);
  t.ok(both.ok, `nft -c accepts the transparent section${both.ok ? '' : `: ${both.out}`}`);
  const broken = nftCheck((main as string).replace('policy drop;', 'policy dorp;'));
  t.notOk(broken.ok, 'a typo is caught (the check can fail)');
  // what must be refused is refused
  for (const needle of ['tcp dport { 80, 443 }', 'udp dport 443', 'th dport 853', 'th dport 53 counter reject', 'hook forward priority filter; policy drop;', 'hook output priority filter; policy accept;']) {
    t.ok((main as string).includes(needle), `ruleset has: ${needle}`);
  }
});
