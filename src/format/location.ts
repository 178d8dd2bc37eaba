/**
 * Where a blob lives: the direct location every pointer in island carries.
 *
 * A location names the pack object, the byte range of the blob's frame inside it,
 * and the blob id (SHA-256 of the plain content, or a keyed hash when encryption is on),
 * so a reader fetches exactly one range and verifies what it got without any index.
 */
import { IslandError } from '../errors.js';

export const ID_LEN = 32;
export const PACK_ID_LEN = 32;

export interface BlobLocation {
  /** Pack id: SHA-256 of the pack object's bytes (32 bytes). Hex of it names the object. */
  readonly pack: Buffer;
  /** Byte offset of the blob's frame within the pack. */
  readonly offset: number;
  /** Length of the frame in bytes. */
  readonly length: number;
  /** Blob id: hash of the plain content (32 bytes). */
  readonly id: Buffer;
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** Parse a 64-hex-digit id (pack or blob) into its 32 bytes. */
export function parseId(s: string, what = 'id'): Buffer {
  if (!/^[0-9a-f]{64}$/.test(s)) throw new IslandError('INVALID_ARGUMENT', `${what} must be 64 lowercase hex digits: ${JSON.stringify(s).slice(0, 80)}`);
  return Buffer.from(s, 'hex');
}

export function sameLocation(a: BlobLocation, b: BlobLocation): boolean {
  return a.offset === b.offset && a.length === b.length && a.pack.equals(b.pack) && a.id.equals(b.id);
}
