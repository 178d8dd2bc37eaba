/**
 * Pointer-tree algorithms over an abstract node store (docs/formats/tree.md).
 *
 * A snapshot's pointer tree maps each cluster index 0..nClusters-1 of the image file to an entry
 * (UNALLOCATED, ZERO, or BLOB with its location). It is a fixed-depth radix tree: a leaf holds
 * `fanout` consecutive clusters, an inner node at level L holds `fanout` children each covering
 * fanout^L clusters, and the root sits at level depth-1 where depth is the smallest d >= 1 with
 * fanout^d >= nClusters. Slot i of a node covering clusters from `first` at level L covers
 * [first + i*fanout^L, first + (i+1)*fanout^L). Nodes do not record their position: a node's
 * place is fixed by the path from the root, and the hash chain from the root verifies it.
 *
 * Every slot past nClusters is UNALLOCATED (EMPTY for children); an all-unallocated subtree is
 * EMPTY in its parent, and an all-unallocated tree has a null root. Growth adds levels above the
 * old root (the old root becomes child 0 of a new chain), shrinking takes child 0 down and clears
 * the tail, so a subtree's bytes never depend on the image length and survive resizes.
 *
 * Nothing here holds more than the path (depth decoded nodes) plus, for buildTree, a bounded
 * look-ahead of changes; the store does I/O, verifies what it reads and picks where nodes go.
 */
import { IslandError } from '../errors.js';
import { sha256 } from './bytes.js';
import { hex } from './location.js';
import {
  UNALLOCATED,
  MAX_CLUSTERS,
  MAX_FANOUT_BITS,
  MIN_FANOUT_BITS,
  decodeNode,
  encodeNode,
  sameChild,
  sameEntry,
  type NodeRef,
  type TreeEntry,
  type TreeNode,
  type LeafNode,
  type InnerNode,
} from './tree-node.js';

export {
  UNALLOCATED,
  ZERO,
  blobEntry,
  sameEntry,
  MAX_CLUSTERS,
  MAX_DEPTH,
  type NodeRef,
  type TreeEntry,
  type TreeNode,
  type BlobEntry,
} from './tree-node.js';

/** The fan-out island uses unless a volume says otherwise (measured: docs/formats/tree.md). */
export const DEFAULT_FANOUT = 512;

/** Leaves whose parent nodes buildTree reads ahead of the change being applied, by default. */
export const DEFAULT_READ_AHEAD = 16;

/** Reads node bytes. Implementations verify them against ref.loc.id before returning. */
export interface TreeNodeReader {
  readNode(ref: NodeRef): Promise<Buffer>;
}

/** Stores encoded node bytes under `id` (in a metadata pack) and says where they went. */
export interface TreeNodeWriter {
  writeNode(encoded: Buffer, id: Buffer): Promise<NodeRef>;
}

export interface TreeShape {
  /** Clusters covered: ceil(image length / cluster size). */
  readonly nClusters: number;
  /** Slots per node, a power of two. Fixed per volume. */
  readonly fanout: number;
  /** Levels, leaves included: the smallest d >= 1 with fanout^d >= nClusters. */
  readonly depth: number;
}

export interface Tree {
  readonly shape: TreeShape;
  /** null: every cluster is unallocated. */
  readonly root: NodeRef | null;
}

export interface TreeChange {
  readonly cluster: number;
  readonly entry: TreeEntry;
}

/** A run of clusters with one entry. Blob entries always come one cluster at a time. */
export interface EntryRun {
  readonly first: number;
  readonly count: number;
  readonly entry: TreeEntry;
}

/** Clusters whose entry differs between two trees. Blob entries come one cluster at a time. */
export interface DiffRun {
  readonly first: number;
  readonly count: number;
  readonly before: TreeEntry;
  readonly after: TreeEntry;
}

export interface NodeVisit {
  readonly ref: NodeRef;
  readonly level: number;
  /** First cluster the node covers. */
  readonly first: number;
  readonly node: TreeNode;
}

export interface BuildOptions {
  /** Node id function: SHA-256 by default (a keyed hash when encryption is on). */
  readonly idOf?: (encoded: Buffer) => Buffer;
  /** Leaves whose paths are read ahead of the change being applied (0: none). */
  readonly readAhead?: number;
  readonly signal?: AbortSignal;
}

export interface BuildStats {
  nodesRead: number;
  bytesRead: number;
  nodesWritten: number;
  bytesWritten: number;
  /** Nodes that were rewritten to bytes identical to the parent's, so not written again. */
  nodesUnchanged: number;
}

export interface BuildResult {
  readonly tree: Tree;
  readonly stats: BuildStats;
}

// ---------------------------------------------------------------------------------------------
// Shape

function depthFor(nClusters: number, fanout: number): number {
  let depth = 1;
  for (let span = fanout; span < nClusters; span *= fanout) depth++;
  return depth;
}

/** The shape of a tree over `nClusters` clusters. */
export function treeShape(nClusters: number, fanout: number = DEFAULT_FANOUT): TreeShape {
  if (!Number.isSafeInteger(nClusters) || nClusters < 0) throw new IslandError('INVALID_ARGUMENT', `cluster count must be an integer >= 0, got ${nClusters}`);
  if (nClusters > MAX_CLUSTERS) {
    throw new IslandError('TOO_LARGE', `cluster count must be 0..2^40, got ${nClusters}`, { details: { nClusters } });
  }
  const bits = Math.log2(fanout);
  if (!Number.isInteger(bits) || bits < MIN_FANOUT_BITS || bits > MAX_FANOUT_BITS) {
    throw new IslandError('INVALID_ARGUMENT', `fan-out must be a power of two in 2^${MIN_FANOUT_BITS}..2^${MAX_FANOUT_BITS}, got ${fanout}`);
  }
  return { nClusters, fanout, depth: depthFor(nClusters, fanout) };
}

/** Validate a shape read from elsewhere (a manifest): fields in range and depth consistent. */
export function checkShape(shape: TreeShape): TreeShape {
  const s = treeShape(shape.nClusters, shape.fanout);
  if (s.depth !== shape.depth) throw new IslandError('INVALID_ARGUMENT', `tree depth ${shape.depth} does not match ${s.nClusters} clusters at fan-out ${s.fanout} (${s.depth})`);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Node loading

/** Clusters covered by one slot of a node at `level`: fanout^level. */
function slotSpan(fanout: number, level: number): number {
  return fanout ** level;
}

function aborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new IslandError('ABORTED', 'pointer tree operation aborted', { cause: signal.reason });
}

interface LoadCtx {
  readonly reader: TreeNodeReader;
  readonly fanout: number;
  readonly stats?: BuildStats;
}

/**
 * Read, decode and place-check a node: its level and fan-out must be what its position says,
 * and every slot past `limit` clusters must be unallocated.
 */
async function loadNode(ctx: LoadCtx, ref: NodeRef, level: number, first: number, limit: number): Promise<TreeNode> {
  const bytes = await ctx.reader.readNode(ref);
  if (ctx.stats) {
    ctx.stats.nodesRead++;
    ctx.stats.bytesRead += bytes.length;
  }
  const fail = (code: 'FORMAT_CORRUPT' | 'FORMAT_UNSUPPORTED', what: string, cause?: IslandError): IslandError =>
    new IslandError(code, `tree node ${hex(ref.loc.id)} (level ${level}, clusters from ${first}): ${what}`, {
      cause,
      details: { ...cause?.details, node: hex(ref.loc.id), pack: hex(ref.loc.pack), level, first },
    });
  let node: TreeNode;
  try {
    node = decodeNode(bytes);
  } catch (err) {
    if (err instanceof IslandError && (err.code === 'FORMAT_CORRUPT' || err.code === 'FORMAT_UNSUPPORTED')) throw fail(err.code, err.message, err);
    throw err;
  }
  if (node.level !== level || 1 << node.fanoutBits !== ctx.fanout) {
    throw fail('FORMAT_CORRUPT', `found level ${node.level} fan-out ${1 << node.fanoutBits} where level ${level} fan-out ${ctx.fanout} belongs`);
  }
  const span = slotSpan(ctx.fanout, level);
  for (let i = Math.max(0, Math.ceil((limit - first) / span)); i < ctx.fanout; i++) {
    const allocated = node.kind === 'leaf' ? node.entries[i]!.kind !== 'unallocated' : node.children[i] !== null;
    if (allocated) throw fail('FORMAT_CORRUPT', `slot ${i} is allocated past the end of the image (${limit} clusters)`);
  }
  return node;
}

/**
 * Read one node at its place in a tree of `shape`: decoded and place-checked as every walk
 * here does. For walkers that must go on past a bad node (fsck) and so cannot use the
 * generators, which stop at the first error.
 */
export async function readPlacedNode(reader: TreeNodeReader, shape: TreeShape, ref: NodeRef, level: number, first: number): Promise<TreeNode> {
  return loadNode({ reader, fanout: shape.fanout }, ref, level, first, shape.nClusters);
}

/** Clusters covered by one slot of a node at `level` of a tree with this fan-out. */
export function slotClusters(fanout: number, level: number): number {
  return slotSpan(fanout, level);
}

/**
 * A tree seen at a greater depth than its own: levels above its root are virtual nodes whose
 * child 0 leads down to the real root and whose other children are EMPTY.
 */
type View = null | { readonly ref: NodeRef } | { readonly virtualLevel: number; readonly root: NodeRef; readonly rootLevel: number };

/** The tree's root seen as a node at level `level` (>= its own root level). */
function rootView(tree: Tree, level: number): View {
  if (tree.root === null) return null;
  const rootLevel = tree.shape.depth - 1;
  return level === rootLevel ? { ref: tree.root } : { virtualLevel: level, root: tree.root, rootLevel };
}

function childOfVirtual(v: { virtualLevel: number; root: NodeRef; rootLevel: number }, i: number): View {
  if (i !== 0) return null;
  return v.virtualLevel - 1 === v.rootLevel ? { ref: v.root } : { virtualLevel: v.virtualLevel - 1, root: v.root, rootLevel: v.rootLevel };
}

/** A loaded view: a real node, a virtual node, or EMPTY. */
type Opened = null | TreeNode | { readonly virtualLevel: number; readonly root: NodeRef; readonly rootLevel: number };

async function openView(ctx: LoadCtx, v: View, level: number, first: number, limit: number): Promise<Opened> {
  if (v === null || !('ref' in v)) return v;
  return loadNode(ctx, v.ref, level, first, limit);
}

function entryOf(o: Opened, i: number): TreeEntry {
  return o !== null && 'kind' in o && o.kind === 'leaf' ? o.entries[i]! : UNALLOCATED;
}

function childOf(o: Opened, i: number): View {
  if (o === null) return null;
  if (!('kind' in o)) return childOfVirtual(o, i);
  if (o.kind === 'leaf') throw new IslandError('INTERNAL', 'childOf a leaf');
  const c = o.children[i]!;
  return c === null ? null : { ref: c };
}

function sameView(a: View, b: View): boolean {
  if (a === null || b === null) return a === b;
  if ('ref' in a && 'ref' in b) return sameChild(a.ref, b.ref);
  return false;
}

// ---------------------------------------------------------------------------------------------
// Lookup

/**
 * The entry of one cluster: reads the depth nodes on its path, nothing else. A cluster past the
 * tree's end is UNALLOCATED (as in a grown image), without a read.
 */
export async function lookup(tree: Tree, cluster: number, reader: TreeNodeReader): Promise<TreeEntry> {
  const { nClusters, fanout, depth } = tree.shape;
  if (!Number.isSafeInteger(cluster) || cluster < 0 || cluster >= MAX_CLUSTERS) {
    throw new IslandError('INVALID_ARGUMENT', `cluster ${cluster} outside 0..2^40-1`);
  }
  if (cluster >= nClusters) return UNALLOCATED;
  const ctx: LoadCtx = { reader, fanout };
  let ref = tree.root;
  let first = 0;
  for (let level = depth - 1; ref !== null; level--) {
    const node = await loadNode(ctx, ref, level, first, nClusters);
    const span = slotSpan(fanout, level);
    const i = Math.floor((cluster - first) / span);
    if (node.kind === 'leaf') return node.entries[i]!;
    first += i * span;
    ref = node.children[i]!;
  }
  return UNALLOCATED;
}

// ---------------------------------------------------------------------------------------------
// Iterate

/** Merges adjacent runs of the same non-blob entry before handing them on. */
class RunMerger<T extends { first: number; count: number }> {
  private pending: T | null = null;
  constructor(private readonly mergeable: (a: T, b: T) => boolean) {}
  /** Returns a finished run to emit, if any. */
  push(run: T): T | null {
    const p = this.pending;
    if (p !== null && p.first + p.count === run.first && this.mergeable(p, run)) {
      p.count += run.count;
      return null;
    }
    this.pending = run;
    return p;
  }
  flush(): T | null {
    const p = this.pending;
    this.pending = null;
    return p;
  }
}

interface MutableEntryRun {
  first: number;
  count: number;
  entry: TreeEntry;
}

interface IterFrame {
  readonly node: TreeNode;
  readonly level: number;
  readonly first: number;
  idx: number;
}

/**
 * Runs of entries covering [from, to) in cluster order. Streams: holds the path only. Adjacent
 * UNALLOCATED (or ZERO) clusters come as one run; each blob comes as a run of one.
 */
export async function* iterate(tree: Tree, reader: TreeNodeReader, from = 0, to?: number): AsyncGenerator<EntryRun> {
  const { nClusters, fanout, depth } = tree.shape;
  const end = to ?? nClusters;
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(end) || from < 0 || from > end || end > nClusters) {
    throw new IslandError('INVALID_ARGUMENT', `range ${from}..${end} outside 0..${nClusters}`);
  }
  if (from === end) return;
  const ctx: LoadCtx = { reader, fanout };
  const merger = new RunMerger<MutableEntryRun>((a, b) => a.entry.kind === b.entry.kind && a.entry.kind !== 'blob');
  const stack: IterFrame[] = [];
  const enter = async (ref: NodeRef, level: number, first: number): Promise<void> => {
    const node = await loadNode(ctx, ref, level, first, nClusters);
    stack.push({ node, level, first, idx: Math.max(0, Math.floor((from - first) / slotSpan(fanout, level))) });
  };
  if (tree.root === null) {
    yield { first: from, count: end - from, entry: UNALLOCATED };
    return;
  }
  await enter(tree.root, depth - 1, 0);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const span = slotSpan(fanout, top.level);
    const slotFirst = top.first + top.idx * span;
    if (top.idx >= fanout || slotFirst >= end) {
      stack.pop();
      continue;
    }
    const i = top.idx++;
    let out: MutableEntryRun | null;
    if (top.node.kind === 'leaf') {
      out = merger.push({ first: slotFirst, count: 1, entry: top.node.entries[i]! });
    } else {
      const child = top.node.children[i]!;
      if (child !== null) {
        await enter(child, top.level - 1, slotFirst);
        continue;
      }
      const lo = Math.max(from, slotFirst);
      out = merger.push({ first: lo, count: Math.min(end, slotFirst + span) - lo, entry: UNALLOCATED });
    }
    if (out !== null) yield out;
  }
  const last = merger.flush();
  if (last !== null) yield last;
}

// ---------------------------------------------------------------------------------------------
// Diff

interface DiffFrame {
  readonly a: Opened;
  readonly b: Opened;
  readonly level: number;
  readonly first: number;
  idx: number;
}

interface MutableDiffRun {
  first: number;
  count: number;
  before: TreeEntry;
  after: TreeEntry;
}

/**
 * Clusters whose entries differ between trees `a` and `b` (same fan-out; sizes may differ: past
 * a tree's end its entries are UNALLOCATED). Descends only where the two subtrees' ids differ,
 * so the cost follows the differing subtrees, not the tree size.
 */
export async function* diffTrees(a: Tree, b: Tree, reader: TreeNodeReader): AsyncGenerator<DiffRun> {
  const fanout = a.shape.fanout;
  if (b.shape.fanout !== fanout) throw new IslandError('INVALID_ARGUMENT', `cannot diff trees of fan-out ${fanout} and ${b.shape.fanout}`);
  const depth = Math.max(a.shape.depth, b.shape.depth);
  const top = depth - 1;
  const va = rootView(a, top);
  const vb = rootView(b, top);
  if (sameView(va, vb)) return;
  const ctx: LoadCtx = { reader, fanout };
  const merger = new RunMerger<MutableDiffRun>((x, y) => x.before.kind === y.before.kind && x.after.kind === y.after.kind && x.before.kind !== 'blob' && x.after.kind !== 'blob');
  const stack: DiffFrame[] = [];
  const enter = async (x: View, y: View, level: number, first: number): Promise<void> => {
    const [oa, ob] = await Promise.all([openView(ctx, x, level, first, a.shape.nClusters), openView(ctx, y, level, first, b.shape.nClusters)]);
    stack.push({ a: oa, b: ob, level, first, idx: 0 });
  };
  await enter(va, vb, top, 0);
  while (stack.length > 0) {
    const f = stack[stack.length - 1]!;
    if (f.idx >= fanout) {
      stack.pop();
      continue;
    }
    const i = f.idx++;
    const span = slotSpan(fanout, f.level);
    const slotFirst = f.first + i * span;
    if (f.level === 0) {
      const before = entryOf(f.a, i);
      const after = entryOf(f.b, i);
      if (sameEntry(before, after)) continue;
      const out = merger.push({ first: slotFirst, count: 1, before, after });
      if (out !== null) yield out;
      continue;
    }
    const ca = childOf(f.a, i);
    const cb = childOf(f.b, i);
    if (!sameView(ca, cb)) await enter(ca, cb, f.level - 1, slotFirst);
  }
  const last = merger.flush();
  if (last !== null) yield last;
}

// ---------------------------------------------------------------------------------------------
// Enumerate nodes

export interface CollectOptions {
  /** Return true to neither yield nor descend into a node (e.g. already marked by GC). */
  readonly skip?: (ref: NodeRef) => boolean;
  readonly signal?: AbortSignal;
}

/**
 * Every node of the tree, parents before children, each decoded and place-checked (for GC mark
 * and fsck). Holds the path only.
 */
export async function* collectNodeRefs(tree: Tree, reader: TreeNodeReader, opts: CollectOptions = {}): AsyncGenerator<NodeVisit> {
  const { nClusters, fanout, depth } = tree.shape;
  if (tree.root === null || opts.skip?.(tree.root)) return;
  const ctx: LoadCtx = { reader, fanout };
  const stack: { node: InnerNode; first: number; idx: number }[] = [];
  const visit = async (ref: NodeRef, level: number, first: number): Promise<NodeVisit> => {
    aborted(opts.signal);
    const node = await loadNode(ctx, ref, level, first, nClusters);
    if (node.kind === 'inner') stack.push({ node, first, idx: 0 });
    return { ref, level, first, node };
  };
  yield await visit(tree.root, depth - 1, 0);
  while (stack.length > 0) {
    const f = stack[stack.length - 1]!;
    if (f.idx >= fanout) {
      stack.pop();
      continue;
    }
    const i = f.idx++;
    const child = f.node.children[i]!;
    if (child === null || opts.skip?.(child)) continue;
    yield await visit(child, f.node.level - 1, f.first + i * slotSpan(fanout, f.node.level));
  }
}

// ---------------------------------------------------------------------------------------------
// Build

/** A node of the path being edited. */
interface OpenNode {
  readonly level: number;
  readonly first: number;
  /** Leaf entries (level 0) or children (inner), edited in place. */
  readonly leaf: TreeEntry[] | null;
  readonly inner: (NodeRef | null)[] | null;
  /** What the parent's slot held before: kept when the node comes out unchanged. */
  readonly oldRef: NodeRef | null;
  dirty: boolean;
}

/**
 * Build the tree of a new snapshot from its parent's and the sorted changes (strictly
 * increasing clusters, each < shape.nClusters). Reads and writes only the nodes on the paths of
 * changed clusters (plus, when the image shrank, the path of its new last cluster); every other
 * subtree keeps the parent's ref. `shape` may have more or fewer clusters than the parent's,
 * never another fan-out. Memory: the path plus `readAhead` leaves' worth of changes.
 */
export async function buildTree(
  parent: Tree | null,
  shape: TreeShape,
  changes: Iterable<TreeChange> | AsyncIterable<TreeChange>,
  reader: TreeNodeReader,
  writer: TreeNodeWriter,
  opts: BuildOptions = {},
): Promise<BuildResult> {
  shape = checkShape(shape);
  const { nClusters, fanout, depth } = shape;
  const fanoutBits = Math.log2(fanout);
  if (parent !== null) {
    checkShape(parent.shape);
    if (parent.shape.fanout !== fanout) throw new IslandError('INVALID_ARGUMENT', `fan-out is fixed per volume: parent ${parent.shape.fanout}, new ${fanout}`);
  }
  const readAhead = opts.readAhead ?? DEFAULT_READ_AHEAD;
  if (!Number.isSafeInteger(readAhead) || readAhead < 0) throw new IslandError('INVALID_ARGUMENT', `readAhead must be >= 0, got ${readAhead}`);
  const idOf = opts.idOf ?? ((b: Buffer) => sha256(b));
  const stats: BuildStats = { nodesRead: 0, bytesRead: 0, nodesWritten: 0, bytesWritten: 0, nodesUnchanged: 0 };
  const ctx: LoadCtx = { reader, fanout, stats };
  const oldN = parent?.shape.nClusters ?? 0;
  const top = depth - 1;
  const open: (OpenNode | undefined)[] = new Array<OpenNode | undefined>(depth).fill(undefined);

  // The parent's tree seen at the new depth. Growth: virtual levels above the old root (opened
  // now, dirty: they are new nodes). Shrink: follow child 0 down to the new root level.
  let baseRoot: NodeRef | null = parent?.root ?? null;
  if (parent !== null && baseRoot !== null && parent.shape.depth > depth && nClusters > 0) {
    for (let level = parent.shape.depth - 1; level > top && baseRoot !== null; level--) {
      const node = (await loadNode(ctx, baseRoot, level, 0, oldN)) as InnerNode;
      baseRoot = node.children[0]!;
    }
  }
  let root: NodeRef | null = baseRoot;
  if (parent !== null && baseRoot !== null && parent.shape.depth < depth) {
    for (let level = top; level >= parent.shape.depth; level--) {
      const inner = new Array<NodeRef | null>(fanout).fill(null);
      if (level === parent.shape.depth) inner[0] = baseRoot;
      open[level] = { level, first: 0, leaf: null, inner, oldRef: null, dirty: true };
    }
  }

  // Read-ahead: decoded nodes in flight, keyed by position, each taken once by openAt().
  const pending = new Map<string, Promise<TreeNode>>();
  const key = (level: number, first: number): string => `${level}:${first}`;
  /** Highest `first` opened so far per level: positions are opened in increasing order. */
  const openedUpTo = new Array<number>(depth).fill(-1);
  for (let level = 0; level < depth; level++) if (open[level] !== undefined) openedUpTo[level] = 0;
  const takeNode = (ref: NodeRef, level: number, first: number): Promise<TreeNode> => {
    const k = key(level, first);
    const p = pending.get(k);
    if (p === undefined) return loadNode(ctx, ref, level, first, oldN);
    pending.delete(k);
    return p;
  };
  /** The lowest open level whose node covers `cluster` (depth if none does). */
  const openCovering = (cluster: number): number => {
    let level = 0;
    while (level < depth && (open[level] === undefined || cluster < open[level]!.first || cluster >= open[level]!.first + slotSpan(fanout, level + 1))) level++;
    return level;
  };
  /** Slot index and first cluster of the child of a node (level, first) that holds `cluster`. */
  const childSlot = (level: number, first: number, cluster: number): { i: number; first: number } => {
    const span = slotSpan(fanout, level);
    const i = Math.floor((cluster - first) / span);
    return { i, first: first + i * span };
  };
  /** Start reading the parent's nodes on the path to `cluster` that are not open yet. */
  const prefetch = (cluster: number): void => {
    const chain = (ref: NodeRef | null, level: number, first: number): void => {
      if (ref === null) return;
      const below = (children: readonly (NodeRef | null)[]): void => {
        const c = childSlot(level, first, cluster);
        chain(children[c.i] ?? null, level - 1, c.first);
      };
      if (first <= openedUpTo[level]!) {
        // Opened meanwhile: its slots ahead of the changes applied still hold the parent's refs.
        const o = open[level];
        if (o !== undefined && o.first === first && o.inner !== null) below(o.inner);
        return;
      }
      const k = key(level, first);
      let p = pending.get(k);
      if (p === undefined) {
        p = loadNode(ctx, ref, level, first, oldN);
        pending.set(k, p);
      }
      // A failure surfaces when openAt() takes the node.
      p.then((node) => (node.kind === 'inner' ? below(node.children) : undefined), () => {});
    };
    const level = openCovering(cluster);
    if (level === depth) chain(baseRoot, top, 0);
    else if (level > 0) {
      const o = open[level]!;
      const c = childSlot(level, o.first, cluster);
      chain(o.inner![c.i]!, level - 1, c.first);
    }
  };

  /** Finish the open node at `level`: encode, write if changed, hand the ref to its parent. */
  const close = async (level: number): Promise<void> => {
    const o = open[level]!;
    open[level] = undefined;
    if (!o.dirty) return;
    let ref: NodeRef | null = null;
    const node: TreeNode | null = o.leaf !== null
      ? (o.leaf.some((e) => e.kind !== 'unallocated') ? ({ kind: 'leaf', level: 0, fanoutBits, entries: o.leaf } satisfies LeafNode) : null)
      : (o.inner!.some((c) => c !== null) ? ({ kind: 'inner', level, fanoutBits, children: o.inner! } satisfies InnerNode) : null);
    if (node !== null) {
      const encoded = encodeNode(node);
      const id = idOf(encoded);
      if (o.oldRef !== null && o.oldRef.loc.id.equals(id)) {
        ref = o.oldRef;
        stats.nodesUnchanged++;
      } else {
        ref = await writer.writeNode(encoded, id);
        if (!ref.loc.id.equals(id)) throw new IslandError('INTERNAL', `node writer returned id ${hex(ref.loc.id)} for node ${hex(id)}`);
        stats.nodesWritten++;
        stats.bytesWritten += encoded.length;
      }
    }
    if (level === top) {
      root = ref;
      return;
    }
    const p = open[level + 1]!;
    const i = (o.first - p.first) / slotSpan(fanout, level + 1);
    if (!sameChild(p.inner![i]!, ref)) {
      p.inner![i] = ref;
      p.dirty = true;
    }
  };

  /** Make the open path end at the leaf of `cluster`, closing what it leaves. */
  const openAt = async (cluster: number): Promise<OpenNode> => {
    const level = openCovering(cluster);
    for (let l = 0; l < level; l++) if (open[l] !== undefined) await close(l);
    for (let l = level - 1; l >= 0; l--) {
      let oldRef = baseRoot;
      let first = 0;
      if (l < top) {
        const p = open[l + 1]!;
        const c = childSlot(l + 1, p.first, cluster);
        oldRef = p.inner![c.i]!;
        first = c.first;
      }
      const node = oldRef === null ? null : await takeNode(oldRef, l, first);
      openedUpTo[l] = first;
      open[l] = {
        level: l,
        first,
        leaf: l === 0 ? (node === null ? new Array<TreeEntry>(fanout).fill(UNALLOCATED) : (node as LeafNode).entries) : null,
        inner: l === 0 ? null : node === null ? new Array<NodeRef | null>(fanout).fill(null) : (node as InnerNode).children,
        oldRef,
        dirty: false,
      };
    }
    return open[0]!;
  };

  // Pull changes a leaf at a time, keeping `readAhead` leaves queued beyond the one applied.
  const source = changes as Partial<AsyncIterable<TreeChange> & Iterable<TreeChange>>;
  const asyncIt = source[Symbol.asyncIterator]?.();
  const syncIt = asyncIt === undefined ? source[Symbol.iterator]!() : undefined;
  const it = (asyncIt ?? syncIt)!;
  const groups: { first: number; changes: TreeChange[] }[] = [];
  let exhausted = false;
  let last = -1;
  try {
    for (;;) {
      while (!exhausted && groups.length < readAhead + 2) {
        const r = syncIt !== undefined ? syncIt.next() : await asyncIt!.next(); // no await per change when sync
        if (r.done === true) {
          exhausted = true;
          break;
        }
        const ch = r.value;
        if (!Number.isSafeInteger(ch?.cluster) || ch.cluster <= last || ch.cluster >= nClusters) {
          throw new IslandError('INVALID_ARGUMENT', `changes must have strictly increasing clusters below ${nClusters}: got ${ch?.cluster} after ${last}`);
        }
        const k = ch.entry?.kind;
        if (k !== 'unallocated' && k !== 'zero' && k !== 'blob') throw new IslandError('INVALID_ARGUMENT', `cluster ${ch.cluster}: unknown entry kind ${String(k)}`);
        last = ch.cluster;
        const leafFirst = ch.cluster - (ch.cluster % fanout);
        const g = groups[groups.length - 1];
        if (g !== undefined && g.first === leafFirst) g.changes.push(ch);
        else {
          groups.push({ first: leafFirst, changes: [ch] });
          if (readAhead > 0) prefetch(ch.cluster);
        }
      }
      // The newest group may still grow until a change past its leaf arrives.
      if (groups.length === 0 || (!exhausted && groups.length < 2)) break;
      const g = groups.shift()!;
      aborted(opts.signal);
      const leaf = await openAt(g.first);
      for (const ch of g.changes) {
        const i = ch.cluster - leaf.first;
        if (!sameEntry(leaf.leaf![i]!, ch.entry)) {
          leaf.leaf![i] = ch.entry;
          leaf.dirty = true;
        }
      }
    }
  } catch (err) {
    try {
      await it.return?.();
    } catch {
      // the first error is the one to report
    }
    throw err;
  }

  // Shrink: clear every slot past the new last cluster along its path.
  if (nClusters < oldN && nClusters > 0 && baseRoot !== null) {
    const lastCluster = nClusters - 1;
    await openAt(lastCluster);
    for (let level = 0; level < depth; level++) {
      const o = open[level]!;
      for (let i = childSlot(level, o.first, lastCluster).i + 1; i < fanout; i++) {
        if (o.leaf !== null && o.leaf[i]!.kind !== 'unallocated') {
          o.leaf[i] = UNALLOCATED;
          o.dirty = true;
        } else if (o.inner !== null && o.inner[i] !== null) {
          o.inner[i] = null;
          o.dirty = true;
        }
      }
    }
  }
  for (let level = 0; level < depth; level++) if (open[level] !== undefined) await close(level);
  if (nClusters === 0) root = null;
  return { tree: { shape, root }, stats };
}
