/**
 * The ClientHello reader: real hellos from node's TLS client, crafted edge cases, hellos split
 * over records and TCP chunks, and a seeded fuzz run (never throws, never decides on bytes it
 * was not given, never hangs).
 */
import t from 'tap';
import { MAX_CLIENT_HELLO_BYTES, parseClientHello, tlsVersionName, type ClientHelloResult } from '../../src/proxy/clienthello';
import { normaliseHost } from '../../src/policy/normalise';
import { alpnExt, buildHello, captureClientHello, ext, mulberry32, reframe, sniExt, versionsExt } from './hello-helpers';

interface Captured { name: string; bytes: Buffer; sni: string | null; alpn: string[]; version: number }
const captured: Captured[] = [];

t.before(async () => {
  const cases: Array<{ name: string; opts: Parameters<typeof captureClientHello>[0]; sni: string | null; alpn: string[]; version: number }> = [
    { name: 'TLS 1.3, SNI and ALPN h2,http/1.1', opts: { servername: 'www.example.com', ALPNProtocols: ['h2', 'http/1.1'] }, sni: 'www.example.com', alpn: ['h2', 'http/1.1'], version: 0x0304 },
    { name: 'upper-case SNI is normalised', opts: { servername: 'WWW.Example.ORG' }, sni: 'www.example.org', alpn: [], version: 0x0304 },
    { name: 'TLS 1.2 only', opts: { servername: 'tls12.test', maxVersion: 'TLSv1.2' }, sni: 'tls12.test', alpn: [], version: 0x0303 },
    { name: 'no SNI (connect to an IP, no servername)', opts: {}, sni: null, alpn: [], version: 0x0304 },
    { name: 'punycode SNI', opts: { servername: 'xn--bcher-kva.example', ALPNProtocols: ['http/1.1'] }, sni: 'xn--bcher-kva.example', alpn: ['http/1.1'], version: 0x0304 },
    { name: 'long SNI (4 labels of 60)', opts: { servername: `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.${'d'.repeat(60)}` }, sni: `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.${'d'.repeat(60)}`, alpn: [], version: 0x0304 },
  ];
  for (const c of cases) {
    captured.push({ name: c.name, bytes: await captureClientHello(c.opts), sni: c.sni, alpn: c.alpn, version: c.version });
  }
});

t.test('real hellos from tls.connect', async (t) => {
  for (const c of captured) {
    const r = parseClientHello(c.bytes);
    if (!r.ok) { t.fail(`${c.name}: ${r.error} ${r.detail}`); continue; }
    t.equal(r.sni, c.sni, `${c.name}: sni`);
    t.same(r.alpn, c.alpn, `${c.name}: alpn`);
    t.equal(r.tlsVersion, c.version, `${c.name}: version ${tlsVersionName(r.tlsVersion)}`);
    t.equal(r.length, c.bytes.length, `${c.name}: length = the whole first flight`);
  }
});

t.test('every prefix of a real hello is "truncated", never an error or a wrong answer', async (t) => {
  const hello = captured[0]!.bytes;
  let bad = 0;
  for (let n = 0; n < hello.length; n++) {
    const r = parseClientHello(hello.subarray(0, n));
    if (r.ok || r.error !== 'truncated') bad++;
  }
  t.equal(bad, 0, `all ${hello.length} prefixes are truncated`);
});

t.test('a hello split over several records (and then over TCP chunks)', async (t) => {
  const hello = captured[0]!.bytes;
  for (const sizes of [[1], [3], [2, 5], [100], [4], [5, 1000], [hello.length - 6]]) {
    const framed = reframe(hello, sizes);
    const r = parseClientHello(framed);
    t.ok(r.ok, `record sizes ${sizes.join(',')}: parsed`);
    if (r.ok) {
      t.equal(r.sni, 'www.example.com');
      t.same(r.alpn, ['h2', 'http/1.1']);
      t.equal(r.length, framed.length);
    }
    // fed byte by byte as TCP would: truncated until the last byte
    let early = 0;
    for (let n = 0; n < framed.length; n++) {
      const p = parseClientHello(framed.subarray(0, n));
      if (p.ok || p.error !== 'truncated') early++;
    }
    t.equal(early, 0, `record sizes ${sizes.join(',')}: no decision before the last byte`);
  }
  // bytes after the hello (a client that pipelines) do not change the answer
  const withMore = Buffer.concat([hello, Buffer.from([23, 3, 3, 0, 5, 1, 2, 3, 4, 5])]);
  const r = parseClientHello(withMore);
  t.ok(r.ok && r.length === hello.length, 'length stops at the end of the hello');
});

const tableCases: Array<[string, Buffer, Partial<ClientHelloResult> & { ok: boolean }]> = [
  ['HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), { ok: false, error: 'not-tls' }],
  ['SSLv2-style hello', Buffer.from([0x80, 0x2e, 0x01, 0x03, 0x01]), { ok: false, error: 'not-tls' }],
  ['record version 4.x', Buffer.from([22, 4, 1, 0, 5]), { ok: false, error: 'not-tls' }],
  ['empty input', Buffer.alloc(0), { ok: false, error: 'truncated' }],
  ['zero-length record', Buffer.from([22, 3, 1, 0, 0]), { ok: false, error: 'malformed' }],
  ['record over 16384', Buffer.from([22, 3, 1, 0x40, 0x01, 1]), { ok: false, error: 'malformed' }],
  ['server hello, not client hello', Buffer.from([22, 3, 3, 0, 4, 2, 0, 0, 0]), { ok: false, error: 'malformed' }],
  ['declared hello over the cap', Buffer.from([22, 3, 1, 0x40, 0x00, 1, 0x00, 0x50, 0x00]), { ok: false, error: 'too-large' }],
  ['minimal hello without extensions', buildHello(undefined), { ok: true, sni: null, alpn: [], tlsVersion: 0x0303 }],
  ['empty extensions block', buildHello([]), { ok: true, sni: null }],
  ['sni', buildHello([sniExt('a.test')]), { ok: true, sni: 'a.test' }],
  ['sni with trailing dot (forbidden by RFC 6066)', buildHello([sniExt('a.test.')]), { ok: false, error: 'malformed' }],
  ['sni with a space', buildHello([sniExt('a b.test')]), { ok: false, error: 'malformed' }],
  ['sni with NUL', buildHello([sniExt(Buffer.from('good.test\0bad.test', 'latin1'))]), { ok: false, error: 'malformed' }],
  ['sni with UTF-8 bytes', buildHello([sniExt(Buffer.from('bücher.test', 'utf8'))]), { ok: false, error: 'malformed' }],
  ['sni with a slash', buildHello([sniExt('good.test/x')]), { ok: false, error: 'malformed' }],
  ['sni decimal IPv4 literal is normalised like CONNECT', buildHello([sniExt('3232235777')]), { ok: true, sni: '192.168.1.1' }],
  ['two host names in one server_name', buildHello([sniExt('good.test', 'bad.test')]), { ok: false, error: 'malformed' }],
  ['two server_name extensions', buildHello([sniExt('good.test'), sniExt('bad.test')]), { ok: false, error: 'malformed' }],
  ['empty server_name list', buildHello([ext(0, Buffer.from([0, 0]))]), { ok: false, error: 'malformed' }],
  ['empty server_name extension (as servers echo it)', buildHello([ext(0, Buffer.alloc(0))]), { ok: false, error: 'malformed' }],
  ['server_name list length too long', buildHello([ext(0, Buffer.from([0, 9, 0, 0, 1, 97]))]), { ok: false, error: 'malformed' }],
  ['unknown name type skipped', buildHello([ext(0, Buffer.from([0, 4, 7, 0, 1, 97]))]), { ok: true, sni: null }],
  ['alpn', buildHello([alpnExt('h2', 'http/1.1')]), { ok: true, alpn: ['h2', 'http/1.1'] }],
  ['alpn with an empty name', buildHello([ext(16, Buffer.from([0, 3, 0, 1, 97]))]), { ok: false, error: 'malformed' }],
  ['two alpn extensions', buildHello([alpnExt('h2'), alpnExt('http/1.1')]), { ok: false, error: 'malformed' }],
  ['supported_versions with GREASE', buildHello([versionsExt(0x3a3a, 0x0304, 0x0303)]), { ok: true, tlsVersion: 0x0304 }],
  ['supported_versions odd length', buildHello([ext(43, Buffer.from([3, 3, 4, 3]))]), { ok: false, error: 'malformed' }],
  ['extension overrunning the block', buildHello([Buffer.from([0, 99, 0, 50, 1])]), { ok: false, error: 'malformed' }],
  ['bytes after the extensions', buildHello([sniExt('a.test')], { trailing: Buffer.from([0]) }), { ok: false, error: 'malformed' }],
  ['session id over 32', buildHello([], { sessionId: 33 }), { ok: false, error: 'malformed' }],
  ['odd cipher suites length', buildHello([], { ciphers: Buffer.from([0, 3, 0x13, 0x01, 0]) }), { ok: false, error: 'malformed' }],
  ['no cipher suites', buildHello([], { ciphers: Buffer.from([0, 0]) }), { ok: false, error: 'malformed' }],
];

t.test('crafted hellos', async (t) => {
  for (const [name, bytes, want] of tableCases) {
    const r = parseClientHello(bytes);
    t.match(r, want, name);
  }
});

t.test('a non-handshake record inside a split hello is refused', async (t) => {
  const framed = reframe(captured[0]!.bytes, [50]);
  const bad = Buffer.from(framed);
  bad[55] = 23; // second record: application_data
  t.match(parseClientHello(bad), { ok: false, error: 'malformed' });
});

t.test('a hello in 1-byte records is over the cap (record headers count)', async (t) => {
  const padded = buildHello([sniExt('a.test'), ext(21, Buffer.alloc(3000))]);
  t.match(parseClientHello(padded), { ok: true, sni: 'a.test' }, 'in one record it is fine');
  const framed = reframe(padded, [1]);
  t.ok(framed.length > MAX_CLIENT_HELLO_BYTES, `framed size ${framed.length}`);
  t.match(parseClientHello(framed), { ok: false, error: 'too-large' });
  t.match(parseClientHello(framed.subarray(0, MAX_CLIENT_HELLO_BYTES + 1)), { ok: false, error: 'too-large' }, 'known before the cap is passed by much');
  // the cap is a parameter: exactly the framed size passes, one byte less does not
  t.match(parseClientHello(framed, framed.length), { ok: true, sni: 'a.test' });
  t.match(parseClientHello(framed, framed.length - 1), { ok: false, error: 'too-large' });
});

/**
 * Fuzz. Properties checked on every input x:
 *   - parse(x) returns (never throws) a result of the documented shape;
 *   - a decision is final: if parse(x) is not "truncated", parse(x ++ junk) is the same
 *     (so the parser never decided on bytes beyond the end of x, i.e. never read out of bounds);
 *   - an accepted hello: sni null or already normalised, length <= x.length, and the prefix of
 *     that length gives the same answer.
 * 100k inputs: mutated real and crafted hellos (byte flips, length-field edits, cuts, splices,
 * re-framing) and random bytes that start like a TLS record.
 */
t.test('seeded fuzz: 100k inputs', async (t) => {
  const seed = 0x9e3779b9;
  const rnd = mulberry32(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const seeds: Buffer[] = [...captured.map((c) => c.bytes), ...tableCases.map((c) => c[1]), reframe(captured[0]!.bytes, [7])];
  const junk = Buffer.from([22, 3, 3, 0, 9, 1, 0, 0, 5, 3, 3, 0xff, 0xff, 0xff]);
  const counts: Record<string, number> = {};
  let failures = 0;
  const failuresShown: string[] = [];
  const check = (x: Buffer, i: number) => {
    let r: ClientHelloResult;
    let r2: ClientHelloResult;
    try {
      r = parseClientHello(x);
      r2 = parseClientHello(Buffer.concat([x, junk]));
    } catch (err) {
      failures++;
      if (failuresShown.length < 5) failuresShown.push(`#${i} threw ${(err as Error).message}: ${x.toString('hex').slice(0, 200)}`);
      return;
    }
    const key = r.ok ? 'ok' : r.error;
    counts[key] = (counts[key] ?? 0) + 1;
    let problem: string | null = null;
    if (!r.ok) {
      if (!['not-tls', 'truncated', 'malformed', 'too-large'].includes(r.error) || typeof r.detail !== 'string') problem = 'bad failure shape';
      else if (r.error !== 'truncated' && (r2.ok || r2.error !== r.error || r2.detail !== r.detail)) problem = `decision changed with bytes after the input: ${JSON.stringify(r)} vs ${JSON.stringify(r2)}`;
    } else {
      if (r.sni !== null && normaliseHost(r.sni) !== r.sni) problem = `sni not normalised: ${r.sni}`;
      else if (r.length > x.length || r.length < 9) problem = `length ${r.length} of ${x.length}`;
      else if (!r2.ok || r2.sni !== r.sni || r2.length !== r.length || r2.alpn.join() !== r.alpn.join()) problem = 'answer changed with bytes after the input';
      else {
        const p = parseClientHello(x.subarray(0, r.length));
        if (!p.ok || p.sni !== r.sni) problem = 'prefix of reported length differs';
      }
    }
    if (problem !== null) {
      failures++;
      if (failuresShown.length < 5) failuresShown.push(`#${i} ${problem}: ${x.toString('hex').slice(0, 200)}`);
    }
  };
  const N = 100_000;
  for (let i = 0; i < N; i++) {
    const kind = int(10);
    let x: Buffer;
    if (kind < 7) {
      x = Buffer.from(seeds[int(seeds.length)]!);
      const edits = 1 + int(4);
      for (let e = 0; e < edits; e++) {
        const op = int(6);
        if (x.length === 0) break;
        const at = int(x.length);
        if (op === 0) x[at] = int(256); // byte flip
        else if (op === 1) x[at] = [0, 1, 0xff, 0x7f, 0x80, 0x20][int(6)]!; // boundary byte
        else if (op === 2) x = x.subarray(0, at); // cut
        else if (op === 3 && at + 1 < x.length) { x[at] = int(256); x[at + 1] = int(256); } // length field edit
        else if (op === 4) x = Buffer.concat([x.subarray(0, at), Buffer.from([int(256)]), x.subarray(at)]); // insert
        else if (op === 5) x = Buffer.concat([x.subarray(0, at), x.subarray(Math.min(x.length, at + 1 + int(8)))]); // delete
      }
    } else if (kind < 8) {
      const base = captured[int(captured.length)]!.bytes;
      x = reframe(base, [1 + int(64), 1 + int(300)]);
      if (x.length > 0) x[int(x.length)] = int(256);
    } else {
      x = Buffer.alloc(int(600));
      for (let j = 0; j < x.length; j++) x[j] = int(256);
      if (x.length > 5) { x[0] = 22; x[1] = 3; x[5] = 1; }
    }
    check(x, i);
  }
  t.equal(failures, 0, `no property broken (seed 0x${seed.toString(16)}); ${failuresShown.join(' | ')}`);
  t.ok((counts['ok'] ?? 0) > 100, `some mutated inputs still parse (${JSON.stringify(counts)})`);
  t.ok((counts['malformed'] ?? 0) > 1000, 'many are refused as malformed');
  t.ok((counts['truncated'] ?? 0) > 100, 'many are incomplete');
});
