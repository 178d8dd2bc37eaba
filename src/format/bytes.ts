/**
 * Bounded big-endian readers and writers shared by every island codec.
 *
 * All island formats are big-endian (as qcow2 is). A Reader never reads past the
 * window it was given: every read checks the remaining length first and throws
 * FORMAT_CORRUPT naming the field and the absolute offset, so a truncated or hostile
 * object becomes an error, never a RangeError, a hang or an unbounded allocation.
 * 64-bit fields are read as bigint and turned into numbers only through `toSafeNumber`.
 */
import { createHash } from 'node:crypto';
import { IslandError } from '../errors.js';

export function corrupt(what: string, offset: number, details: Record<string, unknown> = {}): IslandError {
  return new IslandError('FORMAT_CORRUPT', `${what} (at byte ${offset})`, { details: { ...details, offset } });
}

/** bigint -> number, refusing anything past Number.MAX_SAFE_INTEGER. */
export function toSafeNumber(v: bigint, field: string, offset = 0): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`${field} out of range: ${v}`, offset);
  return Number(v);
}

export class Reader {
  readonly buf: Buffer;
  pos: number;
  readonly end: number;
  /** Offset of buf[0] in the enclosing object, for error messages. */
  readonly base: number;

  constructor(buf: Buffer, start = 0, end = buf.length, base = 0) {
    if (start < 0 || end > buf.length || start > end) throw corrupt('reader window outside buffer', base + start);
    this.buf = buf;
    this.pos = start;
    this.end = end;
    this.base = base;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  /** Absolute offset of the next byte (for errors). */
  get offset(): number {
    return this.base + this.pos;
  }

  need(n: number, field: string): void {
    if (!Number.isInteger(n) || n < 0 || n > this.remaining) {
      throw corrupt(`truncated: ${field} needs ${n} bytes, ${this.remaining} left`, this.offset);
    }
  }

  u8(field: string): number {
    this.need(1, field);
    return this.buf.readUInt8(this.pos++);
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A 64-bit field that must fit a JS number. */
  u64n(field: string): number {
    const at = this.offset;
    return toSafeNumber(this.u64(field), field, at);
  }

  /** A view (not a copy) of the next n bytes. */
  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** A length-prefixed (u16) UTF-8 string of at most `max` bytes. */
  str16(field: string, max: number): string {
    const at = this.offset;
    const n = this.u16(`${field} length`);
    if (n > max) throw corrupt(`${field} length ${n} exceeds ${max}`, at);
    return this.bytes(n, field).toString('utf8');
  }

  skip(n: number, field: string): void {
    this.need(n, field);
    this.pos += n;
  }

  /** Require that every byte was consumed. */
  done(what: string): void {
    if (this.remaining !== 0) throw corrupt(`${this.remaining} trailing bytes after ${what}`, this.offset);
  }
}

/** A growable big-endian writer. */
export class Writer {
  private buf: Buffer;
  pos = 0;

  constructor(initial = 256) {
    this.buf = Buffer.alloc(initial);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(v: number): this {
    this.ensure(1);
    this.buf.writeUInt8(v, this.pos);
    this.pos += 1;
    return this;
  }

  u16(v: number): this {
    this.ensure(2);
    this.buf.writeUInt16BE(v, this.pos);
    this.pos += 2;
    return this;
  }

  u32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
    return this;
  }

  u64(v: bigint | number): this {
    this.ensure(8);
    this.buf.writeBigUInt64BE(BigInt(v), this.pos);
    this.pos += 8;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }

  zeros(n: number): this {
    this.ensure(n);
    this.buf.fill(0, this.pos, this.pos + n);
    this.pos += n;
    return this;
  }

  str16(s: string, max: number, field: string): this {
    const b = Buffer.from(s, 'utf8');
    if (b.length > max) throw new IslandError('INVALID_ARGUMENT', `${field} longer than ${max} bytes`);
    return this.u16(b.length).bytes(b);
  }

  /** The bytes written so far (a copy-free view). */
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

export const SHA256_LEN = 32;

export function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}
