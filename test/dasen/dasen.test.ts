/**
 * The DASEN side: keys, signed envelopes, the bundle format (strict ustar reader, manifest
 * validation, line deltas), publish + verify through the real CLI, and the real UT1 lists.
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import t from 'tap';
import * as tar from 'tar';
import { applyLineEdit, FileRef, parseManifest, readTarStrict, sha256, writeTarGz } from '../../src/lists/bundle';
import { publish, verifyFeed } from '../../src/lists/feed';
import { generateKeyPair, loadPrivateKey, loadTrustedKeys, openEnvelope, signEnvelope, UpdateRefusedError } from '../../src/lists/sign';
import { PACKAGE_ROOT } from '../../src/config';
import { addDomain, makeUt1, REAL_UT1, tmp } from '../lists-update/helpers';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'gardefou');
const DIST = path.resolve(__dirname, '..', '..');
const dir = tmp();
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function cli(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, GARDEFOU_DIST: DIST }, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof UpdateRefusedError) return err.reason;
    throw err;
  }
  return 'accepted';
}

async function refusalAsync(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof UpdateRefusedError) return err.reason;
    throw err;
  }
  return 'accepted';
}

t.test('keygen: private key 0600, public key PEM, never overwritten', async (t) => {
  const out = path.join(dir, 'k1');
  const r = cli(['dasen', 'keygen', '--out', out, '--json']);
  t.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out) as { keyid: string; keyFile: string; pubFile: string };
  t.equal(fs.statSync(j.keyFile).mode & 0o777, 0o600);
  t.match(fs.readFileSync(j.pubFile, 'utf8'), /^-----BEGIN PUBLIC KEY-----/);
  t.equal(loadPrivateKey(j.keyFile).keyid, j.keyid);
  t.equal(loadTrustedKeys([j.pubFile]).has(j.keyid), true);
  const again = cli(['dasen', 'keygen', '--out', out]);
  t.equal(again.code, 2);
  t.match(again.err, /^gardefou: writing key pair: .*already exists/);
  t.equal(again.err.trim().split('\n').length, 1, 'one clear line');
});

t.test('signed envelopes', async (t) => {
  const a = generateKeyPair(path.join(dir, 'env-a'));
  const b = generateKeyPair(path.join(dir, 'env-b'));
  const ka = loadPrivateKey(a.keyFile);
  const trusted = loadTrustedKeys([a.pubFile]);
  const good = signEnvelope('gardefou-feed', { hello: 1 }, [ka]);
  const env = JSON.parse(good) as { payload: string; signatures: Array<{ keyid: string; sig: string }> };
  const cases: Array<[string, string, string]> = [
    ['valid', good, 'accepted'],
    ['payload changed', JSON.stringify({ ...env, payload: env.payload.replace('1', '2') }), 'bad-signature'],
    ['signature garbage', JSON.stringify({ ...env, signatures: [{ keyid: a.keyid, sig: 'AAAA' }] }), 'bad-signature'],
    ['signed by another key', signEnvelope('gardefou-feed', { hello: 1 }, [loadPrivateKey(b.keyFile)]), 'unknown-key'],
    ['no signature', JSON.stringify({ ...env, signatures: [] }), 'unknown-key'],
    ['wrong type', JSON.stringify({ ...env, payloadType: 'gardefou-manifest' }), 'malformed'],
    ['not JSON', good.slice(0, 20), 'malformed'],
    ['not an envelope', '{"a":1}', 'malformed'],
  ];
  for (const [name, text, want] of cases) t.equal(refusal(() => openEnvelope(text, 'gardefou-feed', trusted, 'x')), want, name);
  // a feed signature never passes for a manifest: the type is inside the signed bytes
  const asManifest = JSON.stringify({ ...env, payloadType: 'gardefou-manifest' });
  t.equal(refusal(() => openEnvelope(asManifest, 'gardefou-manifest', trusted, 'x')), 'bad-signature');
  // two signatures (rotation): either trusted key is enough
  const both = signEnvelope('gardefou-feed', { x: 1 }, [ka, loadPrivateKey(b.keyFile)]);
  t.equal(openEnvelope(both, 'gardefou-feed', loadTrustedKeys([b.pubFile]), 'x').keyid, b.keyid);
});

t.test('ustar writer and strict reader', async (t) => {
  const files = [
    { path: 'lists/a/domains', data: Buffer.from('a.test\nb.test\n') },
    { path: 'lists/' + 'b'.repeat(110) + '/domains', data: Buffer.alloc(1000, 1) }, // long name: ustar prefix
    { path: 'policy.json', data: Buffer.from('{}') },
    { path: 'lists/empty', data: Buffer.alloc(0) },
  ];
  const refs: FileRef[] = files.map((f) => ({ path: f.path, sha256: sha256(f.data), size: f.data.length }));
  const links = [{ path: 'lists/alias', link: 'a' }];
  const file = path.join(dir, 't.tar.gz');
  await writeTarGz(file, [...files.map((f) => ({ path: f.path, size: f.data.length, file: null, data: f.data })), ...links], 1_700_000_000);
  const listed: string[] = [];
  await tar.t({ file, onReadEntry: (e) => void listed.push(`${e.type}:${e.path}`) });
  t.same(listed, [...files.map((f) => `File:${f.path}`), 'SymbolicLink:lists/alias'], 'a standard tar reads it');

  const raw = zlib.gunzipSync(fs.readFileSync(file));
  const read = async (bytes: Buffer, expect = { files: refs, links }) => {
    const got = new Map<string, Buffer>();
    await readTarStrict(
      [bytes],
      expect,
      (f) => {
        const parts: Buffer[] = [];
        return { write: (c) => void parts.push(Buffer.from(c)), close: () => void got.set(f.path, Buffer.concat(parts)) };
      },
      () => undefined,
      'test',
    );
    return got;
  };
  const got = await read(raw);
  t.same([...got.keys()], files.map((f) => f.path));
  t.ok(got.get('lists/a/domains')?.equals(files[0]!.data));

  const flipped = Buffer.from(raw);
  flipped[512 + 2] = (flipped[512 + 2] ?? 0) ^ 1; // a byte of the first file's content
  const cases: Array<[string, Buffer, { files: FileRef[]; links: typeof links }, string]> = [
    ['flipped byte in a list', flipped, { files: refs, links }, 'hash-mismatch'],
    ['size differs from manifest', raw, { files: [{ ...refs[0]!, size: 99 }, ...refs.slice(1)], links }, 'size-mismatch'],
    ['entry not in the manifest', raw, { files: refs.slice(0, 2), links: [] }, 'malformed'],
    ['entries in another order', raw, { files: [refs[1]!, refs[0]!, ...refs.slice(2)], links }, 'malformed'],
    ['manifest lists more', raw, { files: [...refs, { path: 'lists/zz', sha256: sha256(''), size: 0 }], links }, 'malformed'],
    ['truncated', raw.subarray(0, 700), { files: refs, links }, 'size-mismatch'],
    ['trailing data', Buffer.concat([raw, Buffer.alloc(512, 65)]), { files: refs, links }, 'malformed'],
    ['link target differs', raw, { files: refs, links: [{ path: 'lists/alias', link: 'b' }] }, 'malformed'],
  ];
  for (const [name, bytes, expect, want] of cases) t.equal(await refusalAsync(() => read(bytes, expect)), want, name);
});

t.test('manifest validation', async (t) => {
  const base = {
    type: 'gardefou-manifest', format: 1, kind: 'full', serial: 3, created: '2026-01-01T00:00:00Z', expires: '2026-02-01T00:00:00Z',
    keyids: ['a'.repeat(64)],
    archive: { path: 'bundles/3-x.tar.gz', sha256: 'b'.repeat(64), size: 10, unpackedSize: 2 },
    files: [{ path: 'policy.json', sha256: 'c'.repeat(64), size: 2 }],
    links: [], categories: [],
  };
  t.equal(parseManifest(base).serial, 3, 'valid');
  const bad: Array<[string, Record<string, unknown>]> = [
    ['path escaping', { files: [...base.files, { path: 'lists/../../etc/x', sha256: 'c'.repeat(64), size: 0 }] }],
    ['absolute path', { files: [...base.files, { path: '/etc/passwd', sha256: 'c'.repeat(64), size: 0 }] }],
    ['outside lists/', { files: [...base.files, { path: 'other/x', sha256: 'c'.repeat(64), size: 0 }] }],
    ['same path twice', { files: [...base.files, ...base.files] }],
    ['no policy', { files: [], archive: { ...base.archive, unpackedSize: 0 } }],
    ['unpacked size lies', { archive: { ...base.archive, unpackedSize: 1 } }],
    ['negative size', { files: [{ ...base.files[0], size: -1 }] }],
    ['bad hash', { files: [{ ...base.files[0], sha256: 'xyz' }] }],
    ['serial 0', { serial: 0 }],
    ['bad time', { expires: 'tomorrow' }],
    ['link outside', { links: [{ path: 'lists/x', link: '../../etc' }] }],
    ['unknown kind', { kind: 'partial' }],
    ['delta on a newer base', { kind: 'delta', base: { serial: 3, manifestSha256: 'd'.repeat(64) }, removed: [] }],
  ];
  for (const [name, over] of bad) t.equal(refusal(() => parseManifest({ ...base, ...over })), 'malformed', name);
});

t.test('line edits are deterministic', async (t) => {
  const cases: Array<[string, string, string[], string[], string]> = [
    ['add to empty', '', ['a.test'], [], 'a.test\n'],
    ['remove keeps order and comments', '# c\nb.test\r\na.test\n', [], ['b.test'], '# c\na.test\n'],
    ['no final newline', 'a.test', ['b.test'], [], 'a.test\nb.test\n'],
    ['remove everything', 'a.test\n', [], ['a.test'], ''],
    ['comment lines are never removed', '#a.test\n', [], ['#a.test'], '#a.test\n'],
  ];
  for (const [name, base, add, rm, want] of cases) t.equal(applyLineEdit(Buffer.from(base, 'latin1'), add, rm).toString('latin1'), want, name);
  t.equal(applyLineEdit(Buffer.from([0xe9, 0x0a]), ['\u00e8'], []).toString('hex'), 'e90ae80a', 'bytes survive (latin1)');
});

t.test('publish and verify through the CLI', async (t) => {
  const keys = generateKeyPair(path.join(dir, 'cli-key'));
  const other = generateKeyPair(path.join(dir, 'cli-other'));
  const ut1 = makeUt1(path.join(dir, 'cli'));
  const policy = path.join(dir, 'cli', 'policy.json');
  fs.writeFileSync(policy, '{}');
  const feed = path.join(dir, 'cli', 'feed');
  const p1 = cli(['dasen', 'publish', '--source', ut1, '--policy', policy, '--key', keys.keyFile, '--feed', feed, '--expires', '7', '--json']);
  t.equal(p1.code, 0, p1.err);
  const r1 = JSON.parse(p1.out) as { serial: number; kind: string; categories: number; domains: number };
  t.same([r1.serial, r1.kind, r1.categories], [1, 'full', 3]);
  t.equal(r1.domains, 4, 'domains counted without comments');
  addDomain(ut1, 'gambling', 'emergency.test');
  const p2 = cli(['dasen', 'publish', '--source', ut1, '--policy', policy, '--key', keys.keyFile, '--feed', feed, '--delta', '--json']);
  t.equal(p2.code, 0, p2.err);
  const r2 = JSON.parse(p2.out) as { serial: number; kind: string; base: number; changes: { added: number }; downloadBytes: number };
  t.same([r2.serial, r2.kind, r2.base, r2.changes.added], [2, 'delta', 1, 1]);
  t.ok(r2.downloadBytes < 4000, `an emergency domain costs ${r2.downloadBytes} bytes to a gateway`);

  const v = cli(['dasen', 'verify', '--feed', feed, '--pub', keys.pubFile, '--json']);
  t.equal(v.code, 0, v.out);
  t.match(JSON.parse(v.out), { ok: true, serial: 2, full: { serial: 1 }, delta: { serial: 2, base: 1 } });
  const wrongKey = cli(['dasen', 'verify', '--feed', feed, '--pub', other.pubFile]);
  t.equal(wrongKey.code, 1);
  t.match(wrongKey.out, /none of them trusted/);

  // tampering a delta's content is found before it goes out
  const delta = fs.readdirSync(path.join(feed, 'deltas'))[0] as string;
  const dfile = path.join(feed, 'deltas', delta);
  const saved = fs.readFileSync(dfile);
  fs.writeFileSync(dfile, zlib.gzipSync(Buffer.from(zlib.gunzipSync(saved).toString().replace('emergency.test', 'emergencz.test'))));
  const bad = cli(['dasen', 'verify', '--feed', feed, '--pub', keys.pubFile]);
  t.equal(bad.code, 1);
  t.match(bad.out, /problem .*sha256\/size differ/);
  fs.writeFileSync(dfile, saved);

  // a bundle never changes once published: serials only go up
  const p3 = await publish({ source: ut1, policy, keys: [keys.keyFile], feed });
  t.equal(p3.serial, 3);
  t.equal((await verifyFeed(feed, loadTrustedKeys([keys.pubFile]))).ok, true);
  const noFlag = cli(['dasen', 'publish', '--source', ut1, '--policy', policy, '--feed', feed]);
  t.equal(noFlag.code, 2, 'missing --key is bad input');
  const badPolicy = path.join(dir, 'cli', 'bad.json');
  fs.writeFileSync(badPolicy, '[1]');
  const bp = cli(['dasen', 'publish', '--source', ut1, '--policy', badPolicy, '--key', keys.keyFile, '--feed', feed]);
  t.equal(bp.code, 2);
  t.match(bp.err, /^gardefou: reading policy .*expected a JSON object/);
});

t.test('old bundles are kept for a while, then pruned', async (t) => {
  const keys = generateKeyPair(path.join(dir, 'prune-key'));
  const ut1 = makeUt1(path.join(dir, 'prune'));
  const policy = path.join(dir, 'prune', 'policy.json');
  fs.writeFileSync(policy, '{}');
  const feed = path.join(dir, 'prune', 'feed');
  for (let i = 0; i < 5; i++) {
    addDomain(ut1, 'gambling', `p${i}.test`);
    await publish({ source: ut1, policy, keys: [keys.keyFile], feed, keep: 2 });
  }
  t.same(fs.readdirSync(path.join(feed, 'manifests')).sort(), ['4.json', '5.json']);
  t.equal(fs.readdirSync(path.join(feed, 'bundles')).length, 2);
  t.equal((await verifyFeed(feed, loadTrustedKeys([keys.pubFile]))).ok, true);
});

t.test('the real UT1 lists', { skip: fs.existsSync(REAL_UT1) ? false : '../shared/ut1 not present' }, async (t) => {
  const keys = generateKeyPair(path.join(dir, 'real-key'));
  const policy = path.join(dir, 'real-policy.json');
  fs.writeFileSync(policy, '{}');
  const feed = path.join(dir, 'real-feed');
  const r = await publish({ source: REAL_UT1, policy, keys: [keys.keyFile], feed });
  t.ok(r.categories >= 60, `${r.categories} categories`);
  t.ok(r.domains > 500_000, `${r.domains} domains`);
  t.ok(r.archive.size < r.archive.unpackedSize / 2, `compressed ${r.archive.size} of ${r.archive.unpackedSize} bytes`);
  const m = parseManifest(JSON.parse(JSON.parse(fs.readFileSync(path.join(feed, r.manifest.path), 'utf8')).payload));
  t.ok(m.files.some((f) => f.path === 'lists/adult/urls'), 'adult/urls listed');
  const sha = crypto.createHash('sha256').update(fs.readFileSync(path.join(REAL_UT1, 'adult', 'urls'))).digest('hex');
  t.equal(m.files.find((f) => f.path === 'lists/adult/urls')?.sha256, sha, 'hash of the real file');
  t.equal((await verifyFeed(feed, loadTrustedKeys([keys.pubFile]))).ok, true);
});
