/**
 * The Cinder driver (cinder/island_cinder) under Cinder's real VolumeManager (sqlite, fake
 * message transport) against a real island daemon on its embedded store: the Python suite
 * cinder/tests/test_driver.py runs every seed use case (create, attach, QEMU writes,
 * snapshot, create from snapshot, attach and compare, extend, clone, terminate, delete
 * snapshot, delete volumes), image import and export, bad input (unknown volume, island
 * down, wrong host), and Nova's libvirt code on the connection info (nova_check.py).
 *
 * The daemon's mount is <base>/<md5("island")>, where Nova's vzstorage code looks for the
 * share. Skips only when Debian's python3-cinder or python3-nova is not installed
 * (scripts/install-deps.sh installs both).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { kill, makeHost, run, serve, socket } from '../helpers/daemon.js';

const PYTHON = '/usr/bin/python3';
const ROOT = resolve(import.meta.dirname, '../../cinder');

async function importable(module: string): Promise<string | null> {
  try {
    await run(PYTHON, ['-c', `import ${module}`]);
    return null;
  } catch (err) {
    return String((err as { stderr?: string }).stderr ?? err).trim().split('\n').at(-1) ?? 'import failed';
  }
}

const missing = [];
for (const [module, pkg] of [
  ['cinder.tests.unit.test', 'python3-cinder'],
  ['nova.virt.libvirt.volume.vzstorage', 'python3-nova'],
] as const) {
  const why = await importable(module);
  if (why) missing.push(`${pkg} (${module}: ${why})`);
}

if (missing.length) {
  t.plan(0, `Debian packages not installed: ${missing.join('; ')}; run scripts/install-deps.sh`);
} else {
  t.test('the island driver under Cinder\'s VolumeManager, and Nova\'s view of its connection', async (t) => {
    const h = await makeHost(t, 'cinder-host');
    const base = join(h.dataDir, 'nova-mnt');
    h.mount = join(base, createHash('md5').update('island').digest('hex'));
    await mkdir(h.mount, { recursive: true });
    await serve(h);

    const env = { ...process.env, PYTHONPATH: ROOT, ISLAND_CINDER_SOCKET: socket(h), ISLAND_CINDER_HOST: h.hostId, ISLAND_CINDER_NOVA_BASE: base };
    const child = spawn(PYTHON, ['-m', 'testtools.run', 'test_driver'], { cwd: join(ROOT, 'tests'), env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((r) => child.once('close', r));
    const summary = out.split('\n').filter((l) => /^(Ran \d+ tests|OK|FAILED|ERROR: |FAIL: )/.test(l));
    t.equal(code, 0, `the Python suite passes: ${summary.join(' | ')}${code === 0 ? '' : `\n${out.slice(-6000)}`}`);
    t.match(out, /^Ran 10 tests? in/m, 'all ten tests ran');
    t.notMatch(out, /skipped|Skipped/, 'none skipped');
    t.same(out.match(/ERROR \[island_cinder/g) ?? [], [], 'the driver logged no error');

    await kill(h, 'SIGTERM');
  });
}
