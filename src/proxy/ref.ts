/**
 * Short reference ids, shown on block pages and stored in the journal, so an operator can find
 * the record a pupil or teacher quotes. 10 characters of Crockford base32 (50 random bits),
 * split 5-5 for reading aloud: "K3F9Q-X2MZ7". Random bytes come from a pooled buffer.
 */
import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const POOL_SIZE = 4096;
const pool = Buffer.allocUnsafe(POOL_SIZE);
let offset = POOL_SIZE;

export function newRef(): string {
  if (offset + 10 > POOL_SIZE) {
    randomFillSync(pool);
    offset = 0;
  }
  let s = '';
  for (let i = 0; i < 10; i++) {
    if (i === 5) s += '-';
    s += ALPHABET[(pool[offset + i] as number) & 31];
  }
  offset += 10;
  return s;
}
