/**
 * Child process for the crash tests (not a test file): runs one UpdateAgent check, prints each
 * apply phase on stdout, and stalls forever at the phase named in argv so the parent can
 * SIGKILL it exactly there.
 *   node child-apply.js '{"feed":..., "keys":[...], "stateDir":..., "stallAt":"compiled"}'
 */
import { UpdateAgent } from '../../src/lists/update';

interface Args {
  feed: string;
  keys: string[];
  stateDir: string;
  stallAt: string | null;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const keepAlive = setInterval(() => undefined, 1000);
const agent = new UpdateAgent({
  feed: args.feed,
  trustedKeys: args.keys,
  stateDir: args.stateDir,
  onPhase: async (phase) => {
    process.stdout.write(`phase ${phase}\n`);
    if (phase === args.stallAt) await new Promise(() => undefined);
  },
});
void agent.checkNow().then((r) => {
  process.stdout.write(`result ${JSON.stringify(r)}\n`);
  clearInterval(keepAlive);
});
