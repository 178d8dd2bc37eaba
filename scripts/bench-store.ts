/**
 * Raw object store throughput: the yardstick island's upload and restore figures are
 * divided by. PUT and GET of 1 MiB objects (and 4 KiB for latency) at a fixed
 * concurrency, through the same S3 client island uses, against a real Swift.
 *
 *   npx tsx scripts/bench-store.ts [--swift swift.json] [--mib 256] [--concurrency 16]
 *       [--attach 1,100] [--reps 3] [--stores swift,fs] [--walk]
 *
 * Without --swift it starts a private Swift (scripts/swift.sh) and stops it after.
 * Prints MiB/s and request latency percentiles; `--json` for the report script.
 *
 * --attach N,...: the attach path against the same store, in units of one small GET of
 * the same run (p50 of sequential 4 KiB GETs just before): for a volume holding N
 * snapshots (10 per attach generation, each generation detached), the time from the
 * start of an attach by another host (repo/attach.ts acquireGeneration: catalog,
 * generations, claim, head) to its first read (cluster 0 of the restore base, through the
 * restore fetcher with a cold node cache), and how many store requests that took. On Swift
 * and on the embedded directory store (`--stores`); in this process, without the daemon,
 * its CLI or FUSE (bench-restore times those). Medians of `--reps` attaches. Each
 * generation detaches with a head record (the attach proves it and skips the walk);
 * `--walk` leaves them out, so the attach walks the chain as before they existed.
 *
 * --list N: `island snapshot list VOLUME` of one volume holding N snapshots (written here
 * under one generation: a first snapshot of one cluster, then N-1 that share its tree, as
 * a snapshot of a detached volume does), through a real daemon (`island serve`, this
 * tree's unless `--main A.js,B.js` names the CLIs of other builds, each its own daemon on
 * the same store), timed two ways: the control API's answer (GET /v1/snapshots?volume=,
 * in this process) and the CLI from exec to exit (`--json`). The daemon's store requests
 * per listing come from its /metrics. The baseline, in the same run and alternating with
 * the listings: one listing of the volume's manifests plus a raw GET of each, 16 at a
 * time (the daemon's store limit), straight on the backend (no retry, limit or metrics
 * wrapper). On Swift and the embedded store (`--stores`); medians of `--reps`.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { call } from '../src/cli/client.js';
import type { Manifest } from '../src/format/records.js';
import { acquireGeneration, releaseGeneration } from '../src/repo/attach.js';
import { commitSnapshot } from '../src/repo/commit.js';
import { Repository } from '../src/repo/repository.js';
import { treeFetcher } from '../src/snapshot/restore.js';
import { FsStore } from '../src/store/fs.js';
import { S3Store } from '../src/store/s3.js';
import { Semaphore } from '../src/store/limit.js';
import { keys } from '../src/repo/keys.js';
import { composeStore } from '../src/store/open.js';
import type { ObjectStore } from '../src/store/types.js';
import { withSwift } from './bench-swift.js';

const { values } = parseArgs({
  options: {
    swift: { type: 'string' },
    mib: { type: 'string', default: '256' },
    concurrency: { type: 'string', default: '16' },
    attach: { type: 'string' },
    list: { type: 'string' },
    main: { type: 'string' },
    reps: { type: 'string', default: '3' },
    stores: { type: 'string', default: 'swift,fs' },
    /** Detach without head records, so every attach walks the chain (the old path, for comparison). */
    walk: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

async function phase(n: number, conc: number, fn: (i: number) => Promise<void>): Promise<{ secs: number; lat: number[] }> {
  const sem = new Semaphore(conc);
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: n }, (_, i) => sem.run(async () => {
    const s = performance.now();
    await fn(i);
    lat.push(performance.now() - s);
  })));
  return { secs: (performance.now() - t0) / 1000, lat };
}

interface AttachFigure {
  store: string;
  snapshots: number;
  generations: number;
  smallGetP50ms: number;
  attachMs: number;
  firstReadMs: number;
  totalMs: number;
  /** totalMs in small GETs of the same run. */
  roundTrips: number;
  requests: number;
}

/** The attach path on `backend` for a volume of `n` snapshots (see the header). */
async function benchAttach(label: string, backend: () => ObjectStore, n: number): Promise<AttachFigure> {
  const { store: writerStore } = composeStore(backend(), { concurrency: 16 });
  const writer = new Repository(writerStore, { host: 'bench-writer' });
  const C = 64 * 1024;
  const name = `att-${n}-${Date.now().toString(36)}`;
  const now = Date.now();
  await writer.putVolume({ name, virtualSize: 1 << 30, clusterSize: C, region: writer.region, created: now, source: null, status: 'available', host: null, generation: 0, revision: 1 });
  let parent: Manifest | null = null;
  let generations = 0;
  for (let made = 0; made < n; ) {
    const att = await acquireGeneration(writer, name);
    generations++;
    parent = att.base;
    for (let k = 0; k < 10 && made < n; k++, made++) {
      const changes = [{ cluster: 0, data: randomBytes(C) }, { cluster: 1 + (made % 1000), data: randomBytes(C) }];
      parent = await commitSnapshot(writer, { volume: name, generation: att.generation, parent, imageLength: 1 << 30, clusterSize: C, consistency: 'crash', changes, windowMs: 3_600_000 });
    }
    // A clean detach names its chain's end (the head record) unless --walk measures the walk.
    await releaseGeneration(writer, name, att.generation, {}, values.walk ? null : parent);
  }
  await writer.store.put('rtt', randomBytes(4096));
  const lat: number[] = [];
  for (let i = 0; i < 20; i++) {
    const t = performance.now();
    await writer.store.get('rtt');
    lat.push(performance.now() - t);
  }
  await writerStore.close();

  // Another host, with a cold cache, attaches and reads the first cluster, then detaches;
  // `--reps` times (medians).
  const attachMs: number[] = [];
  const readMs: number[] = [];
  const reqs: number[] = [];
  for (let rep = 0; rep < Number(values.reps); rep++) {
    const { store, stats } = composeStore(backend(), { concurrency: 16 });
    const reader = new Repository(store, { host: 'bench-reader' });
    if (!(await reader.store.conditionalPut())) await reader.registerHost(); // the per-store probe, once per process in a daemon
    stats.reset();
    const t0 = performance.now();
    const att = await acquireGeneration(reader, name);
    const t1 = performance.now();
    if (!att.base) throw new Error('no restore base');
    await treeFetcher(reader, att.base).fetch(0, 1, new AbortController().signal);
    const t2 = performance.now();
    reqs.push(Object.values(stats.snapshot()).reduce((a, o) => a + o.requests, 0));
    attachMs.push(t1 - t0);
    readMs.push(t2 - t1);
    await releaseGeneration(reader, name, att.generation, {}, values.walk ? null : att.head.head);
    await store.close();
  }
  const t1 = pct(attachMs, 50);
  const t2 = pct(readMs, 50);
  const requests = pct(reqs, 50);
  const p50 = pct(lat, 50);
  return { store: label, snapshots: n, generations, smallGetP50ms: p50, attachMs: t1, firstReadMs: t2, totalMs: t1 + t2, roundTrips: (t1 + t2) / p50, requests };
}

async function attachFigures(cfg: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string } | undefined): Promise<AttachFigure[]> {
  const out: AttachFigure[] = [];
  const counts = (values.attach ?? '').split(',').filter(Boolean).map(Number);
  const stores = new Set(values.stores.split(','));
  const dir = await mkdtemp(join(tmpdir(), 'island-bench-attach-'));
  try {
    const bucket = `bench-att-${Date.now().toString(36)}`;
    for (const n of counts) {
      if (cfg && stores.has('swift')) out.push(await benchAttach('Swift', () => new S3Store({ ...cfg, bucket }), n));
      if (stores.has('fs')) out.push(await benchAttach('embedded directory store', () => new FsStore(join(dir, 'store')), n));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return out;
}

function printAttach(figs: AttachFigure[]): void {
  if (!figs.length) return;
  console.log('attach to first read (another host, cold cache), in small GETs of the same run');
  for (const f of figs) {
    console.log(
      `  ${f.store.padEnd(26)} ${String(f.snapshots).padStart(5)} snapshots (${f.generations} generations): attach ${f.attachMs.toFixed(1)} ms + first read ${f.firstReadMs.toFixed(1)} ms = ${f.totalMs.toFixed(1)} ms = ${f.roundTrips.toFixed(1)} small GETs (p50 ${f.smallGetP50ms.toFixed(2)} ms), ${f.requests} requests`,
    );
  }
}

interface ListFigure {
  store: string;
  snapshots: number;
  /** The CLI (its dist/cli/main.js) whose daemon listed. */
  main: string;
  apiMs: number;
  cliMs: number;
  /** Store requests of one listing through the daemon, by operation. */
  requests: Record<string, number>;
  baselineMs: number;
  baselineRequests: number;
  /** apiMs / baselineMs. */
  ratio: number;
  load: string;
}

const MAIN = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const runFile = promisify(execFile);
const loadText = (): string => loadavg().map((l) => l.toFixed(2)).join(' ');

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** The daemon's store requests so far, by operation (island_store_requests_total). */
async function storeRequests(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^island_store_requests_total\{op="([a-z_]+)"\} (\d+)/gm)) out[m[1] as string] = Number(m[2]);
  return out;
}

interface ListDaemon {
  main: string;
  env: NodeJS.ProcessEnv;
  port: number;
  child: ChildProcess;
  dir: string;
}

/** `island serve` of `main` on the store `storeEnv` names, with /metrics on a free port. */
async function startDaemon(main: string, i: number, storeEnv: Record<string, string>): Promise<ListDaemon> {
  const dir = await mkdtemp(join(tmpdir(), 'island-bench-list-'));
  const port = await freePort();
  const env = { ...process.env, ISLAND_DATA_DIR: dir, ISLAND_MOUNT: join(dir, 'mnt'), ISLAND_SOCKET: join(dir, 'island.sock'), ISLAND_HOST_ID: `bench-list-${i}`, ISLAND_LOG_LEVEL: 'warn', ISLAND_METRICS_PORT: String(port), ...storeEnv };
  const child = spawn(process.execPath, [main, 'serve'], { env, stdio: ['ignore', openSync(join(dir, 'daemon.log'), 'a'), openSync(join(dir, 'daemon.log'), 'a')] });
  const d = { main, env, port, child, dir };
  const deadline = Date.now() + 60_000;
  while (!existsSync(env.ISLAND_SOCKET)) {
    if (Date.now() > deadline || child.exitCode !== null) {
      const log = await readFile(join(dir, 'daemon.log'), 'utf8').catch(() => '');
      await stopDaemon(d);
      throw new Error(`the daemon of ${main} did not start: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return d;
}

async function stopDaemon(d: ListDaemon): Promise<void> {
  if (d.child.exitCode === null) {
    const done = new Promise((r) => d.child.once('exit', r));
    d.child.kill('SIGTERM');
    await done;
  }
  await rm(d.dir, { recursive: true, force: true });
}

/** N snapshots of one volume under one generation (see the header); their ids. */
async function writeHistory(backend: ObjectStore, name: string, n: number): Promise<string[]> {
  const { store } = composeStore(backend, { concurrency: 16 });
  const repo = new Repository(store, { host: 'bench-writer' });
  const C = 64 * 1024;
  await repo.putVolume({ name, virtualSize: 1 << 30, clusterSize: C, region: repo.region, created: Date.now(), source: null, status: 'available', host: null, generation: 0, revision: 1 });
  const att = await acquireGeneration(repo, name);
  const ids: string[] = [];
  let parent: Manifest | null = null;
  for (let i = 0; i < n; i++) {
    parent = await commitSnapshot(repo, { volume: name, generation: att.generation, parent, imageLength: 1 << 30, clusterSize: C, consistency: 'crash', changes: i === 0 ? [{ cluster: 0, data: randomBytes(C) }] : [], windowMs: 3_600_000 });
    ids.push(parent.id);
  }
  await releaseGeneration(repo, name, att.generation);
  await store.close();
  return ids;
}

/** The baseline: list the volume's manifests, GET each, 16 at a time, on the bare backend. */
async function rawListing(backend: ObjectStore, name: string): Promise<{ ms: number; requests: number }> {
  const t0 = performance.now();
  const sem = new Semaphore(16);
  const gets: Promise<void>[] = [];
  let requests = 0;
  let startAfter: string | undefined;
  do {
    const page = await backend.list(keys.manifestsPrefix(name), { startAfter });
    requests++;
    for (const o of page.items) {
      await sem.acquire();
      requests++;
      gets.push(backend.get(o.key).then(() => sem.release(), (err: unknown) => { sem.release(); throw err; }));
    }
    startAfter = page.next;
  } while (startAfter !== undefined);
  await Promise.all(gets);
  return { ms: performance.now() - t0, requests };
}

async function benchList(label: string, backend: () => ObjectStore, storeEnv: Record<string, string>, n: number): Promise<ListFigure[]> {
  const name = `list-${n}-${Date.now().toString(36)}`;
  const t0 = performance.now();
  const ids = await writeHistory(backend(), name, n);
  console.error(`${label}: ${n} snapshots written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const mains = values.main ? values.main.split(',') : [MAIN];
  const daemons: ListDaemon[] = [];
  const raw = backend();
  try {
    for (const [i, main] of mains.entries()) daemons.push(await startDaemon(main, i, storeEnv));
    const api = (d: ListDaemon): Promise<{ snapshots: { id: string }[] }> => call(d.env.ISLAND_SOCKET as string, 'GET', `/v1/snapshots?volume=${name}`) as Promise<{ snapshots: { id: string }[] }>;
    // A first listing of each (connections, JIT), and a check that each lists every snapshot.
    for (const d of daemons) {
      const got = (await api(d)).snapshots.map((s) => s.id);
      if (got.length !== n || got.some((id, i) => id !== ids[i])) throw new Error(`${d.main} listed ${got.length} snapshots, not the ${n} written`);
    }
    await rawListing(raw, name);
    const apiMs = daemons.map(() => [] as number[]);
    const cliMs = daemons.map(() => [] as number[]);
    const reqs = daemons.map(() => [] as Record<string, number>[]);
    const base: number[] = [];
    let baseRequests = 0;
    for (let rep = 0; rep < Number(values.reps); rep++) {
      const b = await rawListing(raw, name);
      base.push(b.ms);
      baseRequests = b.requests;
      for (const [i, d] of daemons.entries()) {
        const before = await storeRequests(d.port);
        const t1 = performance.now();
        await api(d);
        apiMs[i]?.push(performance.now() - t1);
        const after = await storeRequests(d.port);
        reqs[i]?.push(Object.fromEntries(Object.entries(after).map(([op, c]) => [op, c - (before[op] ?? 0)]).filter(([, c]) => (c as number) > 0)));
        const t2 = performance.now();
        // Each build lists with its own CLI.
        const out = await runFile(process.execPath, [d.main, 'snapshot', 'list', name, '--json'], { env: d.env, maxBuffer: 64 << 20 });
        cliMs[i]?.push(performance.now() - t2);
        if ((JSON.parse(out.stdout) as { snapshots: unknown[] }).snapshots.length !== n) throw new Error('the CLI listed another number of snapshots');
      }
    }
    const baselineMs = pct(base, 50);
    return daemons.map((d, i) => ({
      store: label,
      snapshots: n,
      main: d.main,
      apiMs: pct(apiMs[i] ?? [], 50),
      cliMs: pct(cliMs[i] ?? [], 50),
      requests: reqs[i]?.at(-1) ?? {},
      baselineMs,
      baselineRequests: baseRequests,
      ratio: pct(apiMs[i] ?? [], 50) / baselineMs,
      load: loadText(),
    }));
  } finally {
    for (const d of daemons) await stopDaemon(d);
    await raw.close();
  }
}

async function listFigures(cfg: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string } | undefined): Promise<ListFigure[]> {
  const out: ListFigure[] = [];
  const counts = (values.list ?? '').split(',').filter(Boolean).map(Number);
  const stores = new Set(values.stores.split(','));
  const dir = await mkdtemp(join(tmpdir(), 'island-bench-list-store-'));
  try {
    const bucket = `bench-list-${Date.now().toString(36)}`;
    const config = join(dir, 'island.json');
    if (cfg) await writeFile(config, JSON.stringify({ region: 'swift', regions: { swift: { type: 's3', ...cfg, bucket } } }));
    for (const n of counts) {
      if (cfg && stores.has('swift')) out.push(...(await benchList('Swift', () => new S3Store({ ...cfg, bucket }), { ISLAND_CONFIG: config }, n)));
      if (stores.has('fs')) out.push(...(await benchList('embedded directory store', () => new FsStore(join(dir, 'store')), { ISLAND_STORE_DIR: join(dir, 'store'), ISLAND_CONFIG: '' }, n)));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return out;
}

function printList(figs: ListFigure[]): void {
  console.log(`snapshot list of one volume, through the daemon, against one listing + a raw GET of each manifest (16 at a time); medians of ${values.reps}`);
  for (const f of figs) {
    const reqs = Object.entries(f.requests).map(([op, c]) => `${c} ${op}`).join(', ');
    console.log(`  ${f.store.padEnd(26)} ${f.snapshots} snapshots  ${f.main}`);
    console.log(`    control API ${f.apiMs.toFixed(0)} ms, CLI (exec to exit) ${f.cliMs.toFixed(0)} ms; baseline ${f.baselineMs.toFixed(0)} ms; API / baseline ${f.ratio.toFixed(2)}; requests ${reqs} (baseline ${f.baselineRequests}); load ${f.load}`);
  }
}

if ((values.attach || values.list) && !values.stores.split(',').includes('swift')) {
  console.error(`load average: ${loadText()}`);
  const figs = values.list ? await listFigures(undefined) : await attachFigures(undefined);
  if (values.json) console.log(JSON.stringify(values.list ? { list: figs } : { attach: figs }));
  else if (values.list) printList(figs as ListFigure[]);
  else printAttach(figs as AttachFigure[]);
  process.exit(0);
}

await withSwift(values.swift, async (cfg) => {
  if (values.list) {
    console.error(`load average: ${loadText()}`);
    const figs = await listFigures(cfg);
    if (values.json) console.log(JSON.stringify({ list: figs }));
    else printList(figs);
    return;
  }
  if (values.attach) {
    const figs = await attachFigures(cfg);
    if (values.json) console.log(JSON.stringify({ attach: figs }));
    else printAttach(figs);
    return;
  }
  const conc = Number(values.concurrency);
  const n = Number(values.mib);
  const store = new S3Store({ ...cfg, bucket: `bench-${Date.now().toString(36)}`, maxSockets: conc });
  const body = randomBytes(1 << 20);
  const small = randomBytes(4096);
  await store.put('warmup', small);
  const put = await phase(n, conc, (i) => store.put(`mib/${i}`, body));
  const get = await phase(n, conc, async (i) => void (await store.get(`mib/${i}`)));
  const range = await phase(n, conc, async (i) => void (await store.getRange(`mib/${i}`, 65536, 512 * 1024)));
  const sput = await phase(400, conc, (i) => store.put(`small/${i}`, small));
  const sget = await phase(400, conc, async (i) => void (await store.get(`small/${i}`)));
  const report = {
    client: '@aws-sdk/client-s3 (as island uses it)',
    concurrency: conc,
    putMiBs: n / put.secs,
    getMiBs: n / get.secs,
    rangeGet512KiBMiBs: (n * 0.5) / range.secs,
    put4kP50ms: pct(sput.lat, 50),
    put4kP99ms: pct(sput.lat, 99),
    get4kP50ms: pct(sget.lat, 50),
    get4kP99ms: pct(sget.lat, 99),
  };
  const keys = [...Array.from({ length: n }, (_, i) => `mib/${i}`), ...Array.from({ length: 400 }, (_, i) => `small/${i}`), 'warmup'];
  await store.deleteMany(keys);
  await store.close();
  if (values.json) console.log(JSON.stringify(report));
  else {
    console.log(`raw Swift S3 throughput, ${report.client}, concurrency ${conc}, ${n} x 1 MiB`);
    console.log(`  PUT 1 MiB          ${report.putMiBs.toFixed(1)} MiB/s`);
    console.log(`  GET 1 MiB          ${report.getMiBs.toFixed(1)} MiB/s`);
    console.log(`  GET 512 KiB range  ${report.rangeGet512KiBMiBs.toFixed(1)} MiB/s`);
    console.log(`  PUT 4 KiB          p50 ${report.put4kP50ms.toFixed(1)} ms  p99 ${report.put4kP99ms.toFixed(1)} ms`);
    console.log(`  GET 4 KiB          p50 ${report.get4kP50ms.toFixed(1)} ms  p99 ${report.get4kP99ms.toFixed(1)} ms`);
  }
});
