/**
 * The FUSE mount with the real QEMU tools: qemu-img, qemu-io and a guest-less
 * qemu-system-x86_64 over island's mount, with restarts and SIGKILLs of the daemon.
 */
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cli, createVolume, image, kill, log, makeHost, run, serve } from '../helpers/daemon.js';
import { TestQemu } from '../helpers/qemu.js';

const GiB = 2 ** 30;

if (!existsSync('/usr/bin/qemu-img') || !existsSync('/dev/fuse')) {
  t.skip('QEMU or /dev/fuse missing (scripts/install-deps.sh installs QEMU)');
} else {
  t.test('a new volume is a valid qcow2 image for qemu-img', async (t) => {
    const h = await makeHost(t);
    await createVolume(h, 'fresh', 4 * GiB);
    await serve(h);
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', image(h, 'fresh')])).stdout) as { 'virtual-size': number; 'cluster-size': number; format: string };
    t.equal(info.format, 'qcow2');
    t.equal(info['virtual-size'], 4 * GiB, 'virtual size as created');
    t.equal(info['cluster-size'], 65536, 'cluster size 64 KiB');
    const check = await run('qemu-img', ['check', image(h, 'fresh')]);
    t.match(check.stdout, /No errors were found/);
    t.same(await readdir(h.mount), ['fresh.qcow2'], 'readdir lists the served volumes');
  });

  t.test('patterns written with qemu-io survive a clean restart, with and without O_DIRECT', async (t) => {
    const h = await makeHost(t);
    await createVolume(h, 'pat', GiB);
    await serve(h);
    const f = image(h, 'pat');
    for (const [cache, pattern, off] of [['none', '0xa1', '0'], ['writeback', '0xb2', '300M']] as const) {
      await run('qemu-io', ['-t', cache, '-i', 'threads', '-c', `write -P ${pattern} ${off} 3M`, '-c', `write -P ${pattern} ${off === '0' ? '64M' : '700M'} 128k`, f]);
    }
    await kill(h, 'SIGTERM');
    t.match(await log(h), /"msg":"stopped"/, 'the daemon stopped cleanly');
    await serve(h);
    for (const [cache, pattern, off] of [['none', '0xa1', '0'], ['writeback', '0xb2', '300M']] as const) {
      const r = await run('qemu-io', ['-t', cache, '-c', `read -P ${pattern} ${off} 3M`, f]);
      t.notMatch(r.stdout, /Pattern verification failed/, `${pattern} at ${off} reads back (cache=${cache})`);
    }
    t.match((await run('qemu-img', ['check', f])).stdout, /No errors were found/);
  });

  t.test('flushed writes survive SIGKILL of the daemon; change tracking is recovered', async (t) => {
    const h = await makeHost(t);
    await createVolume(h, 'crash', GiB);
    await serve(h);
    // A committed snapshot first: until one exists every cluster counts as changed, and
    // recovery has nothing to rescan.
    t.equal((await cli(h, 'snapshot', 'create', 'crash')).code, 0, 'a first snapshot');
    const f = image(h, 'crash');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x5a 10M 2M', '-c', 'write -P 0x6b 512M 64k', '-c', 'flush', f]);
    await kill(h, 'SIGKILL');
    await serve(h);
    for (const [p, off, len] of [['0x5a', '10M', '2M'], ['0x6b', '512M', '64k']]) {
      const r = await run('qemu-io', ['-c', `read -P ${p} ${off} ${len}`, f]);
      t.notMatch(r.stdout, /Pattern verification failed/, `flushed ${p} at ${off} intact`);
    }
    t.match(await log(h), /"clean":false,"rescannedRegions":[1-9]/, 'recovery rescanned the regions its intent bitmap marked');
    t.match((await run('qemu-img', ['check', f])).stdout, /No errors were found/);
  });

  t.test('qemu-system-x86_64 writes through its qcow2 driver (aio=threads, cache.direct on and off)', async (t) => {
    const h = await makeHost(t);
    await createVolume(h, 'vm', 2 * GiB);
    await serve(h);
    const f = image(h, 'vm');
    for (const directIo of [true, false]) {
      const q = await TestQemu.start(h.dataDir, f, { directIo });
      t.teardown(() => q.kill());
      const p = directIo ? '0xd1' : '0xd2';
      await q.qemuIo(`write -P ${p} ${directIo ? '1G' : '1500M'} 1M`);
      await q.qemuIo(`write -P ${p} ${directIo ? '4k' : '8k'} 4k`);
      await q.cmd('stop');
      await q.cmd('cont');
      await q.quit();
      t.notMatch(q.output, /failed|error/i, `QEMU reported no I/O error (direct=${directIo})`);
    }
    await kill(h, 'SIGTERM');
    await serve(h);
    const r = await run('qemu-io', ['-c', 'read -P 0xd1 1G 1M', '-c', 'read -P 0xd2 1500M 1M', '-c', 'read -P 0xd1 4k 4k', '-c', 'read -P 0xd2 8k 4k', f]);
    t.notMatch(r.stdout, /Pattern verification failed/, 'everything QEMU wrote reads back after a restart');
    const copy = join(h.dataDir, 'copy.qcow2');
    await run('qemu-img', ['convert', '-O', 'qcow2', f, copy]);
    const cmp = await run('qemu-img', ['compare', f, copy]);
    t.match(cmp.stdout, /Images are identical/, 'qemu-img compare: the image on the mount equals a local copy');
  });

  t.test('volume files cannot be created, removed, renamed or linked by hand', async (t) => {
    const h = await makeHost(t);
    await createVolume(h, 'keep', GiB);
    await serve(h);
    const f = image(h, 'keep');
    const sh = (cmd: string) => run('sh', ['-c', cmd]).then(() => 'ok', (e: { stderr?: string }) => e.stderr ?? 'failed');
    t.match(await sh(`touch ${join(h.mount, 'new.qcow2')}`), /Operation not permitted/);
    t.match(await sh(`rm ${f}`), /Operation not permitted/);
    t.match(await sh(`mv ${f} ${join(h.mount, 'other.qcow2')}`), /Operation not permitted/);
    t.match(await sh(`ln ${f} ${join(h.mount, 'hard.qcow2')}`), /Operation not permitted/);
    t.match(await sh(`mkdir ${join(h.mount, 'dir')}`), /Operation not permitted/);
    t.equal((await stat(f)).size, 262144, 'getattr size is the exact image length');
    const df = await run('df', ['-B1', '--output=avail', h.mount]);
    t.ok(Number(df.stdout.split('\n')[1]) > 0, 'statfs reports the free space of the data directory');
  });
}
