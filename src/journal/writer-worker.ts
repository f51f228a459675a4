/**
 * Entry of the journal writer thread. Messages in (from writer.ts): ops batches, purge, close.
 * Messages out: ready / init-error, commit results (the proxy side settles begin() promises in
 * order from them), health changes, purge results, closed, log lines.
 *
 * Group commit: the proxy side gathers ops for `batchMs` and posts them as one message (see
 * writer.ts); this thread commits what it has received at the next turn of its event loop, so
 * messages that arrived during a long commit (a slow fsync) go into one transaction together. A purge runs one small chunk per turn of
 * this thread's event loop, so batches interleave with it (see purge.ts).
 */
import * as path from 'node:path';
import { Worker, parentPort, workerData } from 'node:worker_threads';
import { errorMessage } from '../errors';
import type { FromIndexer, IndexerInit } from './indexer-worker';
import { runPurgeChunked, type PurgeResult } from './purge';
import { SEAL_MS, WriterCore, type CommitResult, type CoreOptions, type Op } from './writer-core';

export interface WorkerInit {
  opts: CoreOptions;
  retryMs: number;
  /** how often the indexer looks for new records once caught up (ms) */
  indexIdleMs: number;
}

export type ToWorker =
  /** ops as one JSON array (Op[]): one string crosses the thread boundary as a copy, where an
   *  array of objects is cloned field by field, and JSON.parse rebuilds it faster in the writer */
  | { t: 'ops'; json: string }
  | { t: 'purge'; retentionDays: number; nowMs: number | null; chunkRows: number }
  | { t: 'close' };

export interface ReadyInfo {
  nextId: number;
  journalId: string;
  fingerprint: string;
  recovered: number;
  keyCreated: boolean;
  files: { db: string; key: string; pub: string; audit: string; head: string; index: string };
}

export type FromWorker =
  | ({ t: 'ready' } & ReadyInfo)
  | { t: 'init-error'; message: string }
  | ({ t: 'commit'; written: number; unsealed: number; pending: number; blocks: number } & CommitResult)
  | { t: 'health'; healthy: boolean; error: string | null }
  | { t: 'purged'; result: PurgeResult }
  | { t: 'purge-error'; message: string }
  | { t: 'index'; watermark: number; caughtUp: boolean }
  | { t: 'index-error'; message: string }
  | { t: 'closed'; ok: boolean; error: string | null };

const port = parentPort;
if (!port) throw new Error('writer-worker must run as a worker thread');
const init = workerData as WorkerInit;

let core: WriterCore;
try {
  core = new WriterCore(init.opts);
  const ready: FromWorker = {
    t: 'ready',
    nextId: core.nextId,
    journalId: core.journalId,
    fingerprint: core.signer.fingerprint,
    recovered: core.recovered,
    keyCreated: core.keyCreated,
    files: core.files,
  };
  port.postMessage(ready);
  start(core);
} catch (err) {
  port.postMessage({ t: 'init-error', message: errorMessage(err) } satisfies FromWorker);
}

/** The requisition indexes and the WAL checkpoints run in a thread of their own (indexer-worker.ts). */
function startIndexer(c: WriterCore, p: NonNullable<typeof port>): Worker {
  const init2: IndexerInit = {
    indexFile: c.files.index, journalFile: c.files.db, journalId: c.journalId, group: c.opts.operatorGroup,
    stepRows: 20_000, idleMs: init.indexIdleMs, retryMs: 5000, purgeEveryMs: 3_600_000, stopBudgetMs: 1000, checkpointEveryMs: 200,
  };
  // a small young generation: this thread allocates little, and its heap is resident memory
  const w = new Worker(path.join(__dirname, 'indexer-worker.js'), { workerData: init2, resourceLimits: { maxYoungGenerationSizeMb: 4 } });
  w.on('message', (m: FromIndexer) => {
    if (m.t === 'indexed') p.postMessage({ t: 'index', watermark: m.watermark, caughtUp: m.caughtUp } satisfies FromWorker);
    else if (m.t === 'index-error') p.postMessage({ t: 'index-error', message: m.message } satisfies FromWorker);
  });
  w.on('error', (err) => p.postMessage({ t: 'index-error', message: `indexer thread failed: ${err.message}` } satisfies FromWorker));
  w.unref();
  return w;
}

function start(c: WriterCore): void {
  const p = port!;
  c.db.pragma('wal_autocheckpoint = 0');
  const indexer = startIndexer(c, p);
  let batchTimer: NodeJS.Timeout | null = null;
  let sealTimer: NodeJS.Timeout | null = null;
  let retryTimer: NodeJS.Timeout | null = null;
  let closing = false;
  let purging = false;

  const post = (r: CommitResult) => {
    const m: FromWorker = { t: 'commit', ...r, written: c.recordsWritten, unsealed: c.unsealedCount, pending: c.pending, blocks: c.blocksSealed };
    p.postMessage(m);
  };

  const afterCommit = (r: CommitResult, wasHealthy: boolean) => {
    post(r);
    if (wasHealthy !== c.healthy) p.postMessage({ t: 'health', healthy: c.healthy, error: c.lastError } satisfies FromWorker);
    if (!c.healthy) {
      if (!retryTimer && !closing) retryTimer = setTimeout(retry, init.retryMs);
      return;
    }
    armSeal();
  };

  const flush = () => {
    batchTimer = null;
    if (!c.due(Date.now())) {
      armSeal();
      return;
    }
    const was = c.healthy;
    afterCommit(c.commit(), was);
  };

  const armSeal = () => {
    if (sealTimer || batchTimer || closing || c.unsealedCount === 0 || !c.healthy) return;
    const wait = Math.max(0, SEAL_MS - (Date.now() - c.unsealedSince));
    sealTimer = setTimeout(() => {
      sealTimer = null;
      if (!batchTimer) flush();
    }, wait);
  };

  const retry = () => {
    retryTimer = null;
    if (closing) return;
    const was = c.healthy;
    afterCommit(c.retry(), was);
  };

  p.on('message', async (m: ToWorker) => {
    if (m.t === 'ops') {
      for (const op of JSON.parse(m.json) as Op[]) c.apply(op);
      if (!batchTimer && !closing) batchTimer = setTimeout(flush, 0);
    } else if (m.t === 'purge') {
      if (purging) {
        p.postMessage({ t: 'purge-error', message: 'a purge is already running' } satisfies FromWorker);
        return;
      }
      purging = true;
      runPurgeChunked(c.db, c.journalId, c.signer, {
        retentionDays: m.retentionDays,
        nowMs: m.nowMs ?? Date.now(),
        chunkRows: m.chunkRows,
        operator: 'serve',
      }, (fn) => setImmediate(fn), () => closing).then(
        (result) => p.postMessage({ t: 'purged', result } satisfies FromWorker),
        (err: unknown) => p.postMessage({ t: 'purge-error', message: errorMessage(err) } satisfies FromWorker),
      ).finally(() => {
        purging = false;
      });
    } else if (m.t === 'close') {
      closing = true;
      for (const t of [batchTimer, sealTimer, retryTimer]) if (t) clearTimeout(t);
      indexer.postMessage({ t: 'stop' });
      const exited = (w: Worker, ms: number) => new Promise<void>((resolve) => {
        w.once('exit', () => resolve());
        setTimeout(resolve, ms).unref();
      });
      await exited(indexer, 3000);
      const r = c.close();
      post(r);
      p.postMessage({ t: 'closed', ok: r.ok, error: r.error ?? null } satisfies FromWorker);
      p.close();
    }
  });
}
