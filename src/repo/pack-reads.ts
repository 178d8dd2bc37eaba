/**
 * Reading many blobs of the same packs with few ranged GETs: the one place lazy restore
 * (snapshot/restore.ts) and the background fill (snapshot/fill.ts) cut what they need into
 * GETs and take each blob out of what a GET brought, verified.
 *
 * A GET costs a round trip and a request's fixed work in the store whatever its size
 * (docs/benchmarks/store-path.md, "Lazy and fill reads"), so blobs are read together when
 * they lie in one pack in order, even with other blobs between them: a gap of at most
 * COALESCE_MAX_GAP_BYTES is read and thrown away rather than paid for with a second GET.
 * Every blob taken out is decoded and verified by the repository's frame codec (hash, or
 * authentication when encrypted) exactly as a single-blob read is; bytes of a gap are never
 * looked at.
 */
import { IslandError } from '../errors.js';
import type { BlobKind } from '../format/blob.js';
import type { BlobLocation } from '../format/location.js';
import type { OpOptions } from '../store/types.js';
import { keys } from './keys.js';
import type { Repository } from './repository.js';

/**
 * Largest ranged GET a plan makes: a few MiB keeps the per-request cost small beside the
 * transfer on the stores measured, while a reader waiting on one blob of it waits for at most
 * this much (about 50 ms at 100 MiB/s). 5 MiB: a read-ahead piece of 4 MiB of clusters
 * (volume/lazy.ts) with its frame headers, at most 96 bytes a frame (768 KiB at the smallest,
 * 512-byte clusters), is one GET, not a 4 MiB one and a small one for the last frame.
 */
export const COALESCE_MAX_BYTES = 5 * 1024 * 1024;
/**
 * Largest gap between two wanted blobs of one pack that is read and discarded: four 64 KiB
 * clusters, about what a GET's fixed cost transfers on the stores measured.
 */
export const COALESCE_MAX_GAP_BYTES = 256 * 1024;

export interface BlobWant<T> {
  readonly loc: BlobLocation;
  /** What the caller calls this blob (a cluster number). */
  readonly tag: T;
}

/** One ranged GET: bytes [offset, offset + length) of a pack, holding `blobs` in pack order. */
export interface PackRead<T> {
  readonly pack: Buffer;
  readonly offset: number;
  readonly length: number;
  readonly blobs: readonly BlobWant<T>[];
}

export interface PlanLimits {
  maxBytes?: number;
  maxGap?: number;
}

/**
 * Cut `wants` (any order, any packs) into ranged GETs: sorted by pack and offset, a GET grows
 * while the next blob is in the same pack, starts at most `maxGap` bytes after the end of
 * what the GET covers so far (the same blob twice, as deduplicated clusters are, costs
 * nothing) and the GET stays within `maxBytes`. A blob larger than `maxBytes` gets a GET of
 * its own. The GETs come out in pack order.
 */
export function planPackReads<T>(wants: readonly BlobWant<T>[], limits: PlanLimits = {}): PackRead<T>[] {
  const maxBytes = limits.maxBytes ?? COALESCE_MAX_BYTES;
  const maxGap = limits.maxGap ?? COALESCE_MAX_GAP_BYTES;
  const sorted = [...wants].sort((a, b) => Buffer.compare(a.loc.pack, b.loc.pack) || a.loc.offset - b.loc.offset);
  const out: PackRead<T>[] = [];
  let cur: { pack: Buffer; offset: number; end: number; blobs: BlobWant<T>[] } | undefined;
  for (const w of sorted) {
    const { pack, offset, length } = w.loc;
    const end = offset + length;
    if (cur !== undefined && cur.pack.equals(pack) && joins(cur.offset, cur.end, offset, length, maxBytes, maxGap)) {
      cur.end = Math.max(cur.end, end);
      cur.blobs.push(w);
      continue;
    }
    if (cur !== undefined) out.push({ pack: cur.pack, offset: cur.offset, length: cur.end - cur.offset, blobs: cur.blobs });
    cur = { pack, offset, end, blobs: [w] };
  }
  if (cur !== undefined) out.push({ pack: cur.pack, offset: cur.offset, length: cur.end - cur.offset, blobs: cur.blobs });
  return out;
}

/**
 * Whether a blob at `offset` of `length` bytes, of the same pack, joins a GET of [from, end)
 * (blobs taken in pack order): the rule planPackReads cuts by, for callers that keep their
 * blobs in their own compact form (the fill).
 */
export function joins(from: number, end: number, offset: number, length: number, maxBytes = COALESCE_MAX_BYTES, maxGap = COALESCE_MAX_GAP_BYTES): boolean {
  return offset - end <= maxGap && Math.max(end, offset + length) - from <= maxBytes;
}

/** The bytes of one planned GET (a short answer is found by blobIn, blob by blob). */
export function fetchPackRead<T>(repo: Repository, kind: BlobKind, read: PackRead<T>, opts?: OpOptions): Promise<Buffer> {
  return repo.store.getRange(keys.pack(kind, read.pack), read.offset, read.length, opts);
}

/**
 * The plain content of blob `loc` out of `bytes`, the answer to a GET of its pack from
 * `offset`: bounds checked, decoded and verified by the repository's frame codec. Throws
 * FORMAT_CORRUPT when the answer ends before the blob, the codec's error otherwise.
 */
export function blobIn(repo: Repository, kind: BlobKind, offset: number, bytes: Buffer, loc: BlobLocation): Buffer {
  const at = loc.offset - offset;
  if (at < 0 || at + loc.length > bytes.length) {
    throw new IslandError('FORMAT_CORRUPT', `${keys.pack(kind, loc.pack)}: the blob at ${loc.offset} lies outside the ${bytes.length} bytes read at ${offset}`, { details: { offset: loc.offset } });
  }
  return repo.frames.decode(bytes.subarray(at, at + loc.length), loc.id, { base: loc.offset, kind });
}
