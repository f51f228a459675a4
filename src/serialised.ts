/**
 * One reload at a time: a call while one runs queues exactly one more run (with the latest
 * reason), never a pile of them (a burst of SIGHUPs, an index replaced during a reload).
 * `task` must not throw: it reports its own failures.
 */
export function serialised(task: (why: string) => Promise<void>): (why: string) => void {
  let running = false;
  let again: string | null = null;
  const run = (why: string): void => {
    if (running) {
      again = why;
      return;
    }
    running = true;
    void task(why).finally(() => {
      running = false;
      if (again !== null) {
        const next = again;
        again = null;
        run(next);
      }
    });
  };
  return run;
}
