/**
 * `island store selftest --dir DIR`: a relative DIR is refused (store directories are
 * absolute everywhere, as in the configuration), and nothing is written to the current
 * directory.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';

const MAIN = resolve(import.meta.dirname, '../../dist/cli/main.js');

async function island(cwd: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env, ISLAND_DATA_DIR: cwd, ISLAND_CONFIG: '' };
  try {
    const r = await promisify(execFile)(process.execPath, [MAIN, ...args], { cwd, env });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

t.test('store selftest refuses a relative --dir and writes nothing into the current directory', async (t) => {
  const cwd = await mkdtemp(join(tmpdir(), 'island-selftest-'));
  t.teardown(() => rm(cwd, { recursive: true, force: true }));
  for (const dir of ['relative', './x', '']) {
    const r = await island(cwd, 'store', 'selftest', `--dir=${dir}`);
    t.equal(r.code, 2, `--dir=${dir}: exit 2`);
    t.match(r.stderr, /^island: INVALID_ARGUMENT: --dir must be an absolute path/, `... a clear error: ${r.stderr.trim()}`);
  }
  t.same(await readdir(cwd), [], 'nothing was written to the current directory');
  const abs = join(cwd, 'store');
  const ok = await island(cwd, 'store', 'selftest', '--dir', abs);
  t.equal(ok.code, 0, ok.stderr);
  t.match(ok.stdout, new RegExp(`^store fs:${abs}: ok`), 'an absolute directory is tested');
});
