/**
 * Snapshot upload against the raw store, in one run, on a real Swift and on the embedded
 * directory store:
 *
 *  - raw: PUT of 16 MiB objects (island's pack size) of incompressible data through the
 *    same store client, at the same number of uploads in flight island uses;
 *  - island: a snapshot of a volume with N MiB of incompressible changed data (engine,
 *    seal, worker-thread hashing and compression, packing, upload, tree, manifest);
 *  - proportionality: snapshot time with 1% and with 100% of a volume changed;
 *  - CPU per MiB of both, of this process (every thread) and of Swift's processes (the
 *    pids scripts/swift.sh wrote beside swift.json, and their children): on a machine
 *    where Swift runs beside island, the sum bounds the throughput either can reach.
 *
 * Raw and island runs alternate (`--reps`, medians reported), so both see the same load.
 *
 *   npx tsx scripts/bench-snapshot.ts [--swift swift.json] [--mib 512] [--reps 1] [--stores swift,fs] [--json]
 *
 * Without --swift it starts a private Swift (scripts/swift.sh) and stops it after.
 * The volume engine runs in this process without FUSE: the figures are of the snapshot
 * path alone (the FUSE data path has its own benchmark).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Manifest } from '../src/format/records.js';
import { acquireGeneration } from '../src/repo/attach.js';
import { Repository } from '../src/repo/repository.js';
import { EncodePool } from '../src/snapshot/pool.js';
import { takeSnapshot } from '../src/snapshot/create.js';
import { FsStore } from '../src/store/fs.js';
import { Semaphore } from '../src/store/limit.js';
import { composeStore } from '../src/store/open.js';
import { S3Store } from '../src/store/s3.js';
import type { ObjectStore } from '../src/store/types.js';
import { Volume } from '../src/volume/engine.js';
import { withSwift } from './bench-swift.js';

const { values } = parseArgs({
  options: {
    swift: { type: 'string' },
    mib: { type: 'string', default: '512' },
    reps: { type: 'string', default: '1' },
    stores: { type: 'string', default: 'swift,fs' },
    json: { type: 'boolean', default: false },
  },
});
const MiB = 1 << 20;
const PACK = 16 * MiB;
const INFLIGHT = 4; // PackSink's default uploads in flight
const reps = Math.max(1, Number(values.reps));
const stores = new Set(values.stores.split(','));

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

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

interface StoreReport {
  store: string;
  uploadsInFlight: number;
  reps: number;
  rawPutMiBs: number;
  snapshotMiBs: number;
  snapshotVsRaw: number;
  snapshotMiB: number;
  packs: number;
  /** CPU per MiB moved, of this process (all threads) and of the store's processes (Swift's, when its pid file is known). */
  cpuMsPerMiB: { raw: { island: number; store: number }; snapshot: { island: number; store: number } };
  proportionality: { volumeMiB: number; changed1pctMiB: number; secs1pct: number; changed100pctMiB: number; secs100pct: number; timeRatio: number; bytesRatio: number; ratio1pctOf100pct: number };
}

/** CPU time (ms) of the processes listed in a swift.sh pid file and all their descendants. */
async function treeCpuMs(pidFile: string | undefined): Promise<number> {
  if (!pidFile) return 0;
  const roots = new Set((await readFile(pidFile, 'utf8').catch(() => '')).split(/\s+/).filter(Boolean).map(Number));
  const stats = new Map<number, { ppid: number; ticks: number }>();
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const text = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const f = text.slice(text.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
    if (f.length < 13) continue;
    stats.set(Number(name), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) }); // utime + stime
  }
  const inTree = (pid: number): boolean => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
      if (roots.has(p)) return true;
      p = stats.get(p)?.ppid ?? 0;
    }
    return false;
  };
  let ticks = 0;
  for (const [pid, st] of stats) if (inTree(pid)) ticks += st.ticks;
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
}

/** CPU spent by this process (every thread) and by the store's processes while `fn` runs, per MiB. */
async function cpuPerMiB(pidFile: string | undefined, mib: number, fn: () => Promise<void>): Promise<{ island: number; store: number }> {
  const [c0, s0] = [process.cpuUsage(), await treeCpuMs(pidFile)];
  await fn();
  const c = process.cpuUsage(c0);
  const s1 = await treeCpuMs(pidFile);
  return { island: (c.user + c.system) / 1000 / mib, store: (s1 - s0) / mib };
}

async function benchStore(label: string, backend: ObjectStore, mib: number, work: string, pidFile?: string): Promise<StoreReport> {
  await mkdir(work, { recursive: true });
  const { store } = composeStore(backend, { concurrency: 16 });
  const repo = new Repository(store, { host: 'bench' });
  const pool = new EncodePool();
  const opt = { consistency: 'crash' as const, windowMs: 3_600_000 };
  try {
    const body = randomBytes(PACK);
    await store.put('warmup', body.subarray(0, 4096));
    const n = Math.max(1, Math.round(mib / 16));
    const raw: number[] = [];
    const snap: number[] = [];
    const rawCpu: { island: number; store: number }[] = [];
    const snapCpu: { island: number; store: number }[] = [];
    let m: Manifest | undefined;
    for (let rep = 0; rep < reps; rep++) {
      // raw PUT of pack-sized objects, same concurrency as island's uploads
      const sem = new Semaphore(INFLIGHT);
      let t0 = performance.now();
      rawCpu.push(await cpuPerMiB(pidFile, n * 16, async () => void (await Promise.all(Array.from({ length: n }, (_, i) => sem.run(() => store.put(`raw/${rep}/${i}`, body)))))));
      raw.push((n * 16) / ((performance.now() - t0) / 1000));

      // island: a snapshot of `mib` MiB of incompressible changes
      const name = `bench-${rep}`;
      const g = (await acquireGeneration(repo, name)).generation;
      const v = await Volume.create(join(work, name), { name, virtualSize: 4 * mib * MiB, generation: g, flushIntervalMs: 0 });
      await fill(v, 1, mib);
      t0 = performance.now();
      snapCpu.push(await cpuPerMiB(pidFile, mib, async () => void (m = await takeSnapshot(repo, pool, { volume: v, generation: g, parent: null, ...opt }))));
      m = m as Manifest;
      snap.push(m.stats.uploadedBytes / MiB / ((performance.now() - t0) / 1000));
      await v.close();
    }

    // proportionality on a second volume: 1% then 100% of it changed, alternating
    const sizeMiB = Math.max(100, Math.min(mib, 1024));
    const g2 = (await acquireGeneration(repo, 'prop')).generation;
    const w = await Volume.create(join(work, 'prop'), { name: 'prop', virtualSize: sizeMiB * MiB * 2, generation: g2, flushIntervalMs: 0 });
    await fill(w, 1, sizeMiB);
    let parent = await takeSnapshot(repo, pool, { volume: w, generation: g2, parent: null, ...opt });
    const oneSecs: number[] = [];
    const allSecs: number[] = [];
    let one = parent;
    let all = parent;
    for (let rep = 0; rep < reps; rep++) {
      await fill(w, 1, Math.max(4, Math.round(sizeMiB / 100)));
      let t0 = performance.now();
      one = parent = await takeSnapshot(repo, pool, { volume: w, generation: g2, parent, ...opt });
      oneSecs.push((performance.now() - t0) / 1000);
      await fill(w, 1, sizeMiB);
      t0 = performance.now();
      all = parent = await takeSnapshot(repo, pool, { volume: w, generation: g2, parent, ...opt });
      allSecs.push((performance.now() - t0) / 1000);
    }
    await w.close();
    const rawMiBs = median(raw);
    const snapMiBs = median(snap);
    const secs1 = median(oneSecs);
    const secs100 = median(allSecs);
    return {
      store: label,
      uploadsInFlight: INFLIGHT,
      reps,
      rawPutMiBs: rawMiBs,
      snapshotMiBs: snapMiBs,
      snapshotVsRaw: snapMiBs / rawMiBs,
      snapshotMiB: (m as Manifest).stats.uploadedBytes / MiB,
      cpuMsPerMiB: {
        raw: { island: median(rawCpu.map((c) => c.island)), store: median(rawCpu.map((c) => c.store)) },
        snapshot: { island: median(snapCpu.map((c) => c.island)), store: median(snapCpu.map((c) => c.store)) },
      },
      packs: (m as Manifest).stats.packs,
      proportionality: {
        volumeMiB: sizeMiB,
        changed1pctMiB: one.stats.uploadedBytes / MiB,
        secs1pct: secs1,
        changed100pctMiB: all.stats.uploadedBytes / MiB,
        secs100pct: secs100,
        timeRatio: secs100 / secs1,
        bytesRatio: all.stats.uploadedBytes / Math.max(1, one.stats.uploadedBytes),
        ratio1pctOf100pct: secs1 / secs100,
      },
    };
  } finally {
    await pool.close();
    await store.close();
  }
}

function print(r: StoreReport, mib: number): void {
  console.log(`snapshot upload vs raw PUT, ${r.store}, ${r.uploadsInFlight} uploads in flight, ${mib} MiB incompressible, median of ${r.reps}`);
  console.log(`  raw PUT 16 MiB objects   ${r.rawPutMiBs.toFixed(1)} MiB/s`);
  console.log(`  island snapshot          ${r.snapshotMiBs.toFixed(1)} MiB/s  (${r.snapshotMiB.toFixed(0)} MiB in ${r.packs} packs)   ratio ${r.snapshotVsRaw.toFixed(2)}`);
  const cpu = r.cpuMsPerMiB;
  const cores = availableParallelism();
  const bound = (c: { island: number; store: number }): string => (c.store > 0 ? `, at most ${((cores * 1000) / (c.island + c.store)).toFixed(0)} MiB/s on ${cores} cores` : '');
  console.log(`  CPU per MiB: raw PUT ${cpu.raw.island.toFixed(1)} ms here + ${cpu.raw.store.toFixed(1)} ms store${bound(cpu.raw)}; snapshot ${cpu.snapshot.island.toFixed(1)} ms here + ${cpu.snapshot.store.toFixed(1)} ms store${bound(cpu.snapshot)}`);
  const p = r.proportionality;
  console.log(
    `  ${p.volumeMiB} MiB volume: 1% changed ${p.changed1pctMiB.toFixed(1)} MiB in ${p.secs1pct.toFixed(2)} s; 100% changed ${p.changed100pctMiB.toFixed(1)} MiB in ${p.secs100pct.toFixed(2)} s; 1% takes ${p.ratio1pctOf100pct.toFixed(3)} of 100% (bytes ratio ${p.bytesRatio.toFixed(1)})`,
  );
}

const mib = Number(values.mib);
const run = async (swiftCfg: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string } | undefined, swiftPids?: string): Promise<void> => {
  const work = await mkdtemp(join(tmpdir(), 'island-bench-snap-'));
  try {
    const out: StoreReport[] = [];
    if (swiftCfg) out.push(await benchStore(`Swift (${swiftCfg.endpoint})`, new S3Store({ ...swiftCfg, bucket: `bench-snap-${Date.now().toString(36)}` }), mib, join(work, 'swift'), swiftPids));
    if (stores.has('fs')) out.push(await benchStore('embedded directory store', new FsStore(join(work, 'store')), mib, join(work, 'fs')));
    if (values.json) {
      // The Swift figures at the top level (bench-report reads them there), the embedded store's beside them.
      const [first, ...rest] = out;
      console.log(JSON.stringify({ swift: swiftCfg?.endpoint ?? null, ...first, embedded: rest.find((r) => r.store.startsWith('embedded')) ?? null }));
    } else for (const r of out) print(r, mib);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
};
// scripts/swift.sh keeps the pids of the Swift it started beside its swift.json.
if (stores.has('swift')) await withSwift(values.swift, (cfg, file) => run(cfg, join(dirname(file), 'pids')));
else await run(undefined);
