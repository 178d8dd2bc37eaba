/**
 * The packs a snapshot's tree reaches, and copying one pack between regions with every
 * byte checked on the way (invariant 4): what the copy reads from the source is verified
 * before it is written to the target, so a damaged source pack is never spread.
 */
import { setImmediate } from 'node:timers/promises';
import { IslandError } from '../errors.js';
import type { BlobKind } from '../format/blob.js';
import { PLAIN_FRAMES, type FrameCodec } from '../format/frame-codec.js';
import { hex } from '../format/location.js';
import { MAX_PACK_SIZE, parsePack } from '../format/pack.js';
import type { Manifest } from '../format/records.js';
import { collectNodeRefs } from '../format/tree.js';
import type { OpOptions } from '../store/types.js';
import { manifestTree } from './commit.js';
import { keys } from './keys.js';
import type { Repository } from './repository.js';

export interface TreePack {
  readonly key: string;
  readonly kind: BlobKind;
  readonly id: Buffer;
}

/**
 * Every pack the tree of `m` reaches: metadata packs of its nodes and data packs of its
 * blobs, by key, in the order first met. Reads every node once (verified, cached); blobs
 * are not read.
 */
export async function treePacks(repo: Repository, m: Manifest, opts: OpOptions = {}): Promise<Map<string, TreePack>> {
  const out = new Map<string, TreePack>();
  const note = (kind: BlobKind, id: Buffer): void => {
    const key = keys.pack(kind, id);
    if (!out.has(key)) out.set(key, { key, kind, id });
  };
  for await (const visit of collectNodeRefs(manifestTree(m), repo.nodeReader(), { signal: opts.signal })) {
    note('metadata', visit.ref.loc.pack);
    if (visit.node.kind === 'leaf') for (const e of visit.node.entries) if (e.kind === 'blob') note('data', e.loc.pack);
  }
  return out;
}

/** Blobs decoded between two yields to the event loop (the daemon serves FUSE on it). */
const BLOBS_PER_YIELD = 16;

/**
 * Check a whole pack read from a store: footer, trailer, every frame header against its
 * trailer entry, and every blob's plain bytes against its id. Yields to the event loop
 * between batches of blobs. FORMAT_CORRUPT or HASH_MISMATCH naming the key otherwise.
 */
export async function verifyPack(bytes: Buffer, kind: BlobKind, key: string, frames: FrameCodec = PLAIN_FRAMES): Promise<number> {
  try {
    const pack = parsePack(bytes);
    if (pack.footer.kind !== kind) throw new IslandError('FORMAT_CORRUPT', `a ${pack.footer.kind} pack stored as a ${kind} pack`);
    for (const [i, e] of pack.entries.entries()) {
      frames.decode(bytes.subarray(e.offset, e.offset + e.frameLength), e.id, { base: e.offset, kind });
      if (i % BLOBS_PER_YIELD === BLOBS_PER_YIELD - 1) await setImmediate();
    }
    return pack.entries.length;
  } catch (err) {
    const e = err as IslandError;
    if (e.code === 'FORMAT_CORRUPT' || e.code === 'HASH_MISMATCH' || e.code === 'FORMAT_UNSUPPORTED' || e.code === 'AUTH_FAILED') {
      throw new IslandError(e.code, `${key}: ${e.message}`, { cause: err, details: { ...e.details, key } });
    }
    throw err;
  }
}

/**
 * Read pack `p` whole from `src`, verify it, write it to `dst` under the same name (pack
 * names are unique, so the name means these bytes in every region). Returns its size.
 */
export async function copyPack(src: Repository, dst: Repository, p: TreePack, opts: OpOptions = {}): Promise<number> {
  const info = await src.store.head(p.key, opts);
  if (!info) throw new IslandError('FORMAT_CORRUPT', `pack ${p.key} that the tree reaches is missing from region ${src.region}`, { details: { key: p.key, pack: hex(p.id) } });
  if (info.size > MAX_PACK_SIZE) throw new IslandError('FORMAT_CORRUPT', `${p.key}: ${info.size} bytes is larger than any pack (${MAX_PACK_SIZE})`, { details: { key: p.key } });
  const bytes = await src.store.get(p.key, opts);
  await verifyPack(bytes, p.kind, p.key, src.frames);
  await dst.store.put(p.key, bytes, opts);
  return bytes.length;
}
