/**
 * Reading pointer trees: lookup of one cluster, iteration over runs of entries, the diff of
 * two trees and the enumeration of every node (docs/formats/tree.md). Each reads only the
 * nodes on its path, holding the path and nothing more.
 */
import { IslandError } from '../errors.js';
import { UNALLOCATED, MAX_CLUSTERS, sameChild, sameEntry, type InnerNode, type NodeRef, type TreeEntry, type TreeNode } from './tree-node.js';
import { aborted, loadNode, slotSpan, type DiffRun, type EntryRun, type LoadCtx, type NodeVisit, type Tree, type TreeNodeReader } from './tree-shape.js';

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
