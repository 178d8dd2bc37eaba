/**
 * Snapshot upload against the raw store, in one run against one real Swift:
 *
 *  - raw: PUT of 16 MiB objects (island's pack size) of incompressible data through the
 *    same S3 client, at the same number of uploads in flight island uses;
 *  - island: a snapshot of a volume with N MiB of incompressible changed data (engine,
 *    seal, worker-thread hashing and compression, packing, upload, tree, manifest);
 *  - proportionality: snapshot time with 1% and with 100% of a volume changed.
 *
 *   npx tsx scripts/bench-snapshot.ts [--swift swift.json] [--mib 512] [--json]
 *
 * Without --swift it starts a private Swift (scripts/swift.sh) and stops it after.
 * The volume engine runs in this process without FUSE: the figures are of the snapshot
 * path alone (the FUSE data path has its own benchmark).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { acquireGeneration } from '../src/repo/attach.js';
import { Repository } from '../src/repo/repository.js';
import { EncodePool } from '../src/snapshot/pool.js';
import { takeSnapshot } from '../src/snapshot/create.js';
import { Semaphore } from '../src/store/limit.js';
import { composeStore } from '../src/store/open.js';
import { S3Store } from '../src/store/s3.js';
import { Volume } from '../src/volume/engine.js';
import { withSwift } from './bench-swift.js';

const { values } = parseArgs({ options: { swift: { type: 'string' }, mib: { type: 'string', default: '512' }, json: { type: 'boolean', default: false } } });
const MiB = 1 << 20;
const PACK = 16 * MiB;
const INFLIGHT = 4; // PackSink's default uploads in flight

let pass = 0;
/** Incompressible data whose every 64 KiB differs (no dedup), new on each call. */
async function fill(v: Volume, fromMiB: number, mib: number): Promise<void> {
  const chunk = randomBytes(4 * MiB);
  pass++;
  for (let off = 0; off < mib * MiB; off += chunk.length) {
    for (let c = 0; c < chunk.length; c += 65536) {
      chunk.writeUInt32BE(pass, c);
      chunk.writeUInt32BE((off + c) >>> 0, c + 4);
    }
    await v.write(chunk, fromMiB * MiB + off);
  }
  await v.fsync();
}

await withSwift(values.swift, async (cfg) => {
  const mib = Number(values.mib);
  const work = await mkdtemp(join(tmpdir(), 'island-bench-snap-'));
  const bucket = `bench-snap-${Date.now().toString(36)}`;
  const { store, stats } = composeStore(new S3Store({ ...cfg, bucket }), { concurrency: 16 });
  const repo = new Repository(store, { host: 'bench' });
  const pool = new EncodePool();
  try {
    // raw PUT of pack-sized objects, same concurrency as island's uploads
    const body = randomBytes(PACK);
    await store.put('warmup', body.subarray(0, 4096));
    const sem = new Semaphore(INFLIGHT);
    const n = Math.max(1, Math.round(mib / 16));
    let t0 = performance.now();
    await Promise.all(Array.from({ length: n }, (_, i) => sem.run(() => store.put(`raw/${i}`, body))));
    const rawSecs = (performance.now() - t0) / 1000;
    const rawMiBs = (n * 16) / rawSecs;

    // island: a snapshot of `mib` MiB of incompressible changes
    const g1 = (await acquireGeneration(repo, 'bench')).generation;
    const v = await Volume.create(join(work, 'vol'), { name: 'bench', virtualSize: 4 * mib * MiB, generation: g1, flushIntervalMs: 0 });
    await fill(v, 1, mib);
    stats.reset();
    t0 = performance.now();
    const m = await takeSnapshot(repo, pool, { volume: v, generation: g1, parent: null, consistency: 'crash', windowMs: 3_600_000 });
    const snapSecs = (performance.now() - t0) / 1000;
    const snapMiBs = m.stats.uploadedBytes / MiB / snapSecs;

    // proportionality on a second volume: 1% then 100% of it changed
    const sizeMiB = Math.max(100, Math.min(mib, 1024));
    const g2 = (await acquireGeneration(repo, 'prop')).generation;
    const w = await Volume.create(join(work, 'prop'), { name: 'prop', virtualSize: sizeMiB * MiB * 2, generation: g2, flushIntervalMs: 0 });
    await fill(w, 1, sizeMiB);
    const base = await takeSnapshot(repo, pool, { volume: w, generation: g2, parent: null, consistency: 'crash', windowMs: 3_600_000 });
    await fill(w, 1, Math.max(4, Math.round(sizeMiB / 100)));
    t0 = performance.now();
    const one = await takeSnapshot(repo, pool, { volume: w, generation: g2, parent: base, consistency: 'crash', windowMs: 3_600_000 });
    const oneSecs = (performance.now() - t0) / 1000;
    await fill(w, 1, sizeMiB);
    t0 = performance.now();
    const all = await takeSnapshot(repo, pool, { volume: w, generation: g2, parent: one, consistency: 'crash', windowMs: 3_600_000 });
    const allSecs = (performance.now() - t0) / 1000;
    await v.close();
    await w.close();

    const report = {
      swift: cfg.endpoint,
      uploadsInFlight: INFLIGHT,
      rawPutMiBs: rawMiBs,
      snapshotMiBs: snapMiBs,
      snapshotVsRaw: snapMiBs / rawMiBs,
      snapshotMiB: m.stats.uploadedBytes / MiB,
      packs: m.stats.packs,
      proportionality: { volumeMiB: sizeMiB, changed1pctMiB: one.stats.uploadedBytes / MiB, secs1pct: oneSecs, changed100pctMiB: all.stats.uploadedBytes / MiB, secs100pct: allSecs, timeRatio: allSecs / oneSecs, bytesRatio: all.stats.uploadedBytes / Math.max(1, one.stats.uploadedBytes) },
    };
    if (values.json) console.log(JSON.stringify(report));
    else {
      console.log(`snapshot upload vs raw PUT, one Swift (${cfg.endpoint}), ${INFLIGHT} uploads in flight, ${mib} MiB incompressible`);
      console.log(`  raw PUT 16 MiB objects   ${rawMiBs.toFixed(1)} MiB/s`);
      console.log(`  island snapshot          ${snapMiBs.toFixed(1)} MiB/s  (${report.snapshotMiB.toFixed(0)} MiB in ${m.stats.packs} packs)   ratio ${report.snapshotVsRaw.toFixed(2)}`);
      const p = report.proportionality;
      console.log(`  ${p.volumeMiB} MiB volume: 1% changed ${p.changed1pctMiB.toFixed(1)} MiB in ${p.secs1pct.toFixed(2)} s; 100% changed ${p.changed100pctMiB.toFixed(1)} MiB in ${p.secs100pct.toFixed(2)} s; time ratio ${p.timeRatio.toFixed(1)} for a bytes ratio of ${p.bytesRatio.toFixed(1)}`);
    }
  } finally {
    await pool.close();
    await store.close();
    await rm(work, { recursive: true, force: true });
  }
});
