/**
 * The journal across processes: proxy workers (node:cluster) write through a `RemoteJournal`;
 * the primary, which owns the only `Journal` (one writer thread, one chain), applies their ops
 * with a `JournalHost`. Both ends are transport-agnostic: each is given a `send` function and
 * fed the messages that arrive (the cluster layer carries them over the IPC channel).
 *
 * Rule kept from the single process (issue #4): begin() resolves only once the primary's
 * journal has committed the intent, so nothing is forwarded before it is durable.
 *
 * Messages (plain JSON values; one message carries every op of one event-loop turn):
 *
 *   worker -> primary   JournalOpsMessage  { t: 'j.ops', ops: RemoteOp[] }
 *     RemoteOp = [0, lid, JournalOpen]                      begin   (lid: worker-local id)
 *              | [1, lid, { destIp, egressIp, egressPort }] connected
 *              | [2, lid, JournalClose]                     finish
 *   primary -> worker   JournalAckMessage  { t: 'j.ack', ok: lid[], fail: [lid, message][] }
 *     begins committed (ok) or refused (fail); ack order within a message is commit order.
 *   primary -> worker   JournalHealthMessage { t: 'j.health', healthy, error }
 *     sent when the journal's health changes and once when a worker connects.
 *
 * A worker that dies leaves records open: the host finishes them (and any begin still waiting
 * for its commit) with reason 'worker-exit', so no record stays open until the next start.
 */
import { EventEmitter } from 'node:events';
import type { JournalClose, JournalDecision, JournalHandle, JournalOpen, JournalWriter } from './types';
import { JournalDownError } from './writer';

export type ConnectedInfo = { destIp: string | null; egressIp: string | null; egressPort: number | null };
export type RemoteOp = [0, number, JournalOpen] | [1, number, ConnectedInfo] | [2, number, JournalClose];
export interface JournalOpsMessage { t: 'j.ops'; ops: RemoteOp[] }
export interface JournalAckMessage { t: 'j.ack'; ok: number[]; fail: Array<[number, string]> }
export interface JournalHealthMessage { t: 'j.health'; healthy: boolean; error: string | null }
export type ToJournalHost = JournalOpsMessage;
export type FromJournalHost = JournalAckMessage | JournalHealthMessage;

/** Reason written on records a dead worker left open. */
export const WORKER_EXIT_REASON = 'worker-exit';

interface Pending {
  resolve(h: JournalHandle): void;
  reject(err: Error): void;
}

class RemoteHandle implements JournalHandle {
  private done = false;
  constructor(private readonly j: RemoteJournal, private readonly lid: number) {}
  connected(info: ConnectedInfo): void {
    if (this.done) return;
    this.j.push([1, this.lid, { destIp: info.destIp, egressIp: info.egressIp, egressPort: info.egressPort }]);
  }
  finish(close: JournalClose): void {
    if (this.done) return;
    this.done = true;
    this.j.push([2, this.lid, close]);
  }
}

export interface RemoteJournalStats {
  healthy: boolean;
  lastError: string | null;
  /** ops not yet sent + begins waiting for their commit */
  queueDepth: number;
  pendingBegins: number;
  begins: number;
}

/** The worker side: a JournalWriter whose store lives in another process. */
export class RemoteJournal extends EventEmitter implements JournalWriter {
  private nextLid = 1;
  private outbox: RemoteOp[] = [];
  private flushQueued = false;
  private lazyTimer: NodeJS.Timeout | null = null;
  private readonly pending = new Map<number, Pending>();
  private _healthy = true;
  private lastError: string | null = null;
  private closing = false;
  private disconnected = false;
  private begins = 0;
  private drained: Array<() => void> = [];

  /**
   * `send` returns false (or throws) when the channel is gone. Begins go out at the end of the
   * event-loop turn (their caller waits for the commit); connected/finish ops wait up to
   * `lazyMs` for a message to ride on, since one IPC message per op costs more CPU than the op.
   */
  constructor(private readonly send: (m: ToJournalHost) => boolean | void, private readonly lazyMs = 5) {
    super();
  }

  get healthy(): boolean {
    return this._healthy && !this.disconnected;
  }

  begin(open: JournalOpen): Promise<JournalHandle> {
    if (!this.healthy || this.closing) {
      return Promise.reject(new JournalDownError(this.closing ? 'journal is closing'
        : `journal cannot be written: ${this.lastError ?? 'unknown error'}`));
    }
    const lid = this.nextLid++;
    this.begins++;
    this.push([0, lid, open]);
    return new Promise<JournalHandle>((resolve, reject) => {
      this.pending.set(lid, { resolve, reject });
    });
  }

  /** @internal */
  push(op: RemoteOp): void {
    if (this.disconnected) return;
    this.outbox.push(op);
    if (this.flushQueued) return;
    if (op[0] === 0 || this.closing || this.lazyMs <= 0) {
      this.flushQueued = true;
      setImmediate(() => this.flush());
    } else if (this.lazyTimer === null) {
      this.lazyTimer = setTimeout(() => this.flush(), this.lazyMs);
    }
  }

  /** Sends what is queued now (one message). */
  flush(): void {
    this.flushQueued = false;
    if (this.lazyTimer !== null) {
      clearTimeout(this.lazyTimer);
      this.lazyTimer = null;
    }
    if (this.outbox.length === 0 || this.disconnected) return;
    const ops = this.outbox;
    this.outbox = [];
    let ok: boolean | void;
    try {
      ok = this.send({ t: 'j.ops', ops });
    } catch {
      ok = false;
    }
    if (ok === false) this.onDisconnect('journal channel to the primary process is closed');
  }

  /** Feed every message from the host here. */
  receive(m: FromJournalHost): void {
    if (m.t === 'j.ack') {
      for (const lid of m.ok) {
        const p = this.pending.get(lid);
        if (!p) continue;
        this.pending.delete(lid);
        p.resolve(new RemoteHandle(this, lid));
      }
      for (const [lid, msg] of m.fail) {
        const p = this.pending.get(lid);
        if (!p) continue;
        this.pending.delete(lid);
        p.reject(new JournalDownError(msg));
      }
      if (this.pending.size === 0) for (const fn of this.drained.splice(0)) fn();
    } else if (m.t === 'j.health') {
      this.setHealth(m.healthy, m.error);
    }
  }

  private setHealth(healthy: boolean, error: string | null): void {
    const before = this.healthy;
    this._healthy = healthy;
    this.lastError = healthy ? null : error;
    if (before !== this.healthy) this.emit('health', this.healthy, this.lastError);
  }

  /** The channel is gone: every waiting begin fails, and the journal stays unhealthy. */
  onDisconnect(why: string): void {
    if (this.disconnected) return;
    const before = this.healthy;
    this.disconnected = true;
    this.lastError = why;
    this.outbox = [];
    const err = new JournalDownError(why);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const fn of this.drained.splice(0)) fn();
    if (before) this.emit('health', false, why);
  }

  stats(): RemoteJournalStats {
    return {
      healthy: this.healthy,
      lastError: this.lastError,
      queueDepth: this.outbox.length + this.pending.size,
      pendingBegins: this.pending.size,
      begins: this.begins,
    };
  }

  /**
   * Refuses new begins, sends what is queued and waits (up to `timeoutMs`) for the begins in
   * flight to be answered. The store itself is closed by the primary.
   */
  async close(timeoutMs = 5000): Promise<void> {
    this.closing = true;
    this.flush();
    if (this.pending.size === 0 || this.disconnected) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      timer.unref();
      this.drained.push(() => { clearTimeout(timer); resolve(); });
    });
  }
}

/** What the host needs of the real journal (the `Journal` class of writer.ts satisfies it). */
export interface HostedJournal extends JournalWriter {
  on(event: 'health', listener: (healthy: boolean, error: string | null) => void): unknown;
}

interface Peer {
  send: (m: FromJournalHost) => boolean | void;
  handles: Map<number, JournalHandle>;
  opens: Map<number, JournalOpen>;
  ok: number[];
  fail: Array<[number, string]>;
  flushQueued: boolean;
  gone: boolean;
  /** begins sent to the journal, not yet committed */
  waiting: number;
}

/**
 * The primary side: applies the ops of any number of peers (workers) to one journal, answers
 * their begins in batches, broadcasts health, and closes what a dead peer left open.
 */
export class JournalHost {
  private readonly peers = new Map<string, Peer>();
  private healthy: boolean;
  private lastError: string | null = null;
  /** records finished for a peer that died (for logs and tests) */
  abandoned = 0;

  constructor(private readonly journal: HostedJournal) {
    this.healthy = journal.healthy;
    journal.on('health', (healthy, error) => {
      this.healthy = healthy;
      this.lastError = error;
      for (const p of this.peers.values()) this.sendTo(p, { t: 'j.health', healthy, error });
    });
  }

  /** A new peer; it is told the journal's health at once. */
  attach(id: string, send: (m: FromJournalHost) => boolean | void): void {
    const peer: Peer = { send, handles: new Map(), opens: new Map(), ok: [], fail: [], flushQueued: false, gone: false, waiting: 0 };
    this.peers.set(id, peer);
    this.sendTo(peer, { t: 'j.health', healthy: this.healthy, error: this.lastError });
  }

  /** Records open for a peer right now (begun and not finished). */
  openRecords(id: string): number {
    const p = this.peers.get(id);
    return p ? p.handles.size + p.waiting : 0;
  }

  receive(id: string, m: ToJournalHost): void {
    const peer = this.peers.get(id);
    if (!peer || peer.gone || m.t !== 'j.ops') return;
    for (const op of m.ops) {
      switch (op[0]) {
        case 0: this.begin(peer, op[1], op[2]); break;
        case 1: peer.handles.get(op[1])?.connected(op[2]); break;
        case 2: {
          const h = peer.handles.get(op[1]);
          if (h) {
            peer.handles.delete(op[1]);
            peer.opens.delete(op[1]);
            h.finish(op[2]);
          }
          break;
        }
        default: break;
      }
    }
  }

  private begin(peer: Peer, lid: number, open: JournalOpen): void {
    peer.waiting++;
    peer.opens.set(lid, open);
    this.journal.begin(open).then((h) => {
      peer.waiting--;
      if (peer.gone) {
        this.abandon(h, open);
        return;
      }
      peer.handles.set(lid, h);
      peer.ok.push(lid);
      this.schedule(peer);
    }, (err: Error) => {
      peer.waiting--;
      peer.opens.delete(lid);
      if (peer.gone) return;
      peer.fail.push([lid, err.message]);
      this.schedule(peer);
    });
  }

  private schedule(peer: Peer): void {
    if (peer.flushQueued) return;
    peer.flushQueued = true;
    setImmediate(() => {
      peer.flushQueued = false;
      if (peer.gone || (peer.ok.length === 0 && peer.fail.length === 0)) return;
      const m: JournalAckMessage = { t: 'j.ack', ok: peer.ok, fail: peer.fail };
      peer.ok = [];
      peer.fail = [];
      this.sendTo(peer, m);
    });
  }

  private sendTo(peer: Peer, m: FromJournalHost): void {
    if (peer.gone) return;
    try {
      peer.send(m);
    } catch {
      // the peer is going away; its exit is handled by detach()
    }
  }

  /**
   * The peer is gone (exited or stopped). Every record it left open is finished now with reason
   * 'worker-exit'; begins still waiting for their commit are finished when they commit.
   * Returns how many records were finished now.
   */
  detach(id: string, reason = WORKER_EXIT_REASON): number {
    const peer = this.peers.get(id);
    if (!peer) return 0;
    this.peers.delete(id);
    peer.gone = true;
    let n = 0;
    for (const [lid, h] of peer.handles) {
      this.abandon(h, peer.opens.get(lid) ?? null, reason);
      n++;
    }
    peer.handles.clear();
    peer.opens.clear();
    return n;
  }

  /** An allowed record becomes 'error' (the exchange was cut); a refusal keeps its decision. */
  private abandon(h: JournalHandle, open: JournalOpen | null, reason = WORKER_EXIT_REASON): void {
    this.abandoned++;
    const decision: JournalDecision = open === null || open.decision === 'allow' ? 'error' : open.decision;
    h.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: null, bytesIn: 0, bytesOut: 0, decision, reason });
  }
}
