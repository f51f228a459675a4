/**
 * The journal as the proxy sees it: `openJournal(cfg, log)` starts the writer thread and returns
 * a `Journal` (JournalWriter + purge scheduling + stats).
 *
 * Why a thread: better-sqlite3 is synchronous and every commit is fsynced (synchronous=FULL).
 * On the event loop that would stall every request for the length of an fsync each `batchMs`;
 * in the worker only begin() latency pays for it (bench/journal-bench.ts measures both).
 *
 * Ids are assigned here (the worker tells the next free id at start), so begin() can hand out
 * a handle without a round trip. Group commit starts here: the first op after an idle period
 * arms a `batchMs` timer, and everything enqueued until it fires crosses to the writer as one
 * message, which the writer commits as one transaction. (Posting once per event-loop turn cost
 * the proxy's main thread a postMessage every few requests: ~6 % of its CPU under load.)
 */
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { JournalConfig } from '../config';
import { GardefouError } from '../errors';
import type { Logger } from '../log';
import { DEFAULT_CHUNK_ROWS, type PurgeResult } from './purge';
import type { JournalClose, JournalHandle, JournalOpen, JournalWriter } from './types';
import { beginOp, finishOp, type Op } from './writer-core';
import type { FromWorker, ReadyInfo, ToWorker, WorkerInit } from './writer-worker';

/** Raised by begin() when the journal cannot record: the proxy refuses the request (fail-closed). */
export class JournalDownError extends GardefouError {
  constructor(message: string) {
    super('GARDEFOU_JOURNAL_DOWN', message);
    this.name = 'JournalDownError';
  }
}

export interface JournalStats {
  healthy: boolean;
  lastError: string | null;
  /** ops waiting to be posted + begins waiting for their commit + rows pending in the writer */
  queueDepth: number;
  pendingBegins: number;
  recordsWritten: number;
  commits: number;
  commitFailures: number;
  lastCommitMs: number;
  maxCommitMs: number;
  /** begin() to resolution, ms: last and max since start */
  lastBeginMs: number;
  maxBeginMs: number;
  blocksSealed: number;
  unsealed: number;
  purges: number;
  purgedRecords: number;
  lastPurge: PurgeResult | null;
  /** requisition index (index-db.ts): records up to this id are indexed */
  indexWatermark: number;
  indexCaughtUp: boolean;
  indexError: string | null;
  /** records begun and not yet indexed; null until the indexer's first report */
  indexLag: number | null;
}

interface Waiter {
  id: number;
  t0: number;
  resolve(h: JournalHandle): void;
  reject(err: Error): void;
}

export interface OpenJournalOptions {
  /** delay between retries after a failed commit (default 1000 ms) */
  retryMs?: number;
  /** how often the indexer looks for new records once caught up (default 500 ms) */
  indexIdleMs?: number;
}

class Handle implements JournalHandle {
  private done = false;
  constructor(private readonly j: Journal, readonly id: number) {}
  connected(info: { destIp: string | null; egressIp: string | null; egressPort: number | null }): void {
    if (this.done) return;
    this.j.enqueue([1, this.id, info.destIp, info.egressIp, info.egressPort]);
  }
  finish(close: JournalClose): void {
    if (this.done) return;
    this.done = true;
    this.j.enqueue(finishOp(this.id, close));
  }
}

export class Journal extends EventEmitter implements JournalWriter {
  readonly failOpen: boolean;
  readonly journalId: string;
  readonly fingerprint: string;
  readonly files: ReadyInfo['files'];
  readonly recovered: number;
  private nextId: number;
  private outbox: Op[] = [];
  private flushQueued = false;
  private waiters: Waiter[] = [];
  private _healthy = true;
  private closing = false;
  private closed: Promise<void> | null = null;
  private purgeTimer: NodeJS.Timeout | null = null;
  private purgeWaiters: Array<{ resolve(r: PurgeResult): void; reject(e: Error): void }> = [];
  private readonly s: JournalStats = {
    healthy: true, lastError: null, queueDepth: 0, pendingBegins: 0, recordsWritten: 0, commits: 0, commitFailures: 0,
    lastCommitMs: 0, maxCommitMs: 0, lastBeginMs: 0, maxBeginMs: 0, blocksSealed: 0, unsealed: 0, purges: 0,
    purgedRecords: 0, lastPurge: null, indexWatermark: 0, indexCaughtUp: false, indexError: null, indexLag: null,
  };
  private indexReported = false;
  private workerPending = 0;
  private exited = false;

  /** @internal use openJournal() */
  constructor(private readonly worker: Worker, ready: ReadyInfo, private readonly cfg: JournalConfig, private readonly log: Logger) {
    super();
    this.failOpen = cfg.failOpen;
    this.journalId = ready.journalId;
    this.fingerprint = ready.fingerprint;
    this.files = ready.files;
    this.recovered = ready.recovered;
    this.nextId = ready.nextId;
    worker.on('message', (m: FromWorker) => this.onMessage(m));
    worker.on('error', (err) => this.onWorkerDeath(`journal writer thread failed: ${err.message}`));
    worker.on('exit', (code) => {
      this.exited = true;
      if (!this.closing) this.onWorkerDeath(`journal writer thread exited (code ${code})`);
    });
  }

  get healthy(): boolean {
    return this._healthy;
  }

  begin(open: JournalOpen): Promise<JournalHandle> {
    if (!this._healthy || this.closing) {
      return Promise.reject(new JournalDownError(this.closing ? 'journal is closing' : `journal cannot be written: ${this.s.lastError ?? 'unknown error'}`));
    }
    const id = this.nextId++;
    this.enqueue(beginOp(id, open));
    return new Promise<JournalHandle>((resolve, reject) => {
      this.waiters.push({ id, t0: performance.now(), resolve, reject });
    });
  }

  /** @internal */
  enqueue(op: Op): void {
    if (this.closed && !this.closing) return;
    this.outbox.push(op);
    if (!this.flushQueued) {
      this.flushQueued = true;
      setTimeout(() => this.flushOutbox(), this.cfg.batchMs);
    }
  }

  private flushOutbox(): void {
    this.flushQueued = false;
    if (this.outbox.length === 0) return;
    const ops = this.outbox;
    this.outbox = [];
    this.post({ t: 'ops', json: JSON.stringify(ops) });
  }

  private post(m: ToWorker): void {
    try {
      this.worker.postMessage(m);
    } catch (err) {
      this.onWorkerDeath(`journal writer thread unreachable: ${(err as Error).message}`);
    }
  }

  private onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'commit': {
        this.s.commits++;
        this.s.lastCommitMs = m.ms;
        if (m.ms > this.s.maxCommitMs) this.s.maxCommitMs = m.ms;
        this.s.recordsWritten = m.written;
        this.s.blocksSealed = m.blocks;
        this.s.unsealed = m.unsealed;
        this.workerPending = m.pending;
        const settled = this.waiters.splice(0, m.begins);
        const now = performance.now();
        if (m.ok) {
          for (const w of settled) {
            const dt = now - w.t0;
            this.s.lastBeginMs = dt;
            if (dt > this.s.maxBeginMs) this.s.maxBeginMs = dt;
            w.resolve(new Handle(this, w.id));
          }
        } else {
          this.s.commitFailures++;
          this.setHealth(false, m.error ?? 'commit failed');
          const err = new JournalDownError(`journal cannot be written: ${m.error ?? 'commit failed'}`);
          for (const w of settled) w.reject(err);
        }
        break;
      }
      case 'health':
        this.setHealth(m.healthy, m.error);
        break;
      case 'index':
        this.indexReported = true;
        this.s.indexWatermark = m.watermark;
        this.s.indexCaughtUp = m.caughtUp;
        if (this.s.indexError !== null) this.log.info('journal index: updating again');
        this.s.indexError = null;
        break;
      case 'index-error':
        // the records are safe; only requisition queries get slower until it recovers
        if (m.message !== this.s.indexError) this.log.error({ err: m.message }, 'journal index cannot be updated (records are kept; queries read them unindexed)');
        this.s.indexError = m.message;
        break;
      case 'purged': {
        this.s.purges++;
        this.s.purgedRecords += m.result.deleted;
        this.s.lastPurge = m.result;
        if (m.result.blocks > 0) this.log.info({ purge: m.result }, 'journal purge done');
        for (const w of this.purgeWaiters.splice(0)) w.resolve(m.result);
        break;
      }
      case 'purge-error':
        this.log.error({ err: m.message }, 'journal purge failed');
        for (const w of this.purgeWaiters.splice(0)) w.reject(new GardefouError('GARDEFOU_JOURNAL', `journal purge: ${m.message}`));
        break;
      default:
        break;
    }
  }

  private setHealth(healthy: boolean, error: string | null): void {
    if (healthy === this._healthy) return;
    this._healthy = healthy;
    this.s.healthy = healthy;
    this.s.lastError = error;
    if (healthy) this.log.info('journal writable again: accepting records');
    else this.log.error({ err: error, failOpen: this.failOpen }, this.failOpen ? 'journal cannot be written: traffic continues unrecorded (journal.failOpen)' : 'journal cannot be written: refusing traffic until it recovers');
    this.emit('health', healthy, error);
  }

  private onWorkerDeath(msg: string): void {
    if (this.closing && this.closed === null) return;
    this.setHealth(false, msg);
    this.s.lastError = msg;
    const err = new JournalDownError(msg);
    for (const w of this.waiters.splice(0)) w.reject(err);
    for (const w of this.purgeWaiters.splice(0)) w.reject(err);
  }

  stats(): JournalStats {
    this.s.pendingBegins = this.waiters.length;
    this.s.queueDepth = this.outbox.length + this.waiters.length + this.workerPending;
    this.s.indexLag = this.indexReported ? Math.max(0, this.nextId - 1 - this.s.indexWatermark) : null;
    return { ...this.s };
  }

  /** Runs one purge now (in the writer thread, chunk by chunk between batches). */
  purgeNow(opts: { nowMs?: number; chunkRows?: number; retentionDays?: number } = {}): Promise<PurgeResult> {
    if (this.closing) return Promise.reject(new JournalDownError('journal is closing'));
    return new Promise<PurgeResult>((resolve, reject) => {
      this.purgeWaiters.push({ resolve, reject });
      this.post({ t: 'purge', retentionDays: opts.retentionDays ?? this.cfg.retentionDays, nowMs: opts.nowMs ?? null, chunkRows: opts.chunkRows ?? DEFAULT_CHUNK_ROWS });
    });
  }

  /** Purges every `intervalMs` (default hourly; first run after `firstDelayMs`, default 1 min). */
  startPurge(intervalMs = 3_600_000, firstDelayMs = 60_000): void {
    this.stopPurge();
    const run = (delay: number) => {
      this.purgeTimer = setTimeout(() => {
        this.purgeNow().catch(() => undefined).finally(() => {
          if (this.purgeTimer) run(intervalMs);
        });
      }, delay);
      this.purgeTimer.unref();
    };
    run(firstDelayMs);
  }

  stopPurge(): void {
    if (this.purgeTimer) clearTimeout(this.purgeTimer);
    this.purgeTimer = null;
  }

  /** Writes everything pending, seals it, closes the store and ends the writer thread. */
  close(): Promise<void> {
    if (this.closed) return this.closed;
    this.stopPurge();
    this.flushOutbox();
    this.closing = true;
    if (this.exited) {
      for (const w of this.waiters.splice(0)) w.reject(new JournalDownError('journal closed'));
      this.closed = Promise.resolve();
      return this.closed;
    }
    this.closed = new Promise<void>((resolve) => {
      const onMsg = (m: FromWorker) => {
        if (m.t !== 'closed') return;
        this.worker.off('message', onMsg);
        if (!m.ok) this.log.error({ err: m.error }, 'journal: final flush failed');
        else this.log.info({ records: this.s.recordsWritten }, 'journal closed');
        for (const w of this.waiters.splice(0)) w.reject(new JournalDownError('journal closed'));
        void this.worker.terminate().then(() => resolve(), () => resolve());
      };
      this.worker.on('message', onMsg);
      this.worker.once('exit', () => resolve());
      this.post({ t: 'close' });
    });
    return this.closed;
  }
}

/**
 * Opens (creating when missing) the journal at cfg.path and its key, seals what a crash left,
 * and starts the writer thread. Rejects with a GARDEFOU_JOURNAL error naming the file when the
 * journal cannot be opened.
 */
/**
 * Young generation of the writer thread, MiB. Its garbage is per batch (parsed ops, bound
 * parameters); V8's default would let it grow to tens of MiB of resident memory under load.
 */
const YOUNG_MB = 8;

export function openJournal(cfg: JournalConfig, log: Logger, opts: OpenJournalOptions = {}): Promise<Journal> {
  const init: WorkerInit = {
    opts: { path: cfg.path, keyFile: cfg.keyFile, operatorGroup: cfg.operatorGroup, failOpen: cfg.failOpen },
    retryMs: opts.retryMs ?? 1000,
    indexIdleMs: opts.indexIdleMs ?? 500,
  };
  const worker = new Worker(path.join(__dirname, 'writer-worker.js'), { workerData: init, resourceLimits: { maxYoungGenerationSizeMb: YOUNG_MB } });
  return new Promise<Journal>((resolve, reject) => {
    const onMsg = (m: FromWorker) => {
      if (m.t === 'ready') {
        cleanup();
        const j = new Journal(worker, m, cfg, log);
        if (m.keyCreated) log.info({ key: m.files.key, pub: m.files.pub, fingerprint: m.fingerprint }, 'journal key created');
        if (m.recovered > 0) log.warn({ sealed: m.recovered }, 'journal: sealed records left unsealed by an unclean stop');
        log.info({ path: m.files.db, journalId: m.journalId, batchMs: cfg.batchMs, retentionDays: cfg.retentionDays }, 'journal open');
        if (cfg.failOpen) log.warn('journal.failOpen is true: traffic continues unrecorded when the journal cannot be written');
        resolve(j);
      } else if (m.t === 'init-error') {
        cleanup();
        void worker.terminate();
        reject(new GardefouError('GARDEFOU_JOURNAL', m.message));
      }
    };
    const onErr = (err: Error) => {
      cleanup();
      reject(new GardefouError('GARDEFOU_JOURNAL', `starting the journal writer: ${err.message}`));
    };
    const cleanup = () => {
      worker.off('message', onMsg);
      worker.off('error', onErr);
    };
    worker.on('message', onMsg);
    worker.on('error', onErr);
  });
}
