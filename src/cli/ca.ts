/**
 * `gardefou ca init [--out DIR] [--org NAME] [--force] [--json]`: creates the school's CA for
 * optional TLS interception (key 0600). `gardefou ca export [--dir DIR] [--der]`: prints the
 * certificate to deploy on the school's devices (PEM text, or DER bytes on stdout).
 * `gardefou ca info [--dir DIR] [--json]`: subject, fingerprint and validity.
 * The CA directory defaults to `ca/` beside the journal (config journal.path).
 */
import type { Command } from 'commander';
import * as path from 'node:path';
import { loadConfig } from '../config';
import { InputError } from '../errors';
import { caInfo, createCa, defaultCaDir, exportCa, type CaInfo } from '../tls/ca';

interface InitFlags { config?: string; out?: string; org?: string; force?: boolean; years?: string; json?: boolean }
interface ExportFlags { config?: string; dir?: string; der?: boolean }
interface InfoFlags { config?: string; dir?: string; json?: boolean }

export function register(program: Command): void {
  const ca = program.command('ca').description("the school's certificate authority for optional TLS interception");
  ca
    .command('init')
    .description('create the CA (RSA 2048, 10 years): DIR/ca.crt (deploy it) and DIR/ca.key (mode 0600, never leaves the gateway)')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--out <dir>', 'CA directory (default: ca/ beside the journal)')
    .option('--org <name>', "organisation shown in the certificate (the school's name)", 'gardefou')
    .option('--years <n>', 'validity in years (1 to 30)', '10')
    .option('--force', 'replace an existing CA (devices that trust the old one must be given the new one)')
    .option('--json', 'print one JSON object')
    .action((flags: InitFlags) => {
      const cfg = loadConfig(flags.config);
      const years = Number(flags.years ?? '10');
      if (!/^\d+$/.test(flags.years ?? '10')) throw new InputError(`ca init: --years: expected a whole number, got "${flags.years}"`);
      const info = createCa({
        dir: flags.out ? path.resolve(flags.out) : defaultCaDir(cfg),
        organisation: flags.org ?? 'gardefou',
        force: flags.force === true,
        years,
      });
      process.stdout.write(flags.json ? JSON.stringify(info) + '\n' : formatInfo(info, 'created'));
    });
  ca
    .command('export')
    .description('print the CA certificate to deploy (PEM; --der writes DER bytes to stdout)')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--dir <dir>', 'CA directory (default: ca/ beside the journal)')
    .option('--der', 'binary DER instead of PEM (Windows GPO, some MDMs)')
    .action((flags: ExportFlags) => {
      const cfg = loadConfig(flags.config);
      const dir = flags.dir ? path.resolve(flags.dir) : defaultCaDir(cfg);
      process.stdout.write(exportCa(dir, flags.der ? 'der' : 'pem'));
    });
  ca
    .command('info')
    .description('subject, SHA-256 fingerprint and validity of the CA')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--dir <dir>', 'CA directory (default: ca/ beside the journal)')
    .option('--json', 'print one JSON object')
    .action((flags: InfoFlags) => {
      const cfg = loadConfig(flags.config);
      const info = caInfo(flags.dir ? path.resolve(flags.dir) : defaultCaDir(cfg));
      process.stdout.write(flags.json ? JSON.stringify(info) + '\n' : formatInfo(info, 'in place'));
    });
}

function formatInfo(i: CaInfo, what: string): string {
  return [
    `CA ${what}: ${i.cert}`,
    `  key:         ${i.key} (mode 0600)`,
    `  subject:     ${i.subject}`,
    `  sha256:      ${i.fingerprint256}`,
    `  valid:       ${i.notBefore} to ${i.notAfter}`,
    '  deploy with: gardefou ca export > gardefou-ca.crt   (see docs/transparent.md)',
    '',
  ].join('\n');
}
