/**
 * Command-line entry: commander wiring only. Each command lives in its own file and exports
 * `register(program)`; commands parse flags, call modules, print. No business logic here.
 * Exit codes: 0 ok, 1 "no" answers (e.g. check: blocked; verify: altered), 2 bad input.
 */
import { Command, CommanderError } from 'commander';
import { GardefouError, errorMessage } from '../errors';
import * as ca from './ca';
import * as check from './check';
import * as dasen from './dasen';
import * as journal from './journal';
import * as lists from './lists';
import * as serve from './serve';
import * as update from './update';

const COMMANDS: Array<{ register(program: Command): void }> = [
  serve,
  journal,
  check,
  lists,
  dasen,
  update,
  ca,
  // further commands register here
];

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('gardefou')
    .description('web filter and connection journal for school internet gateways')
    .version(require('../../../package.json').version as string)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  for (const c of COMMANDS) c.register(program);
  return program;
}

export function main(argv: string[]): void {
  const program = buildProgram();
  program.parseAsync(argv).catch((err: unknown) => {
    process.exitCode = exitCodeFor(err);
    if (err instanceof CommanderError) return; // commander already printed its message
    process.stderr.write(`gardefou: ${errorMessage(err)}\n`);
    if (!(err instanceof GardefouError) && process.env['GARDEFOU_DEBUG']) console.error(err);
  });
}

function exitCodeFor(err: unknown): number {
  if (err instanceof CommanderError) {
    return err.exitCode === 0 ? 0 : 2;
  }
  return 2;
}
