/**
 * The schema combinators island's records are written in (records.ts): each field has one
 * codec that validates a value and gives its canonical JSON, and reads parsed JSON back,
 * naming the field path of anything wrong. Encoding fails with INVALID_ARGUMENT, decoding
 * with FORMAT_CORRUPT (the caller's `fail` decides which).
 */
import { hex } from './location.js';
import { quoteInput } from './names.js';

/** Latest time a record carries: the last millisecond of year 9999 (4-digit ISO years). */
export const MAX_TIME_MS = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** Reports a bad field: INVALID_ARGUMENT when encoding, FORMAT_CORRUPT when decoding. */
export type Fail = (path: string, msg: string) => never;

export interface Codec<T> {
  /** Validate a value (types, ranges, cross-field rules) and give its canonical JSON. */
  toJson(v: unknown, fail: Fail, path: string): Json;
  /** Read parsed JSON into a value, checking types; toJson then checks the rest. */
  fromJson(j: unknown, fail: Fail, path: string): T;
}

export function same<T extends Json>(check: (v: unknown, fail: Fail, path: string) => T): Codec<T> {
  return { toJson: check, fromJson: check };
}

export function int(min: number, max: number): Codec<number> {
  return same((v, fail, path) => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      return fail(path, `must be an integer from ${min} to ${max}, got ${quoteInput(v)}`);
    }
    return v;
  });
}

export const bool: Codec<boolean> = same((v, fail, path) => (typeof v === 'boolean' ? v : fail(path, `must be true or false, got ${quoteInput(v)}`)));

export function oneOf<const T extends string | number>(values: readonly T[]): Codec<T> {
  return same((v, fail, path) =>
    values.includes(v as T) ? (v as T) : fail(path, `must be one of ${values.map((x) => JSON.stringify(x)).join(', ')}, got ${quoteInput(v)}`),
  );
}

export function named(test: (v: unknown) => boolean, doc: string): Codec<string> {
  return same((v, fail, path) => (test(v) ? (v as string) : fail(path, `must be ${doc}, got ${quoteInput(v)}`)));
}


const CONTROL_CHAR = /[\u0000-\u001f\u007f-\u009f]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** One line of free text: no control characters, well-formed Unicode, minBytes..maxBytes of UTF-8. */
export function text(minBytes: number, maxBytes: number): Codec<string> {
  return same((v, fail, path) => {
    if (typeof v !== 'string') return fail(path, `must be a string, got ${quoteInput(v)}`);
    if (CONTROL_CHAR.test(v)) return fail(path, `must not contain control characters: ${quoteInput(v)}`);
    if (LONE_SURROGATE.test(v)) return fail(path, `must be well-formed Unicode: ${quoteInput(v)}`);
    const n = Buffer.byteLength(v, 'utf8');
    if (n < minBytes || n > maxBytes) return fail(path, `must be ${minBytes} to ${maxBytes} bytes of UTF-8, got ${n}`);
    return v;
  });
}

const ISO_TIME = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$/;

/** A time: ms since the Unix epoch in values, ISO-8601 UTC with milliseconds in JSON. */
export const time: Codec<number> = {
  toJson(v, fail, path) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > MAX_TIME_MS) {
      return fail(path, `must be a time in ms from 0 to ${MAX_TIME_MS}, got ${quoteInput(v)}`);
    }
    return new Date(v).toISOString();
  },
  fromJson(j, fail, path) {
    const ms = typeof j === 'string' && ISO_TIME.test(j) ? Date.parse(j) : NaN;
    if (Number.isNaN(ms) || new Date(ms).toISOString() !== j) {
      return fail(path, `must be a UTC time like "2024-05-01T12:00:00.000Z", got ${quoteInput(j)}`);
    }
    return ms;
  },
};

const HEX_ID = /^[0-9a-f]{64}$/;
const ID_BYTES = 32;

/** A 32-byte id (pack or blob): a Buffer in values, 64 lowercase hex digits in JSON. */
export const id32: Codec<Buffer> = {
  toJson(v, fail, path) {
    if (!(v instanceof Uint8Array) || v.length !== ID_BYTES) return fail(path, `must be a ${ID_BYTES}-byte Buffer, got ${quoteInput(v)}`);
    return hex(v);
  },
  fromJson(j, fail, path) {
    if (typeof j !== 'string' || !HEX_ID.test(j)) return fail(path, `must be 64 lowercase hex digits, got ${quoteInput(j)}`);
    return Buffer.from(j, 'hex');
  },
};

export function nullable<T>(c: Codec<T>): Codec<T | null> {
  return {
    toJson: (v, fail, path) => (v === null ? null : c.toJson(v, fail, path)),
    fromJson: (j, fail, path) => (j === null ? null : c.fromJson(j, fail, path)),
  };
}

/**
 * An array of minLen..maxLen items. A `set` of string-valued items is encoded sorted
 * ascending and refuses duplicates; decoding requires it strictly ascending.
 */
export function array<T>(c: Codec<T>, minLen: number, maxLen: number, set = false): Codec<readonly T[]> {
  const checkLength = (v: unknown, fail: Fail, path: string): unknown[] => {
    if (!Array.isArray(v)) return fail(path, `must be an array, got ${quoteInput(v)}`);
    if (v.length < minLen || v.length > maxLen) return fail(path, `must have ${minLen} to ${maxLen} items, got ${v.length}`);
    return v;
  };
  return {
    toJson(v, fail, path) {
      const out = checkLength(v, fail, path).map((item, i) => c.toJson(item, fail, `${path}[${i}]`));
      if (!set) return out;
      const sorted = (out as string[]).slice().sort();
      for (let i = 1; i < sorted.length; i++) {
        if (sorted[i] === sorted[i - 1]) return fail(path, `must not repeat ${quoteInput(sorted[i])}`);
      }
      return sorted;
    },
    fromJson(j, fail, path) {
      const items = checkLength(j, fail, path);
      if (set) {
        for (let i = 1; i < items.length; i++) {
          if (!((items[i - 1] as string) < (items[i] as string))) return fail(`${path}[${i}]`, 'must be sorted ascending without repeats');
        }
      }
      return items.map((item, i) => c.fromJson(item, fail, `${path}[${i}]`));
    },
  };
}

export type Fields<T> = { readonly [K in keyof T]-?: Codec<T[K]> };

/**
 * An object with exactly the given fields, encoded in their order. `check` enforces rules
 * across fields once each field is valid.
 */
export function object<T>(fields: Fields<T>, check?: (v: T, fail: Fail, path: string) => void): Codec<T> {
  const keys = Object.keys(fields) as (keyof T & string)[];
  const exactKeys = (v: unknown, fail: Fail, path: string): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) {
      return fail(path, `must be an object, got ${quoteInput(v)}`);
    }
    const rec = v as Record<string, unknown>;
    for (const k of Object.keys(rec)) if (!Object.hasOwn(fields, k)) fail(`${path}.${k.slice(0, 40)}`, 'is not a known field');
    for (const k of keys) if (!Object.hasOwn(rec, k)) fail(`${path}.${k}`, 'is missing');
    return rec;
  };
  return {
    toJson(v, fail, path) {
      const rec = exactKeys(v, fail, path);
      const out: { [key: string]: Json } = {};
      for (const k of keys) out[k] = fields[k].toJson(rec[k], fail, `${path}.${k}`);
      check?.(v as T, fail, path);
      return out;
    },
    fromJson(j, fail, path) {
      const rec = exactKeys(j, fail, path);
      const out: Partial<Record<keyof T, unknown>> = {};
      for (const k of keys) out[k] = fields[k].fromJson(rec[k], fail, `${path}.${k}`);
      return out as T;
    },
  };
}
