/**
 * Restore from snapshots against the raw store, in one run against one real Swift, through
 * a real `island serve` (its own process: FUSE mount, control socket, S3 region):
 *
 *  - attach to first byte: attach over the control API, then the first 4 KiB read of the
 *    restored file through the mount, for a 1 GiB and a 64 GiB sparse volume holding the
 *    same data (image length = virtual size: the 64 GiB tree covers 64x the clusters), or
 *    for the sizes --sizes names;
 *  - lazy sequential read (fill off) through the mount, 1 MiB reads, against two baselines:
 *    raw SDK GETs (`@aws-sdk/client-s3`, no island code) of 1 MiB objects holding as many
 *    bytes, written by this run, at the number of GETs island keeps in flight for one
 *    sequential reader; and ranged GETs of 512 KiB of the same packs, one at a time;
 *  - background fill (to done) against the same two baselines at the fill's concurrency,
 *    with the daemon's RSS sampled every 25 ms meanwhile;
 *  - restore (attach to fill done) of the 1st and the 30th snapshot of one history, each
 *    through a volume created from it; every snapshot after the first rewrites 1/30 of the
 *    clusters, in one contiguous stretch or scattered (every 30th cluster), so the 30th
 *    reads blobs from 30 snapshots' packs; --positions adds snapshots in between (the 1st
 *    and the 30th are always restored).
 *
 *   npx tsc -p . && npx tsx scripts/bench-restore.ts [--swift swift.json] [--mib 512] [--reps 3]
 *       [--sizes 1,64] [--positions 1,30] [--json]
 *
 * Without --swift it starts a private Swift (scripts/swift.sh) and stops it after. The
 * snapshots are written by this process (volume engine and snapshot upload, no FUSE) as a
 * host that then detaches, so the daemon attaches them as any other host would. Needs root
 * (FUSE), a built island (dist/). The daemon is stopped by pid, its mount lazily unmounted.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { call } from '../src/cli/client.js';
import type { Manifest } from '../src/format/records.js';
import { acquireGeneration, releaseGeneration } from '../src/repo/attach.js';
import { keys } from '../src/repo/keys.js';
import { Repository } from '../src/repo/repository.js';
import { treePacks } from '../src/repo/tree-packs.js';
import { FILL_CONCURRENCY } from '../src/snapshot/fill.js';
import { EncodePool } from '../src/snapshot/pool.js';
import { takeSnapshot } from '../src/snapshot/create.js';
import { composeStore } from '../src/store/open.js';
import { S3Store } from '../src/store/s3.js';
import { Volume } from '../src/volume/engine.js';
import { READ_AHEAD_FETCHES } from '../src/volume/lazy.js';
import { freePort, scrapeWork, SdkGets, SDK_OBJECT_BYTES, workSince, type Work } from './bench-restore-measure.js';
import { withSwift, type SwiftCfg } from './bench-swift.js';

const run = promisify(execFile);
const { values } = parseArgs({
  options: {
    swift: { type: 'string' },
    mib: { type: 'string', default: '512' },
    reps: { type: 'string', default: '3' },
    /** Virtual sizes (GiB) of the first-byte volumes, all holding the same data. */
    sizes: { type: 'string', default: '1,64' },
    /** Positions in the history whose restore is timed; 1 and HISTORY always are. */
    positions: { type: 'string', default: '' },
    json: { type: 'boolean', default: false },
  },
});
const MiB = 1 << 20;
const GiB = 1 << 30;
const MAIN = resolve(import.meta.dirname, '../dist/cli/main.js');
/** A miss fetches at most this much in one ranged GET (src/snapshot/restore.ts). */
const RUN_BYTES = 512 * 1024;
/** Fetches (one coalesced ranged GET each) island keeps in flight for one sequential reader. */
const LAZY_INFLIGHT = READ_AHEAD_FETCHES;
/** Data starts past the qcow2 header, L1 and refcount clusters island writes at create. */
const DATA_AT = MiB;
/** Where the first write goes, past the data start: another cluster of the 16 MiB written there. */
const WRITE_AT = 8 * MiB;
const HISTORY = 30;
/** The first-byte volumes write 16 MiB at the start and 1 MiB at the end. */
const MAX_SIZE_GIB = 1024;

function intList(s: string, what: string, min: number, max: number): number[] {
  const xs = s.split(',').map((x) => x.trim()).filter(Boolean).map(Number);
  for (const x of xs) if (!Number.isInteger(x) || x < min || x > max) throw new Error(`${what}: ${x} is not a whole number in [${min}, ${max}]`);
  return [...new Set(xs)].sort((a, b) => a - b);
}
const SIZES_GIB = intList(values.sizes, '--sizes', 1, MAX_SIZE_GIB);
if (SIZES_GIB.length === 0) throw new Error('--sizes names no size');
const POSITIONS = intList(`1,${values.positions},${HISTORY}`, '--positions', 1, HISTORY);
/** Sample keys: 'first' and 'last' for the 1st and the HISTORY-th, 'p<N>' in between. */
const posLabel = (p: number): string => (p === 1 ? 'first' : p === HISTORY ? 'last' : `p${p}`);
const WINDOW_MS = 3_600_000;
const DEADLINE_MS = 600_000;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

async function until(what: string, cond: () => Promise<boolean>, ms = DEADLINE_MS, every = 50): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Incompressible bytes, different for every call and every 64 KiB (no dedup). */
let pass = 0;
async function writeRandom(v: Volume, at: number, bytes: number): Promise<void> {
  const chunk = randomBytes(Math.min(4 * MiB, bytes));
  pass++;
  for (let off = 0; off < bytes; off += chunk.length) {
    for (let c = 0; c < chunk.length; c += 65536) {
      chunk.writeUInt32BE(pass, c);
      chunk.writeUInt32BE((off + c) >>> 0, c + 4);
    }
    await v.write(chunk.subarray(0, Math.min(chunk.length, bytes - off)), at + off);
  }
}

/** Snapshots written as host "seed", which detaches after: any host can attach the volume. */
class Seeder {
  constructor(
    private readonly repo: Repository,
    private readonly pool: EncodePool,
    private readonly work: string,
  ) {}

  async volume(name: string, virtualSize: number, shape: (v: Volume, i: number) => Promise<void>, snapshots = 1): Promise<Manifest[]> {
    await this.repo.putVolume({ name, virtualSize, clusterSize: 65536, region: 'swift', created: Date.now(), source: null, status: 'available', host: null, generation: 0, revision: 1 });
    const g = (await acquireGeneration(this.repo, name)).generation;
    const v = await Volume.create(join(this.work, name), { name, virtualSize, generation: g, flushIntervalMs: 0 });
    const out: Manifest[] = [];
    try {
      for (let i = 0; i < snapshots; i++) {
        await shape(v, i);
        await v.fsync();
        out.push(await takeSnapshot(this.repo, this.pool, { volume: v, generation: g, parent: out.at(-1) ?? null, consistency: 'crash', windowMs: WINDOW_MS }));
      }
    } finally {
      await v.close();
      await rm(join(this.work, name), { recursive: true, force: true });
    }
    await releaseGeneration(this.repo, name, g);
    return out;
  }
}

/** Ranged GETs of RUN_BYTES over the blob areas of the packs a snapshot wrote, `inflight` at once. */
async function rawRangedGets(repo: Repository, m: Manifest, inflight: number): Promise<{ bytes: number; secs: number }> {
  const ranges: { key: string; off: number; len: number }[] = [];
  for (const id of m.packs) {
    const key = keys.pack('data', id);
    const info = await repo.store.head(key);
    if (!info) continue;
    const idx = await repo.readPackIndex('data', id);
    const end = idx.entries.reduce((e, x) => Math.max(e, x.offset + x.frameLength), 0);
    for (let off = 0; off < end; off += RUN_BYTES) ranges.push({ key, off, len: Math.min(RUN_BYTES, end - off) });
  }
  let next = 0;
  let bytes = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (next < ranges.length) {
        const r = ranges[next++] as { key: string; off: number; len: number };
        bytes += (await repo.store.getRange(r.key, r.off, r.len)).length;
      }
    }),
  );
  return { bytes, secs: (performance.now() - t0) / 1000 };
}

interface Daemon {
  child: ChildProcess;
  socket: string;
  mount: string;
  api(method: string, path: string, body?: unknown): Promise<unknown>;
  rssKiB(): Promise<number>;
  /** What the daemon has done so far: data GETs, their summed latency, its CPU time. */
  work(): Promise<Work>;
  stop(): Promise<void>;
}

async function mounted(path: string): Promise<boolean> {
  return (await readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === path);
}

async function startDaemon(dir: string, cfg: SwiftCfg, bucket: string): Promise<Daemon> {
  await mkdir(dir, { recursive: true });
  const configFile = join(dir, 'island.json');
  const metricsPort = await freePort();
  await writeFile(configFile, JSON.stringify({ region: 'swift', regions: { swift: { type: 's3', ...cfg, bucket } }, metricsPort }));
  const socket = join(dir, 'island.sock');
  const mount = join(dir, 'mnt');
  const log = await open(join(dir, 'daemon.log'), 'a');
  const env = { ...process.env, ISLAND_CONFIG: configFile, ISLAND_DATA_DIR: dir, ISLAND_MOUNT: mount, ISLAND_SOCKET: socket, ISLAND_HOST_ID: 'bench-restore', ISLAND_LOG_LEVEL: 'warn' };
  const child = spawn(process.execPath, [MAIN, 'serve'], { env, stdio: ['ignore', log.fd, log.fd] });
  let exited = false;
  child.once('exit', () => (exited = true));
  const stop = async (): Promise<void> => {
    if (!exited) {
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await done;
      clearTimeout(t);
    }
    if (await mounted(mount)) await run('umount', ['-l', mount]).catch(() => undefined);
    await log.close();
  };
  try {
    await until('the daemon to mount', async () => {
      if (exited) throw new Error(`island serve exited: ${await readFile(join(dir, 'daemon.log'), 'utf8')}`);
      return mounted(mount);
    }, 30_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    child,
    socket,
    mount,
    api: (method, path, body) => call(socket, method, path, body),
    rssKiB: async () => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0),
    work: () => scrapeWork(metricsPort, child.pid as number),
    stop,
  };
}

interface FillOut {
  state: string;
  totalClusters: number;
  doneClusters: number;
  bytesFetched: number;
}

async function fillOf(d: Daemon, name: string): Promise<FillOut | null> {
  const s = (await d.api('GET', '/v1/status')) as { volumes: { name: string; fill: FillOut | null }[] };
  return s.volumes.find((v) => v.name === name)?.fill ?? null;
}

/** How long a detach may find the file still open after this process closed it. */
const RELEASE_DEADLINE_MS = 10_000;

/**
 * Detach; a close() returns before the kernel sends FUSE its release, so the daemon may still
 * count the handle for a moment and refuse (BUSY): asked again until the deadline.
 */
async function detach(d: Daemon, name: string): Promise<void> {
  await until(`${name} to detach`, async () => {
    try {
      await d.api('POST', `/v1/volumes/${name}/detach`, {});
      return true;
    } catch (err) {
      if ((err as { code?: string }).code === 'BUSY') return false;
      throw err;
    }
  }, RELEASE_DEADLINE_MS);
}

/**
 * Attach, then at once read 4 KiB of the restored image's data and write 4 KiB into
 * another cluster of it (pwrite, then fdatasync: acknowledged once durable), through the
 * mount; each timed from the start of the attach call. The write lands in a cluster that
 * is not local yet, so it waits for that cluster's fetch (a partial write is merged into
 * the cluster's old content).
 */
async function firstByte(d: Daemon, name: string): Promise<{ totalMs: number; attachMs: number; readMs: number; writeMs: number }> {
  const t0 = performance.now();
  await d.api('POST', `/v1/volumes/${name}/attach`, {});
  const t1 = performance.now();
  const file = join(d.mount, `${name}.qcow2`);
  const read = (async (): Promise<number> => {
    const fh = await open(file, 'r');
    try {
      await fh.read(Buffer.alloc(4096), 0, 4096, DATA_AT);
    } finally {
      await fh.close();
    }
    return performance.now();
  })();
  const write = (async (): Promise<number> => {
    const fh = await open(file, 'r+');
    try {
      await fh.write(Buffer.alloc(4096, 0x5a), 0, 4096, DATA_AT + WRITE_AT);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    return performance.now();
  })();
  const [t2, t3] = await Promise.all([read, write]);
  await detach(d, name);
  return { totalMs: t2 - t0, attachMs: t1 - t0, readMs: t2 - t1, writeMs: t3 - t0 };
}

/** Sequential 1 MiB reads of [from, from + bytes) of an attached volume's file. */
async function readSequential(d: Daemon, name: string, from: number, bytes: number): Promise<number> {
  const fh = await open(join(d.mount, `${name}.qcow2`), 'r');
  const buf = Buffer.alloc(MiB);
  const t0 = performance.now();
  try {
    for (let off = 0; off < bytes; off += MiB) await fh.read(buf, 0, Math.min(MiB, bytes - off), from + off);
  } finally {
    await fh.close();
  }
  return (performance.now() - t0) / 1000;
}

/** How often the fill's state (and the daemon's RSS) is read: restores of 64 MiB take 0.5-2 s here. */
const FILL_POLL_MS = 25;

/** Attach, wait until the fill is done; seconds, bytes fetched and the daemon's RSS meanwhile. */
async function fillTime(d: Daemon, name: string): Promise<{ secs: number; bytes: number; rssMaxKiB: number; work: Work }> {
  let rssMaxKiB = 0;
  const w0 = await d.work();
  const t0 = performance.now();
  await d.api('POST', `/v1/volumes/${name}/attach`, {});
  let f: FillOut | null = null;
  await until(`the fill of ${name}`, async () => {
    rssMaxKiB = Math.max(rssMaxKiB, await d.rssKiB());
    f = await fillOf(d, name);
    if (f && f.state !== 'filling' && f.state !== 'done') throw new Error(`fill of ${name} ended ${f.state}`);
    return f?.state === 'done';
  }, DEADLINE_MS, FILL_POLL_MS);
  const secs = (performance.now() - t0) / 1000;
  const work = workSince(w0, await d.work());
  await detach(d, name);
  return { secs, bytes: (f as FillOut | null)?.bytesFetched ?? 0, rssMaxKiB, work };
}

await withSwift(values.swift, async (cfg) => {
  const mib = Number(values.mib);
  const reps = Math.max(1, Number(values.reps));
  const work = await mkdtemp(join(tmpdir(), 'island-bench-restore-'));
  const bucket = `bench-restore-${Date.now().toString(36)}`;
  const { store } = composeStore(new S3Store({ ...cfg, bucket }), { concurrency: 16 });
  const repo = new Repository(store, { host: 'seed', region: 'swift' });
  const pool = new EncodePool();
  const sdk = new SdkGets(cfg, bucket);
  let d: Daemon | undefined;
  try {
    await store.put('warmup', Buffer.alloc(4096));
    const seed = new Seeder(repo, pool, join(work, 'seed'));
    // 16 MiB near the start and 1 MiB at the end of each: same data, 64x the tree.
    const sparse = (size: number) => async (v: Volume): Promise<void> => {
      await writeRandom(v, DATA_AT, 16 * MiB);
      await writeRandom(v, size - MiB, MiB);
    };
    for (const g of SIZES_GIB) await seed.volume(`fb-${g}g`, g * GiB, sparse(g * GiB));
    const [lazy] = await seed.volume('lazy', 2 * GiB, async (v) => writeRandom(v, DATA_AT, mib * MiB));
    await sdk.write(Math.ceil((mib * MiB) / SDK_OBJECT_BYTES));
    // Two histories of a 64 MiB volume: each snapshot after the first rewrites 1/30 of it,
    // scattered (every 30th cluster: the 30th snapshot's neighbouring clusters lie in
    // different packs) or contiguous (one 2 MiB stretch: its runs stay whole).
    const clusters = (64 * MiB) / 65536;
    const scattered = await seed.volume('hist-scattered', GiB, async (v, i) => {
      if (i === 0) return writeRandom(v, DATA_AT, clusters * 65536);
      for (let c = i % HISTORY; c < clusters; c += HISTORY) await writeRandom(v, DATA_AT + c * 65536, 65536);
    }, HISTORY);
    const stretch = Math.floor(clusters / HISTORY);
    const contiguous = await seed.volume('hist-contiguous', GiB, async (v, i) => {
      if (i === 0) return writeRandom(v, DATA_AT, clusters * 65536);
      await writeRandom(v, DATA_AT + i * stretch * 65536, stretch * 65536);
    }, HISTORY);

    const dataPacks = async (m: Manifest): Promise<number> => [...(await treePacks(repo, m)).values()].filter((p) => p.kind === 'data').length;
    d = await startDaemon(join(work, 'daemon'), cfg, bucket);
    const daemon = d;
    const rssIdleKiB = await daemon.rssKiB();

    // attach to first byte, interleaved
    const fbNames = SIZES_GIB.map((g) => `fb-${g}g`);
    const fb: Record<string, { totalMs: number; attachMs: number; readMs: number; writeMs: number }[]> = Object.fromEntries(fbNames.map((n) => [n, []]));
    for (let r = 0; r < reps; r++) for (const n of r % 2 ? [...fbNames].reverse() : fbNames) fb[n]?.push(await firstByte(daemon, n));
    const fbMed = (n: string, k: 'totalMs' | 'attachMs' | 'readMs' | 'writeMs'): number => median((fb[n] ?? []).map((x) => x[k]));
    const bySize = (k: 'totalMs' | 'attachMs' | 'readMs' | 'writeMs'): Record<string, number> => Object.fromEntries(SIZES_GIB.map((g) => [`${g}GiB`, fbMed(`fb-${g}g`, k)]));
    const [smallest, largest] = [`fb-${SIZES_GIB[0]}g`, `fb-${SIZES_GIB.at(-1)}g`];

    // Where the time goes, per workload: the daemon's ranged GETs (count, mean latency, mean
    // size, how many were in flight on average: summed latency over wall time) and its CPU.
    const works: Record<string, { secs: number; w: Work }[]> = {};
    const note = (what: string, secs: number, w: Work): void => void (works[what] ??= []).push({ secs, w });
    const workOf = (what: string) => {
      const xs = works[what] ?? [];
      const med = (f: (x: { secs: number; w: Work }) => number): number => median(xs.map(f));
      return {
        gets: med((x) => x.w.gets),
        getMs: med((x) => (x.w.getSecs / Math.max(1, x.w.gets)) * 1000),
        MiBPerGet: med((x) => x.w.getBytes / MiB / Math.max(1, x.w.gets)),
        getsInFlight: med((x) => x.w.getSecs / x.secs),
        daemonCpu: med((x) => x.w.cpuSecs / x.secs),
      };
    };

    // lazy sequential read and fill, each against raw SDK GETs of 1 MiB objects at island's
    // GETs in flight for that workload, and against ranged GETs of the same packs (one at a
    // time for the reader, the fill's concurrency for the fill)
    const lazyRead: number[] = [];
    const raw1: number[] = [];
    const sdkLazy: number[] = [];
    const fill: { secs: number; bytes: number; rssMaxKiB: number }[] = [];
    const raw4: number[] = [];
    const sdkFill: number[] = [];
    let rawBytes = 0;
    // Each raw figure of a rep is the mean of one run just before and one just after the
    // island run: on a shared machine the load moves in minutes.
    const raw = async (inflight: number): Promise<number> => {
      const g = await rawRangedGets(repo, lazy as Manifest, inflight);
      rawBytes = g.bytes;
      return g.bytes / MiB / g.secs;
    };
    for (let r = 0; r < reps; r++) {
      const before1 = await raw(1);
      const beforeSdk = await sdk.read(LAZY_INFLIGHT);
      await daemon.api('POST', '/v1/volumes/lazy/attach', { fill: false });
      const w0 = await daemon.work();
      const secs = await readSequential(daemon, 'lazy', DATA_AT, mib * MiB);
      lazyRead.push(mib / secs);
      note('lazy', secs, workSince(w0, await daemon.work()));
      await detach(daemon, 'lazy');
      sdkLazy.push((beforeSdk + (await sdk.read(LAZY_INFLIGHT))) / 2);
      raw1.push((before1 + (await raw(1))) / 2);
      const before4 = await raw(FILL_CONCURRENCY);
      const beforeSdkFill = await sdk.read(FILL_CONCURRENCY);
      const f = await fillTime(daemon, 'lazy');
      fill.push(f);
      note('fill', f.secs, f.work);
      sdkFill.push((beforeSdkFill + (await sdk.read(FILL_CONCURRENCY))) / 2);
      raw4.push((before4 + (await raw(FILL_CONCURRENCY))) / 2);
    }

    // 1st vs 30th snapshot of one history (and any --positions), each through a volume created from it
    const restore: Record<string, number[]> = {};
    for (const kind of ['scattered', 'contiguous']) for (const p of POSITIONS) restore[`${kind}-${posLabel(p)}`] = [];
    const histories = { scattered, contiguous };
    for (let r = 0; r < reps; r++) {
      for (const kind of ['scattered', 'contiguous'] as const) {
        for (const p of r % 2 ? [...POSITIONS].reverse() : POSITIONS) {
          const m = histories[kind][p - 1] as Manifest;
          const name = `r-${kind}-${posLabel(p)}-${r}`;
          await daemon.api('POST', '/v1/volumes', { name, from: m.id });
          const f = await fillTime(daemon, name);
          restore[`${kind}-${posLabel(p)}`]?.push(f.secs);
          note(`${kind}-${posLabel(p)}`, f.secs, f.work);
        }
      }
    }
    const hist = async (kind: 'scattered' | 'contiguous') => ({
      firstSecs: median(restore[`${kind}-first`] ?? []),
      lastSecs: median(restore[`${kind}-last`] ?? []),
      ratio: median(restore[`${kind}-last`] ?? []) / median(restore[`${kind}-first`] ?? []),
      dataPacksFirst: await dataPacks(histories[kind][0] as Manifest),
      dataPacksLast: await dataPacks(histories[kind][HISTORY - 1] as Manifest),
      byPosition: await Promise.all(POSITIONS.map(async (p) => ({ position: p, secs: median(restore[`${kind}-${posLabel(p)}`] ?? []), dataPacks: await dataPacks(histories[kind][p - 1] as Manifest) }))),
    });

    const fillMiBs = fill.map((f) => f.bytes / MiB / f.secs);
    const report = {
      swift: cfg.endpoint,
      client: '@aws-sdk/client-s3 (S3Store), the same client the daemon uses',
      dataMiB: mib,
      reps,
      loadAverage: loadavg(),
      firstByteMs: {
        ...bySize('totalMs'),
        ...(SIZES_GIB.includes(1) && SIZES_GIB.includes(64) ? { ratio64to1: fbMed('fb-64g', 'totalMs') / fbMed('fb-1g', 'totalMs') } : {}),
        sizesGiB: SIZES_GIB,
        ratioLargestToSmallest: fbMed(largest, 'totalMs') / fbMed(smallest, 'totalMs'),
        attach: bySize('attachMs'),
        firstRead: bySize('readMs'),
        /** From the attach call to the first 4 KiB write acknowledged (fdatasync returned). */
        firstWrite: bySize('writeMs'),
      },
      lazyRead: {
        MiBs: median(lazyRead),
        rawMiBs: median(raw1),
        ratio: median(lazyRead) / median(raw1),
        rawInflight: 1,
        sdkMiBs: median(sdkLazy),
        sdkRatio: median(lazyRead) / median(sdkLazy),
        sdkInflight: LAZY_INFLIGHT,
      },
      fill: {
        MiBs: median(fillMiBs),
        rawMiBs: median(raw4),
        ratio: median(fillMiBs) / median(raw4),
        rawInflight: FILL_CONCURRENCY,
        sdkMiBs: median(sdkFill),
        sdkRatio: median(fillMiBs) / median(sdkFill),
        sdkInflight: FILL_CONCURRENCY,
        bytesFetchedMiB: (fill[0]?.bytes ?? 0) / MiB,
        rawBytesMiB: rawBytes / MiB,
      },
      history: { snapshots: HISTORY, scattered: await hist('scattered'), contiguous: await hist('contiguous') },
      rss: { idleMiB: rssIdleKiB / 1024, fillMaxMiB: Math.max(...fill.map((f) => f.rssMaxKiB)) / 1024 },
      work: Object.fromEntries(Object.keys(works).map((k) => [k, workOf(k)])),
      samples: { firstByteMs: fb, lazyReadMiBs: lazyRead, raw1MiBs: raw1, sdkLazyMiBs: sdkLazy, fillMiBs, raw4MiBs: raw4, sdkFillMiBs: sdkFill, restoreSecs: restore },
    };
    if (values.json) console.log(JSON.stringify(report));
    else {
      const f = (x: number, n = 1): string => x.toFixed(n);
      console.log(`restore from snapshots, one Swift (${cfg.endpoint}), island serve over FUSE, medians of ${reps}`);
      const fbr = report.firstByteMs;
      console.log(`  load average ${report.loadAverage.map((x) => x.toFixed(1)).join(' ')} (2 cores: Swift, the daemon and this client share them)`);
      const each = (o: Record<string, number>): string => SIZES_GIB.map((g) => `${g} GiB ${f(o[`${g}GiB`] ?? NaN)} ms`).join('   ');
      console.log(`  attach to first byte      ${each(bySize('totalMs'))}   ratio ${f(fbr.ratioLargestToSmallest, 2)}   (target: equal, < 100 ms)`);
      console.log(`    of which attach call    ${each(fbr.attach)};  first read  ${SIZES_GIB.map((g) => `${f(fbr.firstRead[`${g}GiB`] ?? NaN)} ms`).join('   ')}`);
      console.log(`  attach to first write     ${each(fbr.firstWrite)}   (4 KiB into a cluster not local yet, fdatasync returned)`);
      const L = report.lazyRead;
      const F = report.fill;
      console.log(`  lazy sequential read      ${f(L.MiBs)} MiB/s   raw SDK GET 1 MiB x${L.sdkInflight} ${f(L.sdkMiBs)} MiB/s   ratio ${f(L.sdkRatio, 2)}   (target 1.0)`);
      console.log(`                            raw ranged GET 512 KiB x1 ${f(L.rawMiBs)} MiB/s   ratio ${f(L.ratio, 2)}`);
      console.log(`  background fill           ${f(F.MiBs)} MiB/s   raw SDK GET 1 MiB x${F.sdkInflight} ${f(F.sdkMiBs)} MiB/s   ratio ${f(F.sdkRatio, 2)}   (target 1.0)`);
      console.log(`                            raw ranged GET 512 KiB x${F.rawInflight} ${f(F.rawMiBs)} MiB/s   ratio ${f(F.ratio, 2)}`);
      for (const kind of ['contiguous', 'scattered'] as const) {
        const h = report.history[kind];
        console.log(`  restore 1st vs ${HISTORY}th (${kind.padEnd(10)})  ${f(h.firstSecs, 2)} s   ${f(h.lastSecs, 2)} s   ratio ${f(h.ratio, 2)}   (target 0.9-1.1; data packs read ${h.dataPacksFirst} vs ${h.dataPacksLast})`);
        if (POSITIONS.length > 2) console.log(`    by position            ${h.byPosition.map((x) => `#${x.position} ${f(x.secs, 2)} s`).join('   ')}`);
      }
      console.log('  where the time goes (daemon: ranged GETs, mean latency and size, GETs in flight on average, CPU of one core)');
      for (const [k, w] of Object.entries(report.work)) console.log(`    ${k.padEnd(22)} ${String(w.gets).padStart(5)} GETs   ${f(w.getMs)} ms   ${f(w.MiBPerGet, 2)} MiB   ${f(w.getsInFlight, 2)} in flight   CPU ${f(w.daemonCpu * 100, 0)}%`);
      console.log(`  daemon RSS                idle ${f(report.rss.idleMiB)} MiB   max during fill ${f(report.rss.fillMaxMiB)} MiB`);
    }
  } finally {
    await d?.stop();
    await pool.close();
    sdk.close();
    await store.close();
    await rm(work, { recursive: true, force: true });
  }
});
