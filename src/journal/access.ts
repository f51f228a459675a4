/**
 * Who may read the journal (CNIL 2021-122: only authorised accounts, every consultation traced):
 * root, the owner of the journal file (the service user), and members of journal.operatorGroup.
 * The operator recorded in the audit trail is the OS user (and the sudo caller when there is
 * one: `alice (sudo as root)`).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { GardefouError } from '../errors';
import { lookupGroup } from './store';

export class AccessError extends GardefouError {
  constructor(message: string) {
    super('GARDEFOU_ACCESS', message);
    this.name = 'AccessError';
  }
}

export function osUserName(): string {
  try {
    return os.userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}

/** The operator as recorded in audit entries and events. */
export function operatorName(): string {
  const me = osUserName();
  const sudo = process.env['SUDO_USER'];
  return sudo && sudo !== me ? `${sudo} (sudo as ${me})` : me;
}

/** Throws AccessError with a clear message when the current user may not read the journal. */
export function checkOperator(journalPath: string, operatorGroup: string | null): string {
  const uid = process.getuid?.() ?? 0;
  const who = operatorName();
  if (uid === 0) return who;
  let owner: number | null = null;
  try {
    owner = fs.statSync(journalPath).uid;
  } catch {
    // a missing journal is reported by whoever opens it
  }
  if (owner === uid) return who;
  if (operatorGroup === null) {
    throw new AccessError(`journal access refused for ${who}: only root and the service user may read ${journalPath} (set journal.operatorGroup to admit an operators group)`);
  }
  const g = lookupGroup(operatorGroup);
  if (!g) throw new AccessError(`journal access refused for ${who}: operator group "${operatorGroup}" (journal.operatorGroup) does not exist`);
  const groups = process.getgroups?.() ?? [];
  if (process.getgid?.() === g.gid || groups.includes(g.gid) || g.members.includes(osUserName())) return who;
  throw new AccessError(`journal access refused for ${who}: not a member of the operator group "${operatorGroup}" (journal.operatorGroup)`);
}
