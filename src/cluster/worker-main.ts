/** Entry of a cluster worker process (cluster.setupPrimary exec): see worker.ts. */
import { errorMessage } from '../errors';
import { runWorker } from './worker';

runWorker().catch((err: unknown) => {
  process.stderr.write(`gardefou: worker: ${errorMessage(err)}\n`);
  process.exit(2);
});
