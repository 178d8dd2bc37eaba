/**
 * Measure the pointer tree's cost for several fan-outs, to choose one (docs/formats/tree.md).
 *
 *   npx tsx scripts/bench-tree-fanout.ts [--clusters N] [--changes K] [--fanouts 256,512,...] [--seed S]
 *
 * Defaults: a 1 TiB image at 64 KiB clusters (2^24 clusters), 10,000 changed clusters, fan-outs
 * 256..4096. Per fan-out, with an in-memory node store that counts nodes and bytes:
 *   1. a full parent: every cluster a blob, blobs of 20-64 KiB back to back in 16 MiB data packs,
 *      as a first full upload lays them out;
 *   2. K random clusters changed on top of the full parent (new blobs in the snapshot's own
 *      packs): nodes and bytes written and read;
 *   3. the same K clusters in runs of 16 adjacent clusters (a file system writing extents);
 *   4. the same K random clusters on an empty tree (a fresh volume's first snapshot);
 *   5. looking up one cluster of the full tree: nodes and bytes read (the path);
 *   6. encoded sizes: a full leaf, a full inner node.
 * Prints one markdown table. Everything is deterministic for a seed.
 */
import { sha256 } from '../src/format/bytes.js';
import { hex, type BlobLocation } from '../src/format/location.js';
import {
  buildTree,
  blobEntry,
  collectNodeRefs,
  lookup,
  treeShape,
  type NodeRef,
  type Tree,
  type TreeChange,
  type TreeNodeReader,
  type TreeNodeWriter,
} from '../src/format/tree.js';
import { Rng } from '../src/util/random.js';

const CLUSTER = 64 * 1024;
const PACK_TARGET = 16 * 1024 * 1024;

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? dflt) : dflt;
}
function positiveInt(name: string, dflt: number): number {
  const v = Number(arg(name, String(dflt)));
  if (!Number.isSafeInteger(v) || v <= 0) throw new Error(`${name} needs a positive integer`);
  return v;
}

const nClusters = positiveInt('--clusters', 2 ** 24);
const nChanges = Math.min(nClusters, positiveInt('--changes', 10_000));
const seed = positiveInt('--seed', 1);
const fanouts = arg('--fanouts', '256,512,1024,2048,4096').split(',').map(Number);

/** Seeded generator (src/util/random.ts) as a () => [0, 1) function. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** Node store in memory: nodes by id, metadata packs of 16 MiB, counters. */
class CountingStore implements TreeNodeReader, TreeNodeWriter {
  private readonly nodes = new Map<string, Buffer>();
  private pack: Buffer = Buffer.alloc(32);
  private packNo = 0;
  private offset = 0;
  nodesRead = 0;
  bytesRead = 0;
  nodesWritten = 0;
  bytesWritten = 0;

  reset(): void {
    this.nodesRead = this.bytesRead = this.nodesWritten = this.bytesWritten = 0;
  }
  async readNode(ref: NodeRef): Promise<Buffer> {
    const b = this.nodes.get(hex(ref.loc.id));
    if (b === undefined) throw new Error(`node ${hex(ref.loc.id)} missing`);
    this.nodesRead++;
    this.bytesRead += b.length;
    return b;
  }
  async writeNode(encoded: Buffer, id: Buffer): Promise<NodeRef> {
    if (this.offset + encoded.length > PACK_TARGET || this.packNo === 0) {
      this.pack = sha256(Buffer.from(`metadata pack ${++this.packNo}`));
      this.offset = 0;
    }
    this.nodes.set(hex(id), encoded);
    this.nodesWritten++;
    this.bytesWritten += encoded.length;
    const loc: BlobLocation = { pack: this.pack, offset: this.offset, length: encoded.length, id };
    this.offset += encoded.length;
    return { loc };
  }
}

/** Lays blobs out as an upload does: back to back in 16 MiB data packs, 20-64 KiB each. */
class BlobLayout {
  private pack: Buffer = Buffer.alloc(32);
  private offset = PACK_TARGET;
  private n = 0;
  constructor(
    private readonly tag: string,
    private readonly r: () => number,
  ) {}
  next(): BlobLocation {
    const length = 20 * 1024 + Math.floor(this.r() * (CLUSTER - 20 * 1024));
    if (this.offset + length > PACK_TARGET) {
      this.pack = sha256(Buffer.from(`${this.tag} data pack ${this.n}`));
      this.offset = 0;
    }
    const id = Buffer.allocUnsafe(32);
    id.fill(0x5a);
    id.writeUIntBE(this.n++, 0, 6);
    id.writeUInt32BE((this.r() * 2 ** 32) >>> 0, 6);
    const loc = { pack: this.pack, offset: this.offset, length, id };
    this.offset += length;
    return loc;
  }
}

function* fullChanges(n: number, layout: BlobLayout): Generator<TreeChange> {
  for (let c = 0; c < n; c++) yield { cluster: c, entry: blobEntry(layout.next()) };
}

function randomClusters(n: number, k: number, r: () => number): number[] {
  const s = new Set<number>();
  while (s.size < k) s.add(Math.floor(r() * n));
  return [...s].sort((a, b) => a - b);
}

function runClusters(n: number, k: number, runLen: number, r: () => number): number[] {
  const s = new Set<number>();
  while (s.size < k) {
    const start = Math.floor(r() * (n - runLen));
    for (let i = 0; i < runLen && s.size < k; i++) s.add(start + i);
  }
  return [...s].sort((a, b) => a - b);
}

function* changesAt(clusters: number[], layout: BlobLayout): Generator<TreeChange> {
  for (const cluster of clusters) yield { cluster, entry: blobEntry(layout.next()) };
}

const mib = (b: number): string => (b / 2 ** 20).toFixed(1);
const kib = (b: number): string => (b / 1024).toFixed(1);

interface Row {
  fanout: number;
  depth: number;
  leafBytes: number;
  innerBytes: number;
  fullNodes: number;
  fullMiB: number;
  buildSeconds: number;
  randNodes: number;
  randBytes: number;
  randReadNodes: number;
  runNodes: number;
  runBytes: number;
  emptyNodes: number;
  emptyBytes: number;
  lookupNodes: number;
  lookupBytes: number;
}

async function measure(fanout: number): Promise<Row> {
  const shape = treeShape(nClusters, fanout);
  const store = new CountingStore();
  const t0 = performance.now();
  const { tree: parent } = await buildTree(null, shape, fullChanges(nClusters, new BlobLayout('parent', rng(seed))), store, store);
  const buildSeconds = (performance.now() - t0) / 1000;
  const fullNodes = store.nodesWritten;
  const fullBytes = store.bytesWritten;

  // Encoded sizes: the biggest leaf and inner node of the full tree (walking it reads them all).
  let leafBytes = 0;
  let innerBytes = 0;
  for await (const v of collectNodeRefs(parent, store)) {
    if (v.level === 0) leafBytes = Math.max(leafBytes, v.ref.loc.length);
    else innerBytes = Math.max(innerBytes, v.ref.loc.length);
  }

  const r = rng(seed + 1);
  const rand = randomClusters(nClusters, nChanges, r);
  const runs = runClusters(nClusters, nChanges, 16, r);
  const apply = async (base: Tree | null, clusters: number[]): Promise<{ nodes: number; bytes: number; readNodes: number }> => {
    store.reset();
    const { stats } = await buildTree(base, shape, changesAt(clusters, new BlobLayout('child', rng(seed + 2))), store, store);
    return { nodes: stats.nodesWritten, bytes: stats.bytesWritten, readNodes: stats.nodesRead };
  };
  const onFull = await apply(parent, rand);
  const onFullRuns = await apply(parent, runs);
  const onEmpty = await apply(null, rand);

  store.reset();
  const probes = 200;
  const pr = rng(seed + 3);
  for (let i = 0; i < probes; i++) await lookup(parent, Math.floor(pr() * nClusters), store);
  return {
    fanout,
    depth: shape.depth,
    leafBytes,
    innerBytes,
    fullNodes,
    fullMiB: fullBytes / 2 ** 20,
    buildSeconds,
    randNodes: onFull.nodes,
    randBytes: onFull.bytes,
    randReadNodes: onFull.readNodes,
    runNodes: onFullRuns.nodes,
    runBytes: onFullRuns.bytes,
    emptyNodes: onEmpty.nodes,
    emptyBytes: onEmpty.bytes,
    lookupNodes: store.nodesRead / probes,
    lookupBytes: store.bytesRead / probes,
  };
}

async function main(): Promise<void> {
  const imageBytes = nClusters * CLUSTER;
  console.log(`pointer tree fan-out: ${nClusters} clusters (${(imageBytes / 2 ** 40).toFixed(2)} TiB at 64 KiB), ${nChanges} changed clusters, seed ${seed}\n`);
  const rows: Row[] = [];
  for (const f of fanouts) {
    const row = await measure(f);
    rows.push(row);
    console.error(`fan-out ${f}: done (full parent built in ${row.buildSeconds.toFixed(1)} s)`);
  }
  const head = [
    'fan-out',
    'depth',
    'full leaf KiB',
    'largest inner KiB',
    'full tree: nodes / MiB',
    `${nChanges} random on full: nodes / MiB (B per change)`,
    `${nChanges} in runs of 16 on full: nodes / MiB`,
    `${nChanges} random on empty: nodes / MiB`,
    'lookup: nodes / KiB read',
  ];
  console.log(`| ${head.join(' | ')} |`);
  console.log(`|${head.map(() => '---').join('|')}|`);
  for (const x of rows) {
    console.log(
      `| ${[
        x.fanout,
        x.depth,
        kib(x.leafBytes),
        kib(x.innerBytes),
        `${x.fullNodes} / ${x.fullMiB.toFixed(0)}`,
        `${x.randNodes} / ${mib(x.randBytes)} (${Math.round(x.randBytes / nChanges)})`,
        `${x.runNodes} / ${mib(x.runBytes)}`,
        `${x.emptyNodes} / ${mib(x.emptyBytes)}`,
        `${x.lookupNodes.toFixed(1)} / ${kib(x.lookupBytes)}`,
      ].join(' | ')} |`,
    );
  }
  const dataMiB = (nChanges * (20 * 1024 + (CLUSTER - 20 * 1024) / 2)) / 2 ** 20;
  console.log(`\n(the ${nChanges} changed clusters themselves are ~${dataMiB.toFixed(0)} MiB of blobs; reads while building on the full parent equal the nodes written there)`);
  for (const x of rows) if (x.randReadNodes !== x.randNodes) console.log(`note: fan-out ${x.fanout} read ${x.randReadNodes} nodes building on the full parent`);
}

await main();
