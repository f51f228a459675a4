/**
 * Watches a compiled index file given as `lists`: replacing it (rename over, or a rewrite)
 * calls `onChange`, as SIGHUP would. A UT1 folder or tarball is not watched (compiling one
 * takes seconds; the operator reloads when done). Polling (fs.watchFile, 1 s): inotify would
 * lose the file across a rename-over.
 */
import * as fs from 'node:fs';

export interface IndexWatcher {
  /** watch `lists` instead of what was watched (a folder or a missing file: nothing) */
  watch(lists: string): void;
  close(): void;
}

export function watchIndexFile(onChange: () => void): IndexWatcher {
  let watched: string | null = null;
  const listener = (cur: fs.Stats, prev: fs.Stats) => {
    if (cur.ino !== prev.ino || cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size) onChange();
  };
  const close = () => {
    if (watched !== null) fs.unwatchFile(watched, listener);
    watched = null;
  };
  return {
    watch(lists: string) {
      close();
      let isFile = false;
      try {
        isFile = fs.statSync(lists).isFile() && !/\.(tar\.gz|tgz)$/.test(lists);
      } catch {
        return;
      }
      if (isFile) {
        fs.watchFile(lists, { interval: 1000, persistent: false }, listener);
        watched = lists;
      }
    },
    close,
  };
}
