/**
 * How long a CLI command takes from exec to exit, against a running daemon on the
 * embedded store: `island status` (the daemon's answer is a few hundred microseconds, so
 * this is the CLI's own start) beside `node -e 0` (Node's start alone) in the same run,
 * interleaved, medians of --reps.
 *
 *   npx tsx scripts/bench-cli.ts [--reps 15]
 *
 * Needs dist/ (npm run build) and root (the daemon mounts its FUSE file system).
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { promisify } from 'node:util';

const run = promisify(execFile);
const { values } = parseArgs({ options: { reps: { type: 'string', default: '15' } } });
const reps = Number(values.reps);
const MAIN = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');

async function timed(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  await run(process.execPath, args, { env });
  return performance.now() - t0;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

const dir = await mkdtemp(join(tmpdir(), 'island-bench-cli-'));
const env = { ...process.env, ISLAND_DATA_DIR: dir, ISLAND_STORE_DIR: join(dir, 'store'), ISLAND_MOUNT: join(dir, 'mnt'), ISLAND_SOCKET: join(dir, 'island.sock'), ISLAND_HOST_ID: 'bench-cli', ISLAND_LOG_LEVEL: 'warn' };
const daemon = spawn(process.execPath, [MAIN, 'serve'], { env, stdio: 'ignore' });
try {
  const deadline = Date.now() + 30_000;
  while (!existsSync(env.ISLAND_SOCKET)) {
    if (Date.now() > deadline || daemon.exitCode !== null) throw new Error('the daemon did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  const status: number[] = [];
  const bare: number[] = [];
  for (let i = 0; i < reps; i++) {
    status.push(await timed([MAIN, 'status', '--json'], env));
    bare.push(await timed(['-e', '0'], env));
  }
  const s = median(status);
  const b = median(bare);
  console.log(`island status: ${s.toFixed(0)} ms (median of ${reps}); node -e 0: ${b.toFixed(0)} ms; island's own part: ${(s - b).toFixed(0)} ms; ratio to Node's start ${(s / b).toFixed(2)}`);
} finally {
  const done = new Promise((r) => daemon.once('exit', r));
  daemon.kill('SIGTERM');
  await done;
  await rm(dir, { recursive: true, force: true });
}
