/**
 * How long a CLI command takes from exec to exit, against a running daemon on the
 * embedded store: `island status` (the daemon's answer is a few hundred microseconds, so
 * this is the CLI's own start) beside `node -e 0` (Node's start alone) in the same run,
 * interleaved, medians of --reps.
 *
 *   npx tsx scripts/bench-cli.ts [--reps 15] [--node NODE,...] [--main MAIN.js,...]
 *       [--args 'status --json'] [--cache-off]
 *
 * --node: the Node binaries to time, each with its own `node -e 0` (default: the one
 * running this script; scripts/node-version.sh MAJOR prints one of another major).
 * --main: the CLIs to time (default: this tree's dist/cli/main.js), e.g. a build of an
 * earlier commit beside this one; the daemon is always this tree's.
 * --args: the command timed instead of `status --json` (e.g. 'store selftest --dir /tmp/x',
 * a command that imports the store code). --cache-off: each CLI also with
 * NODE_DISABLE_COMPILE_CACHE=1 (Node 22.3+ keeps compiled code otherwise; the first
 * round fills the cache).
 * The load average is printed before and after: the machine may be shared.
 *
 * Needs dist/ (npm run build) and root (the daemon mounts its FUSE file system).
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { promisify } from 'node:util';

const run = promisify(execFile);
const { values } = parseArgs({ options: { reps: { type: 'string', default: '15' }, node: { type: 'string' }, main: { type: 'string' }, args: { type: 'string', default: 'status --json' }, 'cache-off': { type: 'boolean', default: false } } });
const reps = Number(values.reps);
const MAIN = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const nodes = values.node ? values.node.split(',') : [process.execPath];
const mains = values.main ? values.main.split(',') : [MAIN];
const args = values.args.split(' ').filter(Boolean);

async function timed(node: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  await run(node, args, { env });
  return performance.now() - t0;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const load = (): string => loadavg().map((l) => l.toFixed(2)).join(' ');

const dir = await mkdtemp(join(tmpdir(), 'island-bench-cli-'));
const env = { ...process.env, ISLAND_DATA_DIR: dir, ISLAND_STORE_DIR: join(dir, 'store'), ISLAND_MOUNT: join(dir, 'mnt'), ISLAND_SOCKET: join(dir, 'island.sock'), ISLAND_HOST_ID: 'bench-cli', ISLAND_LOG_LEVEL: 'warn' };
const daemon = spawn(process.execPath, [MAIN, 'serve'], { env, stdio: 'ignore' });
try {
  const deadline = Date.now() + 30_000;
  while (!existsSync(env.ISLAND_SOCKET)) {
    if (Date.now() > deadline || daemon.exitCode !== null) throw new Error('the daemon did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  console.log(`load average before: ${load()}`);
  const versions = new Map<string, string>();
  for (const node of nodes) versions.set(node, (await run(node, ['--version'])).stdout.trim());
  // Every case of a round runs once before the next round: a change in load hits all alike.
  const caches = values['cache-off'] ? [true, false] : [true];
  const cases = nodes.flatMap((node) => [{ node, main: undefined as string | undefined, cache: true }, ...mains.flatMap((main) => caches.map((cache) => ({ node, main, cache })))]);
  const times = cases.map(() => [] as number[]);
  for (let i = 0; i < reps; i++) {
    for (const [j, c] of cases.entries()) times[j]?.push(await timed(c.node, c.main ? [c.main, ...args] : ['-e', '0'], c.cache ? env : { ...env, NODE_DISABLE_COMPILE_CACHE: '1' }));
  }
  for (const node of nodes) {
    const bare = median(times[cases.findIndex((c) => c.node === node && c.main === undefined)] ?? []);
    for (const main of mains) {
      for (const cache of caches) {
        const s = median(times[cases.findIndex((c) => c.node === node && c.main === main && c.cache === cache)] ?? []);
        const which = (mains.length > 1 ? ` (${main})` : '') + (cache ? '' : ' (NODE_DISABLE_COMPILE_CACHE=1)');
        console.log(`Node ${versions.get(node)}: island ${args.join(' ')}${which}: ${s.toFixed(0)} ms (median of ${reps}); node -e 0: ${bare.toFixed(0)} ms; island's own part: ${(s - bare).toFixed(0)} ms; ratio to Node's start ${(s / bare).toFixed(2)}`);
      }
    }
  }
  console.log(`load average after: ${load()}`);
} finally {
  const done = new Promise((r) => daemon.once('exit', r));
  daemon.kill('SIGTERM');
  await done;
  await rm(dir, { recursive: true, force: true });
}
