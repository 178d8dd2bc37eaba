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
 *
 * The code lives in three files: tree-shape.ts (types, shape, reading a node at its place),
 * tree-walk.ts (lookup, iterate, diff, enumerate) and tree-build.ts (build); this module is
 * the one the rest of island imports.
 */
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
export {
  DEFAULT_FANOUT,
  DEFAULT_READ_AHEAD,
  treeShape,
  checkShape,
  readPlacedNode,
  slotClusters,
  type TreeNodeReader,
  type TreeNodeWriter,
  type TreeShape,
  type Tree,
  type TreeChange,
  type EntryRun,
  type DiffRun,
  type NodeVisit,
  type BuildOptions,
  type BuildStats,
  type BuildResult,
} from './tree-shape.js';
export { lookup, iterate, diffTrees, collectNodeRefs, type CollectOptions } from './tree-walk.js';
export { buildTree } from './tree-build.js';
