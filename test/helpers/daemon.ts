/**
 * Real island daemons for tests: each runs `island serve` (the built dist/) in its own
 * process with its own data directory and mount point, so the test process never blocks
 * on its own mount. Stopped by pid in teardown; a mount left behind is lazily unmounted.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Volume } from '../../src/volume/engine.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStore } from '../../src/store/fs.js';

export const run = promisify(execFile);
const MAIN = resolve(import.meta.dirname, '../../dist/cli/main.js');

interface Tap {
  teardown(fn: () => unknown): void;
}

export interface Host {
  dataDir: string;
  storeDir: string;
  /** An island config file (regions), when the host uses a configured store. */
  configFile?: string;
  /** Extra environment for the daemon and CLI (e.g. ISLAND_GC_GRACE). */
  env?: Record<string, string>;
  mount: string;
  hostId: string;
  logFile: string;
  child: ChildProcess | undefined;
}

async function mounted(path: string): Promise<boolean> {
  const text = await readFile('/proc/mounts', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[1] === path);
}

/** Poll a condition with a deadline (never a bare sleep). */
export async function waitFor(what: string, cond: () => Promise<boolean> | boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A host with its own data directory; hosts given the same storeDir share one store. */
export async function makeHost(t: Tap, hostId = 'test-host', storeDir?: string): Promise<Host> {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const dataDir = await mkdtemp(join(tmpdir(), 'island-host-'));
  const h: Host = { dataDir, storeDir: storeDir ?? join(dataDir, 'store'), mount: join(dataDir, 'mnt'), hostId, logFile: join(dataDir, 'daemon.log'), child: undefined };
  t.teardown(async () => {
    await kill(h, 'SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
  });
  return h;
}

/** Point a host at an S3 region (a real Swift in tests): writes its config file. */
export async function useS3(h: Host, s3: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string }, bucket: string): Promise<void> {
  const { writeFile } = await import('node:fs/promises');
  h.configFile = join(h.dataDir, 'island.json');
  await writeFile(h.configFile, JSON.stringify({ region: 'swift', regions: { swift: { type: 's3', ...s3, bucket } } }));
}

/**
 * A volume attached to this host before its daemon starts, as an attach would leave it: a
 * catalog record and a generation won in the store, and the local state under volumes/.
 */
export async function createVolume(h: Host, name: string, virtualSize: number): Promise<void> {
  const store = new FsStore(h.storeDir);
  try {
    const repo = new Repository(store, { host: h.hostId, region: 'default' });
    await repo.putVolume({ name, virtualSize, clusterSize: 65536, region: 'default', created: repo.now(), source: null, status: 'available', host: null, generation: 0, revision: 1 });
    const att = await acquireGeneration(repo, name);
    const v = await Volume.create(join(h.dataDir, 'volumes', name), { name, virtualSize, generation: att.generation, flushIntervalMs: 0 });
    await v.close();
  } finally {
    await store.close();
  }
}

function env(h: Host): NodeJS.ProcessEnv {
  return { ...process.env, ...(h.configFile ? { ISLAND_CONFIG: h.configFile } : {}), ISLAND_DATA_DIR: h.dataDir, ISLAND_STORE_DIR: h.storeDir, ISLAND_MOUNT: h.mount, ISLAND_HOST_ID: h.hostId, ISLAND_LOG_LEVEL: 'info', ISLAND_SOCKET: socket(h), ...(h.env ?? {}) };
}

export function socket(h: Host): string {
  return join(h.dataDir, 'island.sock');
}

/** Run the island CLI against a host; never throws (exit code and output are returned). */
export async function cli(h: Host, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [MAIN, ...args], { env: env(h) });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** The JSON output of a successful CLI call. */
export async function cliJson(h: Host, ...args: string[]): Promise<Record<string, unknown>> {
  const r = await cli(h, ...args, '--json');
  if (r.code !== 0) throw new Error(`island ${args.join(' ')} failed (${r.code}): ${r.stdout}${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

export async function serve(h: Host): Promise<void> {
  const { openSync } = await import('node:fs');
  const out = openSync(h.logFile, 'a');
  h.child = spawn(process.execPath, [MAIN, 'serve'], { env: env(h), stdio: ['ignore', out, out] });
  const child = h.child;
  let exited = false;
  child.once('exit', () => (exited = true));
  await waitFor('the mount', async () => {
    if (exited) throw new Error(`island serve exited: ${await readFile(h.logFile, 'utf8')}`);
    return (await mounted(h.mount)) && existsSync(socket(h));
  });
}

/** Stop the daemon with a signal and wait for it; unmount lazily if it left the mount. */
export async function kill(h: Host, signal: NodeJS.Signals): Promise<void> {
  const child = h.child;
  if (child && child.exitCode === null && child.signalCode === null) {
    const done = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await done;
  }
  h.child = undefined;
  if (await mounted(h.mount)) await run('umount', ['-l', h.mount]).catch(() => undefined);
  // A killed daemon leaves its socket file: the next serve() must not take it for a live one.
  await rm(socket(h), { force: true });
}

export async function log(h: Host): Promise<string> {
  return readFile(h.logFile, 'utf8');
}

export function image(h: Host, name: string): string {
  return join(h.mount, `${name}.qcow2`);
}
