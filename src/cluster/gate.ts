/**
 * limits.maxConnectionsPerClient across workers. The cap is gateway-wide (one client must not
 * fill the gateway), but each worker only sees its own connections, so the primary keeps the
 * count: a worker's new connection stays paused (not read) until the primary admits it.
 * Requests and responses are batched per event-loop turn, like the journal's.
 *
 *   worker -> primary  { t: 'c.ops', open: [cid, ip][], close: cid[] }   (cid: worker-local)
 *   primary -> worker  { t: 'c.ack', ok: cid[], no: cid[] }
 *
 * The primary admits in arrival order, so the cap holds exactly; a worker that exits gives its
 * connections back. The worker's own ProxyContext.admit still runs on admitted sockets (with the
 * same cap, which the worker alone can no longer exceed).
 */
import type * as net from 'node:net';
import { plainAddress } from '../config/cidr';
import type { Logger } from '../log';
import { Refusal } from '../proxy/context';

export interface GateOpsMessage { t: 'c.ops'; open: Array<[number, string]>; close: number[] }
export interface GateAckMessage { t: 'c.ack'; ok: number[]; no: number[] }

/** Worker side: a ConnectionGate for ProxyServer (src/proxy/server.ts). */
export class WorkerGate {
  private nextCid = 1;
  private open: Array<[number, string]> = [];
  private close: number[] = [];
  private queued = false;
  private readonly waiting = new Map<number, { socket: net.Socket; ip: string; done: (ok: boolean) => void }>();

  constructor(private readonly send: (m: GateOpsMessage) => boolean, private readonly log: Logger) {}

  /** The ConnectionGate function. */
  readonly gate = (socket: net.Socket, done: (admitted: boolean) => void): void => {
    const cid = this.nextCid++;
    const ip = plainAddress(socket.remoteAddress ?? '');
    this.waiting.set(cid, { socket, ip, done });
    this.open.push([cid, ip]);
    this.schedule();
  };

  private schedule(): void {
    if (this.queued) return;
    this.queued = true;
    setImmediate(() => {
      this.queued = false;
      if (this.open.length === 0 && this.close.length === 0) return;
      const m: GateOpsMessage = { t: 'c.ops', open: this.open, close: this.close };
      this.open = [];
      this.close = [];
      if (!this.send(m)) this.refuseAll();
    });
  }

  receive(m: GateAckMessage): void {
    for (const cid of m.ok) {
      const w = this.waiting.get(cid);
      if (!w) continue;
      this.waiting.delete(cid);
      if (w.socket.destroyed) {
        this.close.push(cid);
        this.schedule();
        w.done(false);
        continue;
      }
      w.socket.once('close', () => {
        this.close.push(cid);
        this.schedule();
      });
      w.done(true);
    }
    for (const cid of m.no) {
      const w = this.waiting.get(cid);
      if (!w) continue;
      this.waiting.delete(cid);
      this.log.warn({ client: w.ip, reason: Refusal.tooManyConnections }, 'connection refused');
      w.done(false);
    }
  }

  /** The primary is gone: nothing can be admitted. */
  refuseAll(): void {
    for (const w of this.waiting.values()) w.done(false);
    this.waiting.clear();
  }
}

/** Primary side: the gateway-wide count per client address. */
export class PrimaryGate {
  private readonly perClient = new Map<string, number>();
  private readonly peers = new Map<string, { send: (m: GateAckMessage) => boolean | void; held: Map<number, string>; ok: number[]; no: number[]; queued: boolean }>();

  constructor(private readonly cap: () => number) {}

  attach(id: string, send: (m: GateAckMessage) => boolean | void): void {
    this.peers.set(id, { send, held: new Map(), ok: [], no: [], queued: false });
  }

  receive(id: string, m: GateOpsMessage): void {
    const p = this.peers.get(id);
    if (!p) return;
    // closes first: a slot freed in the same turn can be taken again
    for (const cid of m.close) {
      const ip = p.held.get(cid);
      if (ip === undefined) continue;
      p.held.delete(cid);
      this.release(ip);
    }
    const cap = this.cap();
    for (const [cid, ip] of m.open) {
      const n = (this.perClient.get(ip) ?? 0) + 1;
      if (n > cap) {
        p.no.push(cid);
      } else {
        this.perClient.set(ip, n);
        p.held.set(cid, ip);
        p.ok.push(cid);
      }
    }
    if (!p.queued && (p.ok.length > 0 || p.no.length > 0)) {
      p.queued = true;
      setImmediate(() => {
        p.queued = false;
        const ack: GateAckMessage = { t: 'c.ack', ok: p.ok, no: p.no };
        p.ok = [];
        p.no = [];
        try {
          p.send(ack);
        } catch {
          // the worker is exiting; detach() gives its connections back
        }
      });
    }
  }

  private release(ip: string): void {
    const left = (this.perClient.get(ip) ?? 1) - 1;
    if (left <= 0) this.perClient.delete(ip);
    else this.perClient.set(ip, left);
  }

  /** A worker exited: its connections are gone with it. */
  detach(id: string): void {
    const p = this.peers.get(id);
    if (!p) return;
    this.peers.delete(id);
    for (const ip of p.held.values()) this.release(ip);
  }

  /** Connections counted now (all clients). */
  get total(): number {
    let n = 0;
    for (const v of this.perClient.values()) n += v;
    return n;
  }
}
