/**
 * bcrypt checks off the event loop. bcryptjs's asynchronous compare yields only every 100 ms of
 * work (its MAX_EXECUTION_TIME), so one cost-10 check (~90 ms here) still holds the loop for its
 * whole length: 30 pupils logging in at 8:00 would stall every connection for seconds. So the
 * checks run in one worker thread (bcryptjs's compareSync there), one at a time, queued; the
 * proxy's loop only posts a message. One thread per process, shared across reloads, unref'd
 * while idle so it never keeps the process alive. If the thread cannot start (worker file
 * missing, e.g. running from sources) the async compare is used instead.
 */
import type * as Bcrypt from 'bcryptjs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

const WORKER_FILE = path.join(__dirname, 'bcrypt-worker.js');

class BcryptVerifier {
  private worker: Worker | null = null;
  private disabled = !fs.existsSync(WORKER_FILE);
  private readonly pending = new Map<number, (ok: boolean | Error) => void>();
  private seq = 0;

  compare(password: string, hash: string): Promise<boolean> {
    const w = this.ensure();
    if (w === null) return (require('bcryptjs') as typeof Bcrypt).compare(password, hash);
    const id = ++this.seq;
    return new Promise<boolean>((resolve, reject) => {
      this.pending.set(id, (r) => (r instanceof Error ? reject(r) : resolve(r)));
      if (this.pending.size === 1) w.ref(); // keep the process alive while a check is due
      w.postMessage({ id, password, hash });
    });
  }

  private ensure(): Worker | null {
    if (this.worker !== null) return this.worker;
    if (this.disabled) return null;
    let w: Worker;
    try {
      w = new Worker(WORKER_FILE);
    } catch {
      this.disabled = true;
      return null;
    }
    w.unref();
    w.on('message', (m: { id: number; ok: boolean }) => {
      const done = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (this.pending.size === 0) w.unref();
      done?.(m.ok === true);
    });
    const fail = (err: Error) => {
      if (this.worker === w) this.worker = null;
      const all = [...this.pending.values()];
      this.pending.clear();
      for (const done of all) done(err); // the caller reports "unavailable": never a yes
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`bcrypt worker exited (${code})`)));
    this.worker = w;
    return w;
  }
}

/** The process's one verifier. */
export const bcryptVerifier = new BcryptVerifier();
