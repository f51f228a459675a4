/**
 * Signing and verification of the DASEN channel's documents (feed pointer, bundle manifests).
 *
 * Keys are Ed25519 (node:crypto). A key id is the SHA-256 (hex) of the public key's SPKI DER
 * encoding, so the same key always has the same id whatever its PEM spelling.
 *
 * Envelope layout (one JSON file, after DSSE): the signature travels with the exact bytes it
 * covers, so a CDN can never serve a fresh document with a stale signature file or the reverse.
 *
 *   {
 *     "payloadType": "gardefou-feed" | "gardefou-manifest",
 *     "payload":     "<the document, itself JSON, as a string>",
 *     "signatures":  [ { "keyid": "<64 hex>", "sig": "<base64 Ed25519 signature>" }, ... ]
 *   }
 *
 * Signed bytes = "gardefou-signed-v1\0" + payloadType + "\0" + payload (UTF-8). The type is
 * inside the signed bytes so a feed signature can never pass for a manifest signature.
 * A document is accepted when at least one signature is valid and made by a pinned key.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { writeFileSynced } from '../fsync';
import { errorMessage, GardefouError, InputError } from '../errors';

export const PAYLOAD_TYPES = ['gardefou-feed', 'gardefou-manifest'] as const;
export type PayloadType = (typeof PAYLOAD_TYPES)[number];

/**
 * Why an update was refused or failed: a small table of stable names (status, logs, metrics).
 * The first group is about content (a possible attack), the second about the network.
 */
export const Refusal = {
  malformed: 'malformed',
  unknownKey: 'unknown-key',
  badSignature: 'bad-signature',
  rollback: 'rollback',
  expired: 'expired',
  hashMismatch: 'hash-mismatch',
  sizeMismatch: 'size-mismatch',
  tooLarge: 'too-large',
  mixAndMatch: 'mix-and-match',
  compile: 'compile-failed',
  policy: 'bad-policy',
  network: 'network',
  timeout: 'timeout',
  httpStatus: 'http-status',
  busy: 'busy',
  io: 'io',
} as const;
export type RefusalCode = (typeof Refusal)[keyof typeof Refusal];

/** An update refused (or failed) for a stated reason; the last good lists stay live. */
export class UpdateRefusedError extends GardefouError {
  readonly reason: RefusalCode;
  constructor(reason: RefusalCode, message: string, options?: { cause?: unknown }) {
    super('GARDEFOU_UPDATE_REFUSED', message, options);
    this.name = 'UpdateRefusedError';
    this.reason = reason;
  }
}

export interface Envelope {
  payloadType: PayloadType;
  payload: string;
  signatures: Array<{ keyid: string; sig: string }>;
}

export interface TrustedKey {
  keyid: string;
  key: crypto.KeyObject;
  /** where it came from (file name), for messages */
  source: string;
}

export function keyId(pub: crypto.KeyObject): string {
  return crypto.createHash('sha256').update(pub.export({ type: 'spki', format: 'der' })).digest('hex');
}

/** Writes DIR/dasen.key (PKCS#8 PEM, mode 0600) and DIR/dasen.pub (SPKI PEM); refuses to overwrite. */
export function generateKeyPair(dir: string): { keyFile: string; pubFile: string; keyid: string } {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keyFile = `${dir}/dasen.key`;
  const pubFile = `${dir}/dasen.pub`;
  for (const f of [keyFile, pubFile]) {
    if (fs.existsSync(f)) throw new InputError(`writing key pair: ${f} already exists (move it away first; a key is never overwritten)`);
  }
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const pubPem = publicKey.export({ type: 'spki', format: 'pem' }) as string;
  // 'wx': never follow or reuse an existing file; the private key gets exactly 0600
  writeFileSynced(keyFile, keyPem, 0o600, { exactMode: true });
  writeFileSynced(pubFile, pubPem, 0o644);
  return { keyFile, pubFile, keyid: keyId(publicKey) };
}

export function loadPrivateKey(file: string): { key: crypto.KeyObject; keyid: string } {
  let key: crypto.KeyObject;
  try {
    key = crypto.createPrivateKey(fs.readFileSync(file));
  } catch (err) {
    throw new InputError(`reading signing key ${file}: ${errorMessage(err)}`);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new InputError(`reading signing key ${file}: expected an ed25519 key, got ${key.asymmetricKeyType ?? 'unknown'}`);
  }
  return { key, keyid: keyId(crypto.createPublicKey(key)) };
}

export function loadPublicKey(file: string): TrustedKey {
  let key: crypto.KeyObject;
  try {
    key = crypto.createPublicKey(fs.readFileSync(file));
  } catch (err) {
    throw new InputError(`reading public key ${file}: ${errorMessage(err)}`);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new InputError(`reading public key ${file}: expected an ed25519 key, got ${key.asymmetricKeyType ?? 'unknown'}`);
  }
  return { keyid: keyId(key), key, source: file };
}

export function loadTrustedKeys(files: readonly string[]): Map<string, TrustedKey> {
  const map = new Map<string, TrustedKey>();
  for (const f of files) {
    const k = loadPublicKey(f);
    map.set(k.keyid, k);
  }
  return map;
}

function signedBytes(type: PayloadType, payload: string): Buffer {
  return Buffer.concat([Buffer.from(`gardefou-signed-v1\0${type}\0`, 'utf8'), Buffer.from(payload, 'utf8')]);
}

/** Serialises `doc` and signs it with every key given (several during a key rotation). */
export function signEnvelope(type: PayloadType, doc: unknown, keys: ReadonlyArray<{ key: crypto.KeyObject; keyid: string }>): string {
  const payload = JSON.stringify(doc, null, 1);
  const data = signedBytes(type, payload);
  const env: Envelope = {
    payloadType: type,
    payload,
    signatures: keys.map((k) => ({ keyid: k.keyid, sig: crypto.sign(null, data, k.key).toString('base64') })),
  };
  return JSON.stringify(env, null, 1) + '\n';
}

/**
 * Checks an envelope's shape and signatures and returns the parsed payload (still unvalidated:
 * the caller checks its fields) and the id of the key that vouched for it.
 * Order: shape, type, then signatures; the payload is parsed only once a signature holds.
 */
export function openEnvelope(
  bytes: Buffer | string,
  expectType: PayloadType,
  trusted: ReadonlyMap<string, TrustedKey>,
  what: string,
): { doc: unknown; keyid: string } {
  let env: unknown;
  try {
    env = JSON.parse(typeof bytes === 'string' ? bytes : bytes.toString('utf8'));
  } catch (err) {
    throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: not JSON (${errorMessage(err)})`);
  }
  if (!isObject(env) || typeof env['payload'] !== 'string' || typeof env['payloadType'] !== 'string' || !Array.isArray(env['signatures'])) {
    throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: not a signed envelope (payloadType, payload, signatures)`);
  }
  if (env['payloadType'] !== expectType) {
    throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: expected payloadType ${expectType}, got ${JSON.stringify(env['payloadType']).slice(0, 40)}`);
  }
  const payload = env['payload'];
  const data = signedBytes(expectType, payload);
  const seen: string[] = [];
  let badTrusted: string | null = null;
  for (const s of env['signatures'] as unknown[]) {
    if (!isObject(s) || typeof s['keyid'] !== 'string' || typeof s['sig'] !== 'string') {
      throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: a signature entry lacks keyid or sig`);
    }
    seen.push(s['keyid'].slice(0, 16));
    const k = trusted.get(s['keyid']);
    if (!k) continue;
    let ok = false;
    try {
      ok = crypto.verify(null, data, k.key, Buffer.from(s['sig'], 'base64'));
    } catch {
      ok = false;
    }
    if (ok) {
      let doc: unknown;
      try {
        doc = JSON.parse(payload);
      } catch (err) {
        throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: signed payload is not JSON (${errorMessage(err)})`);
      }
      return { doc, keyid: k.keyid };
    }
    badTrusted = k.keyid;
  }
  if (badTrusted) {
    throw new UpdateRefusedError(Refusal.badSignature, `checking ${what}: signature by trusted key ${badTrusted.slice(0, 16)} does not verify`);
  }
  throw new UpdateRefusedError(
    Refusal.unknownKey,
    `checking ${what}: signed by ${seen.length ? seen.join(', ') : 'no key'}, none of them trusted (trusted: ${[...trusted.keys()].map((k) => k.slice(0, 16)).join(', ') || 'none'})`,
  );
}

export function isObject(x: unknown): x is Record<string, unknown> {
  return x !== null && typeof x === 'object' && !Array.isArray(x);
}
