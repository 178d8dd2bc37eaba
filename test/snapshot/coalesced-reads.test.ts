/**
 * Lazy restore and the fill read blobs that lie together in a pack with few ranged GETs:
 * a sequential reader of clusters stored contiguously takes a GET per few MiB on both write
 * paths; blobs from several packs and across gaps (blobs rewritten since) come back byte-exact,
 * the gap's bytes never looked at; a damaged blob still fails its fetch, naming its cluster;
 * a write that lands while a coalesced fetch is in flight wins. Real tree, pack, engine and
 * fill code over the in-memory store (and the local disk for the C write path).
 */
import t, { type Test } from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { codeOf, IslandError } from '../../src/errors.js';
import { hex } from '../../src/format/location.js';
import type { Manifest } from '../../src/format/records.js';
import { lookup } from '../../src/format/tree.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { commitSnapshot, manifestTree } from '../../src/repo/commit.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { fillVolume } from '../../src/snapshot/fill.js';
import { treeFetcher } from '../../src/snapshot/restore.js';
import { MemStore } from '../../src/store/mem.js';
import { ForwardingStore, type ObjectStore, type OpOptions } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';
import { nativeWritePathAvailable } from '../../src/volume/native-volume.js';
import { MemFs } from '../../src/volume/memfs.js';
import { createVolume, type AnyVolume, type WritePath } from '../../src/volume/write-path.js';

const C = 64 * 1024;
const MiB = 1024 * 1024;
const nativeSkip = nativeWritePathAvailable() ? false : 'the native addon is not built';

/** Counts data GETs; while `held` is set, they wait for it (each GET that started is counted first). */
class CountingStore extends ForwardingStore {
  dataGets = 0;
  /** The length of every data GET. */
  lengths: number[] = [];
  held: Promise<void> | null = null;
  constructor(inner: ObjectStore) {
    super(inner);
  }
  override async getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    if (key.startsWith('data/')) {
      this.dataGets++;
      this.lengths.push(length);
      if (this.held !== null) await this.held;
    }
    return super.getRange(key, offset, length, opts);
  }
}

interface Snapshots {
  mem: MemStore;
  /** The image of each snapshot, in order. */
  images: Buffer[];
  manifests: Manifest[];
}

/** Snapshots of one volume: `shape(i, image)` says which clusters snapshot i changes (and changes them in `image`). */
async function history(clusters: number, count: number, shape: (i: number, image: Buffer) => number[]): Promise<Snapshots> {
  const mem = new MemStore();
  const writer = new Repository(mem, { host: 'w' });
  const g = (await acquireGeneration(writer, 'v')).generation;
  const image = Buffer.alloc(clusters * C);
  const images: Buffer[] = [];
  const manifests: Manifest[] = [];
  for (let i = 0; i < count; i++) {
    const changed = shape(i, image);
    const m = await commitSnapshot(writer, { volume: 'v', generation: g, parent: manifests.at(-1) ?? null, imageLength: image.length, clusterSize: C, consistency: 'crash', changes: changed.map((c) => ({ cluster: c, data: Buffer.from(image.subarray(c * C, (c + 1) * C)) })), windowMs: 3_600_000 });
    manifests.push(m);
    images.push(Buffer.from(image));
  }
  return { mem, images, manifests };
}

/** Random (incompressible) content for clusters `cs` of `image`. */
function scribble(image: Buffer, cs: number[], rng: Rng): number[] {
  for (const c of cs) rng.bytes(C).copy(image, c * C);
  return cs;
}

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'island-coalesced-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A volume restored from `base` on either write path, fetching through `repo`. */
async function restored(t: Test, path: WritePath, repo: Repository, base: Manifest): Promise<AnyVolume> {
  const opts = { name: 'v', virtualSize: 4 * base.imageLength, generation: 2, baseSnapshot: base.id, baseLength: base.imageLength, fetcher: treeFetcher(repo, base), flushIntervalMs: 0 };
  const v = path === 'native' ? await createVolume(join(await tempDir(t), 'v'), { ...opts, writePath: 'native' }) : await createVolume('/vols/v', { ...opts, fs: new MemFs(), writePath: 'typescript' });
  t.teardown(() => v.close());
  return v;
}

async function readAll(v: AnyVolume, length: number, step: number): Promise<Buffer> {
  const got = Buffer.alloc(length);
  for (let off = 0; off < length; off += step) await v.read(got.subarray(off, Math.min(length, off + step)), off);
  return got;
}

for (const path of ['typescript', 'native'] as const) {
  t.test(`${path}: a sequential read of clusters stored together takes a GET per few MiB, not one per cluster or per 512 KiB`, { skip: path === 'native' && nativeSkip }, async (t) => {
    const clusters = 512; // 32 MiB of incompressible data in one snapshot: two or three packs
    const rng = new Rng(11);
    const h = await history(clusters, 1, (_, image) => scribble(image, Array.from({ length: clusters }, (_, c) => c), rng));
    const base = h.manifests[0] as Manifest;
    const counting = new CountingStore(h.mem);
    const v = await restored(t, path, new Repository(counting, { host: 'r' }), base);
    // 128 KiB at a time, as the FUSE server hands a reader's requests over.
    const got = await readAll(v, base.imageLength, 128 * 1024);
    t.ok(got.equals(h.images[0] as Buffer), 'every byte is the snapshot');
    // 32 MiB in 4 MiB pieces is 8 GETs, plus the reader's first reads, the window's ramp and the
    // pack boundaries; 512 KiB GETs would be 64 at least, a GET per cluster 512.
    t.ok(counting.dataGets <= 20, `${counting.dataGets} data GETs for ${clusters} clusters (32 MiB) read in order`);
  });
}

t.test('a fetch of blobs from several packs, with gaps and a repeated blob, is byte-exact in one GET per pack', async (t) => {
  const clusters = 64;
  const rng = new Rng(12);
  let twin: Buffer | undefined;
  const h = await history(clusters, 2, (i, image) => {
    if (i === 0) {
      // Everything but a hole at 40; clusters 50 and 51 hold the same bytes (one blob).
      const cs = scribble(image, Array.from({ length: clusters }, (_, c) => c).filter((c) => c !== 40), rng);
      twin = Buffer.from(image.subarray(50 * C, 51 * C));
      twin.copy(image, 51 * C);
      return cs;
    }
    // Every even cluster below 40 rewritten: its old blob stays in the first pack as a gap.
    return scribble(image, Array.from({ length: 20 }, (_, k) => 2 * k), rng);
  });
  const base = h.manifests[1] as Manifest;
  const counting = new CountingStore(h.mem);
  const repo = new Repository(counting, { host: 'r' });
  const tree = manifestTree(base);
  const packs = new Set<string>();
  for (let c = 0; c < clusters; c++) {
    const e = await lookup(tree, c, repo.nodeReader());
    if (e.kind === 'blob') packs.add(hex(e.loc.pack));
  }
  t.equal(packs.size, 2, 'the base reads from two packs');
  counting.dataGets = 0;
  const got = await treeFetcher(repo, base).fetch(0, clusters, new AbortController().signal);
  t.ok(got.equals(h.images[1] as Buffer), 'the fetched clusters are the snapshot (the hole reads as zeros)');
  t.ok(twin !== undefined && got.subarray(51 * C, 52 * C).equals(twin), 'both clusters of the repeated blob');
  // Cut at every change of pack in the volume's order this is 40 GETs and more.
  t.equal(counting.dataGets, 2, 'one GET per pack: the odd clusters and the rewritten ones are each one range');

  // The fill over the same base: as few GETs, the same bytes.
  counting.dataGets = 0;
  const v = await restored(t, 'typescript', repo, base);
  const p = await fillVolume(repo, base, v, { signal: new AbortController().signal });
  t.equal(p.failedClusters, 0);
  t.ok(counting.dataGets <= 2, `the fill: ${counting.dataGets} data GETs`);
  t.ok((await readAll(v, base.imageLength, MiB)).equals(h.images[1] as Buffer), 'the filled volume is the snapshot');
});

t.test('a damaged gap is never looked at; a damaged blob fails its fetch, naming its cluster', async (t) => {
  const clusters = 16;
  const rng = new Rng(13);
  const h = await history(clusters, 2, (i, image) => (i === 0 ? scribble(image, Array.from({ length: clusters }, (_, c) => c), rng) : scribble(image, [5], rng)));
  const [first, base] = h.manifests as [Manifest, Manifest];
  const old = await lookup(manifestTree(first), 5, new Repository(h.mem, { host: 'x' }).nodeReader());
  const live = await lookup(manifestTree(base), 6, new Repository(h.mem, { host: 'x' }).nodeReader());
  if (old.kind !== 'blob' || live.kind !== 'blob') throw new Error('clusters 5 and 6 are blobs');
  t.ok(old.loc.pack.equals(live.loc.pack), 'the old blob of cluster 5 lies between live blobs of the first pack');
  const key = keys.pack('data', old.loc.pack);
  const flip = async (at: number): Promise<void> => {
    const bytes = await h.mem.get(key);
    bytes[at] = (bytes[at] as number) ^ 0xff;
    await h.mem.put(key, bytes);
  };
  await flip(old.loc.offset + (old.loc.length >> 1));
  const repo = new Repository(new CountingStore(h.mem), { host: 'r' });
  const got = await treeFetcher(repo, base).fetch(0, clusters, new AbortController().signal);
  t.ok(got.equals(h.images[1] as Buffer), 'a damaged byte in a gap read and discarded changes nothing');

  await flip(live.loc.offset + (live.loc.length >> 1));
  const err = await treeFetcher(new Repository(h.mem, { host: 'r2' }), base)
    .fetch(0, clusters, new AbortController().signal)
    .then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof IslandError, 'the fetch fails');
  t.ok(['HASH_MISMATCH', 'FORMAT_CORRUPT'].includes(codeOf(err) ?? ''), `with a corruption code (${codeOf(err)})`);
  t.equal((err as IslandError).details?.cluster, 6, 'naming the damaged cluster');
});

for (const path of ['typescript', 'native'] as const) {
  t.test(`${path}: a write that lands while a coalesced fetch is in flight wins`, { skip: path === 'native' && nativeSkip }, async (t) => {
    const clusters = 48; // 3 MiB and a little of frames: one GET
    const rng = new Rng(14);
    const h = await history(clusters, 1, (_, image) => scribble(image, Array.from({ length: clusters }, (_, c) => c), rng));
    const base = h.manifests[0] as Manifest;
    const counting = new CountingStore(h.mem);
    const v = await restored(t, path, new Repository(counting, { host: 'r' }), base);
    let release!: () => void;
    counting.held = new Promise<void>((r) => (release = r));
    const fetched = v.prefetch(0, clusters - 1);
    const deadline = Date.now() + 10_000;
    while (counting.dataGets === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    t.equal(counting.dataGets, 1, `all ${clusters} clusters are one GET, held`);
    const mine = Buffer.alloc(C, 0x5a);
    // The C path's write lands at once and the fetch then installs only where still missing;
    // the TypeScript engine's write waits for the fetch of its cluster and lands after it.
    const wrote = v.write(mine, 9 * C);
    if (path === 'native') await wrote;
    release();
    await Promise.all([fetched, wrote]);
    const expect = Buffer.from(h.images[0] as Buffer);
    mine.copy(expect, 9 * C);
    t.ok((await readAll(v, base.imageLength, MiB)).equals(expect), 'cluster 9 is the write; every other cluster the snapshot');
  });
}

t.test('a rate-limited fill reads at most a second of its rate per GET, not a burst of coalesced runs', async (t) => {
  const clusters = 16;
  const rate = 256 * 1024;
  const h = await history(clusters, 1, (_, image) => scribble(image, Array.from({ length: clusters }, (_, c) => c), new Rng(15)));
  const base = h.manifests[0] as Manifest;
  const counting = new CountingStore(h.mem);
  const repo = new Repository(counting, { host: 'r' });
  const v = await restored(t, 'typescript', repo, base);
  const p = await fillVolume(repo, base, v, { signal: new AbortController().signal, rateBytesPerSec: rate });
  t.equal(p.doneClusters, clusters);
  t.ok(counting.lengths.length > 1 && counting.lengths.every((n) => n <= rate), `data GETs of ${counting.lengths.join(', ')} bytes`);
  t.ok((await readAll(v, base.imageLength, MiB)).equals(h.images[0] as Buffer), 'the filled volume is the snapshot');
});
