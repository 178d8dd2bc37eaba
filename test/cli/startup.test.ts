/**
 * What a command that only talks to the daemon loads: `island status` (and every command like
 * it) must not pay for the daemon, the store clients or fsck, which it never uses. They are
 * loaded by the commands that need them (serve, fsck, store selftest); an operator's script
 * or a Cinder driver's health check pays the start of every call.
 *
 * The modules are recorded by a module-resolution hook in the CLI's own process.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';

const MAIN = join(import.meta.dirname, '..', '..', 'dist', 'cli', 'main.js');

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
