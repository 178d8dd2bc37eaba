/**
 * Pointer-tree node codec: one node of a snapshot's pointer tree, as stored (a content-addressed
 * blob in a metadata pack). See docs/formats/tree.md for the tree built from these nodes.
 *
 * All integers are big-endian. A node has `fanout` slots (a power of two). A leaf's slots are the
 * entries of `fanout` consecutive clusters; an inner node's slots are references to its children.
 *
 *   Byte 0-3    magic "IPTN" (island pointer tree node)
 *   Byte 4      version (1)
 *   Byte 5      kind: 1 = leaf, 2 = inner
 *   Byte 6      level: height above the leaves (0 for a leaf, 1..MAX_DEPTH-1 for an inner node)
 *   Byte 7      fanout_bits: log2 of the slot count (MIN_FANOUT_BITS..MAX_FANOUT_BITS)
 *   Byte 8-11   pack_count: entries in the pack table
 *   Byte 12-15  record_count: records after the pack table
 *   Byte 16-    pack table: pack_count x 32-byte pack ids, in order of first use
 *   then        record_count records, each covering one or more consecutive slots:
 *
 *   NONE run (tag 0): an unallocated cluster (leaf) or an EMPTY child (inner), repeated
 *     Byte 0      tag
 *     Byte 1-4    count (>= 1)
 *   ZERO run (tag 1): all-zero clusters; leaves only
 *     Byte 0      tag
 *     Byte 1-4    count (>= 1)
 *   LOC run (tag 2): blobs (leaf) or child nodes (inner) stored back to back in one pack
 *     Byte 0      tag
 *     Byte 1-4    pack index into the pack table
 *     Byte 5-12   offset of the first frame in the pack
 *     Byte 13-16  count (>= 1)
 *     Byte 17-    count x item: Byte 0-3 frame length (>= 1), Byte 4-35 blob id (32 bytes).
 *                 Item k's frame starts where item k-1's ends (the first at `offset`).
 *
 * The encoding is canonical, so equal contents always have equal bytes and therefore equal ids
 * (that is what lets snapshots share subtrees). The decoder refuses anything else:
 *   - record counts sum to exactly `fanout`;
 *   - runs are maximal: no NONE run after a NONE run, no ZERO run after a ZERO run, no LOC run
 *     that continues the previous one (same pack, offset where the previous run ends);
 *   - the pack table lists each pack used, once, in order of first use;
 *   - a node holds at least one non-NONE slot (an all-unallocated subtree is EMPTY in its
 *     parent, an all-unallocated tree has no root);
 *   - no bytes follow the last record.
 *
 * Decoded BlobLocations are views into the node's buffer (pack and id are not copied).
 */
import { IslandError } from '../errors.js';
import { Reader, Writer, corrupt, SHA256_LEN } from './bytes.js';
import { hex, ID_LEN, PACK_ID_LEN, type BlobLocation } from './location.js';

export const NODE_MAGIC = Buffer.from('IPTN', 'latin1');
export const NODE_VERSION = 1;

export const NODE_KIND_LEAF = 1;
export const NODE_KIND_INNER = 2;

// Header field offsets and sizes.
export const NODE_MAGIC_OFF = 0;
export const NODE_MAGIC_LEN = 4;
export const NODE_VERSION_OFF = 4;
export const NODE_KIND_OFF = 5;
export const NODE_LEVEL_OFF = 6;
export const NODE_FANOUT_BITS_OFF = 7;
export const NODE_PACK_COUNT_OFF = 8;
export const NODE_RECORD_COUNT_OFF = 12;
export const NODE_HEADER_LEN = 16;

// Record tags.
export const TAG_NONE = 0;
export const TAG_ZERO = 1;
export const TAG_LOC = 2;

/** tag + count */
export const RUN_RECORD_LEN = 5;
/** tag + pack index + offset + count */
export const LOC_RECORD_HEADER_LEN = 17;
/** frame length + blob id */
export const LOC_ITEM_LEN = 4 + ID_LEN;

/**
 * Smallest fan-out: 16 slots. Below that the tree gets deep (ten levels already cover the
 * largest image at 16) and the header cost dominates each node.
 */
export const MIN_FANOUT_BITS = 4;
/**
 * Largest fan-out: 65536 slots. A full leaf is then ~2.4 MiB, far past the 16-64 KiB a node
 * should be; the bound exists so counts fit u32 and a hostile node cannot ask for more.
 */
export const MAX_FANOUT_BITS = 16;
/**
 * Largest image: 2^40 clusters (64 PiB at 64 KiB clusters, 512 TiB at qcow2's smallest 512-byte
 * clusters). Cluster indices stay exact JS numbers and fanout^depth stays below 2^53 for every
 * allowed fan-out.
 */
export const MAX_CLUSTERS_BITS = 40;
export const MAX_CLUSTERS = 2 ** MAX_CLUSTERS_BITS;
/** Deepest tree: 2^40 clusters at the smallest fan-out (16) need ten levels. */
export const MAX_DEPTH = Math.ceil(MAX_CLUSTERS_BITS / MIN_FANOUT_BITS);
/** Pack tables up to this size are checked for repeats pairwise, larger ones through a set. */
const SMALL_PACK_TABLE = 8;
/** The high u32 of a frame offset must stay below this so the offset stays below 2^53. */
const OFFSET_HI_LIMIT = 2 ** 21;
/** Frame lengths are u32. */
export const MAX_FRAME_LENGTH = 0xffff_ffff;

/** Where a child node is stored: its blob location (loc.id is the node's hash). */
export interface NodeRef {
  readonly loc: BlobLocation;
}

export interface Unallocated {
  readonly kind: 'unallocated';
}
export interface Zero {
  readonly kind: 'zero';
}
export interface BlobEntry {
  readonly kind: 'blob';
  readonly loc: BlobLocation;
}
/** What the tree says about one cluster. */
export type TreeEntry = Unallocated | Zero | BlobEntry;

/** Never written (a hole in the image file). */
export const UNALLOCATED: Unallocated = Object.freeze({ kind: 'unallocated' });
/** All-zero content, stored as nothing. */
export const ZERO: Zero = Object.freeze({ kind: 'zero' });

export function blobEntry(loc: BlobLocation): BlobEntry {
  return { kind: 'blob', loc };
}

function sameLoc(a: BlobLocation, b: BlobLocation): boolean {
  return a.offset === b.offset && a.length === b.length && a.id.equals(b.id) && a.pack.equals(b.pack);
}

export function sameEntry(a: TreeEntry, b: TreeEntry): boolean {
  if (a.kind !== b.kind) return false;
  return a.kind !== 'blob' || sameLoc(a.loc, (b as BlobEntry).loc);
}

/** Two child slots are the same subtree iff both are EMPTY or both name the same node id. */
export function sameChild(a: NodeRef | null, b: NodeRef | null): boolean {
  if (a === null || b === null) return a === b;
  return a.loc.id.equals(b.loc.id);
}

export interface LeafNode {
  readonly kind: 'leaf';
  readonly level: 0;
  readonly fanoutBits: number;
  /** `fanout` entries, one per cluster. */
  readonly entries: TreeEntry[];
}

export interface InnerNode {
  readonly kind: 'inner';
  readonly level: number;
  readonly fanoutBits: number;
  /** `fanout` child slots; null is EMPTY (the subtree is entirely unallocated). */
  readonly children: (NodeRef | null)[];
}

export type TreeNode = LeafNode | InnerNode;

/** Worst-case encoded size of a node: every slot a LOC run of its own, in a pack of its own. */
export function maxNodeSize(fanoutBits: number): number {
  checkFanoutBits(fanoutBits);
  return NODE_HEADER_LEN + (1 << fanoutBits) * (PACK_ID_LEN + LOC_RECORD_HEADER_LEN + LOC_ITEM_LEN);
}

export function checkFanoutBits(bits: number): void {
  if (!Number.isInteger(bits) || bits < MIN_FANOUT_BITS || bits > MAX_FANOUT_BITS) {
    throw new IslandError('INVALID_ARGUMENT', `fan-out bits must be ${MIN_FANOUT_BITS}..${MAX_FANOUT_BITS}, got ${bits}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** A slot as the codec sees it: NONE, ZERO, or a location (blob or child node). */
type Slot = null | 'zero' | BlobLocation;

interface Run {
  tag: number;
  count: number;
  pack: number;
  offset: number;
  /** End offset of the last item (LOC runs), to test whether the next location continues it. */
  end: number;
  items: BlobLocation[];
}

function checkLoc(loc: BlobLocation, what: string): void {
  if (!Buffer.isBuffer(loc.pack) || loc.pack.length !== PACK_ID_LEN || !Buffer.isBuffer(loc.id) || loc.id.length !== ID_LEN) {
    throw new IslandError('INVALID_ARGUMENT', `${what}: pack and id must be ${PACK_ID_LEN}-byte buffers`);
  }
  if (!Number.isSafeInteger(loc.offset) || loc.offset < 0 || !Number.isInteger(loc.length) || loc.length < 1 || loc.length > MAX_FRAME_LENGTH || loc.offset + loc.length > Number.MAX_SAFE_INTEGER) {
    throw new IslandError('INVALID_ARGUMENT', `${what}: bad offset ${loc.offset} or length ${loc.length}`);
  }
}

function encodeSlots(kind: number, level: number, fanoutBits: number, slotAt: (i: number) => Slot): Buffer {
  checkFanoutBits(fanoutBits);
  const fanout = 1 << fanoutBits;
  const runs: Run[] = [];
  const packs: Buffer[] = [];
  const packIndex = new Map<string, number>();
  let lastPack: Buffer | null = null;
  let lastPackIdx = -1;
  let allNone = true;
  let size = NODE_HEADER_LEN;
  let cur: Run | undefined;
  for (let i = 0; i < fanout; i++) {
    const s = slotAt(i);
    if (s === null || s === 'zero') {
      if (s !== null) allNone = false;
      const tag = s === null ? TAG_NONE : TAG_ZERO;
      if (cur !== undefined && cur.tag === tag) cur.count++;
      else runs.push((cur = { tag, count: 1, pack: 0, offset: 0, end: 0, items: [] }));
      continue;
    }
    allNone = false;
    checkLoc(s, `slot ${i}`);
    let p: number;
    if (lastPack !== null && s.pack.equals(lastPack)) p = lastPackIdx;
    else {
      const key = hex(s.pack);
      const known = packIndex.get(key);
      if (known === undefined) {
        p = packs.length;
        packIndex.set(key, p);
        packs.push(s.pack);
      } else p = known;
      lastPack = s.pack;
      lastPackIdx = p;
    }
    if (cur !== undefined && cur.tag === TAG_LOC && cur.pack === p && cur.end === s.offset) {
      cur.count++;
      cur.items.push(s);
      cur.end += s.length;
    } else {
      runs.push((cur = { tag: TAG_LOC, count: 1, pack: p, offset: s.offset, end: s.offset + s.length, items: [s] }));
    }
  }
  if (allNone) throw new IslandError('INVALID_ARGUMENT', 'a node must hold at least one allocated slot (an empty subtree is EMPTY in its parent)');
  size += packs.length * PACK_ID_LEN;
  for (const r of runs) size += r.tag === TAG_LOC ? LOC_RECORD_HEADER_LEN + r.count * LOC_ITEM_LEN : RUN_RECORD_LEN;

  const w = new Writer(size);
  w.bytes(NODE_MAGIC).u8(NODE_VERSION).u8(kind).u8(level).u8(fanoutBits).u32(packs.length).u32(runs.length);
  for (const p of packs) w.bytes(p);
  for (const r of runs) {
    w.u8(r.tag);
    if (r.tag !== TAG_LOC) {
      w.u32(r.count);
      continue;
    }
    w.u32(r.pack).u64(r.offset).u32(r.count);
    for (const it of r.items) w.u32(it.length).bytes(it.id);
  }
  const out = w.finish();
  if (out.length !== size) throw new IslandError('INTERNAL', `tree node size ${out.length} != computed ${size}`);
  return out;
}

/** Encode a node into its canonical bytes (its id is the hash of these bytes). */
export function encodeNode(node: TreeNode): Buffer {
  const fanout = 1 << node.fanoutBits;
  if (node.kind === 'leaf') {
    const entries = node.entries;
    if (entries.length !== fanout) throw new IslandError('INVALID_ARGUMENT', `leaf has ${entries.length} entries, fan-out is ${fanout}`);
    return encodeSlots(NODE_KIND_LEAF, 0, node.fanoutBits, (i) => {
      const e = entries[i]!;
      switch (e.kind) {
        case 'unallocated':
          return null;
        case 'zero':
          return 'zero';
        case 'blob':
          return e.loc;
        default:
          throw new IslandError('INVALID_ARGUMENT', `slot ${i}: unknown entry kind`);
      }
    });
  }
  const children = node.children;
  if (children.length !== fanout) throw new IslandError('INVALID_ARGUMENT', `inner node has ${children.length} children, fan-out is ${fanout}`);
  if (!Number.isInteger(node.level) || node.level < 1 || node.level >= MAX_DEPTH) {
    throw new IslandError('INVALID_ARGUMENT', `inner node level must be 1..${MAX_DEPTH - 1}, got ${node.level}`);
  }
  return encodeSlots(NODE_KIND_INNER, node.level, node.fanoutBits, (i) => children[i]?.loc ?? null);
}

// ---------------------------------------------------------------------------------------------
// Decoding

/**
 * Decode and validate one node. Hostile bytes give FORMAT_CORRUPT with the offset (or
 * FORMAT_UNSUPPORTED for a newer version), never a RangeError or an unbounded allocation.
 */
export function decodeNode(buf: Buffer): TreeNode {
  const r = new Reader(buf);
  const magic = r.bytes(NODE_MAGIC_LEN, 'tree node magic');
  if (!magic.equals(NODE_MAGIC)) throw corrupt('not a tree node: bad magic', NODE_MAGIC_OFF);
  const version = r.u8('tree node version');
  if (version !== NODE_VERSION) {
    throw new IslandError('FORMAT_UNSUPPORTED', `tree node version ${version} is not supported (this build reads ${NODE_VERSION})`, {
      details: { offset: NODE_VERSION_OFF, version },
    });
  }
  const kind = r.u8('tree node kind');
  if (kind !== NODE_KIND_LEAF && kind !== NODE_KIND_INNER) throw corrupt(`unknown tree node kind ${kind}`, NODE_KIND_OFF);
  const level = r.u8('tree node level');
  if (kind === NODE_KIND_LEAF ? level !== 0 : level < 1 || level >= MAX_DEPTH) {
    throw corrupt(`bad level ${level} for a ${kind === NODE_KIND_LEAF ? 'leaf' : 'inner node'}`, NODE_LEVEL_OFF);
  }
  const fanoutBits = r.u8('tree node fan-out');
  if (fanoutBits < MIN_FANOUT_BITS || fanoutBits > MAX_FANOUT_BITS) throw corrupt(`fan-out bits ${fanoutBits} out of range`, NODE_FANOUT_BITS_OFF);
  const fanout = 1 << fanoutBits;
  const packCount = r.u32('pack count');
  const recordCount = r.u32('record count');
  // Every record covers at least one slot and every pack is used by at least one record.
  if (recordCount < 1 || recordCount > fanout) throw corrupt(`record count ${recordCount} not in 1..${fanout}`, NODE_RECORD_COUNT_OFF);
  if (packCount > recordCount) throw corrupt(`pack count ${packCount} exceeds record count ${recordCount}`, NODE_PACK_COUNT_OFF);
  const packTableOff = r.offset;
  r.need(packCount * PACK_ID_LEN, 'pack table');
  const packs: Buffer[] = [];
  // Few packs (the usual case) are compared pairwise; many through a set, so a hostile table
  // costs O(n), not O(n^2).
  const seen = packCount > SMALL_PACK_TABLE ? new Set<string>() : null;
  for (let i = 0; i < packCount; i++) {
    const at = r.offset;
    const p = r.bytes(PACK_ID_LEN, 'pack id');
    let repeated: boolean;
    if (seen === null) repeated = packs.some((q) => q.equals(p));
    else {
      const key = hex(p);
      repeated = seen.has(key);
      seen.add(key);
    }
    if (repeated) throw corrupt(`pack ${i} repeats an earlier pack`, at);
    packs.push(p);
  }

  const leaf = kind === NODE_KIND_LEAF;
  const entries: TreeEntry[] = [];
  const children: (NodeRef | null)[] = [];
  let filled = 0;
  let packsUsed = 0;
  let prevTag = -1;
  let prevPack = -1;
  let prevEnd = -1;
  let allocated = false;
  for (let rec = 0; rec < recordCount; rec++) {
    const at = r.offset;
    const tag = r.u8('record tag');
    if (tag === TAG_NONE || tag === TAG_ZERO) {
      if (tag === TAG_ZERO && !leaf) throw corrupt('ZERO run in an inner node', at);
      if (tag === prevTag) throw corrupt('run continues the previous run (not canonical)', at);
      const count = r.u32('run count');
      if (count < 1 || count > fanout - filled) throw corrupt(`run count ${count} not in 1..${fanout - filled}`, at);
      if (leaf) {
        const e = tag === TAG_NONE ? UNALLOCATED : ZERO;
        for (let i = 0; i < count; i++) entries.push(e);
      } else {
        for (let i = 0; i < count; i++) children.push(null);
      }
      if (tag === TAG_ZERO) allocated = true;
      filled += count;
      prevTag = tag;
      continue;
    }
    if (tag !== TAG_LOC) throw corrupt(`unknown record tag ${tag}`, at);
    const p = r.u32('pack index');
    if (p > packsUsed || p >= packCount) throw corrupt(`pack index ${p} out of order or past the table (${packCount})`, at);
    if (p === packsUsed) packsUsed++;
    const pack = packs[p]!;
    const offAt = r.offset;
    // u64 read as two u32 halves: cheaper than a bigint per record, same bound (2^53).
    const hi = r.u32('frame offset');
    const lo = r.u32('frame offset');
    if (hi >= OFFSET_HI_LIMIT) throw corrupt(`frame offset past 2^53`, offAt);
    let offset = hi * 2 ** 32 + lo;
    if (prevTag === TAG_LOC && prevPack === p && prevEnd === offset) throw corrupt('run continues the previous run (not canonical)', at);
    const count = r.u32('run count');
    if (count < 1 || count > fanout - filled) throw corrupt(`run count ${count} not in 1..${fanout - filled}`, at);
    r.need(count * LOC_ITEM_LEN, 'run items');
    for (let i = 0; i < count; i++) {
      const itemAt = r.offset;
      const length = r.u32('frame length');
      if (length < 1) throw corrupt('frame length 0', itemAt);
      if (offset + length > Number.MAX_SAFE_INTEGER) throw corrupt('frame end past 2^53', offAt);
      const id = r.bytes(SHA256_LEN, 'id');
      const loc: BlobLocation = { pack, offset, length, id };
      if (leaf) entries.push({ kind: 'blob', loc });
      else children.push({ loc });
      offset += length;
    }
    allocated = true;
    filled += count;
    prevTag = TAG_LOC;
    prevPack = p;
    prevEnd = offset;
  }
  if (filled !== fanout) throw corrupt(`records cover ${filled} slots, fan-out is ${fanout}`, r.offset);
  if (packsUsed !== packCount) throw corrupt(`pack table lists ${packCount} packs, records use ${packsUsed}`, packTableOff);
  if (!allocated) throw corrupt('node holds no allocated slot (not canonical)', NODE_HEADER_LEN);
  r.done('tree node');
  return leaf ? { kind: 'leaf', level: 0, fanoutBits, entries } : { kind: 'inner', level, fanoutBits, children };
}
