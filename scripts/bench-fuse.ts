/**
 * FUSE data path throughput: the same fio workloads, in one run, on
 *   local               a plain file in the bench directory (the disk island's data dir is on)
 *   passthrough         that kind of file through scripts/passthrough-fs.ts, a minimal fuse-native
 *                       passthrough that keeps O_DIRECT on its backing file: the binding's ceiling
 *   passthrough-cached  the same passthrough with O_DIRECT stripped, every file in the page
 *                       cache: what island's engine does with its image file
 *   island              a volume's `<name>.qcow2` on island's own mount (`island serve`) as the
 *                       daemon serves it by default: island's native FUSE server (native/fuse/)
 *                       with the volume on the native write path (native/volume/), C alone
 *   island-fuse-native  the same volume, served by the fuse-native transport (ISLAND_FUSE=
 *                       fuse-native), which calls the native write path through the addon
 *   island-typescript   the native server with the TypeScript write path (ISLAND_WRITE_PATH=
 *                       typescript): every request crosses to JavaScript
 * and, when asked for with --targets, qemu-storage-daemon's own FUSE export (C, libfuse3) of
 * such a file as a raw image, aio=threads:
 *   qsd                 cache.direct=on: O_DIRECT kept on the backing file, as `passthrough`
 *   qsd-cached          cache.direct=off: the backing file in the page cache, as `passthrough-cached`
 *
 *   npx tsc -p . && npx tsx scripts/bench-fuse.ts [--size 2G] [--runtime 5] [--reps 3]
 *       [--ramp 1] [--dir DIR] [--targets local,passthrough,...] [--no-libaio] [--keep-servers] [--json]
 *
 * Workloads (fio, direct=1, on [DATA_OFFSET, DATA_OFFSET + size) of each file, filled with
 * fio's random data first): sequential 1 MiB write and read from one thread; 4 KiB random
 * read and write from 16 psync threads, the way QEMU's aio=threads issues guest I/O;
 * and 4 KiB random read and write from one libaio job at queue depth 16 (off with --no-libaio).
 * Runs are time-based and interleaved: every rep runs every workload on every target, in a
 * random order of targets each time; the table shows medians over the reps.
 *
 * Every run gets a freshly started server, so no figure depends on what ran before it: on a
 * heavily loaded machine, long-lived fuse-native servers were seen to slow down several-fold
 * over minutes while fresh ones did not (docs/benchmarks/fuse.md). --keep-servers keeps one
 * server per target for the whole bench, to measure exactly that.
 *
 * Each file system is served by its own child process, in its own process group (a Ctrl-C
 * stops fio and this script, which then stops the servers itself). Everything is removed in
 * the end, on error and on SIGINT/SIGTERM alike. Needs root (FUSE mounts), fio, and a built
 * island (`npx tsc -p .`). After a SIGKILL of this script: `umount -l DIR/island-bench-fuse-*
 * /{pt,ptc,island}-mnt` (and the `qsd*-export.img` files beside them) and stop the
 * `passthrough-fs.ts` / `main.js serve` / `qemu-storage-daemon` processes left.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { acquireGeneration } from '../src/repo/attach.js';
import { Repository } from '../src/repo/repository.js';
import { FsStore } from '../src/store/fs.js';
import { Volume } from '../src/volume/engine.js';

const run = promisify(execFile);
const ROOT = dirname(import.meta.dirname);

/** Where fio's region starts in every file: past the qcow2 header, L1 table and refcount
 *  clusters island writes at create (a few 64 KiB clusters), so the island file keeps them. */
const DATA_OFFSET = 16 * 2 ** 20;
const MIB = 2 ** 20;
const VOLUME = 'bench';
/** A server has this long to mount. */
const MOUNT_DEADLINE_MS = 30_000;
/**
 * Stopping a server: SIGTERM; again if it still runs (island refuses the first one while a
 * file is open, and the kernel may not have sent fio's last release yet; a second one
 * forces); then SIGKILL. Each step waits this long for the exit.
 */
const STOP_STEPS: ReadonlyArray<readonly [NodeJS.Signals, number]> = [['SIGTERM', 5_000], ['SIGTERM', 15_000], ['SIGKILL', 5_000]];
const POLL_MS = 50;
/** Lines of a server's output kept to show when it fails. */
const TAIL_LINES = 40;
/** fio's JSON for 16 jobs is small; this only bounds a runaway. */
const FIO_MAX_OUTPUT = 64 * MIB;
const P99 = '99.000000';

/** Aborted by SIGINT/SIGTERM: every wait and the running fio stop, the finally blocks clean up. */
const abort = new AbortController();

const USAGE = `usage: npx tsx scripts/bench-fuse.ts [options]   (run npx tsc -p . first)
  --size N       bytes of each file fio works on, K/M/G suffixes (default 2G)
  --runtime S    seconds measured per run (default 5)
  --ramp S       seconds run before measuring starts (default 1)
  --reps N       interleaved repetitions; the table shows medians (default 3)
  --dir DIR      where the files and mounts go, in a fresh subdirectory (default ${tmpdir()})
  --targets L    comma list of local,passthrough,passthrough-cached,island,island-fuse-native,
                 island-typescript,
                 qsd,qsd-cached (default: the first five; qsd* need qemu-storage-daemon)
  --no-libaio    leave out 4 KiB random read/write with libaio at queue depth 16
  --keep-servers one server per target for the whole bench instead of a fresh one per run
                 (see docs/benchmarks/fuse.md on long-lived servers)
  --json         print one JSON object instead of tables
`;

type TargetId = 'local' | 'passthrough' | 'passthrough-cached' | 'island' | 'island-fuse-native' | 'island-typescript' | 'qsd' | 'qsd-cached';
const TARGET_IDS: readonly TargetId[] = ['local', 'passthrough', 'passthrough-cached', 'island', 'island-fuse-native', 'island-typescript', 'qsd', 'qsd-cached'];
const DEFAULT_TARGETS: readonly TargetId[] = ['local', 'passthrough', 'passthrough-cached', 'island', 'island-fuse-native'];
const QSD = 'qemu-storage-daemon';

interface Workload {
  id: string;
  label: string;
  metric: 'MB/s' | 'IOPS';
  rw: 'write' | 'read' | 'randwrite' | 'randread';
  bs: string;
  ioengine: 'psync' | 'libaio';
  numjobs: number;
  iodepth: number;
}

const WORKLOADS: Workload[] = [
  { id: 'seqwrite', label: 'seq write 1 MiB', metric: 'MB/s', rw: 'write', bs: '1M', ioengine: 'psync', numjobs: 1, iodepth: 1 },
  { id: 'seqread', label: 'seq read 1 MiB', metric: 'MB/s', rw: 'read', bs: '1M', ioengine: 'psync', numjobs: 1, iodepth: 1 },
  { id: 'randread', label: 'randread 4k, 16 psync threads', metric: 'IOPS', rw: 'randread', bs: '4k', ioengine: 'psync', numjobs: 16, iodepth: 1 },
  { id: 'randwrite', label: 'randwrite 4k, 16 psync threads', metric: 'IOPS', rw: 'randwrite', bs: '4k', ioengine: 'psync', numjobs: 16, iodepth: 1 },
];
const LIBAIO_WORKLOADS: Workload[] = [
  { id: 'randread-qd16', label: 'randread 4k, libaio qd16', metric: 'IOPS', rw: 'randread', bs: '4k', ioengine: 'libaio', numjobs: 1, iodepth: 16 },
  { id: 'randwrite-qd16', label: 'randwrite 4k, libaio qd16', metric: 'IOPS', rw: 'randwrite', bs: '4k', ioengine: 'libaio', numjobs: 1, iodepth: 16 },
];

interface Sample {
  rep: number;
  /** Position of this run among the targets' runs of one workload in one rep. */
  slot: number;
  workload: string;
  target: TargetId;
  value: number;
  p99ms: number;
  /** CPU time of the serving process over the run, in % of one core (null: no server). */
  serverCpuPct: number | null;
  /** The 1-minute load average when the run ended (the machine may be shared). */
  load1: number;
}

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)i?B?$/i.exec(s.trim());
  const unit = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[(m?.[2] ?? '').toUpperCase()];
  const n = m?.[1] !== undefined && unit !== undefined ? Math.round(Number(m[1]) * unit) : NaN;
  if (!Number.isSafeInteger(n) || n < MIB || n % MIB !== 0) throw new Error(`--size must be a whole number of MiB, at least 1M: ${s}`);
  return n;
}

function positive(s: string, what: string): number {
  const n = Number(s);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${what} must be a positive number: ${s}`);
  return n;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function shuffled<T>(xs: readonly T[]): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** /proc/mounts writes space, tab, newline and backslash as octal escapes. */
function mountsEscape(path: string): string {
  return path.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
}

async function isMounted(path: string): Promise<boolean> {
  const want = mountsEscape(path);
  return (await readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === want);
}

/** A file server in its own process group, its output drained (a full pipe would stall it). */
class Server {
  private readonly tail: string[] = [];
  private exitCode: number | string | null = null;
  private stopping = false;
  private readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    readonly mountpoint: string,
    private readonly proc: ChildProcess,
  ) {
    const keep = (chunk: Buffer): void => {
      for (const line of chunk.toString('utf8').split('\n')) if (line) this.tail.push(line);
      this.tail.splice(0, Math.max(0, this.tail.length - TAIL_LINES));
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        this.exitCode = code ?? signal;
        if (!this.stopping) process.stderr.write(`bench-fuse: ${name} server (pid ${proc.pid}) exited on its own: ${String(this.exitCode)}\n`);
        resolve();
      });
      proc.on('error', (err) => {
        this.exitCode = err.message;
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.exitCode === null;
  }

  describe(): string {
    return `${this.name} server (pid ${this.pid}, exit ${String(this.exitCode ?? 'none yet')}); last output:\n  ${this.tail.join('\n  ')}`;
  }

  async waitMounted(signal: AbortSignal): Promise<void> {
    const deadline = Date.now() + MOUNT_DEADLINE_MS;
    for (;;) {
      signal.throwIfAborted();
      if (!this.running) throw new Error(`${this.describe()}`);
      if (await isMounted(this.mountpoint)) return;
      if (Date.now() > deadline) throw new Error(`${this.name} did not mount ${this.mountpoint} within ${MOUNT_DEADLINE_MS} ms: ${this.describe()}`);
      await sleep(POLL_MS);
    }
  }

  private async waitExit(ms: number): Promise<boolean> {
    if (!this.running) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const ok = await Promise.race([this.exited.then(() => true as const), timeout]);
    clearTimeout(timer);
    return ok;
  }

  /** Stop the server (STOP_STEPS); returns once it exited, or after the last step. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const [sig, ms] of STOP_STEPS) {
      if (!this.running) return;
      this.proc.kill(sig);
      if (await this.waitExit(ms)) return;
      process.stderr.write(`bench-fuse: ${this.name} server still running ${ms} ms after ${sig}\n`);
    }
  }

  /** Throws unless the server runs and its mount is there (fio would see the empty directory). */
  async check(): Promise<void> {
    if (!this.running) throw new Error(`the ${this.describe()}`);
    if (!(await isMounted(this.mountpoint))) throw new Error(`${this.mountpoint} is no longer mounted; ${this.describe()}`);
  }

  /** Utime + stime of the server so far, in clock ticks. */
  async cpuTicks(): Promise<number | null> {
    if (this.pid === undefined || !this.running) return null;
    const text = await readFile(`/proc/${this.pid}/stat`, 'utf8').catch(() => null);
    // Split after the command name (which may hold spaces): rest[0] is field 3 (state), so
    // utime and stime, fields 14 and 15, are rest[11] and rest[12].
    const rest = text?.slice(text.lastIndexOf(')') + 2).split(' ');
    return rest ? Number(rest[11]) + Number(rest[12]) : null;
  }
}

/** A child environment without the caller's island settings; same libuv pool for every server. */
function serverEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ISLAND_')) env[k] = v;
  return { ...env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '32', ...extra };
}

function spawnServer(name: string, mountpoint: string, args: string[], env: NodeJS.ProcessEnv, cmd = process.execPath): Server {
  const proc = spawn(cmd, args, { cwd: ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  return new Server(name, mountpoint, proc);
}

/** QEMU's option syntax: a comma inside a value is written twice. */
function qemuValue(s: string): string {
  return s.replace(/,/g, ',,');
}

interface FioResult {
  value: number;
  p99ms: number;
}

async function fio(w: Workload, file: string, size: number, timed: { runtime: number; ramp: number } | null, signal: AbortSignal): Promise<FioResult> {
  const args = [
    `--name=${w.id}`, `--filename=${file}`, `--offset=${DATA_OFFSET}`, `--size=${size}`,
    `--rw=${w.rw}`, `--bs=${w.bs}`, `--ioengine=${w.ioengine}`, `--numjobs=${w.numjobs}`, `--iodepth=${w.iodepth}`,
    '--direct=1', '--thread', '--group_reporting', '--randrepeat=0', '--norandommap',
    // The file is laid out beforehand: fio must neither create, unlink nor fallocate it.
    '--allow_file_create=0', '--fallocate=none', '--output-format=json',
  ];
  if (timed) args.push('--time_based', `--runtime=${timed.runtime}`, `--ramp_time=${timed.ramp}`);
  const { stdout } = await run('fio', args, { signal, maxBuffer: FIO_MAX_OUTPUT });
  const out = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { bw_bytes: number; iops: number; clat_ns?: { percentile?: Record<string, number> } }> & { error: number }> };
  const job = out.jobs[0];
  if (!job || job.error !== 0) throw new Error(`fio ${w.id} on ${file} failed: error ${job?.error}`);
  const dir = w.rw.endsWith('write') ? job.write : job.read;
  return { value: w.metric === 'MB/s' ? dir.bw_bytes / 1e6 : dir.iops, p99ms: (dir.clat_ns?.percentile?.[P99] ?? NaN) / 1e6 };
}

async function uptime(): Promise<string> {
  return (await run('uptime')).stdout.trim();
}

async function toolVersion(cmd: string, args: string[]): Promise<string> {
  return (await run(cmd, args)).stdout.trim();
}

interface Target {
  id: TargetId;
  /** The file fio opens. */
  file: string;
  /** How to start this target's server; null for the plain local file. */
  spawn: (() => Server) | null;
  server: Server | null;
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return '-';
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(n >= 10 ? 1 : 2);
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '2G' },
      runtime: { type: 'string', default: '5' },
      ramp: { type: 'string', default: '1' },
      reps: { type: 'string', default: '3' },
      dir: { type: 'string', default: tmpdir() },
      targets: { type: 'string', default: DEFAULT_TARGETS.join(',') },
      'no-libaio': { type: 'boolean', default: false },
      'keep-servers': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const size = parseSize(values.size);
  const runtime = positive(values.runtime, '--runtime');
  const ramp = Number(values.ramp);
  if (!(ramp >= 0)) throw new Error(`--ramp must be zero or more seconds: ${values.ramp}`);
  const reps = Math.round(positive(values.reps, '--reps'));
  const wanted = values.targets.split(',').map((s) => s.trim()).filter(Boolean);
  for (const t of wanted) if (!TARGET_IDS.includes(t as TargetId)) throw new Error(`unknown target ${t} (one of ${TARGET_IDS.join(', ')})`);
  const targetIds = TARGET_IDS.filter((t) => wanted.includes(t));
  const fresh = !values['keep-servers'];
  const workloads = values['no-libaio'] ? WORKLOADS : [...WORKLOADS, ...LIBAIO_WORKLOADS];
  const say = (s: string): void => void process.stderr.write(s + '\n');

  const fioVersion = await toolVersion('fio', ['--version']).catch(() => {
    throw new Error('fio is not installed (Debian: apt-get install --no-install-recommends fio)');
  });
  const qsdVersion = targetIds.some((t) => t.startsWith('qsd'))
    ? (await toolVersion(QSD, ['--version']).catch(() => {
        throw new Error(`${QSD} is not installed (Debian: apt-get install --no-install-recommends qemu-system-common)`);
      })).split('\n')[0]
    : null;
  if (targetIds.some((t) => t.startsWith('island'))) {
    await access(join(ROOT, 'dist/cli/main.js')).catch(() => {
      throw new Error('dist/cli/main.js is missing: run npx tsc -p . first');
    });
  }

  const onSignal = (sig: NodeJS.Signals): void => {
    if (abort.signal.aborted) return;
    say(`\nbench-fuse: ${sig}, stopping and cleaning up`);
    abort.abort(new Error(`interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  await mkdir(values.dir, { recursive: true });
  const work = await mkdtemp(join(values.dir, 'island-bench-fuse-'));
  /** Every server started and every mountpoint used: the finally block goes through them all. */
  const servers: Server[] = [];
  const mountpoints: string[] = [];
  const start = async (t: Target): Promise<void> => {
    if (!t.spawn || t.server?.running) return;
    const server = t.spawn();
    servers.push(server);
    t.server = server;
    if (!fresh) say(`bench-fuse: ${t.id} server is pid ${server.pid}, mount ${server.mountpoint}`);
    await server.waitMounted(abort.signal);
  };
  const stop = async (t: Target): Promise<void> => {
    const server = t.server;
    if (!server) return;
    t.server = null;
    await server.stop();
    if (await isMounted(server.mountpoint)) throw new Error(`${server.mountpoint} is still mounted after its server stopped; ${server.describe()}`);
  };
  const loadStart = await uptime();
  say(`bench-fuse: ${work}; ${size / MIB} MiB files, ${runtime} s runs (+${ramp} s ramp), ${reps} reps, ${fresh ? 'a fresh server for every run' : 'one server per target for the whole bench'}`);
  say(`load at start: ${loadStart}`);
  const samples: Sample[] = [];
  try {
    const fsType = (await run('findmnt', ['-no', 'FSTYPE,SOURCE', '-T', work]).catch(() => ({ stdout: '?' }))).stdout.trim().replace(/\s+/g, ' ');
    const targets: Target[] = [];
    const fileLength = DATA_OFFSET + size;
    /** A sparse file of the full length, so fio lays nothing out. */
    const plainFile = async (dir: string): Promise<string> => {
      await mkdir(dir, { recursive: true });
      const file = join(dir, 'bench.img');
      await writeFile(file, '');
      await truncate(file, fileLength);
      return file;
    };
    for (const id of targetIds) {
      abort.signal.throwIfAborted();
      if (id === 'local') {
        targets.push({ id, file: await plainFile(join(work, 'local')), spawn: null, server: null });
      } else if (id === 'passthrough' || id === 'passthrough-cached') {
        const tag = id === 'passthrough' ? 'pt' : 'ptc';
        await plainFile(join(work, `${tag}-backing`));
        const mnt = join(work, `${tag}-mnt`);
        mountpoints.push(mnt);
        const args = ['--import', 'tsx', join(ROOT, 'scripts/passthrough-fs.ts'), '--backing', join(work, `${tag}-backing`), '--mount', mnt];
        if (id === 'passthrough-cached') args.push('--cached');
        targets.push({ id, file: join(mnt, 'bench.img'), spawn: () => spawnServer(id, mnt, args, serverEnv({})), server: null });
      } else if (id === 'qsd' || id === 'qsd-cached') {
        // The export's mountpoint is a regular file: the image itself appears there.
        const backing = await plainFile(join(work, `${id}-backing`));
        const mnt = join(work, `${id}-export.img`);
        await writeFile(mnt, '');
        mountpoints.push(mnt);
        const args = [
          '--blockdev', `driver=file,node-name=f0,filename=${qemuValue(backing)},cache.direct=${id === 'qsd' ? 'on' : 'off'},aio=threads`,
          '--export', `type=fuse,id=e0,node-name=f0,mountpoint=${qemuValue(mnt)},writable=on`,
        ];
        targets.push({ id, file: mnt, spawn: () => spawnServer(id, mnt, args, serverEnv({}), QSD), server: null });
      } else {
        const dataDir = join(work, `${id}-data`);
        const mnt = join(work, `${id}-mnt`);
        mountpoints.push(mnt);
        // As an attach leaves it (a catalog record, a generation won in the store): a volume
        // the daemon cannot prove its own is served read-only.
        const store = new FsStore(join(dataDir, 'store'));
        try {
          const repo = new Repository(store, { host: 'bench', region: 'default' });
          await repo.putVolume({ name: VOLUME, virtualSize: fileLength, clusterSize: 65536, region: 'default', created: repo.now(), source: null, status: 'available', host: null, generation: 0, revision: 1 });
          const att = await acquireGeneration(repo, VOLUME);
          const vol = await Volume.create(join(dataDir, 'volumes', VOLUME), { name: VOLUME, virtualSize: fileLength, generation: att.generation });
          await vol.close();
        } finally {
          await store.close();
        }
        // `island` is the daemon's default (native server insisted on, native write path).
        const paths: Record<string, string> = id === 'island-fuse-native' ? { ISLAND_FUSE: 'fuse-native' } : id === 'island-typescript' ? { ISLAND_FUSE: 'native', ISLAND_WRITE_PATH: 'typescript' } : { ISLAND_FUSE: 'native' };
        const env = serverEnv({ ISLAND_DATA_DIR: dataDir, ISLAND_MOUNT: mnt, ISLAND_HOST_ID: 'bench', ISLAND_LOG_LEVEL: 'info', ...paths });
        const t: Target = { id, file: join(mnt, `${VOLUME}.qcow2`), spawn: () => spawnServer(id, mnt, [join(ROOT, 'dist/cli/main.js'), 'serve'], env), server: null };
        await start(t);
        const header = (await stat(t.file)).size;
        if (header > DATA_OFFSET) throw new Error(`island's new image is ${header} bytes, past the data offset ${DATA_OFFSET}`);
        await truncate(t.file, fileLength);
        targets.push(t);
      }
    }

    const fill: Workload = { id: 'fill', label: 'fill', metric: 'MB/s', rw: 'write', bs: '1M', ioengine: 'psync', numjobs: 1, iodepth: 1 };
    for (const t of targets) {
      await start(t);
      await t.server?.check();
      const r = await fio(fill, t.file, size, null, abort.signal);
      say(`fill ${t.id}: ${fmt(r.value)} MB/s`);
      if (fresh) await stop(t);
    }

    const ticksPerSec = Number((await run('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
    for (let rep = 1; rep <= reps; rep++) {
      for (const w of workloads) {
        // A fresh random order each time: a target must not always follow the same one (a
        // disk still busy with the local file's writes would slow whichever comes next).
        const order = shuffled(targets);
        for (const [slot, t] of order.entries()) {
          abort.signal.throwIfAborted();
          await start(t);
          await t.server?.check();
          const cpu0 = await t.server?.cpuTicks();
          const t0 = performance.now();
          const r = await fio(w, t.file, size, { runtime, ramp }, abort.signal).catch(async (err: unknown) => {
            await t.server?.check();
            throw err;
          });
          const secs = (performance.now() - t0) / 1000;
          const cpu1 = await t.server?.cpuTicks();
          abort.signal.throwIfAborted();
          if (fresh) await stop(t);
          // The server's CPU over the whole fio run, ramp included.
          const serverCpuPct = cpu0 != null && cpu1 != null ? ((cpu1 - cpu0) / ticksPerSec / secs) * 100 : null;
          samples.push({ rep, slot, workload: w.id, target: t.id, value: r.value, p99ms: r.p99ms, serverCpuPct, load1: loadavg()[0] ?? NaN });
          say(`rep ${rep}/${reps} ${w.id.padEnd(14)} ${t.id.padEnd(18)} ${fmt(r.value).padStart(8)} ${w.metric}  p99 ${fmt(r.p99ms)} ms${serverCpuPct === null ? '' : `  server cpu ${Math.round(serverCpuPct)}%`}`);
        }
      }
    }

    const loadEnd = await uptime();
    say(`load at end: ${loadEnd}`);
    const pick = (w: string, t: TargetId, f: (s: Sample) => number | null): number => {
      const xs = samples.filter((s) => s.workload === w && s.target === t).map(f).filter((x): x is number => x !== null);
      return median(xs);
    };
    const ratios: Array<[string, TargetId, TargetId]> = [
      ['island/passthrough', 'island', 'passthrough'],
      ['island/passthrough-cached', 'island', 'passthrough-cached'],
      ['island/local', 'island', 'local'],
      ['island/qsd-cached', 'island', 'qsd-cached'],
      ['island/island-fuse-native', 'island', 'island-fuse-native'],
      ['island/island-typescript', 'island', 'island-typescript'],
      ['qsd/passthrough', 'qsd', 'passthrough'],
    ];
    const usedRatios = ratios.filter(([, a, b]) => targetIds.includes(a) && targetIds.includes(b));
    const summary = workloads.map((w) => ({
      workload: w.id,
      label: w.label,
      metric: w.metric,
      median: Object.fromEntries(targetIds.map((t) => [t, pick(w.id, t, (s) => s.value)])),
      p99ms: Object.fromEntries(targetIds.map((t) => [t, pick(w.id, t, (s) => s.p99ms)])),
      serverCpuPct: Object.fromEntries(targetIds.filter((t) => t !== 'local').map((t) => [t, pick(w.id, t, (s) => s.serverCpuPct)])),
      ratios: Object.fromEntries(usedRatios.map(([name, a, b]) => [name, pick(w.id, a, (s) => s.value) / pick(w.id, b, (s) => s.value)])),
    }));

    if (values.json) {
      const machine = { cpus: cpus().length, memGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version, fio: fioVersion, qsd: qsdVersion, fs: fsType, loadStart, loadEnd, loadavgEnd: loadavg() };
      const params = { size, dataOffset: DATA_OFFSET, runtime, ramp, reps, targets: targetIds, freshServers: fresh, direct: true, uvThreadpoolSize: serverEnv({}).UV_THREADPOOL_SIZE };
      process.stdout.write(JSON.stringify({ machine, params, summary, samples }) + '\n');
    } else {
      const head = ['workload (median)', ...targetIds, ...usedRatios.map(([n]) => n)];
      const rows = summary.map((s) => [`${s.label} (${s.metric})`, ...targetIds.map((t) => fmt(s.median[t] ?? NaN)), ...usedRatios.map(([n]) => (s.ratios[n] ?? NaN).toFixed(2))]);
      const servedIds = targetIds.filter((t) => t !== 'local');
      const spread = workloads.map((w) => [
        w.label,
        ...targetIds.map((t) => {
          const xs = samples.filter((x) => x.workload === w.id && x.target === t).map((x) => x.value);
          return `${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}`;
        }),
      ]);
      const lat = summary.map((s) => [s.label, ...targetIds.map((t) => fmt(s.p99ms[t] ?? NaN))]);
      const cpu = summary.map((s) => [s.label, ...servedIds.map((t) => `${Math.round(s.serverCpuPct[t] ?? NaN)}%`)]);
      process.stdout.write(
        `\n${fioVersion}, direct=1, ${size / MIB} MiB per file, ${runtime} s per run, ${reps} reps, ${fresh ? 'fresh servers' : 'long-lived servers'}; ${cpus().length} CPUs, ${fsType}\n` +
          `load at start: ${loadStart}\nload at end:   ${loadEnd}\n\n` +
          table(head, rows) + '\n\n' +
          table(['range over the reps (min-max)', ...targetIds], spread) + '\n\n' +
          table(['p99 completion latency (ms)', ...targetIds], lat) + '\n\n' +
          (servedIds.length ? table(['server CPU (% of one core)', ...servedIds], cpu) + '\n' : ''),
      );
    }
    return 0;
  } finally {
    for (const s of servers) await s.stop();
    let mountsLeft = false;
    for (const mnt of mountpoints) {
      if (!(await isMounted(mnt))) continue;
      say(`bench-fuse: lazily unmounting ${mnt}`);
      await run('umount', ['-l', mnt]).catch((err: unknown) => say(`bench-fuse: umount -l ${mnt}: ${(err as Error).message}`));
      if (await isMounted(mnt)) mountsLeft = true;
    }
    // Never remove through a mount that is still there.
    if (mountsLeft) say(`bench-fuse: ${work} left in place: a mount under it remains`);
    else await rm(work, { recursive: true, force: true });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const shown = abort.signal.aborted ? abort.signal.reason : err;
    process.stderr.write(`bench-fuse: ${shown instanceof Error ? shown.message : String(shown)}\n`);
    process.exitCode = abort.signal.aborted ? 130 : 1;
  },
);
