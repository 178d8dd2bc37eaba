/**
 * Building the pointer tree of a new snapshot from its parent's and the sorted changes
 * (docs/formats/tree.md): only the paths of changed clusters are read and written.
 */
import { IslandError } from '../errors.js';
import { sha256 } from './bytes.js';
import { hex } from './location.js';
import { UNALLOCATED, encodeNode, sameChild, sameEntry, type NodeRef, type TreeEntry, type TreeNode, type LeafNode, type InnerNode } from './tree-node.js';
import { DEFAULT_READ_AHEAD, aborted, checkShape, loadNode, slotSpan, type BuildOptions, type BuildResult, type BuildStats, type LoadCtx, type Tree, type TreeChange, type TreeNodeReader, type TreeNodeWriter, type TreeShape } from './tree-shape.js';

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
