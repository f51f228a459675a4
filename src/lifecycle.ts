/**
 * The orderly stop of `serve`, one order for the single process (cli/serve.ts) and the cluster
 * primary (cluster/primary.ts): the update agent stops (no list swap during the stop), the
 * proxy drains (in-flight requests end, bounded by limits.shutdownGraceMs), then purge and the
 * admin listener stop, and the journal is flushed and sealed last, so every request served has
 * its record. A failure is logged and makes the exit code 1.
 */
import { errorMessage } from './errors';
import type { Journal } from './journal';
import type { Logger } from './log';

export interface StopParts {
  log: Logger;
  journal: Journal;
  agent: { stop(): Promise<void> } | null;
  admin: { close(): Promise<void> } | null;
  metrics: { close(): void };
  /** ends the proxy's traffic: its listeners (one process) or its workers (cluster) */
  drain(): Promise<void>;
}

export async function stopService(signal: string, p: StopParts): Promise<void> {
  p.log.info({ signal }, 'stopping');
  try {
    await p.agent?.stop();
    await p.drain();
    p.journal.stopPurge();
    if (p.admin) await p.admin.close();
    p.metrics.close();
    await p.journal.close();
    p.log.info('stopped');
  } catch (err) {
    p.log.error({ err: errorMessage(err) }, 'error while stopping');
    process.exitCode = 1;
  } finally {
    p.log.flush();
  }
}
