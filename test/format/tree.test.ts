import t from 'tap';
import { IslandError } from '../../src/errors.js';
import { sha256 } from '../../src/format/bytes.js';
import { hex, type BlobLocation } from '../../src/format/location.js';
import {
  decodeNode,
  encodeNode,
  maxNodeSize,
  UNALLOCATED,
  ZERO,
  blobEntry,
  sameEntry,
  type TreeEntry,
  type TreeNode,
  type NodeRef,
} from '../../src/format/tree-node.js';
import {
  buildTree,
  checkShape,
  collectNodeRefs,
  diffTrees,
  iterate,
  lookup,
  treeShape,
  type Tree,
  type TreeChange,
  type TreeNodeReader,
  type TreeNodeWriter,
} from '../../src/format/tree.js';
import { Rng } from '../../src/util/random.js';

// ---------------------------------------------------------------------------------------------
// Helpers

/** Seeded generator (src/util/random.ts) as a () => [0, 1) function. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}
const randInt = (r: () => number, n: number): number => Math.floor(r() * n);
function randBytes(r: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = randInt(r, 256);
  return b;
}

/** In-memory node store: a Map by hex id, verifying on read and counting reads and writes. */
class MemNodes implements TreeNodeReader, TreeNodeWriter {
  readonly nodes = new Map<string, Buffer>();
  reads = 0;
  readBytes = 0;
  writes = 0;
  writeBytes = 0;
  private pack = sha256(Buffer.from('metadata pack 0'));
  private offset = 0;

  /** Start a new metadata pack (as each snapshot does). */
  newPack(n: number): void {
    this.pack = sha256(Buffer.from(`metadata pack ${n}`));
    this.offset = 0;
  }
  resetCounters(): void {
    this.reads = this.readBytes = this.writes = this.writeBytes = 0;
  }
  async readNode(ref: NodeRef): Promise<Buffer> {
    // Nodes are kept under the id the tree computed, so finding them by id is the verification.
    const b = this.nodes.get(hex(ref.loc.id));
    if (b === undefined) throw new IslandError('STORE_NOT_FOUND', `node ${hex(ref.loc.id)}`);
    this.reads++;
    this.readBytes += b.length;
    return b;
  }
  async writeNode(encoded: Buffer, id: Buffer): Promise<NodeRef> {
    this.nodes.set(hex(id), Buffer.from(encoded));
    this.writes++;
    this.writeBytes += encoded.length;
    const loc: BlobLocation = { pack: this.pack, offset: this.offset, length: encoded.length, id: Buffer.from(id) };
    this.offset += encoded.length;
    return { loc };
  }
}

function isFormatError(err: unknown): boolean {
  return err instanceof IslandError && (err.code === 'FORMAT_CORRUPT' || err.code === 'FORMAT_UNSUPPORTED');
}

function entryKey(e: TreeEntry): string {
  // Pack ids differ in their first byte and blob ids in their first six (see PACKS and ID).
  return e.kind === 'blob' ? `blob:${e.loc.pack[0]}:${e.loc.offset}:${e.loc.length}:${e.loc.id.readUIntBE(0, 6)}` : e.kind;
}

async function collect<T>(g: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of g) out.push(x);
  return out;
}

/** Expand iterate() runs into a per-cluster array of entry keys (for small trees). */
async function dump(tree: Tree, store: TreeNodeReader, from = 0, to = tree.shape.nClusters): Promise<string[]> {
  const out: string[] = [];
  let next = from;
  for await (const run of iterate(tree, store, from, to)) {
    if (run.first !== next) throw new Error(`iterate gap: run at ${run.first}, expected ${next}`);
    if (run.count < 1 || (run.entry.kind === 'blob' && run.count !== 1)) throw new Error(`bad run count ${run.count}`);
    for (let i = 0; i < run.count; i++) out.push(entryKey(run.entry));
    next += run.count;
  }
  if (next !== to) throw new Error(`iterate ended at ${next}, expected ${to}`);
  return out;
}

const PACKS = [0, 1, 2, 3].map((i) => Buffer.alloc(32, 0xd0 + i));
/** A distinct 32-byte blob id per n (cheap: the tests make millions). */
const ID = (n: number): Buffer => {
  const b = Buffer.alloc(32, 0x5a);
  b.writeUIntBE(n, 0, 6);
  return b;
};
const loc = (pack: number, offset: number, length: number, id: number): BlobLocation => ({ pack: PACKS[pack]!, offset, length, id: ID(id) });

/** A random entry; blobs often continue the previous one in the same pack (runs). */
function entryMaker(r: () => number): () => TreeEntry {
  let pack = 0;
  let offset = 0;
  let n = 0;
  return () => {
    const x = r();
    if (x < 0.15) return UNALLOCATED;
    if (x < 0.3) return ZERO;
    if (r() < 0.2) {
      pack = randInt(r, PACKS.length);
      offset = randInt(r, 1 << 20);
    }
    const length = 1 + randInt(r, 70000);
    const l = { pack: PACKS[pack]!, offset, length, id: ID(n++ + Math.floor(r() * 1e9)) };
    offset += length;
    return blobEntry(l);
  };
}

function randomNode(r: () => number, fanoutBits: number, inner: boolean): TreeNode {
  const fanout = 1 << fanoutBits;
  const make = entryMaker(r);
  for (;;) {
    const entries: TreeEntry[] = [];
    for (let i = 0; i < fanout; i++) entries.push(make());
    if (!entries.some((e) => (inner ? e.kind === 'blob' : e.kind !== 'unallocated'))) continue;
    if (!inner) return { kind: 'leaf', level: 0, fanoutBits, entries };
    return { kind: 'inner', level: 1 + randInt(r, 3), fanoutBits, children: entries.map((e) => (e.kind === 'blob' ? { loc: e.loc } : null)) };
  }
}

// ---------------------------------------------------------------------------------------------
// Codec

t.test('golden bytes: a tiny leaf', async (t) => {
  const entries: TreeEntry[] = [
    UNALLOCATED,
    UNALLOCATED,
    ZERO,
    ZERO,
    ZERO,
    blobEntry(loc(0, 100, 10, 1)),
    blobEntry(loc(0, 110, 20, 2)), // continues the previous frame: same LOC run
    blobEntry(loc(1, 0, 5, 3)),
    ...new Array<TreeEntry>(8).fill(UNALLOCATED),
  ];
  const bytes = encodeNode({ kind: 'leaf', level: 0, fanoutBits: 4, entries });
  const want = Buffer.concat([
    Buffer.from('4950544e' + '01' + '01' + '00' + '04' + '00000002' + '00000005', 'hex'), // header
    PACKS[0]!,
    PACKS[1]!, // pack table
    Buffer.from('00' + '00000002', 'hex'), // 2 unallocated
    Buffer.from('01' + '00000003', 'hex'), // 3 zero
    Buffer.from('02' + '00000000' + '0000000000000064' + '00000002', 'hex'), // pack 0 @100, 2 frames
    Buffer.from('0000000a', 'hex'),
    ID(1),
    Buffer.from('00000014', 'hex'),
    ID(2),
    Buffer.from('02' + '00000001' + '0000000000000000' + '00000001', 'hex'), // pack 1 @0, 1 frame
    Buffer.from('00000005', 'hex'),
    ID(3),
    Buffer.from('00' + '00000008', 'hex'), // 8 unallocated
  ]);
  t.equal(bytes.toString('hex'), want.toString('hex'));
  t.equal(bytes.subarray(0, 16).toString('hex'), '4950544e010100040000000200000005');
  const back = decodeNode(bytes);
  t.equal(back.kind, 'leaf');
  if (back.kind === 'leaf') t.same(back.entries.map(entryKey), entries.map(entryKey));
});

t.test('golden bytes: a tiny inner node', async (t) => {
  const children: (NodeRef | null)[] = new Array<NodeRef | null>(16).fill(null);
  children[1] = { loc: loc(2, 4096, 300, 7) };
  children[15] = { loc: loc(2, 0, 200, 8) };
  const bytes = encodeNode({ kind: 'inner', level: 2, fanoutBits: 4, children });
  const want = Buffer.concat([
    Buffer.from('4950544e' + '01' + '02' + '02' + '04' + '00000001' + '00000004', 'hex'),
    PACKS[2]!,
    Buffer.from('00' + '00000001', 'hex'),
    Buffer.from('02' + '00000000' + '0000000000001000' + '00000001' + '0000012c', 'hex'),
    ID(7),
    Buffer.from('00' + '0000000d', 'hex'),
    Buffer.from('02' + '00000000' + '0000000000000000' + '00000001' + '000000c8', 'hex'),
    ID(8),
  ]);
  t.equal(bytes.toString('hex'), want.toString('hex'));
  const back = decodeNode(bytes);
  t.equal(back.kind, 'inner');
  t.equal(back.level, 2);
  if (back.kind === 'inner') {
    t.same(back.children.map((c) => (c === null ? null : entryKey(blobEntry(c.loc)))), children.map((c) => (c === null ? null : entryKey(blobEntry(c.loc)))));
  }
});

t.test('round trip is canonical: decode(encode(x)) re-encodes to the same bytes', async (t) => {
  const r = rng(1);
  for (let n = 0; n < 2000; n++) {
    const node = randomNode(r, 4 + randInt(r, 4), r() < 0.4);
    const bytes = encodeNode(node);
    t.ok(bytes.length <= maxNodeSize(node.fanoutBits));
    const back = decodeNode(bytes);
    if (!encodeNode(back).equals(bytes)) t.fail(`round trip ${n} differs`);
  }
  t.pass('2000 round trips');
});

t.test('decoder refuses what the encoder never writes', async (t) => {
  const leaf = encodeNode({ kind: 'leaf', level: 0, fanoutBits: 4, entries: [ZERO, ...new Array<TreeEntry>(15).fill(UNALLOCATED)] });
  const code = (b: Buffer): string => {
    try {
      decodeNode(b);
      return 'ok';
    } catch (err) {
      return (err as IslandError).code;
    }
  };
  t.equal(code(leaf), 'ok');
  const poke = (off: number, bytes: string): Buffer => {
    const b = Buffer.from(leaf);
    Buffer.from(bytes, 'hex').copy(b, off);
    return b;
  };
  t.equal(code(poke(0, '58')), 'FORMAT_CORRUPT', 'bad magic');
  t.equal(code(poke(4, '02')), 'FORMAT_UNSUPPORTED', 'newer version');
  t.equal(code(poke(5, '03')), 'FORMAT_CORRUPT', 'unknown kind');
  t.equal(code(poke(6, '01')), 'FORMAT_CORRUPT', 'leaf at level 1');
  t.equal(code(poke(7, '03')), 'FORMAT_CORRUPT', 'fan-out too small');
  t.equal(code(poke(7, '11')), 'FORMAT_CORRUPT', 'fan-out too large');
  t.equal(code(poke(12, 'ffffffff')), 'FORMAT_CORRUPT', 'huge record count');
  t.equal(code(poke(8, '00010000')), 'FORMAT_CORRUPT', 'pack count past record count');
  t.equal(code(Buffer.concat([leaf, Buffer.from([0])])), 'FORMAT_CORRUPT', 'trailing byte');
  t.equal(code(leaf.subarray(0, leaf.length - 1)), 'FORMAT_CORRUPT', 'truncated');
  t.equal(code(leaf.subarray(0, 3)), 'FORMAT_CORRUPT', 'truncated header');
  // Split the NONE run in two: same slots, not canonical.
  const split = Buffer.concat([Buffer.from('4950544e010100040000000000000003', 'hex'), Buffer.from('0100000001' + '0000000005' + '000000000a', 'hex')]);
  t.equal(code(split), 'FORMAT_CORRUPT', 'adjacent NONE runs');
  const joined = Buffer.concat([Buffer.from('4950544e010100040000000000000002', 'hex'), Buffer.from('0100000001' + '000000000f', 'hex')]);
  t.equal(code(joined), 'ok');
  t.equal(code(Buffer.concat([Buffer.from('4950544e010100040000000000000001', 'hex'), Buffer.from('0000000010', 'hex')])), 'FORMAT_CORRUPT', 'all unallocated');
  t.equal(code(Buffer.concat([Buffer.from('4950544e010201040000000000000002', 'hex'), Buffer.from('0100000001' + '000000000f', 'hex')])), 'FORMAT_CORRUPT', 'ZERO in an inner node');
  // Two LOC runs where the second continues the first.
  const cont = Buffer.concat([
    Buffer.from('4950544e010100040000000100000003', 'hex'),
    PACKS[0]!,
    Buffer.from('02' + '00000000' + '0000000000000000' + '00000001' + '00000010', 'hex'),
    ID(1),
    Buffer.from('02' + '00000000' + '0000000000000010' + '00000001' + '00000010', 'hex'),
    ID(2),
    Buffer.from('000000000e', 'hex'),
  ]);
  t.equal(code(cont), 'FORMAT_CORRUPT', 'LOC run continuing the previous one');
  const gap = Buffer.from(cont);
  gap.writeUInt8(0x11, 16 + 32 + 53 + 12); // second run's offset 0x11: a gap, so canonical
  t.equal(code(gap), 'ok');
  // Pack table out of order of first use.
  const twoPacks = encodeNode({ kind: 'leaf', level: 0, fanoutBits: 4, entries: [blobEntry(loc(0, 0, 1, 1)), blobEntry(loc(1, 0, 1, 2)), ...new Array<TreeEntry>(14).fill(ZERO)] });
  const swapped = Buffer.from(twoPacks);
  PACKS[1]!.copy(swapped, 16);
  PACKS[0]!.copy(swapped, 48);
  t.equal(code(swapped), 'ok', 'swapped table is valid but means other packs');
  const dup = Buffer.from(twoPacks);
  PACKS[0]!.copy(dup, 48);
  t.equal(code(dup), 'FORMAT_CORRUPT', 'repeated pack id');
  const order = Buffer.from(twoPacks);
  order.writeUInt32BE(1, 16 + 64 + 1); // first run uses pack 1 before pack 0
  t.equal(code(order), 'FORMAT_CORRUPT', 'pack index out of first-use order');
  const zeroLen = Buffer.from(twoPacks);
  zeroLen.writeUInt32BE(0, 16 + 64 + 17);
  t.equal(code(zeroLen), 'FORMAT_CORRUPT', 'frame length 0');
  const bigOff = Buffer.from(twoPacks);
  bigOff.writeBigUInt64BE(2n ** 60n, 16 + 64 + 5);
  t.equal(code(bigOff), 'FORMAT_CORRUPT', 'offset past 2^53');
  const err = (() => {
    try {
      decodeNode(leaf.subarray(0, 20));
    } catch (e) {
      return e as IslandError;
    }
    return null;
  })();
  t.equal(typeof err?.details.offset, 'number', 'corruption names the offset');
});

t.test('fuzz: mutated nodes decode canonically or fail with a format error', async (t) => {
  const r = rng(42);
  const seeds: Buffer[] = [];
  for (let i = 0; i < 64; i++) seeds.push(encodeNode(randomNode(r, 4 + randInt(r, 2), r() < 0.4)));
  let decoded = 0;
  let failed = 0;
  const N = 40000;
  for (let n = 0; n < N; n++) {
    const b = Buffer.from(seeds[randInt(r, seeds.length)]!);
    let m: Buffer = b;
    const mutations = 1 + randInt(r, 4);
    for (let k = 0; k < mutations; k++) {
      const what = randInt(r, 6);
      const at = randInt(r, m.length);
      if (what === 0) m[at] = m[at]! ^ (1 << randInt(r, 8));
      else if (what === 1) m[at] = randInt(r, 256);
      else if (what === 2) m = m.subarray(0, at);
      else if (what === 3) m = Buffer.concat([m.subarray(0, at), randBytes(r, 1 + randInt(r, 8)), m.subarray(at)]);
      else if (what === 4) m = Buffer.concat([m.subarray(0, at), m.subarray(Math.min(m.length, at + 1 + randInt(r, 40)))]);
      else if (m.length >= 16) {
        // Header fields are where lengths and counts live: hit them more often.
        const f = 8 + randInt(r, 8);
        m[f] = randInt(r, 4) === 0 ? 0xff : randInt(r, 8);
      }
    }
    try {
      const node = decodeNode(m);
      decoded++;
      if (!encodeNode(node).equals(m)) {
        t.fail(`case ${n}: accepted bytes are not canonical`);
        return;
      }
    } catch (err) {
      failed++;
      if (!isFormatError(err)) {
        t.fail(`case ${n}: ${String(err)}`);
        return;
      }
    }
  }
  t.equal(decoded + failed, N);
  t.ok(failed > N / 2, `${failed} refused, ${decoded} decoded`);
});

// ---------------------------------------------------------------------------------------------
// Shapes

t.test('shape: depth from cluster count and fan-out; bounds', async (t) => {
  t.equal(treeShape(0, 16).depth, 1);
  t.equal(treeShape(1, 16).depth, 1);
  t.equal(treeShape(16, 16).depth, 1);
  t.equal(treeShape(17, 16).depth, 2);
  t.equal(treeShape(256, 16).depth, 2);
  t.equal(treeShape(257, 16).depth, 3);
  t.equal(treeShape(2 ** 24, 512).depth, 3);
  t.equal(treeShape(2 ** 24, 4096).depth, 2);
  t.equal(treeShape(2 ** 40, 16).depth, 10);
  t.throws(() => treeShape(2 ** 40 + 1, 16), { code: 'TOO_LARGE' });
  t.throws(() => treeShape(-1, 16), { code: 'INVALID_ARGUMENT' });
  t.throws(() => treeShape(10, 100), { code: 'INVALID_ARGUMENT' });
  t.throws(() => treeShape(10, 8), { code: 'INVALID_ARGUMENT' });
  t.throws(() => checkShape({ nClusters: 300, fanout: 16, depth: 2 }), { code: 'INVALID_ARGUMENT' });
});

// ---------------------------------------------------------------------------------------------
// Model test

/** Sorted changes from a Map<cluster, entry> (what an upload produces). */
function sortedChanges(m: Map<number, TreeEntry>): TreeChange[] {
  return [...m.entries()].sort((a, b) => a[0] - b[0]).map(([cluster, entry]) => ({ cluster, entry }));
}

async function* asAsync<T>(xs: Iterable<T>): AsyncGenerator<T> {
  for (const x of xs) yield x;
}

t.test('random model: lookup, iterate and diff agree with a Map over many generations', async (t) => {
  const r = rng(7);
  let batches = 0;
  for (let lineage = 0; lineage < 5; lineage++) {
    const fanout = lineage % 2 === 0 ? 16 : 32;
    const store = new MemNodes();
    const model = new Map<number, TreeEntry>(); // allocated clusters only
    let tree: Tree = { shape: treeShape(1 + randInt(r, 3000), fanout), root: null };
    const make = entryMaker(r);
    for (let gen = 0; gen < 400; gen++) {
      store.newPack(gen);
      // Sometimes the image grows or shrinks.
      let n = tree.shape.nClusters;
      const resize = r();
      if (resize < 0.05) n = Math.min(8000, n + 1 + randInt(r, n * 3));
      else if (resize < 0.08) n = randInt(r, n + 1);
      const shape = treeShape(n, fanout);
      const changes = new Map<number, TreeEntry>();
      const k = n === 0 ? 0 : randInt(r, r() < 0.1 ? 600 : 40);
      const dense = r() < 0.3;
      let c = randInt(r, Math.max(1, n));
      for (let i = 0; i < k && n > 0; i++) {
        c = dense ? (c + 1) % n : randInt(r, n);
        changes.set(c, make());
      }
      // What the diff must report: the changed clusters whose entry differs, and the clusters
      // cut off by a shrink. Then apply both to the model.
      const had = (cl: number): string => entryKey(model.get(cl) ?? UNALLOCATED);
      const wantDiff = new Map<number, string>();
      for (const [cl, e] of changes) if (had(cl) !== entryKey(e)) wantDiff.set(cl, `${had(cl)}>${entryKey(e)}`);
      for (const cl of model.keys()) if (cl >= n) wantDiff.set(cl, `${had(cl)}>unallocated`);
      const sortedWant = [...wantDiff].sort((a, b) => a[0] - b[0]);
      const next = model;
      for (const cl of [...next.keys()]) if (cl >= n) next.delete(cl);
      for (const [cl, e] of changes) {
        if (e.kind === 'unallocated') next.delete(cl);
        else next.set(cl, e);
      }
      const list = sortedChanges(changes);
      const readAhead = [0, 1, 4, 16][randInt(r, 4)]!;
      const { tree: built, stats } = await buildTree(tree, shape, r() < 0.5 ? list : asAsync(list), store, store, { readAhead });
      batches++;
      const want = (cl: number): string => entryKey(next.get(cl) ?? UNALLOCATED);
      // Touched clusters (up to 30) and some others, through lookup; the diff below covers all.
      const probes = [...changes.keys()].slice(0, 30);
      for (let i = 0; i < 10 && n > 0; i++) probes.push(randInt(r, n));
      for (const cl of probes) {
        const got = entryKey(await lookup(built, cl, store));
        if (got !== want(cl)) {
          t.fail(`lineage ${lineage} gen ${gen}: lookup(${cl}) = ${got}, want ${want(cl)}`);
          return;
        }
      }
      // The whole tree through iterate every few generations and after a resize, otherwise a
      // random window of it.
      const whole = gen % 8 === 0 || n !== tree.shape.nClusters;
      const from = whole ? 0 : randInt(r, n + 1);
      const to = whole ? n : Math.min(n, from + randInt(r, 300));
      const got = await dump(built, store, from, to);
      for (let cl = from; cl < to; cl++) {
        if (got[cl - from] !== want(cl)) {
          t.fail(`lineage ${lineage} gen ${gen}: iterate[${cl}] = ${got[cl - from]}, want ${want(cl)}`);
          return;
        }
      }
      // The diff against the parent is exactly the model's difference.
      const diff = new Map<number, string>();
      for await (const run of diffTrees(tree, built, store)) {
        for (let i = 0; i < run.count; i++) diff.set(run.first + i, `${entryKey(run.before)}>${entryKey(run.after)}`);
      }
      if (JSON.stringify([...diff]) !== JSON.stringify(sortedWant)) {
        t.fail(`lineage ${lineage} gen ${gen}: diff has ${diff.size} clusters, model ${wantDiff.size}`);
        return;
      }
      // Writes follow the changes: at most one path per changed leaf (+ resize paths).
      const extra = shape.depth + (tree.shape.depth < shape.depth ? shape.depth : 0);
      if (stats.nodesWritten > changes.size * shape.depth + extra) t.fail(`gen ${gen}: wrote ${stats.nodesWritten} nodes for ${changes.size} changes`);
      if ((next.size === 0) !== (built.root === null)) t.fail(`gen ${gen}: root ${built.root === null ? 'null' : 'set'} with ${next.size} allocated`);
      tree = built;
    }
    // Every node of the last tree is reachable, well placed and stored.
    let nodes = 0;
    for await (const v of collectNodeRefs(tree, store)) {
      nodes++;
      t.ok(store.nodes.has(hex(v.ref.loc.id)));
    }
    t.ok(nodes >= (tree.root === null ? 0 : 1), `lineage ${lineage}: ${nodes} nodes`);
  }
  t.ok(batches >= 2000, `${batches} batches`);
});

// ---------------------------------------------------------------------------------------------
// Sharing, reads, diff cost

/** A full tree: every cluster a blob, laid out back to back in packs of 256 blobs. */
async function fullTree(store: MemNodes, n: number, fanout: number): Promise<Tree> {
  function* all(): Generator<TreeChange> {
    for (let c = 0; c < n; c++) yield { cluster: c, entry: blobEntry(loc(Math.floor(c / 256) % 4, (c % 256) * 40000, 40000, c)) };
  }
  return (await buildTree(null, treeShape(n, fanout), all(), store, store)).tree;
}

/** Node positions ("level:first") of a tree, with their ids. */
async function positions(tree: Tree, store: TreeNodeReader): Promise<Map<string, string>> {
  const m = new Map<string, string>();
  for await (const v of collectNodeRefs(tree, store)) m.set(`${v.level}:${v.first}`, hex(v.ref.loc.id));
  return m;
}

t.test('structural sharing: k changes write at most k*depth nodes; other subtrees keep their refs', async (t) => {
  const fanout = 16;
  const n = 16 ** 4;
  const store = new MemNodes();
  const parent = await fullTree(store, n, fanout);
  t.equal(parent.shape.depth, 4);
  const r = rng(3);
  for (const k of [1, 5, 50, 300]) {
    const changed = new Map<number, TreeEntry>();
    while (changed.size < k) changed.set(randInt(r, n), blobEntry(loc(3, randInt(r, 1e6), 100, 1e6 + randInt(r, 1e6))));
    store.resetCounters();
    const { tree, stats } = await buildTree(parent, parent.shape, sortedChanges(changed), store, store);
    t.ok(stats.nodesWritten <= k * parent.shape.depth, `k=${k}: ${stats.nodesWritten} nodes written`);
    t.equal(stats.nodesWritten, store.writes);
    // Reads are the parent's nodes on the changed paths, nothing else.
    const touched = new Set<string>();
    for (const c of changed.keys()) for (let l = 0; l < 4; l++) touched.add(`${l}:${c - (c % fanout ** (l + 1))}`);
    t.equal(stats.nodesRead, touched.size, `k=${k}: read only the changed paths`);
    t.equal(stats.nodesWritten, touched.size, `k=${k}: wrote exactly the changed paths`);
    const before = await positions(parent, store);
    const after = await positions(tree, store);
    t.equal(after.size, before.size);
    let shared = 0;
    for (const [pos, id] of before) {
      if (touched.has(pos)) t.not(after.get(pos), id, `${pos} rewritten`);
      else if (after.get(pos) === id) shared++;
    }
    t.equal(shared, before.size - touched.size, `k=${k}: every untouched subtree shared`);
  }
});

t.test('no-op changes write nothing and keep the root', async (t) => {
  const store = new MemNodes();
  const parent = await fullTree(store, 5000, 16);
  const same: TreeChange[] = [];
  for await (const run of iterate(parent, store, 1000, 1100)) same.push({ cluster: run.first, entry: run.entry });
  store.resetCounters();
  const { tree, stats } = await buildTree(parent, parent.shape, same, store, store);
  t.equal(stats.nodesWritten, 0);
  t.ok(tree.root !== null && parent.root !== null && tree.root.loc.id.equals(parent.root.loc.id));
  t.same(await collect(diffTrees(parent, tree, store)), []);
});

t.test('lookup reads exactly depth nodes', async (t) => {
  const store = new MemNodes();
  const tree = await fullTree(store, 16 ** 3 + 5, 16);
  t.equal(tree.shape.depth, 4);
  store.resetCounters();
  const e = await lookup(tree, 4000, store);
  t.equal(e.kind, 'blob');
  t.equal(store.reads, 4);
  store.resetCounters();
  const empty = await buildTree(null, treeShape(1000, 16), [{ cluster: 999, entry: ZERO }], store, store);
  store.resetCounters();
  t.equal((await lookup(empty.tree, 3, store)).kind, 'unallocated');
  t.equal(store.reads, 1, 'an EMPTY child stops the walk');
  t.equal((await lookup(empty.tree, 999, store)).kind, 'zero');
  store.resetCounters();
  t.equal((await lookup(tree, tree.shape.nClusters + 100, store)).kind, 'unallocated', 'past the end (a grown image): unallocated');
  t.equal(store.reads, 0);
  await t.rejects(lookup(tree, -1, store), { code: 'INVALID_ARGUMENT' });
  await t.rejects(lookup(tree, 2 ** 40, store), { code: 'INVALID_ARGUMENT' });
});

t.test('diff returns exactly the changed clusters and reads only differing subtrees', async (t) => {
  const fanout = 16;
  const n = 16 ** 4;
  const store = new MemNodes();
  const parent = await fullTree(store, n, fanout);
  const r = rng(11);
  const changed = new Map<number, TreeEntry>();
  while (changed.size < 40) changed.set(randInt(r, n), r() < 0.5 ? ZERO : UNALLOCATED);
  const { tree } = await buildTree(parent, parent.shape, sortedChanges(changed), store, store);
  store.resetCounters();
  const runs = await collect(diffTrees(parent, tree, store));
  const got: number[] = [];
  for (const run of runs) for (let i = 0; i < run.count; i++) got.push(run.first + i);
  t.same(got, [...changed.keys()].sort((a, b) => a - b));
  for (const run of runs) t.equal(run.before.kind, 'blob');
  const differing = new Set<string>();
  for (const c of changed.keys()) for (let l = 0; l < 4; l++) differing.add(`${l}:${c - (c % fanout ** (l + 1))}`);
  t.equal(store.reads, 2 * differing.size, `diff read ${store.reads} nodes for ${differing.size} differing positions`);
  store.resetCounters();
  t.same(await collect(diffTrees(tree, tree, store)), []);
  t.equal(store.reads, 0, 'identical roots: nothing read');
  // Reversed: before and after swap.
  const back = await collect(diffTrees(tree, parent, store));
  t.same(back.map((x) => [x.first, x.count, x.before.kind, x.after.kind]), runs.map((x) => [x.first, x.count, x.after.kind, x.before.kind]));
  // Adjacent clusters with the same non-blob change come as one run.
  const zeroed: TreeChange[] = [];
  for (let c = 30000; c < 30020; c++) zeroed.push({ cluster: c, entry: ZERO });
  const { tree: z1 } = await buildTree(parent, parent.shape, zeroed, store, store);
  const { tree: z2 } = await buildTree(z1, z1.shape, zeroed.map((x) => ({ cluster: x.cluster, entry: UNALLOCATED })), store, store);
  const runs2 = await collect(diffTrees(z1, z2, store));
  t.same(runs2.map((x) => [x.first, x.count, x.before.kind, x.after.kind]), [[30000, 20, 'zero', 'unallocated']]);
});

// ---------------------------------------------------------------------------------------------
// Growth and shrink

t.test('growth adds levels above the old root and shares it; shrink drops the tail', async (t) => {
  const fanout = 16;
  const store = new MemNodes();
  const small = await fullTree(store, 200, fanout); // depth 2
  t.equal(small.shape.depth, 2);
  store.resetCounters();
  const { tree: grown, stats } = await buildTree(small, treeShape(70000, fanout), [], store, store); // depth 5
  t.equal(grown.shape.depth, 5);
  t.equal(stats.nodesRead, 0, 'growth without changes reads nothing');
  t.equal(stats.nodesWritten, 3, 'one new node per added level');
  const pos = await positions(grown, store);
  t.equal(pos.get('1:0'), hex(small.root!.loc.id), 'the old root is child 0 of the new chain');
  t.same(await dump(grown, store, 0, 300), [...(await dump(small, store)), ...new Array<string>(100).fill('unallocated')]);
  t.equal((await lookup(grown, 69999, store)).kind, 'unallocated');
  const diff = await collect(diffTrees(small, grown, store));
  t.same(diff, [], 'growth alone changes no cluster');

  // Grow and write past the old end in one build.
  const { tree: g2 } = await buildTree(small, treeShape(5000, fanout), [{ cluster: 10, entry: ZERO }, { cluster: 4999, entry: ZERO }], store, store);
  t.equal((await lookup(g2, 4999, store)).kind, 'zero');
  t.equal((await lookup(g2, 10, store)).kind, 'zero');
  t.equal(entryKey(await lookup(g2, 11, store)), entryKey(await lookup(small, 11, store)));
  t.same((await collect(diffTrees(small, g2, store))).map((x) => x.first), [10, 4999]);

  // Shrink within the same depth: clusters past the end vanish.
  const { tree: s1 } = await buildTree(g2, treeShape(4100, fanout), [], store, store);
  t.equal(s1.shape.depth, 4);
  t.same((await dump(s1, store)).slice(0, 200), (await dump(g2, store)).slice(0, 200));
  t.same((await collect(diffTrees(g2, s1, store))).map((x) => [x.first, x.after.kind]), [[4999, 'unallocated']]);
  // Shrink across depths (4 -> 1), with a change at the new end.
  const { tree: s2 } = await buildTree(g2, treeShape(12, fanout), [{ cluster: 11, entry: UNALLOCATED }], store, store);
  t.equal(s2.shape.depth, 1);
  const want = (await dump(small, store, 0, 12)).map((k, i) => (i === 10 ? 'zero' : i === 11 ? 'unallocated' : k));
  t.same(await dump(s2, store), want);
  // Regrowing the shrunk tree gives back UNALLOCATED past 12, not the old data.
  const { tree: s3 } = await buildTree(s2, treeShape(300, fanout), [], store, store);
  t.same((await dump(s3, store)).slice(12), new Array<string>(288).fill('unallocated'));
  // To zero clusters and back.
  const { tree: z } = await buildTree(g2, treeShape(0, fanout), [], store, store);
  t.equal(z.root, null);
  t.equal(z.shape.depth, 1);
  await t.rejects(buildTree(g2, treeShape(100, 32), [], store, store), { code: 'INVALID_ARGUMENT' }, 'fan-out is fixed');
});

t.test('clearing every cluster gives a null root; EMPTY subtrees are not stored', async (t) => {
  const store = new MemNodes();
  const tree = await fullTree(store, 600, 16);
  const clear: TreeChange[] = [];
  for (let c = 0; c < 600; c++) clear.push({ cluster: c, entry: UNALLOCATED });
  const { tree: empty, stats } = await buildTree(tree, tree.shape, clear, store, store);
  t.equal(empty.root, null);
  t.equal(stats.nodesWritten, 0);
  const { tree: one } = await buildTree(null, treeShape(600, 16), [{ cluster: 300, entry: ZERO }], store, store);
  t.equal((await positions(one, store)).size, 3, 'only the path to the one allocated cluster exists');
});

// ---------------------------------------------------------------------------------------------
// Streaming and read-ahead

t.test('build streams a million changes with memory bounded by the look-ahead', async (t) => {
  const fanout = 256;
  const n = 1 << 20;
  const readAhead = 4;
  let pulled = 0;
  let leavesWritten = 0;
  let maxAhead = 0;
  const store = new MemNodes();
  const writer: TreeNodeWriter = {
    async writeNode(encoded, id) {
      if (encoded[6] === 0) {
        leavesWritten++;
        maxAhead = Math.max(maxAhead, pulled - leavesWritten * fanout);
      }
      return store.writeNode(encoded, id);
    },
  };
  function* changes(): Generator<TreeChange> {
    for (let c = 0; c < n; c++) {
      pulled++;
      yield { cluster: c, entry: blobEntry(loc(0, c * 100, 100, c)) };
    }
  }
  const { tree, stats } = await buildTree(null, treeShape(n, fanout), changes(), store, writer, { readAhead });
  t.equal(leavesWritten, n / fanout);
  t.ok(maxAhead <= (readAhead + 2) * fanout, `at most ${maxAhead} changes held beyond the written leaves`);
  t.equal(stats.nodesWritten, n / fanout + n / fanout / fanout + 1);
  t.equal((await lookup(tree, 777777, store)).kind, 'blob');
});

t.test('read-ahead gives the same tree and reads each node once', async (t) => {
  const store = new MemNodes();
  const parent = await fullTree(store, 16 ** 4, 16);
  const r = rng(5);
  const changed = new Map<number, TreeEntry>();
  while (changed.size < 500) changed.set(randInt(r, 16 ** 4), ZERO);
  const list = sortedChanges(changed);
  const roots: string[] = [];
  const reads: number[] = [];
  for (const readAhead of [0, 1, 3, 64]) {
    store.resetCounters();
    store.newPack(99); // same metadata pack and offsets each time, so same child refs
    const { tree, stats } = await buildTree(parent, parent.shape, asAsync(list), store, store, { readAhead });
    roots.push(hex(tree.root!.loc.id));
    reads.push(stats.nodesRead);
  }
  t.same(new Set(roots).size, 1, 'same root whatever the read-ahead');
  t.same(new Set(reads).size, 1, `same reads: ${reads.join(', ')}`);
  // The reads overlap: with read-ahead, several are in flight at once.
  let inFlight = 0;
  let maxInFlight = 0;
  const slow: TreeNodeReader = {
    async readNode(ref) {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((res) => setImmediate(res));
      inFlight--;
      return store.readNode(ref);
    },
  };
  await buildTree(parent, parent.shape, list, slow, store, { readAhead: 8 });
  t.ok(maxInFlight > 1, `${maxInFlight} reads in flight`);
});

// ---------------------------------------------------------------------------------------------
// Bad input and corruption

t.test('bad changes are refused', async (t) => {
  const store = new MemNodes();
  const shape = treeShape(100, 16);
  await t.rejects(buildTree(null, shape, [{ cluster: 5, entry: ZERO }, { cluster: 5, entry: ZERO }], store, store), { code: 'INVALID_ARGUMENT' });
  await t.rejects(buildTree(null, shape, [{ cluster: 6, entry: ZERO }, { cluster: 5, entry: ZERO }], store, store), { code: 'INVALID_ARGUMENT' });
  await t.rejects(buildTree(null, shape, [{ cluster: 100, entry: ZERO }], store, store), { code: 'INVALID_ARGUMENT' });
  await t.rejects(buildTree(null, shape, [{ cluster: 1.5, entry: ZERO }], store, store), { code: 'INVALID_ARGUMENT' });
  await t.rejects(buildTree(null, shape, [{ cluster: 1, entry: { kind: 'nope' } as unknown as TreeEntry }], store, store), { code: 'INVALID_ARGUMENT' });
  const badLoc = blobEntry({ pack: Buffer.alloc(3), offset: 0, length: 1, id: ID(1) });
  await t.rejects(buildTree(null, shape, [{ cluster: 1, entry: badLoc }], store, store), { code: 'INVALID_ARGUMENT' });
  const ac = new AbortController();
  ac.abort();
  await t.rejects(buildTree(null, shape, [{ cluster: 1, entry: ZERO }], store, store, { signal: ac.signal }), { code: 'ABORTED' });
  let returned = false;
  const source: Iterable<TreeChange> = {
    [Symbol.iterator]() {
      let i = 0;
      return {
        next: () => ({ done: false, value: { cluster: i++ === 0 ? 1 : 0, entry: ZERO } }),
        return: () => {
          returned = true;
          return { done: true, value: undefined };
        },
      };
    },
  };
  await t.rejects(buildTree(null, shape, source, store, store), { code: 'INVALID_ARGUMENT' });
  t.ok(returned, 'the change source is closed on failure');
});

t.test('corrupt or misplaced nodes are reported with where they are', async (t) => {
  const store = new MemNodes();
  const tree = await fullTree(store, 300, 16); // depth 3
  // A reader that serves the bytes of one node in place of another (verification passes: the
  // store names the bytes it returns, the tree checks their place).
  const rootNode = decodeNode(await store.readNode(tree.root!));
  if (rootNode.kind !== 'inner') throw new Error('root should be inner');
  const child0 = rootNode.children[0]!;
  const swapped: TreeNodeReader = { readNode: async (ref) => store.readNode(ref.loc.id.equals(child0.loc.id) ? tree.root! : ref) };
  await t.rejects(lookup(tree, 3, swapped), { code: 'FORMAT_CORRUPT' }, 'a root where a level-1 node belongs');
  const garbage: TreeNodeReader = { readNode: async () => Buffer.from('not a node at all, clearly') };
  const err = await lookup(tree, 3, garbage).catch((e: unknown) => e as IslandError);
  t.equal((err as IslandError).code, 'FORMAT_CORRUPT');
  t.match((err as IslandError).message, /tree node [0-9a-f]{64} \(level 2, clusters from 0\)/);
  t.equal((err as IslandError).details.node, hex(tree.root!.loc.id));
  // A node allocated past the end of the image.
  const { tree: big } = await buildTree(null, treeShape(32, 16), [{ cluster: 31, entry: ZERO }], store, store);
  const lying: Tree = { shape: treeShape(20, 16), root: big.root };
  await t.rejects(collect(iterate(lying, store)), { code: 'FORMAT_CORRUPT' });
  await t.rejects(collect(collectNodeRefs(lying, store)), { code: 'FORMAT_CORRUPT' });
  // A tree of another fan-out.
  const other: Tree = { shape: treeShape(300, 32), root: tree.root };
  await t.rejects(lookup(other, 1, store), { code: 'FORMAT_CORRUPT' });
});

t.test('collectNodeRefs: every node once, parents first; skip prunes shared subtrees', async (t) => {
  const store = new MemNodes();
  const parent = await fullTree(store, 5000, 16);
  const { tree: child } = await buildTree(parent, parent.shape, [{ cluster: 4321, entry: ZERO }], store, store);
  const seen = new Set<string>();
  let parentNodes = 0;
  for await (const v of collectNodeRefs(parent, store)) {
    parentNodes++;
    seen.add(hex(v.ref.loc.id));
  }
  t.equal(parentNodes, seen.size);
  store.resetCounters();
  const fresh: number[] = [];
  for await (const v of collectNodeRefs(child, store, { skip: (ref) => seen.has(hex(ref.loc.id)) })) fresh.push(v.level);
  t.same(fresh, [3, 2, 1, 0], 'only the new path');
  t.equal(store.reads, 4);
});

t.test('sameEntry compares whole locations', async (t) => {
  t.ok(sameEntry(ZERO, ZERO));
  t.notOk(sameEntry(ZERO, UNALLOCATED));
  t.ok(sameEntry(blobEntry(loc(0, 1, 2, 3)), blobEntry(loc(0, 1, 2, 3))));
  t.notOk(sameEntry(blobEntry(loc(0, 1, 2, 3)), blobEntry(loc(1, 1, 2, 3))));
  t.notOk(sameEntry(blobEntry(loc(0, 1, 2, 3)), blobEntry(loc(0, 1, 3, 3))));
});
