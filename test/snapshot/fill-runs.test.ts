/**
 * The background fill reads blobs that lie together in a pack with one ranged GET, whether
 * or not they are adjacent in the volume: a snapshot after scattered rewrites fills with
 * about one GET per pack, not one per cluster, and byte-exact. Runs the real fill, engine,
 * tree and pack code over the in-memory store and disk.
 */
import t from 'tap';
import type { Manifest } from '../../src/format/records.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { Repository } from '../../src/repo/repository.js';
import { fillVolume } from '../../src/snapshot/fill.js';
import { treeFetcher } from '../../src/snapshot/restore.js';
import { MemStore } from '../../src/store/mem.js';
import { ForwardingStore, type ObjectStore, type OpOptions } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';
import { Volume } from '../../src/volume/engine.js';
import { MemFs } from '../../src/volume/memfs.js';

class CountingStore extends ForwardingStore {
  dataGets = 0;
  constructor(inner: ObjectStore) {
    super(inner);
  }
  override getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    if (key.startsWith('data/')) this.dataGets++;
    return super.getRange(key, offset, length, opts);
  }
}

const C = 64 * 1024;
const CLUSTERS = 512;

t.test('a fill after scattered rewrites costs about one GET per pack, not per cluster', async (t) => {
  const mem = new MemStore();
  const writer = new Repository(mem, { host: 'w' });
  const g = (await acquireGeneration(writer, 'v')).generation;
  const rng = new Rng(7);
  const image = Buffer.alloc(CLUSTERS * C);
  for (let c = 0; c < CLUSTERS; c++) image.writeUInt32BE(c + 1, c * C);
  let m: Manifest | null = null;
  for (let i = 0; i < 6; i++) {
    // The first snapshot writes everything; each later one rewrites 20 scattered clusters.
    const changed = i === 0 ? Array.from({ length: CLUSTERS }, (_, c) => c) : [...new Set(Array.from({ length: 20 }, () => rng.int(CLUSTERS)))].sort((a, b) => a - b);
    for (const c of changed) if (i > 0) image.writeUInt32BE(0xabc00 + i, c * C + 8);
    m = await commitSnapshot(writer, { volume: 'v', generation: g, parent: m, imageLength: image.length, clusterSize: C, consistency: 'crash', changes: changed.map((c) => ({ cluster: c, data: Buffer.from(image.subarray(c * C, (c + 1) * C)) })), windowMs: 3_600_000 });
  }
  const base = m!;
  const counting = new CountingStore(mem);
  const repo = new Repository(counting, { host: 'r' });
  const fs = new MemFs();
  const v = await Volume.create('/vols/v', { name: 'v', virtualSize: 64 * 1024 * 1024, generation: 1, baseSnapshot: base.id, baseLength: base.imageLength, fs, fetcher: treeFetcher(repo, base), flushIntervalMs: 0 });
  // The guest writes one cluster before the fill reaches it: the fill must keep it.
  const mine = Buffer.alloc(C, 0x5a);
  await v.write(mine, 100 * C);
  const p = await fillVolume(repo, base, v, { signal: new AbortController().signal });
  t.equal(p.failedClusters, 0);
  t.equal(p.doneClusters, CLUSTERS);
  const expect = Buffer.from(image);
  mine.copy(expect, 100 * C);
  const got = Buffer.alloc(image.length);
  for (let off = 0; off < got.length; off += 1 << 20) await v.read(got.subarray(off, off + (1 << 20)), off);
  t.ok(got.equals(expect), 'the filled volume is the snapshot (and the guest write)');
  // 32 MiB in 512 KiB runs is 64 GETs for the first snapshot's pack; each later snapshot's
  // 20 scattered blobs lie together in its own pack: one GET each, not 20.
  t.ok(counting.dataGets <= 64 + 5 * 3, `${counting.dataGets} data GETs for a base of 6 snapshots (cutting runs at every gap in the volume takes about 145)`);
  await v.close();
});
