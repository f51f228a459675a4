/**
 * A real OpenLDAP server for the tests: /usr/sbin/slapd on 127.0.0.1 and a free port, with its
 * own slapd.conf and mdb database in a temp dir under os.tmpdir(), loaded with slapadd.
 * Debian's slapd: backends are modules in /usr/lib/ldap, schemas in /etc/ldap/schema.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export const SLAPD = '/usr/sbin/slapd';
export const SUFFIX = 'dc=ecole,dc=test';
export const SERVICE_DN = `cn=gardefou,ou=services,${SUFFIX}`;
export const SERVICE_PW = 'svc-pw-7f3a';

export interface Slapd {
  url: string;
  port: number;
  dir: string;
  proc: ChildProcess;
  stop(): Promise<void>;
}

/** Why slapd cannot run here, or null. */
export function slapdMissing(): string | null {
  if (!fs.existsSync(SLAPD)) return `${SLAPD} not installed (Debian package slapd; CI installs it)`;
  if (!fs.existsSync('/usr/lib/ldap/back_mdb.so')) return '/usr/lib/ldap/back_mdb.so missing (slapd package incomplete)';
  return null;
}

const USERS: Array<{ uid: string; pw: string; dept?: string }> = [
  { uid: 'alice', pw: 'alice-pw', dept: 'profs' },
  { uid: 'bob', pw: 'bob-pw' },
  { uid: 'carol', pw: 'carol-pw' },
];

function ldif(): string {
  const e: string[] = [
    `dn: ${SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Ecole test\ndc: ecole`,
    `dn: ou=people,${SUFFIX}\nobjectClass: organizationalUnit\nou: people`,
    `dn: ou=groups,${SUFFIX}\nobjectClass: organizationalUnit\nou: groups`,
    `dn: ou=services,${SUFFIX}\nobjectClass: organizationalUnit\nou: services`,
    `dn: ${SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\ncn: gardefou\nuserPassword: ${SERVICE_PW}`,
  ];
  for (const u of USERS) {
    e.push(`dn: uid=${u.uid},ou=people,${SUFFIX}\nobjectClass: inetOrgPerson\nuid: ${u.uid}\ncn: ${u.uid}\nsn: ${u.uid}\nuserPassword: ${u.pw}${u.dept ? `\ndepartmentNumber: ${u.dept}` : ''}`);
  }
  e.push(`dn: cn=profs,ou=groups,${SUFFIX}\nobjectClass: groupOfNames\ncn: profs\nmember: uid=alice,ou=people,${SUFFIX}`);
  e.push(`dn: cn=eleves,ou=groups,${SUFFIX}\nobjectClass: groupOfNames\ncn: eleves\nmember: uid=bob,ou=people,${SUFFIX}`);
  return `${e.join('\n\n')}\n`;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
}

export async function startSlapd(): Promise<Slapd> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-slapd-'));
  fs.mkdirSync(path.join(dir, 'db'));
  const conf = path.join(dir, 'slapd.conf');
  fs.writeFileSync(conf, [
    'include /etc/ldap/schema/core.schema',
    'include /etc/ldap/schema/cosine.schema',
    'include /etc/ldap/schema/inetorgperson.schema',
    'modulepath /usr/lib/ldap',
    'moduleload back_mdb',
    `pidfile ${path.join(dir, 'slapd.pid')}`,
    'database mdb',
    'maxsize 10485760',
    `suffix "${SUFFIX}"`,
    `directory ${path.join(dir, 'db')}`,
    // passwords: only binds; everything else: the service account reads, anonymous nothing
    'access to attrs=userPassword by anonymous auth by * none',
    `access to * by dn.exact="${SERVICE_DN}" read by self read by * none`,
    '',
  ].join('\n'));
  fs.writeFileSync(path.join(dir, 'data.ldif'), ldif());
  const add = spawnSync('/usr/sbin/slapadd', ['-f', conf, '-l', path.join(dir, 'data.ldif')], { encoding: 'utf8', timeout: 20_000 });
  if (add.status !== 0) throw new Error(`slapadd failed (${add.status}): ${add.stderr}`);
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const url = `ldap://127.0.0.1:${port}`;
    let log = '';
    // -d 0: stay in the foreground (the pid we hold is slapd's), log nothing but fatal errors
    const proc = spawn(SLAPD, ['-f', conf, '-h', `${url}/`, '-d', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout?.on('data', (c: Buffer) => { log += c.toString(); });
    proc.stderr?.on('data', (c: Buffer) => { log += c.toString(); });
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    let up = false;
    for (let i = 0; i < 100 && proc.exitCode === null; i++) {
      if (await canConnect(port)) { up = true; break; }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (up) {
      let stopped = false;
      return {
        url, port, dir, proc,
        stop: async () => {
          if (!stopped && proc.exitCode === null && proc.signalCode === null) {
            stopped = true;
            proc.kill('SIGTERM');
            const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
            await exited;
            clearTimeout(timer);
            fs.rmSync(dir, { recursive: true, force: true });
          }
        },
      };
    }
    proc.kill('SIGKILL');
    await exited;
    // the port may have been taken between our probe and slapd's bind: try another, twice
    if (attempt >= 2) throw new Error(`slapd did not start on ${url}: ${log.slice(-2000)}`);
  }
}
