/**
 * Key and argument validation shared by every backend, so all of them accept and
 * refuse exactly the same keys.
 *
 * A key is 1..1024 bytes of UTF-8 (S3's limit), with no control characters, no
 * leading "/", no empty segment ("a//b") and no "." or ".." segment (HTTP clients
 * normalise those away, and on a file system they would escape the root).
 */
import { IslandError } from '../errors.js';
import { MAX_LIST_LIMIT } from './types.js';

/** S3 and Swift's s3api both cap keys at 1024 bytes of UTF-8. */
export const MAX_KEY_BYTES = 1024;
/**
 * One segment (between slashes) is at most 80 bytes of UTF-8: the fs backend turns a
 * segment into a file name, percent-encoded (up to 3 bytes per byte) plus a one-letter
 * tag, and file names are limited to 255 bytes. island's own segments are at most 64.
 */
export const MAX_SEGMENT_BYTES = 80;

// Control characters (C0, DEL, C1) are refused: they break XML listings and logs.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

function bad(what: string, key: string): IslandError {
  return new IslandError('STORE_BAD_REQUEST', `invalid object key ${JSON.stringify(key.slice(0, 120))}: ${what}`, { details: { key: key.slice(0, 1100) } });
}

export function validateKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0) throw bad('empty', String(key));
  if (!key.isWellFormed()) throw bad('not valid Unicode', key);
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) throw bad(`longer than ${MAX_KEY_BYTES} bytes`, key);
  if (CONTROL.test(key)) throw bad('contains a control character', key);
  if (key.startsWith('/')) throw bad('starts with /', key);
  for (const seg of key.split('/')) {
    if (seg === '' && !key.endsWith('/')) throw bad('has an empty segment', key);
    if (seg === '.' || seg === '..') throw bad('has a . or .. segment', key);
    if (Buffer.byteLength(seg, 'utf8') > MAX_SEGMENT_BYTES) throw bad(`has a segment longer than ${MAX_SEGMENT_BYTES} bytes`, key);
  }
  if (key.endsWith('/')) throw bad('ends with /', key);
}

/** A prefix may be empty and may end with "/", otherwise it follows the key rules. */
export function validatePrefix(prefix: string): void {
  if (prefix === '') return;
  validateKey(prefix.endsWith('/') ? prefix.slice(0, -1) || 'x' : prefix);
  if (prefix === '/') throw bad('prefix is /', prefix);
}

export function validateRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new IslandError('STORE_BAD_REQUEST', `invalid range offset ${offset}`);
  if (!Number.isSafeInteger(length) || length <= 0) throw new IslandError('STORE_BAD_REQUEST', `invalid range length ${length}`);
}

export function listLimit(limit: number | undefined): number {
  if (limit === undefined) return MAX_LIST_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
    throw new IslandError('STORE_BAD_REQUEST', `list limit must be 1..${MAX_LIST_LIMIT}, got ${limit}`);
  }
  return limit;
}

/** Compare keys in UTF-8 byte order (what S3 listings use), not UTF-16 code unit order. */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new IslandError('ABORTED', 'operation aborted', { cause: signal.reason });
}
