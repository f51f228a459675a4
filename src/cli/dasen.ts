/**
 * `gardefou dasen ...`: the DASEN side of the list channel (docs/dasen-channel.md).
 *   keygen  --out DIR                           DIR/dasen.key (0600) + DIR/dasen.pub
 *   publish --source UT1 --policy FILE --key KEY --feed DIR [--expires DAYS] [--delta] [--keep N]
 *   verify  --feed DIR [--pub KEY...]           exit 0 sound, 1 problems found, 2 bad input
 */
import type { Command } from 'commander';
import { loadConfig } from '../config';
import { InputError } from '../errors';
import { publish, PublishReport, verifyFeed } from '../lists/feed';
import { generateKeyPair, loadTrustedKeys } from '../lists/sign';

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function positiveInt(flag: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InputError(`flag ${flag}: expected a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

export function register(program: Command): void {
  const dasen = program.command('dasen').description('the DASEN side of the signed list channel: keys, publishing, verification');
  dasen
    .command('keygen')
    .description('create an Ed25519 signing key pair: DIR/dasen.key (private, 0600) and DIR/dasen.pub (give it to gateways)')
    .requiredOption('--out <dir>', 'folder for the key pair (created; existing keys are never overwritten)')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--json', 'print one JSON object')
    .action((flags: { out: string; config?: string; json?: boolean }) => {
      loadConfig(flags.config);
      const r = generateKeyPair(flags.out);
      process.stdout.write(flags.json ? JSON.stringify(r) + '\n' : `private key ${r.keyFile} (keep it offline)\npublic key  ${r.pubFile}\nkey id      ${r.keyid}\n`);
    });
  dasen
    .command('publish')
    .description('sign the lists and the policy into a new bundle (or an emergency delta) of a static feed folder')
    .requiredOption('--source <dir>', 'UT1 lists folder (blacklists/)')
    .requiredOption('--policy <file>', 'DASEN policy JSON ({} for the defaults)')
    .requiredOption('--key <file>', 'private signing key; repeat during a key rotation to sign with both', collect)
    .requiredOption('--feed <dir>', 'feed folder served to gateways (created)')
    .option('--expires <days>', 'days before gateways refuse this bundle as stale (default 30)')
    .option('--delta', 'publish only the changes since the last full bundle (emergency additions)')
    .option('--keep <n>', 'full bundles kept in the folder, with their deltas (default 3)')
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--json', 'print the report as one JSON object')
    .action(async (flags: { source: string; policy: string; key: string[]; feed: string; expires?: string; delta?: boolean; keep?: string; config?: string; json?: boolean }) => {
      loadConfig(flags.config);
      const r = await publish({
        source: flags.source,
        policy: flags.policy,
        keys: flags.key,
        feed: flags.feed,
        expiresDays: positiveInt('--expires', flags.expires, 30),
        delta: flags.delta === true,
        keep: positiveInt('--keep', flags.keep, 3),
      });
      process.stdout.write(flags.json ? JSON.stringify(r) + '\n' : formatPublish(r));
    });
  dasen
    .command('verify')
    .description('check a feed folder as a gateway would: signatures, hashes, sizes, delta on its base, expiry')
    .requiredOption('--feed <dir>', 'feed folder')
    .option('--pub <file>', 'public key to trust (repeatable; default: update.trustedKeys of the config)', collect)
    .option('--config <file>', 'JSON configuration file (default: embedded defaults)')
    .option('--json', 'print one JSON object')
    .action(async (flags: { feed: string; pub?: string[]; config?: string; json?: boolean }) => {
      const cfg = loadConfig(flags.config);
      const keys = flags.pub ?? cfg.update.trustedKeys;
      if (keys.length === 0) throw new InputError('verify: no public key: give --pub FILE or update.trustedKeys in the config');
      const r = await verifyFeed(flags.feed, loadTrustedKeys(keys));
      if (flags.json) process.stdout.write(JSON.stringify(r) + '\n');
      else {
        const lines = [`feed     ${flags.feed}: ${r.ok ? 'OK' : 'PROBLEMS'}`];
        if (r.serial !== null) lines.push(`serial   ${r.serial}, expires ${r.expires}, signed by ${r.keyid?.slice(0, 16)}`);
        if (r.full) lines.push(`full     serial ${r.full.serial}: ${r.full.files} files, ${r.full.archiveBytes} bytes`);
        if (r.delta) lines.push(`delta    serial ${r.delta.serial} over ${r.delta.base}: ${r.delta.files} files changed, ${r.delta.removed} removed, ${r.delta.archiveBytes} bytes`);
        lines.push(`kept     ${r.kept} older manifests`);
        for (const p of r.problems) lines.push(`problem  ${p}`);
        process.stdout.write(lines.join('\n') + '\n');
      }
      if (!r.ok) process.exitCode = 1;
    });
}

function formatPublish(r: PublishReport): string {
  const lines = [
    `published ${r.kind} bundle serial ${r.serial}${r.base !== null ? ` over ${r.base}` : ''}`,
    `expires   ${r.expires}`,
    `signed by ${r.keyids.map((k) => k.slice(0, 16)).join(', ')}`,
    `archive   ${r.archive.path}: ${r.archive.size} bytes (${r.archive.unpackedSize} unpacked)`,
    `manifest  ${r.manifest.path}: ${r.manifest.size} bytes, ${r.files} files, ${r.categories} categories`,
  ];
  if (r.kind === 'full') lines.push(`entries   ${r.domains} domains, ${r.urls} urls`);
  if (r.changes) lines.push(`changes   +${r.changes.added} -${r.changes.removed} entries, ${r.changes.replaced} files replaced, ${r.changes.deleted} removed`);
  lines.push(`download  ${r.downloadBytes} bytes for a gateway on the previous bundle`, `time      ${Math.round(r.ms)} ms`);
  if (r.pruned.length) lines.push(`pruned    ${r.pruned.length} old files`);
  return lines.join('\n') + '\n';
}
