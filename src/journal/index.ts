/** Public surface of the journal module (the proxy and the CLI import from here). */
export * from './types';
export { openJournal, Journal, JournalDownError, type JournalStats, type OpenJournalOptions } from './writer';
export type { PurgeResult } from './purge';
export { journalFiles, JournalError } from './store';
