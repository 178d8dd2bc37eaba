/**
 * Pack checks for fsck.
 *
 * Structure tier: a pack's footer and trailer (two small ranged reads, no blob data), kept
 * in a cache bounded in bytes, answer "is there a frame of this length and id at this
 * offset?" for every location a tree points to.
 *
 * Deep tier: the whole pack is read and every frame decoded and hashed; the frames that
 * fail are returned by offset, so the tree walk can say which snapshots they affect.
 */
import { LRUCache } from 'lru-cache';
import { IslandError, codeOf } from '../errors.js';
import type { BlobKind } from '../format/blob.js';
import type { BlobLocation } from '../format/location.js';
import { checkPackFrames, type PackEntry } from '../format/pack.js';
import { keys } from '../repo/keys.js';
import type { Repository } from '../repo/repository.js';
import type { OpOptions } from '../store/types.js';

/** A pack as its trailer describes it, or why it cannot be read. */
export type PackIndex =
  | { readonly ok: true; readonly size: number; readonly entries: readonly PackEntry[] }
  | { readonly ok: false; readonly missing: boolean; readonly code: string; readonly message: string };

/** Bytes of trailer entries the structure tier keeps in memory at most. */
const INDEX_CACHE_BYTES = 64 * 1024 * 1024;
/** In-memory cost of one cached trailer entry (object, id buffer, fields). */
const ENTRY_COST = 160;

export class PackIndexes {
  /** Footer and trailer reads, for the report. */
  reads = 0;
  private readonly cache: LRUCache<string, PackIndex, { kind: BlobKind; pack: Buffer }>;

  constructor(private readonly repo: Repository, opts: OpOptions = {}) {
    this.cache = new LRUCache<string, PackIndex, { kind: BlobKind; pack: Buffer }>({
      maxSize: INDEX_CACHE_BYTES,
      sizeCalculation: (v) => (v.ok ? Math.max(1, v.entries.length) * ENTRY_COST : 256),
      fetchMethod: async (_key, _stale, { context }) => this.load(context.kind, context.pack, opts),
    });
  }

  /** Seed the cache with an index already read whole (by the deep tier). */
  set(kind: BlobKind, pack: Buffer, index: PackIndex): void {
    this.cache.set(keys.pack(kind, pack), index);
  }

  async get(kind: BlobKind, pack: Buffer): Promise<PackIndex> {
    const v = await this.cache.fetch(keys.pack(kind, pack), { context: { kind, pack } });
    if (!v) throw new IslandError('INTERNAL', 'pack index cache returned nothing');
    return v;
  }

  private async load(kind: BlobKind, pack: Buffer, opts: OpOptions): Promise<PackIndex> {
    this.reads++;
    try {
      const { size, entries } = await this.repo.readPackIndex(kind, pack, opts);
      return { ok: true, size, entries: [...entries].sort((a, b) => a.offset - b.offset) };
    } catch (err) {
      const code = codeOf(err);
      if (code === 'STORE_NOT_FOUND') return { ok: false, missing: true, code, message: 'the pack does not exist' };
      if (code === 'FORMAT_CORRUPT' || code === 'FORMAT_UNSUPPORTED' || code === 'HASH_MISMATCH') return { ok: false, missing: false, code, message: (err as Error).message };
      throw err;
    }
  }
}

/** The trailer entry at `offset`, by binary search over entries sorted by offset. */
export function entryAt(entries: readonly PackEntry[], offset: number): PackEntry | undefined {
  let lo = 0;
  let hi = entries.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const e = entries[mid]!;
    if (e.offset === offset) return e;
    if (e.offset < offset) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

/** Why a location does not match its pack's trailer, or null when it does. */
export function locationMismatch(entries: readonly PackEntry[], loc: BlobLocation): string | null {
  const e = entryAt(entries, loc.offset);
  if (!e) return `no blob starts at offset ${loc.offset}`;
  if (e.frameLength !== loc.length) return `the blob at offset ${loc.offset} is ${e.frameLength} bytes, the reference says ${loc.length}`;
  if (!e.id.equals(loc.id)) return `the blob at offset ${loc.offset} is ${e.id.toString('hex')}, the reference expects ${loc.id.toString('hex')}`;
  return null;
}

export interface BadBlob {
  readonly offset: number;
  readonly code: string;
  readonly message: string;
}

export interface DeepResult {
  /** The pack's index as its trailer gives it (or why it cannot be read). */
  readonly index: PackIndex;
  /** Frames that fail to decode or hash, by offset. */
  readonly bad: Map<number, BadBlob>;
  readonly bytes: number;
  readonly blobs: number;
}

/**
 * Read a whole pack and verify every frame. A pack whose footer or trailer is damaged is
 * scanned frame by frame instead (as a trailer rebuild would), so its blobs are still judged.
 */
export async function verifyPack(repo: Repository, kind: BlobKind, pack: Buffer, opts: OpOptions = {}): Promise<DeepResult> {
  const key = keys.pack(kind, pack);
  let bytes: Buffer;
  try {
    bytes = await repo.store.get(key, opts);
  } catch (err) {
    if (codeOf(err) === 'STORE_NOT_FOUND') return { index: { ok: false, missing: true, code: 'STORE_NOT_FOUND', message: 'the pack does not exist' }, bad: new Map(), bytes: 0, blobs: 0 };
    throw err;
  }
  const r = checkPackFrames(bytes, kind, repo.frames.decode);
  const index: PackIndex = r.trailerError === null ? { ok: true, size: bytes.length, entries: r.entries } : { ok: false, missing: false, code: r.trailerError.code, message: r.trailerError.message };
  const bad = new Map<number, BadBlob>();
  for (const [offset, err] of r.bad) bad.set(offset, { offset, code: err.code, message: `${key}: ${err.message}` });
  return { index, bad, bytes: bytes.length, blobs: r.entries.length };
}
