/**
 * Relaying a client connection to its destination, for CONNECT tunnels and transparent TLS:
 * dial the checked address (or the parent proxy and ask it with CONNECT), replay the bytes
 * already read from the client, splice both ways, bound idleness, and complete the journal
 * record (egress address and port, bytes, failure) exactly once when either side closes.
 */
import * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import type { JournalHandle } from '../journal/types';
import type { ProxyContext } from './context';

export interface RelayOptions {
  client: net.Socket;
  /** host asked of the parent proxy (the SafeSearch endpoint when substituted) */
  connectHost: string;
  port: number;
  /** address to dial when there is no parent proxy (already checked by the resolver) */
  destIp: string | null;
  handle: JournalHandle | null;
  /** bytes already read from the client, sent upstream first (CONNECT head, ClientHello) */
  first: Buffer;
  /** status journaled once the path is open (200 for CONNECT, null for transparent TLS) */
  openStatus: number | null;
  /** the path is open: e.g. answer "200 Connection established" */
  onOpen?: () => void;
  /** the path could not be opened: e.g. answer 502; `parentStatus` is set when the parent refused */
  onFail?: (parentStatus: number | null) => void;
}

const MAX_PARENT_HEADER = 16384;

export function relay(ctx: ProxyContext, o: RelayOptions): void {
  const { client, handle } = o;
  const readAtStart = client.bytesRead - o.first.length;
  const writtenAtStart = client.bytesWritten;
  const parent = ctx.parent;
  const upstream = parent === null
    ? net.connect({ host: o.destIp as string, port: o.port })
    : net.connect({ host: parent.host, port: parent.port });
  let egressIp: string | null = null;
  let egressPort: number | null = null;
  let status: number | null = null;
  let failure: string | null = null;
  let opened = false;
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    upstream.destroy();
    client.destroy();
    handle?.finish({
      endMs: Date.now(),
      destIp: o.destIp,
      egressIp,
      egressPort,
      status,
      bytesIn: client.bytesRead - readAtStart,
      bytesOut: client.bytesWritten - writtenAtStart,
      ...(failure === null ? {} : { decision: 'error' as const, reason: `upstream-${failure}` }),
    });
  };
  const fail = (why: string, parentStatus: number | null) => {
    failure ??= why;
    if (!opened && o.onFail) {
      status = 502;
      o.onFail(parentStatus);
    }
    finish();
  };
  const open = (rest: Buffer) => {
    opened = true;
    status = o.openStatus;
    o.onOpen?.();
    if (rest.length > 0) client.write(rest);
    if (o.first.length > 0) upstream.write(o.first);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  };
  const idle = ctx.config.limits.idleTimeoutMs;
  upstream.setTimeout(idle, () => fail('idle-timeout', null));
  client.setTimeout(idle, () => finish());
  upstream.on('error', (err: NodeJS.ErrnoException) => fail(err.code ?? 'error', null));
  client.once('close', finish);
  upstream.once('close', finish);
  upstream.once('connect', () => {
    egressIp = upstream.localAddress ? plainAddress(upstream.localAddress) : null;
    egressPort = upstream.localPort ?? null;
    handle?.connected({ destIp: o.destIp, egressIp, egressPort });
    if (parent === null) {
      open(Buffer.alloc(0));
      return;
    }
    const auth = o.connectHost.includes(':') ? `[${o.connectHost}]:${o.port}` : `${o.connectHost}:${o.port}`;
    upstream.write(`CONNECT ${auth} HTTP/1.1\r\nHost: ${auth}\r\nVia: 1.1 gardefou\r\n\r\n`);
    readParentAnswer(upstream, (code, rest) => {
      if (code !== 200) fail(`parent-${code}`, code);
      else open(rest);
    });
  });
}

/** Reads the parent proxy's answer to our CONNECT: status code, and any bytes after it. */
export function readParentAnswer(upstream: net.Socket, done: (code: number, rest: Buffer) => void): void {
  let buf = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) {
      if (buf.length > MAX_PARENT_HEADER) {
        upstream.off('data', onData);
        done(0, Buffer.alloc(0));
      }
      return;
    }
    upstream.off('data', onData);
    upstream.pause();
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(buf.subarray(0, end).toString('latin1'));
    done(m ? Number(m[1]) : 0, buf.subarray(end + 4));
  };
  upstream.on('data', onData);
}
