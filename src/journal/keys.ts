/**
 * The gateway's journal key: Ed25519, created on first start. The private key (PKCS#8 PEM) is
 * written 0600 and never leaves the gateway; the public key (SPKI PEM, 0644) is what an
 * investigator needs to check an export offline.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { errorMessage } from '../errors';
import { sha256 } from './record';
import { JournalError } from './store';
import { writeFileSynced } from '../fsync';

export interface Signer {
  sign(data: Buffer): Buffer;
  readonly publicKey: KeyObject;
  /** hex SHA-256 of the DER public key: names the key in manifests and events */
  readonly fingerprint: string;
}

export function fingerprintOf(pub: KeyObject): string {
  return sha256(pub.export({ type: 'spki', format: 'der' })).toString('hex');
}

/** Loads the key pair, creating it (private 0600, public 0644) when neither file exists. */
export function loadOrCreateKey(keyFile: string, pubFile: string): { signer: Signer; created: boolean } {
  let created = false;
  if (!fs.existsSync(keyFile)) {
    if (fs.existsSync(pubFile)) {
      throw new JournalError(`journal key ${keyFile} is missing but ${pubFile} exists: restore the private key (a new key would not match sealed blocks)`);
    }
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    fs.mkdirSync(path.dirname(keyFile), { recursive: true, mode: 0o750 });
    writeFileSynced(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600, { exactMode: true });
    writeFileSynced(pubFile, publicKey.export({ type: 'spki', format: 'pem' }) as string, 0o644);
    created = true;
  }
  return { signer: loadSigner(keyFile), created };
}

export function loadSigner(keyFile: string): Signer {
  let priv: KeyObject;
  try {
    priv = createPrivateKey(fs.readFileSync(keyFile));
  } catch (err) {
    throw new JournalError(`reading journal key ${keyFile}: ${errorMessage(err)}`, { cause: err });
  }
  if (priv.asymmetricKeyType !== 'ed25519') throw new JournalError(`journal key ${keyFile}: expected an ed25519 key, got ${priv.asymmetricKeyType ?? 'unknown'}`);
  const pub = createPublicKey(priv);
  return { sign: (data) => sign(null, data, priv), publicKey: pub, fingerprint: fingerprintOf(pub) };
}

export function loadPublicKey(pubFile: string): KeyObject {
  let pub: KeyObject;
  try {
    pub = createPublicKey(fs.readFileSync(pubFile));
  } catch (err) {
    throw new JournalError(`reading public key ${pubFile}: ${errorMessage(err)}`, { cause: err });
  }
  if (pub.asymmetricKeyType !== 'ed25519') throw new JournalError(`public key ${pubFile}: expected an ed25519 key, got ${pub.asymmetricKeyType ?? 'unknown'}`);
  return pub;
}

export function verifySig(pub: KeyObject, data: Buffer, sig: Buffer): boolean {
  try {
    return verify(null, data, pub, sig);
  } catch {
    return false;
  }
}
