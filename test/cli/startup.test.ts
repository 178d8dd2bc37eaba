/**
 * What a command that only talks to the daemon loads: `island status` (and every command like
 * it) must not pay for the daemon, the store clients or fsck, which it never uses. They are
 * loaded by the commands that need them (serve, fsck, store selftest); an operator's script
 * or a Cinder driver's health check pays the start of every call.
 *
 * The modules are recorded by a module-resolution hook in the CLI's own process; the
 * built-in modules Node itself built, by its module load list at exit. Those differ between
 * Node majors (an ESM import of node:http loads undici from Node 22 on), so that part also
 * runs on every other supported major that scripts/node-version.sh has cached.
 */
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';

const MAIN = join(import.meta.dirname, '..', '..', 'dist', 'cli', 'main.js');

/** The newest cached Node of each supported major other than this one (scripts/node-version.sh's cache). */
function otherNodes(): { version: string; bin: string }[] {
  const cache = process.env.ISLAND_NODE_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'island-node');
  let names: string[];
  try {
    names = readdirSync(cache);
  } catch {
    return [];
  }
  const newest = new Map<number, number[]>();
  for (const n of names) {
    const v = /^(\d+)\.(\d+)\.(\d+)$/.exec(n)?.slice(1).map(Number);
    if (!v || `v${v[0]}` === process.version.split('.')[0] || ![20, 22, 24].includes(v[0] as number)) continue;
    const best = newest.get(v[0] as number);
    if (!best || (v[1] as number) > (best[1] as number) || (v[1] === best[1] && (v[2] as number) > (best[2] as number))) newest.set(v[0] as number, v);
  }
  return [...newest.values()].map((v) => ({ version: `v${v.join('.')}`, bin: join(cache, v.join('.'), 'bin', 'node') }));
}

/** The built-in modules a run of the CLI under `node` built (process.moduleLoadList at exit). */
async function builtinsOf(t: { teardown(fn: () => unknown): void }, node: string, ...args: string[]): Promise<{ builtins: string[]; stderr: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'island-startup-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const log = join(dir, 'builtins.json');
  const preload = join(dir, 'record.cjs');
  await writeFile(preload, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(log)}, JSON.stringify(process.moduleLoadList)));\n`);
  const env = { ...process.env, ISLAND_SOCKET: join(dir, 'no-daemon.sock'), ISLAND_DATA_DIR: dir, ISLAND_CONFIG: '' };
  const stderr = await new Promise<string>((res) => {
    // Through env(1) without NODE_OPTIONS: the test runner puts its preloads there (in every
    // child it spawns), and they would build modules of their own.
    execFile('env', ['-u', 'NODE_OPTIONS', node, '--require', preload, MAIN, ...args], { env }, (_err, _out, err) => res(err));
  });
  const list = JSON.parse(await readFile(log, 'utf8')) as string[];
  return { builtins: list.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice('NativeModule '.length)), stderr };
}

async function loadedBy(t: { teardown(fn: () => unknown): void }, ...args: string[]): Promise<{ modules: string[]; stderr: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'island-startup-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const log = join(dir, 'loaded.txt');
  const hooks = join(dir, 'hooks.mjs');
  await writeFile(hooks, `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(${JSON.stringify(log)}, r.url + '\\n');
  return r;
}
`);
  const register = join(dir, 'register.mjs');
  await writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`);
  await writeFile(log, '');
  const env = { ...process.env, ISLAND_SOCKET: join(dir, 'no-daemon.sock'), ISLAND_DATA_DIR: dir, ISLAND_CONFIG: '' };
  const stderr = await new Promise<string>((res) => {
    execFile(process.execPath, ['--import', pathToFileURL(register).href, MAIN, ...args], { env }, (_err, _out, err) => res(err));
  });
  return { modules: (await readFile(log, 'utf8')).split('\n').filter(Boolean), stderr };
}

/** The built tree's root, as the hook reports module URLs. */
const DIST = pathToFileURL(join(MAIN, '..', '..')).href;
const PACKAGES = /node_modules\/(@aws-sdk|@smithy|fuse-native|piscina|pino|lru-cache|lz4-napi|zstd-napi)\//;
// The store's small shared pieces (retry limits, key checks) are light; its clients pull the SDK.
const LAYERS = ['daemon', 'repo', 'snapshot', 'volume', 'fsck', 'fuse', 'workers', 'qmp', 'libvirt'];
const heavy = (m: string): boolean => PACKAGES.test(m) || LAYERS.some((l) => m.startsWith(`${DIST}/${l}/`));

t.test('island status loads neither the daemon nor the store code', async (t) => {
  const { modules, stderr } = await loadedBy(t, 'status');
  t.match(stderr, /island: /, 'it ran and said why it could not reach a daemon');
  t.ok(modules.some((m) => m === `${DIST}/cli/main.js`), 'the hook saw the CLI load');
  t.same(modules.filter(heavy), [], 'no daemon, store, volume or package code was loaded');
});

t.test('the commands that need them still load them', async (t) => {
  const { modules } = await loadedBy(t, 'store', 'selftest', '--dir', '/nonexistent-island-startup-test');
  t.ok(modules.some((m) => m.startsWith(`${DIST}/store/`)), 'store selftest loads the store code');
});

// What status must not build: node:http (its client, server, agent and parser; the CLI
// speaks HTTP/1.1 over node:net itself), undici (node:http's WebSocket exports, Node 22+:
// 20-40 ms), node:crypto (all of it, for the ULIDs status never draws), node:child_process
// (getent, for a configured file owner by name).
const UNUSED_BUILTINS = ['http', '_http_server', 'internal/deps/undici/undici', 'crypto', 'child_process'];

for (const { version, bin } of [{ version: process.version, bin: process.execPath }, ...otherNodes()]) {
  t.test(`island status on Node ${version} builds only the built-in modules it uses`, async (t) => {
    const { builtins, stderr } = await builtinsOf(t, bin, 'status');
    t.match(stderr, /island: DAEMON_UNREACHABLE: /, 'it ran and tried the daemon');
    t.ok(builtins.includes('net'), 'it loaded node:net (its client of the control API)');
    t.same(builtins.filter((m) => UNUSED_BUILTINS.includes(m)), [], `none of ${UNUSED_BUILTINS.join(', ')}`);
    // node:module is taken for its compile cache, which Node 20 does not have.
    if (Number(version.slice(1).split('.')[0]) < 22) t.notOk(builtins.includes('module'), 'nor node:module, on Node 20');
  });
}

t.test('a command keeps the compiled code of what it imports, from Node 22.3 on', async (t) => {
  for (const { version, bin } of [{ version: process.version, bin: process.execPath }, ...otherNodes()]) {
    const dir = await mkdtemp(join(tmpdir(), 'island-compile-cache-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    // The default cache directory is under the temporary directory; no NODE_COMPILE_CACHE.
    const env = { ...process.env, TMPDIR: dir, ISLAND_DATA_DIR: dir, ISLAND_CONFIG: '', NODE_COMPILE_CACHE: '' };
    delete env.NODE_COMPILE_CACHE;
    const code = await new Promise<number>((res) => {
      execFile(bin, [MAIN, 'store', 'selftest', '--dir', join(dir, 'store')], { env }, (err) => res(err ? Number((err as { code?: number }).code ?? -1) : 0));
    });
    t.equal(code, 0, `Node ${version}: store selftest ran`);
    const [major = 0, minor = 0] = version.slice(1).split('.').map(Number);
    const cached = (await readdir(join(dir, 'node-compile-cache')).catch(() => [] as string[])).length > 0;
    if (major > 22 || (major === 22 && minor >= 3)) t.ok(cached, `Node ${version}: a compile cache was written under the temporary directory`);
    else t.notOk(cached, `Node ${version}: no compile cache (enableCompileCache is Node 22.1+): everything compiled as before`);
  }
});
