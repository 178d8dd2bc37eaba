/**
 * The pieces of the pointer tree every walk shares (docs/formats/tree.md): its types, its
 * shape, and reading a node at its place. tree.ts is the module the rest of island imports.
 */
import { IslandError } from '../errors.js';
import { hex } from './location.js';
import { MAX_CLUSTERS, MAX_FANOUT_BITS, MIN_FANOUT_BITS, decodeNode, type NodeRef, type TreeEntry, type TreeNode } from './tree-node.js';



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
export function slotSpan(fanout: number, level: number): number {
  return fanout ** level;
}

export function aborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new IslandError('ABORTED', 'pointer tree operation aborted', { cause: signal.reason });
}

export interface LoadCtx {
  readonly reader: TreeNodeReader;
  readonly fanout: number;
  readonly stats?: BuildStats;
}

/**
 * Read, decode and place-check a node: its level and fan-out must be what its position says,
 * and every slot past `limit` clusters must be unallocated.
 */
export async function loadNode(ctx: LoadCtx, ref: NodeRef, level: number, first: number, limit: number): Promise<TreeNode> {
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

