/**
 * Durable file writes, one way for every module that must survive a power cut or a kill
 * (list index, bundles and feed, update state, DASEN and journal keys, the school CA).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface WriteOptions {
  /** set exactly `mode`, whatever the umask (keys: 0600 and nothing else) */
  exactMode?: boolean;
}

/** Creates `file` (never an existing one: 'wx'), writes all of `data`, fsyncs, closes. */
export function writeFileSynced(file: string, data: Buffer | string, mode: number, opts: WriteOptions = {}): void {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const fd = fs.openSync(file, 'wx', mode);
  try {
    if (opts.exactMode) fs.fchmodSync(fd, mode);
    let off = 0;
    while (off < bytes.length) off += fs.writeSync(fd, bytes, off, bytes.length - off);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Replaces `file` through a temp file beside it (written and fsynced, then renamed over): a
 * reader sees the old content or the new, never a part. The folder is not fsynced here.
 */
export function replaceFile(file: string, data: Buffer | string, mode = 0o644, opts: WriteOptions = {}): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    writeFileSynced(tmp, data, mode, opts);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/** replaceFile, then fsync of the folder so that the rename itself is durable. */
export function writeFileAtomic(file: string, data: Buffer | string, mode = 0o644, opts: WriteOptions = {}): void {
  replaceFile(file, data, mode, opts);
  fsyncPath(path.dirname(file));
}

/** fsync of a file or a folder by path. */
export function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
