/**
 * The state record of an attached volume: one small file, `state`, in the volume's local
 * directory, replaced atomically (write `state.tmp`, fsync it, rename it over `state`, fsync
 * the directory), so a crash leaves either the old or the new record. It is the one place
 * where island keeps what it knows of a local copy: no side file is trusted besides it.
 *
 * Layout (256 bytes, big-endian), version 2:
 *
 *   Byte    0 -    3: magic "ISVS" (0x49535653)
 *           4 -    5: format version (2; version 1 is read once, to migrate it)
 *           6 -    7: flags: bit 0 clean shutdown (set by close, cleared by open before any
 *                     write is accepted); bit 1 filled (every cluster of the base snapshot is
 *                     local; version 2 only); other bits zero
 *           8 -   15: virtual size in bytes (u64)
 *          16 -   19: cluster size in bytes (u32; a power of two, 512 B to 2 MiB)
 *          20 -   23: write-intent region size in bytes (u32; a power of two, a multiple of
 *                     the cluster size, at most 1 GiB)
 *          24 -   31: image length in bytes when the record was written (u64; the image file's
 *                     own size is the truth after a crash)
 *          32 -   39: attachment generation (u64)
 *          40 -   47: epoch: the dirty epoch current when the record was written (u64)
 *          48 -   55: completed epoch (u64): changes of every epoch up to this one are in the
 *                     committed snapshot; dirty pages stamped with it or older are ignored
 *          56 -   63: intent epoch (u64): intent pages stamped older than this are ignored
 *          64 -   71: base length (u64): the image length of the base snapshot. Clusters
 *                     that start at or past it are present by definition; 0 for a new volume
 *                     (every cluster is present)
 *          72 -   79: record sequence number (u64, grows by one at every write)
 *              80   : volume name length n (1-63)
 *          81 -  143: volume name (n bytes of [a-z0-9._-]), zero padded
 *             144   : base snapshot id length (0: none, or 26)
 *         145 -  170: base snapshot id (ULID text), zero padded
 *             171   : committed snapshot id length (0: none, or 26; version 2)
 *         172 -  197: committed snapshot id (ULID text), zero padded: the snapshot whose
 *                     content the change tracking is relative to. Written in the same record
 *                     as the completed epoch of that snapshot. None: every cluster counts as
 *                     changed (a new volume, or one whose last snapshot is unknown or gone)
 *         198 -  199: reserved, zero
 *         200 -  215: synced pages (u32 each) of dirty.0, dirty.1, intent, present: that many
 *                     leading pages of the file were durably written when the record was
 *                     written (version 2). A file shorter than that was truncated: the pages
 *                     it lost are unreadable, never empty
 *         216 -  251: reserved, zero
 *         252 -  255: CRC-32 (zlib polynomial) of bytes 0-251
 *
 * Version 1 is the same up to byte 170 with bytes 171-251 reserved; it has no filled flag.
 */
import { crc32 } from 'node:zlib';
import { join } from 'node:path';
import { IslandError } from '../errors.js';
import { corrupt, Reader } from '../format/bytes.js';
import { isClusterSize, isSnapshotId, isVolumeName, VOLUME_NAME_MAX } from '../format/names.js';
import { ULID_LEN } from '../format/ulid.js';
import type { LocalFs } from './files.js';

export const STATE_FILE = 'state';
export const STATE_TMP_FILE = 'state.tmp';
export const STATE_RECORD_SIZE = 256;
export const STATE_MAGIC = 0x49535653; // "ISVS"
export const STATE_VERSION = 2;
/** The version before the committed snapshot id and the filled flag moved into the record. */
export const STATE_VERSION_1 = 1;

export const ST_MAGIC = 0;
export const ST_VERSION = 4;
export const ST_FLAGS = 6;
export const ST_VIRTUAL_SIZE = 8;
export const ST_CLUSTER_SIZE = 16;
export const ST_REGION_SIZE = 20;
export const ST_IMAGE_LENGTH = 24;
export const ST_GENERATION = 32;
export const ST_EPOCH = 40;
export const ST_COMPLETED_EPOCH = 48;
export const ST_INTENT_EPOCH = 56;
export const ST_BASE_LENGTH = 64;
export const ST_SEQUENCE = 72;
export const ST_NAME_LEN = 80;
export const ST_NAME = 81;
export const ST_NAME_MAX = VOLUME_NAME_MAX;
export const ST_BASE_ID_LEN = 144;
export const ST_BASE_ID = 145;
export const ST_BASE_ID_MAX = ULID_LEN;
export const ST_COMMITTED_ID_LEN = 171;
export const ST_COMMITTED_ID = 172;
export const ST_SYNCED_PAGES = 200;
/** Order of the synced page counts at ST_SYNCED_PAGES, 4 bytes each. */
export const SYNCED_PAGE_FILES = ['dirty0', 'dirty1', 'intent', 'present'] as const;
export const ST_RESERVED = 216;
export const ST_CRC = 252;

export const STATE_FLAG_CLEAN = 1 << 0;
export const STATE_FLAG_FILLED = 1 << 1;
export const STATE_FLAGS_KNOWN = STATE_FLAG_CLEAN | STATE_FLAG_FILLED;
export const STATE_FLAGS_KNOWN_V1 = STATE_FLAG_CLEAN;

/** Largest write-intent region: 1 GiB; a bigger one would make a rescan after a crash as long as a full one. */
export const MAX_REGION_SIZE = 2 ** 30;
/**
 * Largest image length island handles: 4 PiB, twice the largest virtual size (2 PiB), which
 * leaves room for qcow2 metadata and keeps every offset an exact JS number.
 */
export const MAX_IMAGE_LENGTH = 2 ** 52;

/** Check an I/O's offset and length against the image limit (both engines, before any I/O). */
export function checkIoRange(offset: number, len: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new IslandError('INVALID_ARGUMENT', `offset must be a non-negative integer: ${offset}`, { details: { offset } });
  if (offset + len > MAX_IMAGE_LENGTH) throw new IslandError('TOO_LARGE', `I/O up to byte ${offset + len} is past island's image limit of ${MAX_IMAGE_LENGTH}`, { details: { offset, len } });
}
/** Largest synced page count: a page index is a u32 (bitmap-page.ts). */
const MAX_SYNCED_PAGES = 0xffff_ffff;

/** Leading pages of each bitmap file known durably written (see the table above). */
export interface SyncedPages {
  dirty0: number;
  dirty1: number;
  intent: number;
  present: number;
}

export const NO_SYNCED_PAGES: Readonly<SyncedPages> = { dirty0: 0, dirty1: 0, intent: 0, present: 0 };

export interface VolumeState {
  name: string;
  virtualSize: number;
  clusterSize: number;
  regionSize: number;
  imageLength: number;
  generation: number;
  epoch: number;
  completedEpoch: number;
  intentEpoch: number;
  baseLength: number;
  baseSnapshot: string | null;
  /** The snapshot the change tracking is relative to; null: every cluster counts as changed. */
  committedSnapshot: string | null;
  /** Every cluster of the base snapshot is local (the background fill is done). */
  filled: boolean;
  clean: boolean;
  sequence: number;
  syncedPages: SyncedPages;
}

/** A decoded record and the format version it was stored in. */
export interface StoredState {
  state: VolumeState;
  version: typeof STATE_VERSION | typeof STATE_VERSION_1;
}

function invalid(message: string): IslandError {
  return new IslandError('INVALID_ARGUMENT', message);
}

/** Check a record before writing it (and after reading it): the same rules both ways. */
export function validateState(s: VolumeState): void {
  if (!isVolumeName(s.name)) throw invalid(`invalid volume name in state: ${JSON.stringify(s.name)}`);
  if (!isClusterSize(s.clusterSize)) throw invalid(`invalid cluster size ${s.clusterSize}`);
  const r = s.regionSize;
  if (!Number.isInteger(r) || r < s.clusterSize || r > MAX_REGION_SIZE || (r & (r - 1)) !== 0) {
    throw invalid(`region size must be a power of two from the cluster size to ${MAX_REGION_SIZE}: ${r}`);
  }
  for (const [field, v] of [
    ['virtual size', s.virtualSize],
    ['image length', s.imageLength],
    ['base length', s.baseLength],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0 || v > MAX_IMAGE_LENGTH) throw invalid(`${field} out of range: ${v}`);
  }
  for (const [field, v] of [
    ['generation', s.generation],
    ['epoch', s.epoch],
    ['completed epoch', s.completedEpoch],
    ['intent epoch', s.intentEpoch],
    ['sequence', s.sequence],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw invalid(`${field} out of range: ${v}`);
  }
  for (const f of SYNCED_PAGE_FILES) {
    const v = s.syncedPages[f];
    if (!Number.isInteger(v) || v < 0 || v > MAX_SYNCED_PAGES) throw invalid(`synced pages of ${f} out of range: ${v}`);
  }
  if (s.completedEpoch > s.epoch) throw invalid(`completed epoch ${s.completedEpoch} is past epoch ${s.epoch}`);
  if (s.baseSnapshot !== null && !isSnapshotId(s.baseSnapshot)) throw invalid(`invalid base snapshot id ${JSON.stringify(s.baseSnapshot)}`);
  if (s.committedSnapshot !== null && !isSnapshotId(s.committedSnapshot)) throw invalid(`invalid committed snapshot id ${JSON.stringify(s.committedSnapshot)}`);
}

function writeId(b: Buffer, id: string | null, lenAt: number, at: number): void {
  if (id === null) return;
  const bytes = Buffer.from(id, 'ascii');
  b.writeUInt8(bytes.length, lenAt);
  bytes.copy(b, at);
}

/** Encode a record (always the current version). */
export function encodeState(s: VolumeState): Buffer {
  validateState(s);
  const b = Buffer.alloc(STATE_RECORD_SIZE);
  b.writeUInt32BE(STATE_MAGIC, ST_MAGIC);
  b.writeUInt16BE(STATE_VERSION, ST_VERSION);
  b.writeUInt16BE((s.clean ? STATE_FLAG_CLEAN : 0) | (s.filled ? STATE_FLAG_FILLED : 0), ST_FLAGS);
  b.writeBigUInt64BE(BigInt(s.virtualSize), ST_VIRTUAL_SIZE);
  b.writeUInt32BE(s.clusterSize, ST_CLUSTER_SIZE);
  b.writeUInt32BE(s.regionSize, ST_REGION_SIZE);
  b.writeBigUInt64BE(BigInt(s.imageLength), ST_IMAGE_LENGTH);
  b.writeBigUInt64BE(BigInt(s.generation), ST_GENERATION);
  b.writeBigUInt64BE(BigInt(s.epoch), ST_EPOCH);
  b.writeBigUInt64BE(BigInt(s.completedEpoch), ST_COMPLETED_EPOCH);
  b.writeBigUInt64BE(BigInt(s.intentEpoch), ST_INTENT_EPOCH);
  b.writeBigUInt64BE(BigInt(s.baseLength), ST_BASE_LENGTH);
  b.writeBigUInt64BE(BigInt(s.sequence), ST_SEQUENCE);
  const name = Buffer.from(s.name, 'ascii');
  b.writeUInt8(name.length, ST_NAME_LEN);
  name.copy(b, ST_NAME);
  writeId(b, s.baseSnapshot, ST_BASE_ID_LEN, ST_BASE_ID);
  writeId(b, s.committedSnapshot, ST_COMMITTED_ID_LEN, ST_COMMITTED_ID);
  SYNCED_PAGE_FILES.forEach((f, i) => b.writeUInt32BE(s.syncedPages[f], ST_SYNCED_PAGES + 4 * i));
  b.writeUInt32BE(crc32(b.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  return b;
}

function readId(buf: Buffer, lenAt: number, at: number, what: string, file: string): string | null {
  const len = buf.readUInt8(lenAt);
  if (len !== 0 && len !== ULID_LEN) throw corrupt(`${file}: ${what} id length ${len}`, lenAt, { file });
  return len === 0 ? null : buf.toString('ascii', at, at + len);
}

/** Decode a state record of either version; FORMAT_CORRUPT (naming the file and byte) for anything off. */
export function decodeStateRecord(buf: Buffer, file = STATE_FILE): StoredState {
  if (buf.length !== STATE_RECORD_SIZE) throw corrupt(`${file}: state record of ${buf.length} bytes, expected ${STATE_RECORD_SIZE}`, 0, { file });
  const r = new Reader(buf);
  if (r.u32('magic') !== STATE_MAGIC) throw corrupt(`${file}: not an island state record (bad magic)`, ST_MAGIC, { file });
  const stored = buf.readUInt32BE(ST_CRC);
  if (stored !== crc32(buf.subarray(0, ST_CRC)) >>> 0) throw corrupt(`${file}: state record checksum mismatch`, ST_CRC, { file });
  const version = r.u16('version');
  if (version !== STATE_VERSION && version !== STATE_VERSION_1) {
    throw new IslandError('FORMAT_UNSUPPORTED', `${file}: state record version ${version} (this build reads ${STATE_VERSION_1} and ${STATE_VERSION})`, { details: { file, version } });
  }
  const v2 = version === STATE_VERSION;
  const flags = r.u16('flags');
  if ((flags & ~(v2 ? STATE_FLAGS_KNOWN : STATE_FLAGS_KNOWN_V1)) !== 0) {
    throw new IslandError('FORMAT_UNSUPPORTED', `${file}: unknown state flags 0x${flags.toString(16)}`, { details: { file, flags } });
  }
  const virtualSize = r.u64n('virtual size');
  const clusterSize = r.u32('cluster size');
  const regionSize = r.u32('region size');
  const imageLength = r.u64n('image length');
  const generation = r.u64n('generation');
  const epoch = r.u64n('epoch');
  const completedEpoch = r.u64n('completed epoch');
  const intentEpoch = r.u64n('intent epoch');
  const baseLength = r.u64n('base length');
  const sequence = r.u64n('sequence');
  const nameLen = r.u8('name length');
  if (nameLen < 1 || nameLen > ST_NAME_MAX) throw corrupt(`${file}: volume name length ${nameLen}`, ST_NAME_LEN, { file });
  const name = buf.toString('ascii', ST_NAME, ST_NAME + nameLen);
  const baseSnapshot = readId(buf, ST_BASE_ID_LEN, ST_BASE_ID, 'base snapshot', file);
  // Version 1 kept bytes 171-251 reserved: no committed id, no synced page counts.
  const committedSnapshot = v2 ? readId(buf, ST_COMMITTED_ID_LEN, ST_COMMITTED_ID, 'committed snapshot', file) : null;
  const syncedPages: SyncedPages = { ...NO_SYNCED_PAGES };
  if (v2) SYNCED_PAGE_FILES.forEach((f, i) => (syncedPages[f] = buf.readUInt32BE(ST_SYNCED_PAGES + 4 * i)));
  const s: VolumeState = {
    name,
    virtualSize,
    clusterSize,
    regionSize,
    imageLength,
    generation,
    epoch,
    completedEpoch,
    intentEpoch,
    baseLength,
    baseSnapshot,
    committedSnapshot,
    filled: (flags & STATE_FLAG_FILLED) !== 0,
    clean: (flags & STATE_FLAG_CLEAN) !== 0,
    sequence,
    syncedPages,
  };
  try {
    validateState(s);
  } catch (err) {
    throw corrupt(`${file}: ${(err as Error).message}`, 0, { file });
  }
  return { state: s, version: v2 ? STATE_VERSION : STATE_VERSION_1 };
}

/** Decode a state record of either version. */
export function decodeState(buf: Buffer, file = STATE_FILE): VolumeState {
  return decodeStateRecord(buf, file).state;
}

/** Read the state record of the volume in `dir`, with its version; NOT_FOUND when there is none. */
export async function readStateRecord(fs: LocalFs, dir: string): Promise<StoredState> {
  const path = join(dir, STATE_FILE);
  const f = await fs.open(path, 'r+');
  try {
    const size = await f.size();
    if (size !== STATE_RECORD_SIZE) throw corrupt(`${path}: state record of ${size} bytes, expected ${STATE_RECORD_SIZE}`, 0, { file: path });
    const buf = Buffer.alloc(STATE_RECORD_SIZE);
    await f.read(buf, 0, STATE_RECORD_SIZE, 0);
    return decodeStateRecord(buf, path);
  } finally {
    await f.close();
  }
}

/** Read the state record of the volume in `dir`; NOT_FOUND when there is none. */
export async function readState(fs: LocalFs, dir: string): Promise<VolumeState> {
  return (await readStateRecord(fs, dir)).state;
}

/** Replace the state record atomically and durably (temp, fsync, rename, fsync directory). */
export async function writeState(fs: LocalFs, dir: string, s: VolumeState): Promise<void> {
  const bytes = encodeState(s);
  const tmp = join(dir, STATE_TMP_FILE);
  const f = await fs.open(tmp, 'create');
  try {
    await f.truncate(0);
    await f.write(bytes, 0, bytes.length, 0);
    await f.sync();
  } finally {
    await f.close();
  }
  await fs.rename(tmp, join(dir, STATE_FILE));
  await fs.syncDir(dir);
}
