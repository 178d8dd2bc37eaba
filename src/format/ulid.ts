/**
 * ULIDs: the unique names of island's write-once objects (snapshots, pins).
 *
 * A ULID is 128 bits, big-endian:
 *
 *   Bit 127-80  time: milliseconds since the Unix epoch (48 bits, good until year 10889)
 *   Bit  79-0   randomness (80 bits)
 *
 * Binary form (16 bytes): byte 0-5 time, byte 6-15 randomness.
 * Text form (26 characters, Crockford base32, uppercase): characters 0-9 carry the time
 * (the first one is at most '7', since 26 * 5 = 130 bits hold 128), characters 10-25 the
 * randomness. The text sorts in the same order as the bits, so ids sort by creation time.
 *
 * A generator is monotonic: within one millisecond (or when the clock steps backwards) it
 * increments the previous id's randomness instead of drawing new, so ids from one
 * generator strictly increase. Clock and random source are injectable so that a
 * deterministic simulation can drive them.
 */
import { IslandError } from '../errors.js';

/** Characters in the text form. */
export const ULID_LEN = 26;
/** Bytes in the binary form. */
export const ULID_BYTES = 16;
/** Largest time a ULID can carry (48 bits of milliseconds). */
export const ULID_TIME_MAX = 2 ** 48 - 1;

const TIME_CHARS = 10;
const TIME_BYTES = 6;
const RANDOM_BYTES = 10;
/** Randomness is encoded as two 40-bit halves of 5 bytes / 8 characters each (exact in a double). */
const HALF_BYTES = 5;
const HALF_CHARS = 8;
const BASE = 32;

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
/** Character code -> 5-bit value, -1 for characters outside the canonical alphabet. */
const DECODE = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) DECODE[ALPHABET.charCodeAt(i)] = i;

const CANONICAL = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/;

/** The clock and random source a generator draws from. */
export interface UlidSource {
  /** Milliseconds since the Unix epoch (default Date.now). */
  now?: () => number;
  /** Fill-and-return n random bytes (default Web Crypto's getRandomValues). */
  random?: (n: number) => Uint8Array;
}

export type UlidGenerator = () => string;

/**
 * The global Web Crypto's CSPRNG (the same source as node:crypto's randomFillSync), reached
 * at the first id drawn: an import of node:crypto at load would build all of it (webcrypto,
 * keys, argon2...) into every process, also a CLI command that never draws an id.
 */
function defaultRandom(n: number): Uint8Array {
  return globalThis.crypto.getRandomValues(Buffer.alloc(n));
}

/** Encode a time and 10 bytes of randomness as a canonical ULID. */
export function encodeUlid(time: number, random: Uint8Array): string {
  if (!Number.isSafeInteger(time) || time < 0 || time > ULID_TIME_MAX) {
    throw new IslandError('INVALID_ARGUMENT', `ULID time out of range: ${String(time)}`);
  }
  if (random.length !== RANDOM_BYTES) {
    throw new IslandError('INVALID_ARGUMENT', `ULID randomness must be ${RANDOM_BYTES} bytes, got ${random.length}`);
  }
  const out: string[] = new Array<string>(ULID_LEN);
  let t = time;
  for (let i = TIME_CHARS - 1; i >= 0; i--) {
    out[i] = ALPHABET[t % BASE] as string;
    t = Math.floor(t / BASE);
  }
  for (let half = 0; half < 2; half++) {
    let v = 0;
    for (let b = 0; b < HALF_BYTES; b++) v = v * 256 + (random[half * HALF_BYTES + b] as number);
    const first = TIME_CHARS + half * HALF_CHARS;
    for (let i = first + HALF_CHARS - 1; i >= first; i--) {
      out[i] = ALPHABET[v % BASE] as string;
      v = Math.floor(v / BASE);
    }
  }
  return out.join('');
}

/**
 * A monotonic generator. Ids strictly increase across calls, even when the clock stands
 * still or steps back (the previous time is kept and its randomness incremented). If the
 * 80-bit randomness would overflow, the time advances by one millisecond instead of failing.
 */
export function ulidFactory(source: UlidSource = {}): UlidGenerator {
  const now = source.now ?? Date.now;
  const random = source.random ?? defaultRandom;
  let lastTime = -1;
  const last = Buffer.alloc(RANDOM_BYTES);

  const draw = (): void => {
    const r = random(RANDOM_BYTES);
    if (r.length !== RANDOM_BYTES) {
      throw new IslandError('INTERNAL', `ULID random source returned ${r.length} bytes, wanted ${RANDOM_BYTES}`);
    }
    last.set(r);
  };

  return () => {
    const raw = now();
    if (!Number.isFinite(raw) || raw < 0 || raw > ULID_TIME_MAX) {
      throw new IslandError('INTERNAL', `ULID clock returned an unusable time: ${String(raw)}`);
    }
    const time = Math.floor(raw);
    if (time > lastTime) {
      lastTime = time;
      draw();
    } else if (!increment(last)) {
      if (lastTime >= ULID_TIME_MAX) throw new IslandError('INTERNAL', 'ULID time space exhausted');
      lastTime += 1;
      draw();
    }
    return encodeUlid(lastTime, last);
  };
}

/** Add one to a big-endian byte string in place; false when it wrapped to zero. */
function increment(b: Buffer): boolean {
  for (let i = b.length - 1; i >= 0; i--) {
    const v = (b[i] as number) + 1;
    if (v <= 0xff) {
      b[i] = v;
      return true;
    }
    b[i] = 0;
  }
  return false;
}

/** The process-wide generator (system clock, crypto randomness). */
export const ulid: UlidGenerator = ulidFactory();

/** True for a ULID in canonical text form (26 characters, uppercase Crockford base32). */
export function isUlid(s: unknown): s is string {
  return typeof s === 'string' && s.length === ULID_LEN && CANONICAL.test(s);
}

/**
 * Validate a ULID typed by a person or read from input: lowercase is accepted and
 * returned in canonical (uppercase) form; Crockford's aliases (I, L, O) are not.
 */
export function parseUlid(s: unknown, what = 'ULID'): string {
  if (typeof s === 'string' && s.length === ULID_LEN) {
    const upper = s.toUpperCase();
    if (CANONICAL.test(upper)) return upper;
  }
  const shown = typeof s === 'string' ? JSON.stringify(s.slice(0, 40)) + (s.length > 40 ? '...' : '') : typeof s;
  throw new IslandError('INVALID_ARGUMENT', `${what} must be a ULID (26 characters of Crockford base32): ${shown}`);
}

function requireUlid(id: string): void {
  if (!isUlid(id)) parseUlid(id);
}

/** The creation time (ms since the Unix epoch) a canonical ULID carries. */
export function ulidTime(id: string): number {
  requireUlid(id);
  let t = 0;
  for (let i = 0; i < TIME_CHARS; i++) t = t * BASE + (DECODE[id.charCodeAt(i)] as number);
  return t;
}

/** The 16-byte binary form of a canonical ULID. */
export function ulidToBytes(id: string): Buffer {
  requireUlid(id);
  const out = Buffer.alloc(ULID_BYTES);
  out.writeUIntBE(ulidTime(id), 0, TIME_BYTES);
  for (let half = 0; half < 2; half++) {
    let v = 0;
    const first = TIME_CHARS + half * HALF_CHARS;
    for (let i = first; i < first + HALF_CHARS; i++) v = v * BASE + (DECODE[id.charCodeAt(i)] as number);
    out.writeUIntBE(v, TIME_BYTES + half * HALF_BYTES, HALF_BYTES);
  }
  return out;
}

/** The canonical text form of a 16-byte binary ULID. */
export function ulidFromBytes(b: Uint8Array): string {
  if (b.length !== ULID_BYTES) {
    throw new IslandError('INVALID_ARGUMENT', `a binary ULID is ${ULID_BYTES} bytes, got ${b.length}`);
  }
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return encodeUlid(buf.readUIntBE(0, TIME_BYTES), buf.subarray(TIME_BYTES));
}
