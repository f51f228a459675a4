/**
 * ClientHello material for tests: real hellos captured from node's tls.connect on loopback
 * (a raw net server records the first bytes), a small builder for crafted ones, re-framing
 * into several records, and a seeded PRNG.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import { parseClientHello } from '../../src/proxy/clienthello';

/** mulberry32: a tiny seeded PRNG, so a failing fuzz case can be replayed from its seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Connects a real TLS client to a raw TCP server and returns the bytes of its ClientHello. */
export async function captureClientHello(opts: tls.ConnectionOptions): Promise<Buffer> {
  let resolveBytes: (b: Buffer) => void = () => undefined;
  const got = new Promise<Buffer>((r) => { resolveBytes = r; });
  const server = net.createServer((s) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { s.destroy(); resolveBytes(buf); }, 3000);
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const r = parseClientHello(buf);
      if (r.ok || r.error !== 'truncated') { clearTimeout(timer); s.destroy(); resolveBytes(buf); }
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const client = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts });
  client.on('error', () => undefined);
  try {
    return await got;
  } finally {
    client.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  }
}

/** Splits the handshake message of a single-record hello into records of the given sizes. */
export function reframe(hello: Buffer, sizes: number[]): Buffer {
  const recLen = hello.readUInt16BE(3);
  const msg = hello.subarray(5, 5 + recLen);
  const version = hello.subarray(1, 3);
  const out: Buffer[] = [];
  let off = 0;
  let i = 0;
  while (off < msg.length) {
    const n = Math.min(sizes[i % sizes.length] ?? 1, msg.length - off);
    out.push(Buffer.from([22]), version, Buffer.from([n >> 8, n & 255]), msg.subarray(off, off + n));
    off += n;
    i++;
  }
  out.push(hello.subarray(5 + recLen)); // anything after the first record stays
  return Buffer.concat(out);
}

function u16(n: number): Buffer {
  return Buffer.from([(n >> 8) & 255, n & 255]);
}

function u24(n: number): Buffer {
  return Buffer.from([(n >> 16) & 255, (n >> 8) & 255, n & 255]);
}

export function ext(type: number, data: Buffer): Buffer {
  return Buffer.concat([u16(type), u16(data.length), data]);
}

/** server_name extension data with host_name entries (raw bytes, so bad names can be made). */
export function sniExt(...names: Array<string | Buffer>): Buffer {
  const entries = names.map((n) => {
    const b = typeof n === 'string' ? Buffer.from(n, 'latin1') : n;
    return Buffer.concat([Buffer.from([0]), u16(b.length), b]);
  });
  const list = Buffer.concat(entries);
  return ext(0, Buffer.concat([u16(list.length), list]));
}

export function alpnExt(...protos: string[]): Buffer {
  const list = Buffer.concat(protos.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, 'latin1')])));
  return ext(16, Buffer.concat([u16(list.length), list]));
}

export function versionsExt(...versions: number[]): Buffer {
  return ext(43, Buffer.concat([Buffer.from([versions.length * 2]), ...versions.map(u16)]));
}

/** A minimal well-formed ClientHello record carrying `exts` (undefined: no extensions block). */
export function buildHello(exts: Buffer[] | undefined, opts: { sessionId?: number; ciphers?: Buffer; trailing?: Buffer } = {}): Buffer {
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7),
    Buffer.from([opts.sessionId ?? 0]),
    Buffer.alloc(opts.sessionId ?? 0, 1),
    opts.ciphers ?? Buffer.from([0, 2, 0x13, 0x01]),
    Buffer.from([1, 0]),
    exts === undefined ? Buffer.alloc(0) : Buffer.concat([u16(exts.reduce((n, e) => n + e.length, 0)), ...exts]),
    opts.trailing ?? Buffer.alloc(0),
  ]);
  const hs = Buffer.concat([Buffer.from([1]), u24(body.length), body]);
  return Buffer.concat([Buffer.from([22, 3, 1]), u16(hs.length), hs]);
}
