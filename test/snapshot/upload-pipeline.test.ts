/**
 * The snapshot upload pipeline (src/snapshot/encode-stream.ts, workers/encode.ts) on the
 * volume engine and the embedded store: what it stores restores byte for byte; clusters
 * that do not compress are stored plain, those that do are compressed; a failure in the
 * read, encode or upload stage fails the snapshot, commits nothing, and the next snapshot
 * carries every change.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { BH_CODEC_OFF, BLOB_HEADER_LEN } from '../../src/format/blob.js';
import { CODEC_LZ4, CODEC_NONE } from '../../src/format/codec.js';
import type { Manifest } from '../../src/format/records.js';
import { iterate } from '../../src/format/tree.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { manifestTree } from '../../src/repo/commit.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { takeSnapshot } from '../../src/snapshot/create.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { EncodePool } from '../../src/snapshot/pool.js';
import { FaultStore } from '../../src/store/fault.js';
import { FsStore } from '../../src/store/fs.js';
import { composeStore } from '../../src/store/open.js';
import { listAll } from '../../src/store/types.js';
import { Volume } from '../../src/volume/engine.js';

const MiB = 1 << 20;
const CLUSTER = 65536;

interface Fixture {
  dir: string;
  faults: FaultStore;
  repo: Repository;
  pool: EncodePool;
  vol: Volume;
  generation: number;
}

async function fixture(t: Test): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'island-upload-'));
  const faults = new FaultStore(new FsStore(join(dir, 'store')));
  // No retries: an injected failure fails the request at once.
  const { store } = composeStore(faults, { retry: { attempts: 1 } });
  // Small packs, so one snapshot writes several and a failure can hit one in the middle.
  const repo = new Repository(store, { host: 'h1', packTargetSize: 256 * 1024 });
  const pool = new EncodePool(2);
  const generation = (await acquireGeneration(repo, 'v')).generation;
  const vol = await Volume.create(join(dir, 'vol'), { name: 'v', virtualSize: 64 * MiB, generation, flushIntervalMs: 0 });
  t.teardown(async () => {
    await vol.close().catch(() => undefined);
    await pool.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { dir, faults, repo, pool, vol, generation };
}

/** Text-like bytes LZ4 compresses well. */
function compressible(seed: number): Buffer {
  const words = ['island', 'volume', 'cluster', 'snapshot', 'store', 'pack', 'tree', 'node'];
  let s = '';
  for (let i = 0; s.length < CLUSTER; i++) s += `${words[(i * 7 + seed) % words.length]} ${i % 97} `;
  return Buffer.from(s.slice(0, CLUSTER));
}

/** Writes of every kind the pipeline meets; returns the clusters written random bytes. */
async function writeMix(v: Volume, base: number): Promise<{ random: number[]; text: number[] }> {
  const random: number[] = [];
  const text: number[] = [];
  for (let i = 0; i < 24; i++) {
    const c = base + i;
    let data: Buffer;
    if (i % 4 === 0) {
      data = randomBytes(CLUSTER);
      random.push(c);
    } else if (i % 4 === 1) {
      data = compressible(c);
      text.push(c);
    } else if (i % 4 === 2) data = Buffer.alloc(CLUSTER); // all zero
    else {
      // half random, half zero: the sample sees both halves, so it is compressed whole
      data = Buffer.concat([randomBytes(CLUSTER / 2), Buffer.alloc(CLUSTER / 2)]);
    }
    await v.write(data, c * CLUSTER);
  }
  // a partial cluster write at an odd offset
  await v.write(randomBytes(1000), (base + 30) * CLUSTER + 123);
  await v.fsync();
  return { random, text };
}

/** The image as the volume reads it now (the tests snapshot it with no writes after the seal). */
async function image(v: Volume, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  for (let off = 0; off < length; off += MiB) await v.read(buf.subarray(off, Math.min(length, off + MiB)), off);
  return buf;
}

async function exported(f: Fixture, m: Manifest, name: string): Promise<Buffer> {
  const path = join(f.dir, name);
  await exportSnapshot(f.repo, m, path);
  return readFile(path);
}

/** Codec byte of the stored frame of each listed cluster. */
async function codecs(f: Fixture, m: Manifest, clusters: number[]): Promise<Map<number, number>> {
  const want = new Set(clusters);
  const out = new Map<number, number>();
  for await (const run of iterate(manifestTree(m), f.repo.nodeReader())) {
    if (run.entry.kind !== 'blob') continue;
    for (let c = run.first; c < run.first + run.count; c++) {
      if (!want.has(c)) continue;
      const head = await f.repo.store.getRange(keys.pack('data', run.entry.loc.pack), run.entry.loc.offset, BLOB_HEADER_LEN);
      out.set(c, head[BH_CODEC_OFF] as number);
    }
  }
  return out;
}

async function manifestCount(f: Fixture): Promise<number> {
  let n = 0;
  for await (const _ of listAll(f.repo.store, keys.manifestsPrefix('v'))) n++;
  return n;
}

const opts = { consistency: 'crash' as const, windowMs: 3_600_000 };

t.test('a snapshot restores byte for byte; incompressible clusters are stored plain, compressible ones compressed', async (t) => {
  const f = await fixture(t);
  const { random, text } = await writeMix(f.vol, 16);
  const m1 = await takeSnapshot(f.repo, f.pool, { volume: f.vol, generation: f.generation, parent: null, ...opts });
  t.ok(m1.stats.packs > 2, `the snapshot wrote several packs (${m1.stats.packs})`);
  t.ok((await exported(f, m1, 'e1')).equals(await image(f.vol, m1.imageLength)), 'the first snapshot exports exactly the image');
  const c = await codecs(f, m1, [...random, ...text]);
  t.same(random.map((x) => c.get(x)), random.map(() => CODEC_NONE), 'random clusters are stored plain');
  t.same(text.map((x) => c.get(x)), text.map(() => CODEC_LZ4), 'text clusters are stored compressed');
  t.equal(m1.stats.zeroClusters >= 6, true, `zero clusters become zero entries (${m1.stats.zeroClusters})`);

  // an incremental snapshot on top: some clusters rewritten, the rest reused
  await f.vol.write(randomBytes(3 * CLUSTER), 17 * CLUSTER);
  await f.vol.write(compressible(99), 40 * CLUSTER);
  await f.vol.fsync();
  const m2 = await takeSnapshot(f.repo, f.pool, { volume: f.vol, generation: f.generation, parent: m1, ...opts });
  t.ok((await exported(f, m2, 'e2')).equals(await image(f.vol, m2.imageLength)), 'the second snapshot exports exactly the image');
  t.ok(m2.stats.uploadedBlobs <= 4, `only the changed clusters are uploaded (${m2.stats.uploadedBlobs})`);
});

t.test('a failure in any stage fails the snapshot, commits nothing, and the next one carries the changes', async (t) => {
  const f = await fixture(t);
  await writeMix(f.vol, 16);
  const m0 = await takeSnapshot(f.repo, f.pool, { volume: f.vol, generation: f.generation, parent: null, ...opts });
  const committed = await manifestCount(f);
  let parent = m0;

  // upload stage: the second data pack PUT fails
  await writeMix(f.vol, 100);
  f.faults.add({ op: 'put', keyPrefix: 'data/', nth: 2, action: { kind: 'fail', code: 'STORE_UNAVAILABLE' } });
  await t.rejects(takeSnapshot(f.repo, f.pool, { volume: f.vol, generation: f.generation, parent, ...opts }), { code: 'STORE_UNAVAILABLE' }, 'a failed pack upload fails the snapshot');
  f.faults.clear();
  t.equal(await manifestCount(f), committed, 'no manifest was written');

  // read stage: reading one sealed cluster fails
  await writeMix(f.vol, 200);
  const seal = await f.vol.seal();
  const broken = Object.create(seal) as typeof seal;
  broken.readSealed = (c: number) => (c === 210 ? Promise.reject(new Error('read failed on purpose')) : seal.readSealed(c));
  await t.rejects(takeSnapshot(f.repo, f.pool, { volume: f.vol, generation: f.generation, parent, seal: broken, ...opts }), /read failed on purpose/, 'a failed read fails the snapshot');
  t.equal(seal.status, 'abandoned', 'the seal was abandoned: its changes go into the next snapshot');
  t.equal(await manifestCount(f), committed, 'no manifest was written');

  // encode stage: one worker task fails
  await writeMix(f.vol, 300);
  let tasks = 0;
  const failing = Object.create(f.pool) as EncodePool;
  failing.encodeBatch = (plains, signal) => (++tasks === 2 ? Promise.reject(new Error('encode failed on purpose')) : f.pool.encodeBatch(plains, signal));
  await t.rejects(takeSnapshot(f.repo, failing, { volume: f.vol, generation: f.generation, parent, ...opts }), /encode failed on purpose/, 'a failed encode fails the snapshot');
  t.equal(await manifestCount(f), committed, 'no manifest was written');

  // the next snapshot holds every change of the three failed ones
  parent = await takeSnapshot(f.repo, f.pool, { volume: f.vol, generation: f.generation, parent, ...opts });
  t.equal(await manifestCount(f), committed + 1, 'one more manifest');
  t.ok((await exported(f, parent, 'after')).equals(await image(f.vol, parent.imageLength)), 'the next snapshot exports exactly the image, every failed change included');
});
