/**
 * The requisition export package (a directory), after ETSI TS 102 657 (retained data handover):
 *   records.csv     the records, UTC and Europe/Paris times, one line each
 *   records.json    the same, every stored field (what verification hashes)
 *   manifest.json   requestId {countryCode, authorisedOrganisationId, requestNumber}, legal
 *                   basis, provider, operator, extraction time, criteria, record count, SHA-256
 *                   and size of each file, and the chain blocks sealing the records (full
 *                   headers with their id and leaf lists) so each record can be checked
 *                   against a signed block
 *   manifest.sig    Ed25519 signature (base64) of the exact bytes of manifest.json
 * `verifyExport` needs only this directory and the gateway's public key.
 */
import type { KeyObject } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type Database from 'better-sqlite3';
import { errorMessage } from '../errors';
import { blockHash, genesisHash, type BlockRow } from './chain';
import { criteriaJson, type Criteria } from './criteria';
import { parisTime, recordJson, recordsCsv, utcIso } from './format';
import { fingerprintOf, verifySig, type Signer } from './keys';
import { LEAF_BYTES, RECORD_COLUMNS, decodeIds, leafOf, sha256, type RecordRow } from './record';
import { JournalError } from './store';

export const EXPORT_FORMAT = 'gardefou-export/1';

export interface ExportRequest {
  requisition: string;
  authority: string;
  basis: string;
  operator: string;
  provider: string;
  journalId: string;
  criteria: Criteria;
}

interface BlockJson {
  seq: number; sealed_ms: number; count: number; min_id: number; max_id: number; min_start_ms: number;
  max_start_ms: number; low_open_id: number; ids: string; leaves: string; ids_hash: string; leaves_hash: string;
  prev: string; hash: string; sig: string;
}

export interface Manifest {
  format: string;
  requestId: { countryCode: string; authorisedOrganisationId: string; requestNumber: string };
  legalBasis: string;
  provider: { id: string; journalId: string; publicKeyFingerprint: string };
  operator: string;
  extractedAt: { utc: string; paris: string };
  criteria: Record<string, string | number>;
  counts: { records: number; sealed: number; unsealed: number };
  files: Array<{ name: string; bytes: number; sha256: string }>;
  unsealedIds: number[];
  chain: { genesis: string; blocks: BlockJson[] };
}

export function writeExport(db: Database.Database, signer: Signer, req: ExportRequest, rows: Array<RecordRow & { blk?: number | null }>, outDir: string, nowMs = Date.now()): Manifest {
  if (fs.existsSync(outDir) && fs.readdirSync(outDir).length > 0) throw new JournalError(`export directory ${outDir} is not empty`);
  fs.mkdirSync(outDir, { recursive: true, mode: 0o750 });
  const csv = recordsCsv(rows);
  const json = `${JSON.stringify(rows.map(recordJson), null, 1)}\n`;
  const files = [{ name: 'records.csv', data: csv }, { name: 'records.json', data: json }];
  const getBlock = db.prepare('SELECT * FROM blocks WHERE seq = ?');
  const blocks = new Map<number, BlockJson>();
  const unsealed: number[] = [];
  for (const r of rows) {
    const seq = r.blk ?? null;
    if (seq !== null && blocks.has(seq)) continue;
    const b = seq === null ? undefined : (getBlock.get(seq) as BlockRow | undefined);
    if (!b || b.ids === null || b.leaves === null) {
      unsealed.push(r.id); // still open, or finished less than a second ago: not sealed yet
      continue;
    }
    blocks.set(b.seq, {
      seq: b.seq, sealed_ms: b.sealed_ms, count: b.count, min_id: b.min_id, max_id: b.max_id, min_start_ms: b.min_start_ms,
      max_start_ms: b.max_start_ms, low_open_id: b.low_open_id, ids: b.ids.toString('base64'), leaves: b.leaves.toString('base64'),
      ids_hash: b.ids_hash.toString('hex'), leaves_hash: b.leaves_hash.toString('hex'), prev: b.prev.toString('hex'),
      hash: b.hash.toString('hex'), sig: b.sig.toString('base64'),
    });
  }
  const manifest: Manifest = {
    format: EXPORT_FORMAT,
    requestId: { countryCode: 'FR', authorisedOrganisationId: req.authority, requestNumber: req.requisition },
    legalBasis: `CPP art. ${req.basis}`,
    provider: { id: req.provider, journalId: req.journalId, publicKeyFingerprint: signer.fingerprint },
    operator: req.operator,
    extractedAt: { utc: utcIso(nowMs), paris: parisTime(nowMs) },
    criteria: criteriaJson(req.criteria),
    counts: { records: rows.length, sealed: rows.length - unsealed.length, unsealed: unsealed.length },
    files: files.map((f) => ({ name: f.name, bytes: Buffer.byteLength(f.data), sha256: sha256(f.data).toString('hex') })),
    unsealedIds: unsealed,
    chain: { genesis: genesisHash(req.journalId).toString('hex'), blocks: [...blocks.values()].sort((a, b) => a.seq - b.seq) },
  };
  try {
    for (const f of files) fs.writeFileSync(path.join(outDir, f.name), f.data, { mode: 0o640 });
    const m = `${JSON.stringify(manifest, null, 1)}\n`;
    fs.writeFileSync(path.join(outDir, 'manifest.json'), m, { mode: 0o640 });
    fs.writeFileSync(path.join(outDir, 'manifest.sig'), `${signer.sign(Buffer.from(m)).toString('base64')}\n`, { mode: 0o640 });
  } catch (err) {
    throw new JournalError(`writing export to ${outDir}: ${errorMessage(err)}`, { cause: err });
  }
  return manifest;
}

export interface ExportCheck {
  ok: boolean;
  records: number;
  sealed: number;
  blocks: number;
  problems: string[];
  manifest: Manifest | null;
}

/** Checks an export directory offline with the gateway's public key. */
export function verifyExport(dir: string, pub: KeyObject): ExportCheck {
  const res: ExportCheck = { ok: false, records: 0, sealed: 0, blocks: 0, problems: [], manifest: null };
  const p = res.problems;
  let mBytes: Buffer;
  let sig: Buffer;
  try {
    mBytes = fs.readFileSync(path.join(dir, 'manifest.json'));
    sig = Buffer.from(fs.readFileSync(path.join(dir, 'manifest.sig'), 'utf8').trim(), 'base64');
  } catch (err) {
    p.push(`reading the manifest: ${errorMessage(err)}`);
    return res;
  }
  if (!verifySig(pub, mBytes, sig)) {
    p.push('manifest.sig does not match manifest.json for this public key (manifest altered, or another key)');
    return res;
  }
  const m = JSON.parse(mBytes.toString('utf8')) as Manifest;
  res.manifest = m;
  if (m.format !== EXPORT_FORMAT) p.push(`format: expected ${EXPORT_FORMAT}, got ${m.format}`);
  if (m.provider.publicKeyFingerprint !== fingerprintOf(pub)) p.push('manifest names another public key');
  for (const f of m.files) {
    let data: Buffer;
    try {
      data = fs.readFileSync(path.join(dir, f.name));
    } catch (err) {
      p.push(`${f.name}: ${errorMessage(err)}`);
      continue;
    }
    if (data.length !== f.bytes || sha256(data).toString('hex') !== f.sha256) p.push(`${f.name} altered (SHA-256 differs from the manifest)`);
  }
  if (p.length > 0) return res;
  const records = JSON.parse(fs.readFileSync(path.join(dir, 'records.json'), 'utf8')) as Array<Record<string, unknown>>;
  res.records = records.length;
  if (records.length !== m.counts.records) p.push(`records.json holds ${records.length} records, the manifest says ${m.counts.records}`);
  const where = new Map<number, { leaf: Buffer; block: number }>();
  for (const b of m.chain.blocks) {
    const ids = Buffer.from(b.ids, 'base64');
    const leaves = Buffer.from(b.leaves, 'base64');
    const head = {
      seq: b.seq, sealed_ms: b.sealed_ms, count: b.count, min_id: b.min_id, max_id: b.max_id, min_start_ms: b.min_start_ms,
      max_start_ms: b.max_start_ms, low_open_id: b.low_open_id, ids_hash: sha256(ids), leaves_hash: sha256(leaves),
      prev: Buffer.from(b.prev, 'hex'),
    };
    const h = blockHash(head);
    if (h.toString('hex') !== b.hash || !verifySig(pub, h, Buffer.from(b.sig, 'base64'))) {
      p.push(`block ${b.seq}: header, ids or leaves do not match its signature`);
      continue;
    }
    res.blocks++;
    decodeIds(ids).forEach((id, i) => where.set(id, { leaf: leaves.subarray(i * LEAF_BYTES, (i + 1) * LEAF_BYTES), block: b.seq }));
  }
  const unsealed = new Set(m.unsealedIds);
  for (const r of records) {
    const row = {} as Record<string, unknown>;
    for (const c of RECORD_COLUMNS) row[c] = r[c] ?? null;
    const id = Number(row['id']);
    if (unsealed.has(id)) continue;
    const w = where.get(id);
    if (!w) {
      p.push(`record ${id}: no block of the manifest seals it`);
      continue;
    }
    if (!leafOf(row as unknown as RecordRow).equals(w.leaf)) p.push(`record ${id} altered (does not match block ${w.block})`);
    else res.sealed++;
  }
  res.ok = p.length === 0;
  return res;
}
