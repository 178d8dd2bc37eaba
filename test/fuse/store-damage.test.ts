/**
 * Store damage behind a lazily restored volume reaches QEMU as EIO: a data pack deleted
 * or truncated in the embedded store, read through the FUSE mount with qemu-io.
 */
import { existsSync } from 'node:fs';
import { readdir, truncate, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cliJson, image, kill, makeHost, run, serve } from '../helpers/daemon.js';

/** Every object file of the data packs in an embedded store. */
async function dataPacks(storeDir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (e.isDirectory()) await walk(join(dir, e.name));
      else if (e.name.startsWith('o')) out.push(join(dir, e.name));
    }
  };
  await walk(join(storeDir, 'ddata'));
  return out.sort();
}

async function readError(file: string): Promise<string> {
  try {
    const r = await run('qemu-io', ['-c', 'read -P 0x5c 0 1M', file]);
    return r.stdout + r.stderr;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return (e.stdout ?? '') + (e.stderr ?? '');
  }
}

if (!existsSync('/usr/bin/qemu-io') || !existsSync('/dev/fuse')) {
  t.skip('QEMU or /dev/fuse missing (scripts/install-deps.sh installs QEMU)');
} else {
  t.test('a missing or truncated pack behind a lazy read is EIO for QEMU, not ENOENT or EINVAL', async (t) => {
    const h = await makeHost(t, 'damage');
    await serve(h);
    const packsOf: Record<string, string[]> = {};
    for (const name of ['lost', 'short']) {
      const before = new Set(await dataPacks(h.storeDir));
      await cliJson(h, 'volume', 'create', name, '--size', '64M');
      await cliJson(h, 'attach', name);
      await run('qemu-io', ['-c', 'write -P 0x5c 0 1M', '-c', 'flush', image(h, name)]);
      await cliJson(h, 'detach', name);
      packsOf[name] = (await dataPacks(h.storeDir)).filter((p) => !before.has(p));
      t.ok(packsOf[name]!.length > 0, `${name}: its snapshot wrote data packs`);
    }
    for (const p of packsOf.lost!) await unlink(p);
    for (const p of packsOf.short!) await truncate(p, 8);
    // A fresh daemon: nothing of the packs is cached.
    await kill(h, 'SIGTERM');
    await serve(h);
    for (const name of ['lost', 'short']) {
      await cliJson(h, 'attach', name, '--no-fill');
      const out = await readError(image(h, name));
      t.match(out, /Input\/output error/, `${name}: the read fails with EIO: ${out.trim().split('\n').at(-1)}`);
      t.notMatch(out, /No such file or directory|Invalid argument/, `${name}: not ENOENT or EINVAL`);
    }
  });
}
