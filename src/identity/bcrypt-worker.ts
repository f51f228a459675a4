/**
 * Worker thread of bcrypt-verifier.ts: checks one password against one bcrypt hash at a time,
 * off the proxy's event loop. Messages in: {id, password, hash}; out: {id, ok}.
 */
import * as bcrypt from 'bcryptjs';
import { parentPort } from 'node:worker_threads';

const port = parentPort;
if (port === null) throw new Error('bcrypt-worker runs as a worker thread only');
port.on('message', (m: { id: number; password: string; hash: string }) => {
  let ok = false;
  try {
    ok = bcrypt.compareSync(m.password, m.hash);
  } catch {
    ok = false; // a malformed hash never matches (the loader refuses those anyway)
  }
  port.postMessage({ id: m.id, ok });
});
