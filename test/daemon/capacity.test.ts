/**
 * Capacity in status: the data disk's size and free space, the bytes provisioned to the
 * volumes attached here and the bytes their local copies occupy. A scheduler (Cinder's
 * capacity report) places volumes on what this says.
 */
import { open, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cli, cliJson, image, kill, makeHost, serve, waitFor } from '../helpers/daemon.js';

interface Capacity {
  dataDir: string;
  totalBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  usedBytes: number;
}

const MiB = 1024 * 1024;

async function capacityOf(h: Parameters<typeof cli>[0]): Promise<Capacity> {
  return ((await cliJson(h, 'status')) as { capacity: Capacity }).capacity;
}

t.test('status reports the data disk and what attached volumes provision and use', async (t) => {
  const h = await makeHost(t, 'host-capacity');
  await serve(h);
  const empty = await capacityOf(h);
  const fsStat = await statfs(h.dataDir);
  t.equal(empty.dataDir, h.dataDir);
  t.equal(empty.totalBytes, fsStat.blocks * fsStat.bsize, 'total: the data directory file system size');
  t.ok(empty.freeBytes > 0 && empty.freeBytes <= empty.totalBytes, 'free: positive and at most total');
  t.equal(empty.provisionedBytes, 0, 'nothing attached: nothing provisioned');
  t.equal(empty.usedBytes, 0, 'nothing attached: nothing used');

  t.equal((await cli(h, 'volume', 'create', 'small', '--size', '64M')).code, 0);
  t.equal((await cli(h, 'volume', 'create', 'big', '--size', '1G')).code, 0);
  t.equal((await cli(h, 'attach', 'small')).code, 0);
  t.equal((await cli(h, 'attach', 'big')).code, 0);
  const attached = await capacityOf(h);
  t.equal(attached.provisionedBytes, 64 * MiB + 1024 * MiB, 'provisioned: the sum of the virtual sizes');
  t.ok(attached.usedBytes > 0, 'a fresh image uses some blocks (its header)');
  t.ok(attached.usedBytes < 4 * MiB, `a fresh sparse image uses little (${attached.usedBytes} bytes)`);

  // 8 MiB of data written through the mount shows as used locally.
  const fh = await open(image(h, 'small'), 'r+');
  try {
    const data = Buffer.alloc(8 * MiB, 0xa5);
    await fh.write(data, 0, data.length, 16 * MiB);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  const written = await capacityOf(h);
  t.ok(written.usedBytes >= attached.usedBytes + 8 * MiB, `used grows by the data written (${attached.usedBytes} -> ${written.usedBytes})`);
  const imageBlocks = (await stat(join(h.dataDir, 'volumes', 'small', 'image.qcow2'))).blocks * 512;
  t.ok(written.usedBytes >= imageBlocks, 'used counts at least the image files blocks');

  const human = await cli(h, 'status');
  t.equal(human.code, 0);
  t.match(human.stdout, /data disk .*free of .*1\.1 GiB provisioned, .* used locally/, 'human status prints the capacity line');

  t.equal((await cli(h, 'detach', 'big')).code, 0);
  const after = await capacityOf(h);
  t.equal(after.provisionedBytes, 64 * MiB, 'a detached volume no longer counts');

  // Grown while attached, then the daemon restarts: the grown size counts.
  t.equal((await cli(h, 'volume', 'resize', 'small', '--size', '256M')).code, 0);
  t.equal((await capacityOf(h)).provisionedBytes, 256 * MiB, 'a resize counts at once');
  await kill(h, 'SIGTERM');
  await serve(h);
  await waitFor('the reopened volume to count its grown size', async () => (await capacityOf(h)).provisionedBytes === 256 * MiB);
  t.pass('after a restart, the size of the image counts');
  await kill(h, 'SIGTERM');
});
