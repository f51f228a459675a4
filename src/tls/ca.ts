/**
 * The school's certificate authority, for optional TLS interception: created once on the
 * gateway (`gardefou ca init`), its certificate deployed to the school's devices
 * (`gardefou ca export`), its key never leaving the gateway.
 *
 * Files in the CA directory (default: `ca/` beside the journal, e.g. var/ca):
 *   ca.crt   PEM certificate, 0644: what gets deployed
 *   ca.key   PEM PKCS#8 RSA private key, 0600: created with that mode (never world-readable,
 *            not even for an instant), written to a temp file, fsynced, renamed.
 *
 * Keys: RSA 2048. node-forge builds the certificates but can only handle RSA public keys in
 * X.509, so ECDSA is out; key generation and signing use node's crypto (native, ~100x
 * faster than forge's JavaScript RSA), forge only lays out the ASN.1.
 *
 * LeafFactory: certificates for intercepted hosts, all with ONE shared leaf key (generated at
 * start, never written to disk), signed by the CA, kept in a bounded LRU cache by host (after
 * mitmproxy's CertStore). Validity: from one day ago to at most 397 days (the browsers' limit
 * for leaf certificates) and never past the CA's own end.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import type * as Forge from 'node-forge';
import type { Config } from '../config';
import { GardefouError, InputError, errorMessage } from '../errors';
import { replaceFile } from '../fsync';

// node-forge (~25 ms to load) only when a certificate is made or read: `serve` without
// interception never needs it, and every start would pay for it
let forgeModule: typeof Forge | null = null;
function forge(): typeof Forge {
  forgeModule ??= require('node-forge') as typeof Forge;
  return forgeModule;
}

export const CA_CERT_FILE = 'ca.crt';
export const CA_KEY_FILE = 'ca.key';
const DAY_MS = 86_400_000;

export interface CaPaths {
  dir: string;
  cert: string;
  key: string;
}

export function caPaths(dir: string): CaPaths {
  return { dir, cert: path.join(dir, CA_CERT_FILE), key: path.join(dir, CA_KEY_FILE) };
}

/** Where the CA lives when no --dir/--out is given: config `intercept.caDir`, else `ca/` beside the journal. */
export function defaultCaDir(cfg: Config): string {
  return cfg.intercept?.caDir ?? path.join(path.dirname(cfg.journal.path), 'ca');
}

export interface CreateCaOptions {
  dir: string;
  /** organisation shown in the certificate (the school's name) */
  organisation?: string;
  /** replace an existing CA (devices trusting the old one will refuse intercepted sites) */
  force?: boolean;
  /** validity in years (default 10) */
  years?: number;
  now?: Date;
}

export interface CaInfo {
  cert: string;
  key: string;
  subject: string;
  /** SHA-256 fingerprint, colon-separated hex, as browsers show it */
  fingerprint256: string;
  notBefore: string;
  notAfter: string;
  keyType: 'rsa-2048';
}

/** Creates the CA key and certificate in `opts.dir`. Refuses to overwrite without `force`. */
export function createCa(opts: CreateCaOptions): CaInfo {
  const p = caPaths(opts.dir);
  const org = (opts.organisation ?? 'gardefou').trim();
  if (org === '' || org.length > 64 || /[\u0000-\u001f]/.test(org)) {
    throw new InputError(`creating CA: organisation name must be 1 to 64 printable characters, got ${JSON.stringify(org)}`);
  }
  const years = opts.years ?? 10;
  if (!Number.isInteger(years) || years < 1 || years > 30) throw new InputError(`creating CA: years must be 1 to 30, got ${years}`);
  if (!opts.force) {
    for (const f of [p.cert, p.key]) {
      if (fs.existsSync(f)) {
        throw new InputError(`creating CA: ${f} already exists; devices may already trust it. Use --force to replace it (they will then have to trust the new one)`);
      }
    }
  }
  try {
    fs.mkdirSync(opts.dir, { recursive: true, mode: 0o750 });
  } catch (err) {
    throw new InputError(`creating CA directory ${opts.dir}: ${errorMessage(err)}`);
  }
  const now = opts.now ?? new Date();
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const cert = forge().pki.createCertificate();
  cert.publicKey = forge().pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }) as string);
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date(now.getTime() - DAY_MS);
  const end = new Date(now.getTime());
  end.setUTCFullYear(end.getUTCFullYear() + years);
  cert.validity.notAfter = end;
  const subject = [
    { name: 'commonName', value: org === 'gardefou' ? 'gardefou CA' : `${org} gardefou CA` },
    { name: 'organizationName', value: org },
    { shortName: 'OU', value: 'gardefou' },
  ];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  signWithNode(cert, privateKey);
  const certPem = forge().pki.certificateToPem(cert);
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  // key first: a cert without its key is useless, a key without a cert is refused by init
  writeAtomic(p.key, keyPem, 0o600);
  writeAtomic(p.cert, certPem, 0o644);
  return describe(new crypto.X509Certificate(certPem), p);
}

export interface LoadedCa {
  paths: CaPaths;
  certPem: string;
  x509: crypto.X509Certificate;
  key: crypto.KeyObject;
  forgeCert: Forge.pki.Certificate;
  /** subjectKeyIdentifier of the CA, for the leaves' authorityKeyIdentifier (binary string) */
  keyId: string;
}

/** Reads the CA; checks that the key matches the certificate and is not readable by others. */
export function loadCa(dir: string): LoadedCa {
  const p = caPaths(dir);
  let certPem: string;
  let keyPem: string;
  try {
    certPem = fs.readFileSync(p.cert, 'utf8');
    keyPem = fs.readFileSync(p.key, 'utf8');
  } catch (err) {
    throw new InputError(`reading CA in ${dir}: ${errorMessage(err)} (create it with: gardefou ca init)`);
  }
  const mode = fs.statSync(p.key).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new InputError(`reading CA key ${p.key}: mode ${mode.toString(8)} lets others read it; run chmod 600 ${p.key}`);
  }
  let x509: crypto.X509Certificate;
  let key: crypto.KeyObject;
  try {
    x509 = new crypto.X509Certificate(certPem);
    key = crypto.createPrivateKey(keyPem);
  } catch (err) {
    throw new InputError(`reading CA in ${dir}: ${errorMessage(err)}`);
  }
  if (!x509.checkPrivateKey(key)) throw new InputError(`reading CA in ${dir}: ${CA_KEY_FILE} is not the key of ${CA_CERT_FILE}`);
  if (!x509.ca) throw new InputError(`reading CA in ${dir}: ${CA_CERT_FILE} is not a CA certificate`);
  const forgeCert = forge().pki.certificateFromPem(certPem);
  const ski = forgeCert.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | null;
  const keyId = ski?.subjectKeyIdentifier
    ? forge().util.hexToBytes(ski.subjectKeyIdentifier)
    : forgeCert.generateSubjectKeyIdentifier().getBytes();
  return { paths: p, certPem, x509, key, forgeCert, keyId };
}

/** The CA certificate to deploy: PEM text, or DER bytes. Never the key. */
export function exportCa(dir: string, format: 'pem' | 'der'): Buffer {
  const p = caPaths(dir);
  let pem: string;
  try {
    pem = fs.readFileSync(p.cert, 'utf8');
  } catch (err) {
    throw new InputError(`reading CA certificate ${p.cert}: ${errorMessage(err)} (create it with: gardefou ca init)`);
  }
  let x509: crypto.X509Certificate;
  try {
    x509 = new crypto.X509Certificate(pem);
  } catch (err) {
    throw new InputError(`reading CA certificate ${p.cert}: ${errorMessage(err)}`);
  }
  return format === 'der' ? x509.raw : Buffer.from(x509.toString(), 'utf8');
}

export function caInfo(dir: string): CaInfo {
  const p = caPaths(dir);
  return describe(new crypto.X509Certificate(exportCa(dir, 'pem')), p);
}

function describe(x: crypto.X509Certificate, p: CaPaths): CaInfo {
  return {
    cert: p.cert,
    key: p.key,
    subject: x.subject.replace(/\n/g, ', '),
    fingerprint256: x.fingerprint256,
    notBefore: new Date(x.validFrom).toISOString(),
    notAfter: new Date(x.validTo).toISOString(),
    keyType: 'rsa-2048',
  };
}

// ---------------------------------------------------------------------------------------------

export interface LeafFactoryOptions {
  /** certificates kept (LRU); default 1000 */
  max?: number;
  now?: () => number;
}

export interface Leaf {
  certPem: string;
  context: tls.SecureContext;
  notAfterMs: number;
}

export class LeafFactory {
  private readonly cache = new Map<string, Leaf>();
  private readonly max: number;
  private readonly now: () => number;
  private readonly leafKey: crypto.KeyObject;
  private readonly leafKeyPem: string;
  private readonly leafPublic: Forge.pki.PublicKey;
  /** certificates made (cache misses), for metrics and tests */
  issued = 0;

  constructor(private readonly ca: LoadedCa, opts: LeafFactoryOptions = {}) {
    this.max = opts.max ?? 1000;
    if (!Number.isInteger(this.max) || this.max < 1) throw new InputError(`leaf certificate cache: max must be at least 1, got ${this.max}`);
    this.now = opts.now ?? Date.now;
    // one key for every leaf: generated per process, kept in memory only
    const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    this.leafKey = privateKey;
    this.leafKeyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    this.leafPublic = forge().pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }) as string);
  }

  get size(): number {
    return this.cache.size;
  }

  /** The leaf for `host` (normalised name or IP literal), from the cache when still valid. */
  get(host: string): Leaf {
    const hit = this.cache.get(host);
    if (hit !== undefined && hit.notAfterMs - this.now() > DAY_MS) {
      this.cache.delete(host); // re-insert: most recently used last
      this.cache.set(host, hit);
      return hit;
    }
    const leaf = this.issue(host);
    this.cache.delete(host);
    this.cache.set(host, leaf);
    while (this.cache.size > this.max) {
      const oldest = this.cache.keys().next().value as string;
      this.cache.delete(oldest);
    }
    return leaf;
  }

  private issue(host: string): Leaf {
    if (host === '' || host.length > 253) throw new GardefouError('GARDEFOU_TLS', `issuing a certificate: bad host ${JSON.stringify(host)}`);
    const now = this.now();
    const caEnd = this.ca.x509.validTo ? new Date(this.ca.x509.validTo).getTime() : now + 397 * DAY_MS;
    const cert = forge().pki.createCertificate();
    cert.publicKey = this.leafPublic;
    cert.serialNumber = randomSerial();
    cert.validity.notBefore = new Date(now - DAY_MS);
    cert.validity.notAfter = new Date(Math.min(now + 397 * DAY_MS, caEnd));
    cert.setSubject([{ name: 'commonName', value: host.length <= 64 ? host : host.slice(0, 64) }]);
    cert.setIssuer(this.ca.forgeCert.subject.attributes);
    const isIp = net.isIP(host) !== 0;
    cert.setExtensions([
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [isIp ? { type: 7, ip: host } : { type: 2, value: host }] },
      { name: 'subjectKeyIdentifier' },
      { name: 'authorityKeyIdentifier', keyIdentifier: this.ca.keyId },
    ]);
    signWithNode(cert, this.ca.key);
    const certPem = forge().pki.certificateToPem(cert);
    this.issued++;
    return {
      certPem,
      // the chain sent: leaf then CA (clients trusting the CA need only the leaf; some check the chain)
      context: tls.createSecureContext({ key: this.leafKeyPem, cert: certPem + this.ca.certPem }),
      notAfterMs: cert.validity.notAfter.getTime(),
    };
  }

  /**
   * Options for the interception-side tls.Server: the leaf chosen by SNI, ALPN http/1.1 only
   * (interception relays HTTP/1.1; ALPN is negotiated on the server's options, not the SNI
   * context). A client without SNI gets no certificate and fails the handshake.
   */
  tlsServerOptions(): tls.TlsOptions {
    return {
      ALPNProtocols: ['http/1.1'],
      SNICallback: (name: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => {
        try {
          cb(null, this.get(name.toLowerCase()).context);
        } catch (err) {
          cb(err as Error);
        }
      },
    };
  }

  /** The shared leaf key (for tests that check every leaf carries it). */
  get publicKeyPem(): string {
    return crypto.createPublicKey(this.leafKey).export({ type: 'spki', format: 'pem' }) as string;
  }
}

/** Signs a forge certificate with sha256WithRSAEncryption using node's native RSA. */
function signWithNode(cert: Forge.pki.Certificate, key: crypto.KeyObject): void {
  const c = cert as Forge.pki.Certificate & { signatureOid: string; siginfo: { algorithmOid: string }; tbsCertificate: Forge.asn1.Asn1; signature: string };
  const oid = forge().pki.oids['sha256WithRSAEncryption'] as string;
  c.signatureOid = oid;
  c.siginfo.algorithmOid = oid;
  c.tbsCertificate = (forge().pki as unknown as { getTBSCertificate(c: Forge.pki.Certificate): Forge.asn1.Asn1 }).getTBSCertificate(cert);
  const tbs = Buffer.from(forge().asn1.toDer(c.tbsCertificate).getBytes(), 'binary');
  c.signature = crypto.sign('sha256', tbs, key).toString('binary');
}

/** 16 random bytes, positive (high bit clear), as hex. */
function randomSerial(): string {
  const b = crypto.randomBytes(16);
  b[0] = (b[0] as number) & 0x7f | 0x01;
  return b.toString('hex');
}

/** Writes `text` to `file` via a temp file with exactly `mode`, fsync, rename. */
function writeAtomic(file: string, text: string, mode: number): void {
  try {
    replaceFile(file, text, mode, { exactMode: true });
  } catch (err) {
    throw new InputError(`writing ${file}: ${errorMessage(err)}`);
  }
}
