/**
 * Entry of the journal's background thread, started by the writer thread (writer-worker.ts):
 * keeps NAME.index.db up to date with the journal (index-db.ts), and checkpoints the journal's
 * WAL, both off the append path. (One thread for both: each thread is a V8 isolate, ~10 MB.)
 *
 * Checkpoints: PASSIVE (they never take the write lock) every `checkpointEveryMs`, on a
 * connection of their own, so the writer's commits never pay for copying the WAL into the
 * database and fsyncing it (the writer connection has wal_autocheckpoint = 0), and they go on
 * even when the index cannot be written.
 *
 * Loop: a step of up to `stepRows` records; again at once while behind, else after `idleMs`.
 * Every `purgeEveryMs`, entries of purged days are dropped. A failing step (disk full,
 * damaged index) is reported and retried after `retryMs`, reopening (and so rebuilding) the
 * index: the journal itself never depends on it.
 *
 * Messages in: { t: 'stop' }: a last catch-up bounded by `stopBudgetMs`, then close and exit.
 * Messages out: { t: 'indexed', watermark, caughtUp }, { t: 'index-error', message }, { t: 'stopped' }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { errorMessage } from '../errors';
import { IndexWriter } from './index-db';

export interface IndexerInit {
  indexFile: string;
  journalFile: string;
  journalId: string;
  group: string | null;
  stepRows: number;
  idleMs: number;
  retryMs: number;
  purgeEveryMs: number;
  stopBudgetMs: number;
  checkpointEveryMs: number;
}

export type FromIndexer =
  | { t: 'indexed'; watermark: number; caughtUp: boolean }
  | { t: 'index-error'; message: string }
  | { t: 'stopped' };

const port = parentPort;
if (!port) throw new Error('indexer-worker must run as a worker thread');
const init = workerData as IndexerInit;

let writer: IndexWriter | null = null;
let checkpointDb: Database.Database | null = null;

function checkpoint(): void {
  try {
    if (checkpointDb === null) {
      checkpointDb = new Database(init.journalFile, { fileMustExist: true });
      checkpointDb.pragma('busy_timeout = 0');
    }
    checkpointDb.pragma('wal_checkpoint(PASSIVE)');
  } catch {
    // the journal is gone or busy: the writer reports its own health; try again next time
    try {
      checkpointDb?.close();
    } catch {
      // nothing to close
    }
    checkpointDb = null;
  }
}
const checkpointTimer = setInterval(checkpoint, init.checkpointEveryMs);
let timer: NodeJS.Timeout | null = null;
let stopping = false;
let lastPurge = 0;
let wasCaughtUp = false;

function ensureWriter(): IndexWriter {
  if (writer === null) writer = new IndexWriter(init.indexFile, init.journalFile, init.journalId, init.group);
  return writer;
}

function schedule(ms: number): void {
  if (stopping) return;
  timer = ms === 0 ? (setImmediate(tick) as unknown as NodeJS.Timeout) : setTimeout(tick, ms);
}

function tick(): void {
  timer = null;
  if (stopping) return;
  try {
    const w = ensureWriter();
    const r = w.step(init.stepRows);
    if (Date.now() - lastPurge >= init.purgeEveryMs) {
      lastPurge = Date.now();
      w.purge();
    }
    if (r.caughtUp !== wasCaughtUp || r.indexed > 0) port!.postMessage({ t: 'indexed', watermark: r.watermark, caughtUp: r.caughtUp } satisfies FromIndexer);
    wasCaughtUp = r.caughtUp;
    schedule(r.caughtUp ? init.idleMs : 0);
  } catch (err) {
    port!.postMessage({ t: 'index-error', message: errorMessage(err) } satisfies FromIndexer);
    writer?.close();
    writer = null;
    schedule(init.retryMs);
  }
}

port.on('message', (m: { t: 'stop' }) => {
  if (m.t !== 'stop' || stopping) return;
  stopping = true;
  clearInterval(checkpointTimer);
  try {
    checkpointDb?.close();
  } catch {
    // closing a journal whose file vanished
  }
  checkpointDb = null;
  if (timer) {
    clearTimeout(timer);
    clearImmediate(timer as unknown as NodeJS.Immediate);
  }
  try {
    // leave the index caught up for the queries run while the service is stopped
    const t0 = Date.now();
    if (writer !== null || init.stopBudgetMs > 0) {
      const w = ensureWriter();
      while (Date.now() - t0 < init.stopBudgetMs && !w.step(init.stepRows).caughtUp);
    }
  } catch (err) {
    port.postMessage({ t: 'index-error', message: errorMessage(err) } satisfies FromIndexer);
  }
  writer?.close();
  writer = null;
  port.postMessage({ t: 'stopped' } satisfies FromIndexer);
  port.close();
});

schedule(0);
