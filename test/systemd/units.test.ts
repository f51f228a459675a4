/**
 * The systemd units under systemd/: every *.service, *.timer, *.socket and *.path present
 * (several people add units) passes `systemd-analyze verify` with no warning about it, and
 * gardefou.service keeps its contract and its hardening.
 *
 * `verify` checks that ExecStart= binaries exist; /usr/bin/gardefou exists only on an installed
 * gateway, so the units are verified as copies in a temporary folder with /usr/bin/gardefou
 * rewritten to this checkout's bin/gardefou (same launcher, an executable file that exists).
 * Units in the same folder see each other, so a timer finds its service.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { defaultConfig, PACKAGE_ROOT } from '../../src/config';

const UNIT_DIR = path.join(PACKAGE_ROOT, 'systemd');
const INSTALLED_BIN = '/usr/bin/gardefou';
const LOCAL_BIN = path.join(PACKAGE_ROOT, 'bin', 'gardefou');
const UNIT_RE = /\.(service|timer|socket|path)$/;

function analyzeAvailable(): string | null {
  const r = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return null;
  return (r.stdout.split('\n')[0] ?? '').trim();
}

const version = analyzeAvailable();
const units = fs.existsSync(UNIT_DIR) ? fs.readdirSync(UNIT_DIR).filter((f) => UNIT_RE.test(f)).sort() : [];

/** Copies every unit into a fresh folder, ExecStart paths pointing at bin/gardefou. */
function stage(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-units-'));
  for (const f of units) {
    const text = fs.readFileSync(path.join(UNIT_DIR, f), 'utf8').split(INSTALLED_BIN).join(LOCAL_BIN);
    fs.writeFileSync(path.join(dir, f), text);
  }
  return dir;
}

/** Lines of output that concern our units: they name a staged file, a unit of ours or the binary. */
function ourLines(output: string, dir: string): string[] {
  return output.split('\n').map((l) => l.trim()).filter((l) => l !== '' && (l.includes(dir) || l.includes(LOCAL_BIN) || units.some((u) => l.includes(u))));
}

t.test('systemd-analyze verify: no warning on any unit under systemd/', { skip: version === null ? 'systemd-analyze not installed (apt-get install systemd); units not verified' : false }, async (t) => {
  t.comment(`${version}; units: ${units.join(', ')}`);
  t.ok(units.includes('gardefou.service'), 'gardefou.service is present');
  const dir = stage();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const u of units) {
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', path.join(dir, u)], { encoding: 'utf8', timeout: 60_000 });
    const out = `${r.stdout}\n${r.stderr}`;
    const ours = ourLines(out, dir);
    const others = out.split('\n').filter((l) => l.trim() !== '' && !ours.includes(l.trim()));
    for (const l of others) t.comment(`(not about our units) ${l}`);
    t.same(ours, [], `${u}: no warning`);
    t.equal(r.status, 0, `${u}: verify exits 0`);
  }
});

t.test('the check above sees a broken unit (it can fail)', { skip: version === null ? 'systemd-analyze not installed' : false }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-units-bad-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bad = path.join(dir, 'gardefou.service');
  fs.writeFileSync(bad, '[Service]\nExecStart=/nonexistent/gardefou serve\nProtectSytem=strict\n');
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', bad], { encoding: 'utf8', timeout: 60_000 });
  const ours = ourLines(`${r.stdout}\n${r.stderr}`, dir);
  t.ok(ours.some((l) => /ProtectSytem/.test(l)), 'a misspelt directive is reported');
  t.ok(ours.some((l) => /not executable/.test(l)) || r.status !== 0, 'a missing binary is reported');
});

t.test('systemd-analyze security: exposure of gardefou.service stays low', { skip: version === null ? 'systemd-analyze not installed' : false }, async (t) => {
  const dir = stage();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', path.join(dir, 'gardefou.service')], { encoding: 'utf8', timeout: 60_000 });
  const m = /Overall exposure level for gardefou\.service: (\d+(?:\.\d+)?)/.exec(`${r.stdout}${r.stderr}`);
  if (!m) {
    // --offline needs systemd 252+
    t.pass('exposure not measured', { skip: `security --offline not supported here: ${(r.stderr || r.stdout).split('\n')[0] ?? ''}` });
    return;
  }
  const exposure = Number(m[1]);
  t.comment(`exposure ${exposure} (docs/install.md reports the figure measured on Debian 12)`);
  // 10 is "UNSAFE", below 2 "OK"; a unit that loses its hardening jumps above 5.
  t.ok(exposure <= 2, `exposure ${exposure} <= 2`);
  if (version?.startsWith('systemd 252 ')) {
    // docs/install.md reports the figure measured with Debian 12's systemd: keep it true
    const doc = fs.readFileSync(path.join(PACKAGE_ROOT, 'docs', 'install.md'), 'utf8');
    t.match(doc, new RegExp(`gardefou\\.service as shipped \\| \\*\\*${m[1]?.replace('.', '\\.') ?? ''} `), 'docs/install.md reports this exposure');
  }
});

/** Key=value pairs of one section (repeated keys keep every value). */
function section(text: string, name: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      current = s[1] as string;
      continue;
    }
    if (current !== name) continue;
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const k = line.slice(0, eq).trim();
    out.set(k, [...(out.get(k) ?? []), line.slice(eq + 1).trim()]);
  }
  return out;
}

t.test('gardefou.service: contract and hardening', async (t) => {
  const text = fs.readFileSync(path.join(UNIT_DIR, 'gardefou.service'), 'utf8');
  const svc = section(text, 'Service');
  const one = (k: string) => (svc.get(k) ?? []).join(' ');
  t.equal(one('ExecStart'), '/usr/bin/gardefou serve --config /etc/gardefou/gardefou.json');
  t.equal(one('ExecReload'), '/bin/kill -HUP $MAINPID');
  const expected: Array<[string, string]> = [
    ['User', 'gardefou'],
    ['Group', 'gardefou'],
    ['StateDirectory', 'gardefou'],
    ['ConfigurationDirectory', 'gardefou'],
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['PrivateTmp', 'yes'],
    ['PrivateDevices', 'yes'],
    ['NoNewPrivileges', 'yes'],
    ['ProtectKernelTunables', 'yes'],
    ['ProtectKernelModules', 'yes'],
    ['ProtectKernelLogs', 'yes'],
    ['ProtectControlGroups', 'yes'],
    ['ProtectClock', 'yes'],
    ['ProtectHostname', 'yes'],
    ['RestrictNamespaces', 'yes'],
    ['RestrictRealtime', 'yes'],
    ['RestrictSUIDSGID', 'yes'],
    ['LockPersonality', 'yes'],
    ['MemoryDenyWriteExecute', 'no'],
    ['SystemCallArchitectures', 'native'],
    ['CapabilityBoundingSet', 'CAP_NET_BIND_SERVICE'],
    ['AmbientCapabilities', 'CAP_NET_BIND_SERVICE'],
    ['UMask', '0027'],
    ['Restart', 'on-failure'],
    ['StandardOutput', 'journal'],
    ['RestrictAddressFamilies', 'AF_INET AF_INET6 AF_UNIX AF_NETLINK'],
  ];
  for (const [k, v] of expected) t.equal(one(k), v, `${k}=${v}`);
  t.ok((svc.get('SystemCallFilter') ?? []).includes('@system-service'), 'SystemCallFilter=@system-service');
  t.notOk(svc.has('DynamicUser') && one('DynamicUser') !== 'no', 'no DynamicUser: the journal keeps a stable owner');
  t.notOk(svc.has('ReadWritePaths'), 'nothing writable beyond StateDirectory');
  // Stop timeout: the proxy's grace period plus the journal flush must fit before SIGKILL.
  const stop = /^(\d+)s?$/.exec(one('TimeoutStopSec'));
  t.ok(stop, 'TimeoutStopSec in seconds');
  const graceS = defaultConfig().limits.shutdownGraceMs / 1000;
  t.ok(Number(stop?.[1]) >= graceS + 15, `TimeoutStopSec ${stop?.[1]}s >= shutdownGraceMs ${graceS}s + 15s for the flush`);
  t.ok(Number(one('LimitNOFILE')) >= 65536, 'LimitNOFILE high enough for a proxy');
  t.equal(section(text, 'Install').get('WantedBy')?.[0], 'multi-user.target');
});

t.test('every timer has its service; every gardefou unit uses the one config file', async (t) => {
  for (const u of units) {
    if (u.endsWith('.timer')) {
      const timer = section(fs.readFileSync(path.join(UNIT_DIR, u), 'utf8'), 'Timer');
      const target = timer.get('Unit')?.[0] ?? u.replace(/\.timer$/, '.service');
      t.ok(units.includes(target), `${u} -> ${target} present`);
    }
    if (u.endsWith('.service')) {
      const exec = (section(fs.readFileSync(path.join(UNIT_DIR, u), 'utf8'), 'Service').get('ExecStart') ?? []).join(' ');
      if (exec.startsWith(INSTALLED_BIN)) t.match(exec, /--config \/etc\/gardefou\/gardefou\.json/, `${u} uses /etc/gardefou/gardefou.json`);
    }
  }
});

t.test('gardefou.sysusers creates the gardefou user and group (dry run in a temporary root)', async (t) => {
  const probe = spawnSync('systemd-sysusers', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    t.pass('sysusers file not checked', { skip: 'systemd-sysusers not installed' });
    return;
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-sysusers-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  fs.mkdirSync(path.join(root, 'etc'));
  const file = path.join(UNIT_DIR, 'gardefou.sysusers');
  const r = spawnSync('systemd-sysusers', ['--dry-run', `--root=${root}`, file], { encoding: 'utf8', timeout: 60_000 });
  const out = `${r.stdout}${r.stderr}`;
  t.equal(r.status, 0, `systemd-sysusers accepts it: ${out.trim().split('\n')[0] ?? ''}`);
  t.match(out, /Creating group 'gardefou'/);
  t.match(out, /Creating user 'gardefou' .*with UID/);
  t.notMatch(out, /gardefou\.sysusers:\d+:/, 'no complaint about a line of the file');
  t.same(fs.readdirSync(path.join(root, 'etc')), [], 'dry run: nothing written');
});
