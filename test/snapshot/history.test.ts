/**
 * Every snapshot's tree is complete (invariant 3): restoring the 1st and the 30th snapshot
 * of one history, on a real Swift, reads the same number of tree nodes for the same
 * content, and never a node of another snapshot's only, shown by counting the store's
 * ranged reads of metadata packs. Each restore is byte-exact.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { Manifest } from '../../src/format/records.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { Repository } from '../../src/repo/repository.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { ForwardingStore, type ObjectStore, type OpOptions } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

/** Counts ranged reads by the pack kind they read. */
class CountingStore extends ForwardingStore {
  meta = 0;
  data = 0;
  constructor(inner: ObjectStore) {
    super(inner);
  }
  override getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    if (key.startsWith('meta/')) this.meta++;
    if (key.startsWith('data/')) this.data++;
    return super.getRange(key, offset, length, opts);
  }
}

const C = 64 * 1024;
const CLUSTERS = 2048; // 128 MiB: a root over four leaves at fan-out 512
const HISTORY = 30;

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`history tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;
  t.test('restoring the 1st and the 30th snapshot reads the same tree nodes', async (t) => {
    const bucket = uniqueBucket('history');
    const s3 = new S3Store({ ...swift, bucket });
    t.teardown(() => s3.close());
    const writer = new Repository(s3, { host: 'writer' });
    const g = (await acquireGeneration(writer, 'hist')).generation;
    const rng = new Rng(30);
    // Every cluster holds data from the start; each later snapshot rewrites 8 random clusters.
    const image = Buffer.alloc(CLUSTERS * C);
    for (let c = 0; c < CLUSTERS; c++) image.writeUInt32BE(c + 1, c * C);
    const images: Buffer[] = [];
    const manifests: Manifest[] = [];
    let parent: Manifest | null = null;
    for (let i = 0; i < HISTORY; i++) {
      const changed = i === 0 ? Array.from({ length: CLUSTERS }, (_, c) => c) : [...new Set(Array.from({ length: 8 }, () => rng.int(CLUSTERS)))].sort((a, b) => a - b);
      for (const c of changed) if (i > 0) image.writeUInt32BE(0x1000_0000 + i, c * C + 4);
      const changes = changed.map((c) => ({ cluster: c, data: Buffer.from(image.subarray(c * C, (c + 1) * C)) }));
      parent = await commitSnapshot(writer, { volume: 'hist', generation: g, parent, imageLength: image.length, clusterSize: C, consistency: 'crash', changes, windowMs: 3_600_000 });
      manifests.push(parent);
      images.push(Buffer.from(image));
    }
    t.ok(manifests.at(-1)!.stats.uploadedBlobs <= 8, 'later snapshots upload only what changed');

    const dir = await mkdtemp(join(tmpdir(), 'island-history-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const restore = async (i: number): Promise<{ meta: number; data: number }> => {
      const counting = new CountingStore(s3);
      const repo = new Repository(counting, { host: 'reader' }); // its own, cold node cache
      const out = join(dir, `restore-${i}.img`);
      await exportSnapshot(repo, manifests[i]!, out);
      t.ok((await readFile(out)).equals(images[i]!), `snapshot ${i + 1} restores byte-exact`);
      return { meta: counting.meta, data: counting.data };
    };
    const first = await restore(0);
    const last = await restore(HISTORY - 1);
    t.equal(first.meta, 5, 'snapshot 1: the root and its four leaves');
    t.equal(last.meta, first.meta, `snapshot 30 reads as many tree nodes as snapshot 1 (${last.meta})`);
    t.equal(last.data, first.data, 'and one blob read per allocated cluster either way');
  });
}
