/**
 * Validation of the names, ids and sizes island accepts from people, configuration and
 * the store: volume names, host ids, region names, snapshot ids, byte sizes, cluster sizes.
 *
 * Every refusal is IslandError('INVALID_ARGUMENT') whose message says what was wrong and
 * quotes the input safely (JSON-escaped, cut to QUOTE_MAX characters), so a hostile or
 * binary argument can neither flood a log nor forge a line in it.
 *
 * Grammars (all ASCII; names are used as file names and object key segments):
 *   volume name   [a-z0-9][a-z0-9._-]{0,62}, without ".." and not ending in "."
 *   host id       same grammar as a volume name
 *   region name   [a-z0-9][a-z0-9_-]{0,31} (no dots: region names are configuration keys)
 *   snapshot id   a ULID (see ulid.ts); lowercase input is accepted and made canonical
 *   size          decimal digits without leading zeros, optionally followed by one binary
 *                 suffix K, M, G or T (case-insensitive): "64K" = 65536
 */
import { IslandError } from '../errors.js';
import { isUlid, parseUlid } from './ulid.js';

/** Characters of an input shown in an error message. */
export const QUOTE_MAX = 64;

/** Longest volume name and host id (DESIGN: [a-z0-9][a-z0-9._-]{0,62}). */
export const VOLUME_NAME_MAX = 63;
export const HOST_ID_MAX = 63;
/** Longest region name: regions are few, named in configuration and in every key listing. */
export const REGION_NAME_MAX = 32;

/** Largest byte count island handles: the largest integer a JS number holds exactly. */
export const MAX_SIZE = Number.MAX_SAFE_INTEGER;
/**
 * Largest virtual size of a volume: 2 PiB, what qcow2 addresses with 64 KiB clusters
 * (QEMU's 32 MiB L1 table). It keeps a fully allocated image, metadata included, far
 * below 2^53 bytes, so every offset is an exact JS number. (The same limit as the qcow2
 * codec's virtual size limit.)
 */
export const MAX_VOLUME_SIZE = 2 ** 51;
/** Virtual sizes are whole 512-byte sectors, as qcow2 requires. */
export const SECTOR_SIZE = 512;

/** qcow2 cluster sizes: powers of two from 512 bytes (cluster_bits 9) to 2 MiB (cluster_bits 21). */
export const MIN_CLUSTER_SIZE = 512;
export const MAX_CLUSTER_SIZE = 2 * 1024 * 1024;
/** The cluster size island creates images with. */
export const DEFAULT_CLUSTER_SIZE = 64 * 1024;

/** Longest size string looked at: 16 digits and a suffix cover every value up to MAX_SIZE. */
const SIZE_INPUT_MAX = 24;
const SIZE_SUFFIXES: Readonly<Record<string, number>> = { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
const SIZE_UNITS = ['T', 'G', 'M', 'K'] as const;

/**
 * An input shown safely in a message: strings JSON-escaped and cut to `max` code points
 * (with their full length noted), other values by their kind.
 */
export function quoteInput(v: unknown, max = QUOTE_MAX): string {
  if (typeof v === 'string') {
    let shown = '';
    let n = 0;
    for (const cp of v) {
      if (n === max) return `${JSON.stringify(shown)}... (${v.length} characters)`;
      shown += cp;
      n++;
    }
    return JSON.stringify(shown);
  }
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return '(an array)';
  return `(a value of type ${typeof v})`;
}

function invalid(what: string, input: unknown, reason: string): IslandError {
  return new IslandError('INVALID_ARGUMENT', `invalid ${what} ${quoteInput(input)}: ${reason}`, {
    details: { what, reason },
  });
}

interface NameRule {
  readonly max: number;
  /** Allowed characters after the first. */
  readonly rest: RegExp;
  readonly restDoc: string;
  /** Whether '.' is allowed at all (then ".." and a trailing '.' are still refused). */
  readonly dots: boolean;
}

const VOLUME_RULE: NameRule = { max: VOLUME_NAME_MAX, rest: /^[a-z0-9._-]*$/, restDoc: 'a-z, 0-9, ".", "_" and "-"', dots: true };
const HOST_RULE: NameRule = { max: HOST_ID_MAX, rest: /^[a-z0-9._-]*$/, restDoc: 'a-z, 0-9, ".", "_" and "-"', dots: true };
const REGION_RULE: NameRule = { max: REGION_NAME_MAX, rest: /^[a-z0-9_-]*$/, restDoc: 'a-z, 0-9, "_" and "-"', dots: false };

/** Why `s` breaks `rule`, or null when it is a valid name. */
function nameProblem(s: unknown, rule: NameRule): string | null {
  if (typeof s !== 'string') return 'must be a string';
  if (s.length === 0) return 'must not be empty';
  if (s.length > rule.max) return `must be at most ${rule.max} characters, got ${s.length}`;
  if (!/^[a-z0-9]$/.test(s.charAt(0))) return 'must start with a lowercase letter or a digit';
  if (!rule.rest.test(s)) return `may contain only ${rule.restDoc}`;
  if (rule.dots) {
    // A ".." could read as a parent directory once joined into a path; a trailing '.' runs
    // into the ".qcow2" suffix ("a." -> "a..qcow2").
    if (s.includes('..')) return 'must not contain ".."';
    if (s.endsWith('.')) return 'must not end with "."';
  }
  return null;
}

function parseName(s: unknown, rule: NameRule, what: string): string {
  const problem = nameProblem(s, rule);
  if (problem !== null) throw invalid(what, s, problem);
  return s as string;
}

export function isVolumeName(s: unknown): s is string {
  return nameProblem(s, VOLUME_RULE) === null;
}

/** A valid volume name, unchanged; INVALID_ARGUMENT otherwise. */
export function parseVolumeName(s: unknown, what = 'volume name'): string {
  return parseName(s, VOLUME_RULE, what);
}

export function isHostId(s: unknown): s is string {
  return nameProblem(s, HOST_RULE) === null;
}

/** A valid host id, unchanged; INVALID_ARGUMENT otherwise. */
export function parseHostId(s: unknown, what = 'host id'): string {
  return parseName(s, HOST_RULE, what);
}

export function isRegionName(s: unknown): s is string {
  return nameProblem(s, REGION_RULE) === null;
}

/** A valid region name, unchanged; INVALID_ARGUMENT otherwise. */
export function parseRegionName(s: unknown, what = 'region name'): string {
  return parseName(s, REGION_RULE, what);
}

/** True for a snapshot id in canonical form (an uppercase ULID). */
export function isSnapshotId(s: unknown): s is string {
  return isUlid(s);
}

/** A snapshot id in canonical form (lowercase input is upper-cased); INVALID_ARGUMENT otherwise. */
export function parseSnapshotId(s: unknown, what = 'snapshot id'): string {
  return parseUlid(s, what);
}

export interface SizeOptions {
  /** What the size is, for messages ("volume size"). */
  what?: string;
  /** Smallest accepted value (default 0; pass 1 to refuse zero). */
  min?: number;
  /** Largest accepted value (default MAX_SIZE). */
  max?: number;
  /** The value must be a multiple of this (default 1). */
  multipleOf?: number;
}

/**
 * A byte count from "65536", "64K", "1g"... or from a number. Refuses negatives,
 * fractions, unknown suffixes, leading zeros, values below `min` or above `max`.
 */
export function parseSize(input: string | number, opts: SizeOptions = {}): number {
  const what = opts.what ?? 'size';
  const min = opts.min ?? 0;
  const max = opts.max ?? MAX_SIZE;
  const multipleOf = opts.multipleOf ?? 1;
  let value: number;
  if (typeof input === 'number') {
    if (!Number.isFinite(input)) throw invalid(what, input, 'must be a finite number');
    if (input < 0) throw invalid(what, input, 'must not be negative');
    if (!Number.isInteger(input)) throw invalid(what, input, 'must be a whole number of bytes');
    if (input > max) throw invalid(what, input, `exceeds the maximum of ${formatSize(max)}`);
    value = input;
  } else if (typeof input === 'string') {
    value = parseSizeText(input, what, max);
  } else {
    throw invalid(what, input, 'must be a string or a number');
  }
  if (value < min) {
    throw invalid(what, input, value === 0 ? 'must not be 0' : `must be at least ${formatSize(min)}`);
  }
  if (value % multipleOf !== 0) throw invalid(what, input, `must be a multiple of ${formatSize(multipleOf)}`);
  return value;
}

function parseSizeText(s: string, what: string, max: number): number {
  if (s.length === 0) throw invalid(what, s, 'must not be empty');
  if (s.length > SIZE_INPUT_MAX) throw invalid(what, s, `is too long to be a size (over ${SIZE_INPUT_MAX} characters)`);
  const m = /^([0-9]+)([A-Za-z]*)$/.exec(s);
  if (m === null) {
    if (/^\s|\s$/.test(s)) throw invalid(what, s, 'must not have surrounding spaces');
    if (s.startsWith('-')) throw invalid(what, s, 'must not be negative');
    if (/^[0-9]*[.,][0-9]*[A-Za-z]*$/.test(s)) throw invalid(what, s, 'must be a whole number of bytes (use a smaller unit instead of a fraction)');
    throw invalid(what, s, 'expected digits optionally followed by K, M, G or T');
  }
  const digits = m[1] as string;
  const suffix = (m[2] as string).toUpperCase();
  if (digits.length > 1 && digits.startsWith('0')) throw invalid(what, s, 'must not have leading zeros');
  const mult = suffix === '' ? 1 : SIZE_SUFFIXES[suffix];
  if (mult === undefined) throw invalid(what, s, `unknown suffix ${quoteInput(m[2])} (use K, M, G or T)`);
  const exact = BigInt(digits) * BigInt(mult);
  if (exact > BigInt(max)) throw invalid(what, s, `exceeds the maximum of ${formatSize(max)}`);
  return Number(exact);
}

/** A volume's virtual size: 512 bytes to MAX_VOLUME_SIZE, whole sectors. */
export function parseVolumeSize(input: string | number, what = 'volume size'): number {
  return parseSize(input, { what, min: SECTOR_SIZE, max: MAX_VOLUME_SIZE, multipleOf: SECTOR_SIZE });
}

export function isClusterSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= MIN_CLUSTER_SIZE && n <= MAX_CLUSTER_SIZE && (n & (n - 1)) === 0;
}

/** A qcow2 cluster size: a power of two from 512 bytes to 2 MiB. */
export function parseClusterSize(input: string | number, what = 'cluster size'): number {
  const n = parseSize(input, { what, min: MIN_CLUSTER_SIZE, max: MAX_CLUSTER_SIZE });
  if (!isClusterSize(n)) throw invalid(what, input, 'must be a power of two');
  return n;
}

/** A byte count in the shortest exact form parseSize accepts: 65536 -> "64K", 1000 -> "1000". */
export function formatSize(n: number): string {
  if (Number.isSafeInteger(n) && n > 0) {
    for (const unit of SIZE_UNITS) {
      const mult = SIZE_SUFFIXES[unit] as number;
      if (n % mult === 0) return `${n / mult}${unit}`;
    }
  }
  return String(n);
}

/** A byte count for people, rounded: 1536 -> "1.5 KiB", 3221225472 -> "3.0 GiB". */
export function humanSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}
