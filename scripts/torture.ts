/**
 * Torture run: two island daemons (hosts A and B) share one embedded store and pass one
 * volume between them while a seeded schedule SIGKILLs them at random moments: during
 * fsynced writes, during snapshots, during detach, with random transient store failures
 * injected into every store call (test switch ISLAND_STORE_FAULT_RATE). After every kill the
 * daemon restarts and the volume's local copy is checked against a model of what was
 * fsynced; every few rounds the volume moves to the other host through a snapshot and a
 * fresh restore, and everything is checked again; a final fsck checks the store.
 *
 *   npx tsx scripts/torture.ts [--seed N] [--kills N] [--fault-rate P] [--dir DIR]
 *
 * Prints kills, bytes verified and bytes lost (lost must be 0: exit 1 otherwise). A cluster
 * written but not yet fsynced when its daemon died may hold the old or the new content;
 * anything else is lost. Needs the built dist/ (npm run build), FUSE and root.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { call } from '../src/cli/client.js';
import { codeOf } from '../src/errors.js';
import { Rng } from '../src/util/random.js';

const run = promisify(execFile);
const MAIN = resolve(import.meta.dirname, '../dist/cli/main.js');
const MIB = 1 << 20;
const CLUSTER = 65536;
/** Writes land in [DATA_START, DATA_END): past the qcow2 metadata island wrote at creation. */
const DATA_START = 1 * MIB;
const DATA_END = 48 * MIB;
const VOLUME = 'tv';

export interface TortureOptions {
  seed: number;
  kills: number;
  faultRate: number;
  dir?: string;
  log?: (line: string) => void;
}

export interface TortureReport {
  seed: number;
  kills: number;
  rounds: number;
  bytesVerified: number;
  bytesLost: number;
  moves: number;
  snapshots: number;
  losses: string[];
  /** Daemons that exited without being killed by the run (each is a failure). */
  unexpectedExits: string[];
  fsckExit: number;
}

interface Host {
  id: string;
  dataDir: string;
  mount: string;
  socket: string;
  log: string;
  child: ChildProcess | undefined;
  /** Set while the run itself stops or kills this host's daemon. */
  stopping?: boolean;
}

/** cluster offset -> the fill bytes it may hold (one value once fsynced; two while uncertain). */
type Model = Map<number, Set<number>>;

export async function torture(o: TortureOptions): Promise<TortureReport> {
  const say = o.log ?? ((l: string) => process.stdout.write(l + '\n'));
  const rng = new Rng(o.seed);
  const root = o.dir ?? (await mkdtemp(join(tmpdir(), 'island-torture-')));
  const storeDir = join(root, 'store');
  const hosts: Host[] = ['a', 'b'].map((id) => ({ id: `torture-${id}`, dataDir: join(root, id), mount: join(root, id, 'mnt'), socket: join(root, id, 'island.sock'), log: join(root, `${id}.log`), child: undefined }));
  const env = (h: Host): NodeJS.ProcessEnv => ({
    ...process.env,
    ISLAND_DATA_DIR: h.dataDir,
    ISLAND_STORE_DIR: storeDir,
    ISLAND_MOUNT: h.mount,
    ISLAND_SOCKET: h.socket,
    ISLAND_HOST_ID: h.id,
    ISLAND_LOG_LEVEL: 'info',
    ISLAND_TEST_SWITCHES: '1',
    ISLAND_GC_GRACE: '0',
    ISLAND_STORE_FAULT_RATE: String(o.faultRate),
  });
  const report: TortureReport = { seed: o.seed, kills: 0, rounds: 0, bytesVerified: 0, bytesLost: 0, moves: 0, snapshots: 0, losses: [], unexpectedExits: [], fsckExit: -1 };
  const model: Model = new Map();
  let fill = 1;

  const mounted = async (p: string): Promise<boolean> => (await readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === p);
  const waitFor = async (what: string, cond: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (await cond()) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`torture: timed out waiting for ${what}`);
  };
  const cli = async (h: Host, ...args: string[]): Promise<{ code: number; out: string }> => {
    try {
      const r = await run(process.execPath, [MAIN, ...args], { env: env(h) });
      return { code: 0, out: r.stdout };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
    }
  };
  /** A control API call (what the CLI sends), without a process start per call. */
  const api = (h: Host, method: string, path: string, body?: unknown): Promise<unknown> => call(h.socket, method, path, body);
  /** An API call that must succeed; transient store failures surfacing through it are retried. */
  const must = async (h: Host, method: string, path: string, body?: unknown): Promise<unknown> => {
    for (let i = 0; ; i++) {
      try {
        return await api(h, method, path, body);
      } catch (err) {
        if (i >= 5 || !/FAULT_INJECTED|STORE_UNAVAILABLE|STORE_TIMEOUT|BUSY/.test(`${codeOf(err)} ${(err as Error).message}`)) {
          throw new Error(`torture: ${method} ${path} on ${h.id} failed: ${codeOf(err)}: ${(err as Error).message}${codeOf(err) === 'DAEMON_UNREACHABLE' ? await daemonState(h) : ''}`);
        }
        await new Promise((r) => setTimeout(r, 200 * (i + 1)));
      }
    }
  };
  /** What became of a daemon that does not answer: its process, its mount, its last log lines. */
  const daemonState = async (h: Host): Promise<string> => {
    const c = h.child;
    await waitFor(`${h.id} to exit`, () => !c || c.exitCode !== null || c.signalCode !== null, 3000).catch(() => undefined);
    const proc = !c ? 'no process' : c.exitCode !== null || c.signalCode !== null ? `pid ${c.pid} exited: code ${c.exitCode}, signal ${c.signalCode}` : `pid ${c.pid} still running`;
    const tail = (await readFile(h.log, 'utf8').catch(() => '')).trim().split('\n').slice(-4).map((l) => l.slice(0, 300));
    return `; daemon: ${proc}; mounted: ${await mounted(h.mount)}; socket file: ${existsSync(h.socket)}; last log lines: ${tail.join(' | ')}`;
  };
  const status = async (h: Host): Promise<{ volumes: { name: string; access?: { mode: string } }[] }> => (await must(h, 'GET', '/v1/status')) as { volumes: { name: string; access?: { mode: string } }[] };
  const vol = `/v1/volumes/${VOLUME}`;
  const serve = async (h: Host): Promise<void> => {
    const out = openSync(h.log, 'a');
    const child = spawn(process.execPath, [MAIN, 'serve'], { env: env(h), stdio: ['ignore', out, out] });
    closeSync(out);
    h.child = child;
    h.stopping = false;
    let exited = false;
    child.once('exit', (code, signal) => {
      exited = true;
      if (!h.stopping) report.unexpectedExits.push(`${h.id} (pid ${child.pid}) exited by itself: code ${code}, signal ${signal} (see ${h.log})`);
    });
    await waitFor(`${h.id} to serve`, async () => {
      if (exited) throw new Error(`torture: ${h.id} exited at start; see ${h.log}`);
      return (await mounted(h.mount)) && existsSync(h.socket);
    });
  };
  const stop = async (h: Host, sig: NodeJS.Signals): Promise<void> => {
    h.stopping = true;
    const c = h.child;
    if (c && c.exitCode === null && c.signalCode === null) {
      const done = new Promise((r) => c.once('exit', r));
      c.kill(sig);
      await done;
    }
    h.child = undefined;
    if (await mounted(h.mount)) await run('umount', ['-l', h.mount]).catch(() => undefined);
    // A killed daemon leaves its socket file: the next start must not be taken as up by it.
    await rm(h.socket, { force: true });
  };
  /** SIGKILL h after `ms`, while `work` runs; then restart it. */
  const killDuring = async (h: Host, ms: number, work: () => Promise<unknown>): Promise<void> => {
    const c = h.child;
    h.stopping = true;
    const timer = setTimeout(() => c?.kill('SIGKILL'), ms);
    await work().catch(() => undefined);
    clearTimeout(timer);
    if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await stop(h, 'SIGKILL');
    report.kills++;
    await serve(h);
  };
  const attachedOn = async (h: Host): Promise<boolean> => (await status(h)).volumes.some((v) => v.name === VOLUME);
  const file = (h: Host): string => join(h.mount, `${VOLUME}.qcow2`);

  /** Check every modelled cluster; settle uncertain ones to what was read. */
  const verify = async (h: Host, where: string): Promise<void> => {
    await waitFor(`${h.id} to make ${VOLUME} writable`, async () => (await status(h)).volumes.find((v) => v.name === VOLUME)?.access?.mode === 'read-write');
    const fh = await open(file(h), 'r');
    try {
      const buf = Buffer.alloc(CLUSTER);
      for (const [off, allowed] of model) {
        const { bytesRead } = await fh.read(buf, 0, CLUSTER, off);
        const v = buf[0] as number;
        const uniform = bytesRead === CLUSTER && buf.every((x) => x === v);
        if (uniform && allowed.has(v)) {
          report.bytesVerified += CLUSTER;
          model.set(off, new Set([v]));
        } else {
          report.bytesLost += CLUSTER;
          report.losses.push(`${where}: cluster at ${off} holds 0x${v.toString(16)}${uniform ? '' : ' (mixed)'}, expected one of ${[...allowed].map((x) => '0x' + x.toString(16)).join(', ')}`);
          model.set(off, new Set([v])); // report each loss once
        }
      }
    } finally {
      await fh.close();
    }
  };

  /** Write clusters, fsync after every group of 4: until its fsync returns a write is uncertain. */
  const writeBurst = async (h: Host, n: number): Promise<void> => {
    const fh = await open(file(h), 'r+');
    const pending = new Map<number, number>();
    try {
      for (let i = 0; i < n; i++) {
        const off = DATA_START + rng.int((DATA_END - DATA_START) / CLUSTER) * CLUSTER;
        fill = (fill % 255) + 1;
        model.set(off, new Set([...(model.get(off) ?? [0]), fill]));
        pending.set(off, fill);
        await fh.write(Buffer.alloc(CLUSTER, fill), 0, CLUSTER, off);
        if (i % 4 === 3 || i === n - 1) {
          await fh.sync();
          for (const [k, v] of pending) model.set(k, new Set([v]));
          pending.clear();
        }
      }
    } finally {
      await fh.close().catch(() => undefined);
    }
  };

  try {
    await mkdir(root, { recursive: true });
    for (const h of hosts) await serve(h);
    let cur = hosts[0] as Host;
    await must(cur, 'POST', '/v1/volumes', { name: VOLUME, size: '64M' });
    await must(cur, 'POST', `${vol}/attach`, {});
    while (report.kills < o.kills) {
      report.rounds++;
      const other = cur === hosts[0] ? (hosts[1] as Host) : (hosts[0] as Host);
      const action = rng.int(10);
      if (action < 5) {
        // Fsynced writes, killed at a random moment.
        await killDuring(cur, rng.int(150), () => writeBurst(cur, 4 + rng.int(24)));
      } else if (action < 8) {
        // Some writes, then a snapshot killed at a random moment.
        await writeBurst(cur, 2 + rng.int(8)).catch(() => undefined);
        await killDuring(cur, rng.int(400), () => api(cur, 'POST', '/v1/snapshots', { volumes: [VOLUME] }));
        report.snapshots++;
      } else {
        // A detach killed at a random moment; restarted, the volume is detached or still here.
        await writeBurst(cur, 2 + rng.int(8)).catch(() => undefined);
        await killDuring(cur, rng.int(600), () => api(cur, 'POST', `${vol}/detach`, {}));
        if (!(await attachedOn(cur))) await must(cur, 'POST', `${vol}/attach`, {});
      }
      await verify(cur, `round ${report.rounds} on ${cur.id} after a kill`);
      if (report.rounds % 5 === 0) {
        // Move the volume: final snapshot, fresh restore on the other host, check all.
        await must(cur, 'POST', `${vol}/detach`, {});
        await must(other, 'POST', `${vol}/attach`, {});
        report.moves++;
        cur = other;
        await verify(cur, `round ${report.rounds} after moving to ${cur.id}`);
      }
      if (report.rounds % 10 === 0) say(`torture: round ${report.rounds}, ${report.kills} kills, ${report.bytesVerified} bytes verified, ${report.bytesLost} lost`);
    }
    await must(cur, 'POST', `${vol}/detach`, {});
    const other = cur === hosts[0] ? (hosts[1] as Host) : (hosts[0] as Host);
    await must(other, 'POST', `${vol}/attach`, {});
    await verify(other, 'final restore on the other host');
    await must(other, 'POST', `${vol}/detach`, {});
    report.fsckExit = (await cli(other, 'fsck')).code;
  } catch (err) {
    // Say why the run stopped early, with what the daemons reported.
    if (report.unexpectedExits.length) throw new Error(`${(err as Error).message}; ${report.unexpectedExits.join('; ')}`, { cause: err });
    throw err;
  } finally {
    for (const h of hosts) await stop(h, 'SIGTERM').catch(() => undefined);
    if (!o.dir) await rm(root, { recursive: true, force: true }).catch(() => undefined);
  }
  return report;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { seed: { type: 'string' }, kills: { type: 'string', default: '100' }, 'fault-rate': { type: 'string', default: '0.02' }, dir: { type: 'string' } } });
  const seed = values.seed === undefined ? (Date.now() % 2 ** 31) : Number(values.seed);
  // A directory given is the run's own: whatever an earlier run left there goes first.
  if (values.dir) await rm(values.dir, { recursive: true, force: true });
  const r = await torture({ seed, kills: Number(values.kills), faultRate: Number(values['fault-rate']), dir: values.dir });
  for (const l of r.losses.slice(0, 20)) process.stdout.write(`lost: ${l}\n`);
  process.stdout.write(`torture: seed ${r.seed}: ${r.kills} kills in ${r.rounds} rounds (${r.snapshots} snapshots tried, ${r.moves} moves between hosts), ${r.bytesVerified} bytes verified, ${r.bytesLost} bytes lost, fsck exit ${r.fsckExit}\n`);
  for (const e of r.unexpectedExits) process.stdout.write(`unexpected exit: ${e}\n`);
  process.exit(r.bytesLost === 0 && r.fsckExit === 0 && r.unexpectedExits.length === 0 ? 0 : 1);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
