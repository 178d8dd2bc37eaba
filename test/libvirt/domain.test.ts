/**
 * A guest under real libvirt (Debian's libvirtd and virtlogd, started here with a private
 * socket directory and stopped by pid; TCG), booted from an island volume through a domain
 * XML with cache='none' io='threads', its QEMU running as libvirt-qemu with libvirt's default
 * configuration (which chowns the disk to that user). island is attached with --domain:
 * the guest writes files, a freeze snapshot goes through libvirt (domfsfreeze, suspend,
 * seal, resume, domfsthaw), the volume grows online through virsh blockresize, the guest
 * powers off and the domain's stop takes the final snapshot. A second daemon restores both
 * snapshots and checks every file: the final one by booting the guest again (every file
 * against the checksums the first boot recorded), the frozen one by reading its file
 * system (clean for e2fsck; the files written before the freeze have their checksums).
 * Bad input: an unknown domain, a domain that does not use the volume. Without a guest agent,
 * a snapshot records the pause it got, an explicit freeze fails, a destroyed domain's final
 * snapshot is crash-consistent.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { cli, cliJson, image, log, makeHost, run, serve, waitFor } from '../helpers/daemon.js';
import { Guest, sums, useGuestImage, type GuestImage } from '../helpers/guest.js';

/** libvirtd probes QEMU's capabilities at its first start (~12 s here, more under load). */
const LIBVIRTD_START_MS = 120_000;
/** Boot to the first console line under TCG on a loaded 2-core host. */
const BOOT_MS = 120_000;
/** From "stop" to the domain's final snapshot: checksums, sync, power off, upload. */
const STOP_MS = 120_000;
const MiB = 2 ** 20;

interface Snap {
  id: string;
  consistency: string;
  pauseMs: number | null;
  imageLength: number;
}

interface Libvirt {
  dir: string;
  uri: string;
  virsh(...args: string[]): Promise<string>;
}

const missing = ['/usr/sbin/libvirtd', '/usr/sbin/virtlogd', '/usr/bin/virsh', '/usr/bin/qemu-system-x86_64', '/dev/fuse'].filter((p) => !existsSync(p));

/** A child of ours, in its own session (libvirtd forks; its QEMUs are stopped through it). */
function daemon(cmd: string, args: string[], logFile: string): ChildProcess {
  return spawn('sh', ['-c', 'exec "$@" >>"$LOGFILE" 2>&1', 'sh', cmd, ...args], { detached: true, stdio: 'ignore', env: { ...process.env, LOGFILE: logFile } });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await done;
  clearTimeout(timer);
}

/** libvirtd and virtlogd, private socket directory, default QEMU driver configuration. */
async function startLibvirt(tt: Pick<typeof t, 'teardown'>): Promise<Libvirt> {
  const dir = await mkdtemp(join(tmpdir(), 'island-libvirt-'));
  // libvirt-qemu reads the kernel, initramfs and channels from here.
  await chmod(dir, 0o755);
  await writeFile(join(dir, 'libvirtd.conf'), `unix_sock_dir = "${dir}"\nunix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n`);
  const uri = `qemu:///system?socket=${dir}/libvirt-sock`;
  const virsh = async (...args: string[]): Promise<string> => (await run('virsh', ['-q', '-c', uri, ...args], { env: { ...process.env, LC_ALL: 'C' } })).stdout;
  // virtlogd's socket is fixed for a privileged libvirtd (/run/libvirt/virtlogd-sock).
  const logd = daemon('/usr/sbin/virtlogd', ['-p', join(dir, 'virtlogd.pid')], join(dir, 'virtlogd.log'));
  const lvd = daemon('/usr/sbin/libvirtd', ['-f', join(dir, 'libvirtd.conf'), '-p', join(dir, 'libvirtd.pid')], join(dir, 'libvirtd.log'));
  tt.teardown(async () => {
    // Domains first: QEMU outlives a libvirtd that stops.
    for (const name of ['island-lv-vm', 'island-lv-other', 'island-lv-noagent']) {
      await virsh('destroy', '--domain', name).catch(() => undefined);
      await virsh('undefine', '--domain', name).catch(() => undefined);
    }
    await stop(lvd);
    await stop(logd);
    await rm(dir, { recursive: true, force: true });
  });
  await waitFor(
    'libvirtd to answer',
    async () => {
      if (lvd.exitCode !== null) throw new Error(`libvirtd exited: ${await readFile(join(dir, 'libvirtd.log'), 'utf8').catch(() => '')}`);
      return virsh('version').then(
        () => true,
        () => false,
      );
    },
    LIBVIRTD_START_MS,
  );
  return { dir, uri, virsh };
}

function domainXml(name: string, img: GuestImage, disk: string, lv: Libvirt, cmdline: string, agent = true): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${img.kernel}</kernel>
    <initrd>${img.initrd}</initrd>
    <cmdline>${cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='threads' error_policy='stop' rerror_policy='stop'/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='${join(lv.dir, `${name}.console`)}'/><target port='0'/></serial>
    ${agent ? "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" : ''}
    <channel type='unix'><source mode='bind' path='${join(lv.dir, `${name}.control`)}'/><target type='virtio' name='org.island.control'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** Write a line to the guest's control port, keeping the connection open until QEMU exits. */
async function control(path: string, line: string): Promise<() => void> {
  const s = await new Promise<ReturnType<typeof createConnection>>((resolve, reject) => {
    const c = createConnection(path);
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
  s.on('error', () => undefined);
  s.write(`${line}\n`);
  return () => s.destroy();
}

async function code(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await run(cmd, args);
    return { code: 0, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** sha256 of each regular file under /data of an ext2 image (read with debugfs, nothing mounted). */
async function fileSums(raw: string): Promise<Map<string, string>> {
  const ls = await run('debugfs', ['-R', 'ls -p /data', raw]);
  const out = new Map<string, string>();
  for (const line of ls.stdout.split('\n')) {
    // /inode/mode/uid/gid/name/size/
    const f = line.split('/');
    const name = f[5];
    if (!name || name === '.' || name === '..' || !(f[2] ?? '').startsWith('100')) continue;
    const r = await run('debugfs', ['-R', `cat /data/${name}`, raw], { encoding: 'buffer', maxBuffer: 64 * MiB });
    out.set(name, createHash('sha256').update(r.stdout as unknown as Buffer).digest('hex'));
  }
  return out;
}

const guest = missing.length ? { skip: `not installed: ${missing.join(', ')} (scripts/install-deps.sh installs libvirt)` } : await useGuestImage();
if ('skip' in guest) {
  if (process.env.ISLAND_REQUIRE_SWIFT === '1') throw new Error(guest.skip);
  t.skip(`the libvirt test needs libvirt, QEMU and a guest image: ${guest.skip}`);
} else {
  const lv = await startLibvirt(t);
  // The guest's kernel and initramfs where libvirt-qemu can read them (libvirt relabels them).
  const img: GuestImage = { kernel: join(lv.dir, 'vmlinuz'), initrd: join(lv.dir, 'initrd.gz'), agent: guest.image.agent };
  await copyFile(guest.image.kernel, img.kernel);
  await copyFile(guest.image.initrd, img.initrd);

  t.test('a guest under libvirt on an island volume: freeze snapshot, online growth, final snapshot at shutdown, both restored elsewhere', async (t) => {
    const started = Date.now();
    const phase = (what: string): void => t.comment(`${what} after ${((Date.now() - started) / 1000).toFixed(1)} s`);

    const a = await makeHost(t, 'lv-host-a');
    const b = await makeHost(t, 'lv-host-b', a.storeDir);
    // libvirt-qemu must reach the mount under the data directory (mkdtemp makes it 0700).
    await chmod(a.dataDir, 0o711);
    for (const h of [a, b]) h.env = { ISLAND_LIBVIRT_URI: lv.uri };
    await serve(a);
    await serve(b);
    await cliJson(a, 'volume', 'create', 'vm', '--size', '256M');
    const file = image(a, 'vm');

    // Bad input: nothing is attached.
    const unknown = await cli(a, 'attach', 'vm', '--domain', 'island-lv-nosuch', '--json');
    t.equal(unknown.code, 1, 'attach with an unknown domain fails');
    t.match(JSON.parse(unknown.stdout), { error: { code: 'DOMAIN_NOT_FOUND', message: /island-lv-nosuch/ } }, 'DOMAIN_NOT_FOUND, naming the domain');
    const otherDisk = join(lv.dir, 'other.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', otherDisk, '64M']);
    const xmlOther = join(lv.dir, 'other.xml');
    await writeFile(xmlOther, domainXml('island-lv-other', img, otherDisk, lv, 'console=ttyS0'));
    await lv.virsh('define', xmlOther);
    const other = await cli(a, 'attach', 'vm', '--domain', 'island-lv-other', '--json');
    t.equal(other.code, 1, 'attach with a domain that does not use the volume fails');
    t.match(JSON.parse(other.stdout), { error: { code: 'DOMAIN_NOT_USING_VOLUME', message: new RegExp(`island-lv-other has no disk on ${file}`) } }, 'DOMAIN_NOT_USING_VOLUME, naming the file');
    t.match(await cliJson(a, 'volume', 'show', 'vm'), { status: 'available', host: null }, 'the volume is still detached');
    t.same(await readdir(a.mount), [], 'and not on the mount');
    t.match((await cli(a, 'attach', 'vm', '--domain', '', '--json')).stdout, /INVALID_ARGUMENT/, 'an empty domain name is refused');

    // The domain, defined with its disk on the mount, then the attach that names it.
    const xml = join(lv.dir, 'vm.xml');
    await writeFile(xml, domainXml('island-lv-vm', img, file, lv, 'console=ttyS0 panic=-1 quiet island.step=write island.files=4 island.mib=1 island.churn=300'));
    await lv.virsh('define', xml);
    await cliJson(a, 'attach', 'vm', '--domain', 'island-lv-vm');
    await lv.virsh('start', '--domain', 'island-lv-vm');
    const live = await lv.virsh('dumpxml', '--domain', 'island-lv-vm');
    t.match(live, /<driver name='qemu' type='qcow2' cache='none'[^>]*io='threads'/, "the disk runs with cache='none' io='threads'");
    const pid = (await readFile('/run/libvirt/qemu/island-lv-vm.pid', 'utf8')).trim();
    t.equal((await run('ps', ['-o', 'user=', '-p', pid])).stdout.trim(), 'libvirt-qemu', 'QEMU runs as libvirt-qemu');
    const consolePath = join(lv.dir, 'island-lv-vm.console');
    await waitFor('the guest to write its files', async () => /island: churn start/.test(await readFile(consolePath, 'utf8').catch(() => '')), BOOT_MS);
    phase('the guest wrote its files');

    // A freeze snapshot through libvirt while the guest keeps rewriting files.
    const want = img.agent ? 'freeze' : 'flush';
    const frozen = ((await cliJson(a, 'snapshot', 'create', 'vm', '--consistency', want)).snapshots as Snap[])[0] as Snap;
    t.equal(frozen.consistency, img.agent ? 'guest-frozen' : 'qemu-flushed', `the ${want} snapshot records ${frozen.consistency}`);
    t.ok(frozen.pauseMs !== null && frozen.pauseMs >= 0, `the domain was suspended around the seal (${frozen.pauseMs} ms)`);
    if (img.agent) {
      const lines = (await log(a)).split('\n').filter((l) => l.includes('guest filesystems frozen')).map((l) => JSON.parse(l) as { filesystems?: number; domain?: string });
      t.match(lines, [{ filesystems: 1, domain: 'island-lv-vm' }], "libvirt's agent froze the guest's one file system");
    }
    t.equal((await lv.virsh('domstate', '--domain', 'island-lv-vm')).trim(), 'running', 'the domain runs again');

    // Grown online, through libvirt.
    const grown = await cliJson(a, 'volume', 'resize', 'vm', '--size', '384M');
    t.match(grown, { resize: { from: 256 * MiB, to: 384 * MiB, how: 'blockresize' } }, 'the volume grew with virsh blockresize');
    t.match(await lv.virsh('domblkinfo', '--domain', 'island-lv-vm', '--device', 'vda'), new RegExp(`Capacity:\\s+${384 * MiB}`), 'the running domain sees the new size');
    const wrong = await cli(a, 'volume', 'resize', 'vm', '--size', '512M', '--domain', 'island-lv-other', '--json');
    t.match(JSON.parse(wrong.stdout), { error: { code: 'DOMAIN_NOT_USING_VOLUME' } }, 'resize --domain naming a domain that does not use the volume is refused');
    t.match(await cliJson(a, 'volume', 'show', 'vm'), { virtualSize: 384 * MiB }, 'and the volume keeps its size');
    phase('grown online');

    // The guest powers off; the domain's stop takes the final snapshot.
    t.notMatch(await readFile(consolePath, 'utf8'), /churn done/, 'the guest was still rewriting files meanwhile');
    const hangUp = await control(join(lv.dir, 'island-lv-vm.control'), 'stop');
    let snaps: Snap[] = [];
    await waitFor(
      'the final snapshot after the domain stopped',
      async () => {
        snaps = (await cliJson(a, 'snapshot', 'list', 'vm')).snapshots as Snap[];
        return snaps.length >= 2;
      },
      STOP_MS,
    );
    hangUp();
    phase('final snapshot taken');
    t.equal((await lv.virsh('domstate', '--domain', 'island-lv-vm')).trim(), 'shut off', 'the domain is shut off');
    t.match(await log(a), /"reason":"Shutdown".*"msg":"domain stopped: final snapshot"/, 'the lifecycle event triggered it');
    const final = snaps.find((s) => s.id !== frozen.id) as Snap;
    t.equal(final.consistency, 'qemu-flushed', 'after a guest shutdown QEMU closed the image cleanly: qemu-flushed');
    const written = await readFile(consolePath, 'utf8');
    t.match(written, /island: write done/, 'the write step finished');
    t.notMatch(written, /island: FAIL/, 'with no failure');
    const expected = sums(written);
    t.equal(expected.length, 8, 'four files written once and four rewritten, with their checksums');
    await cliJson(a, 'detach', 'vm');

    // Host B restores the final snapshot and boots it: every file with its checksum.
    await cliJson(b, 'volume', 'create', 'final', '--from', final.id);
    await cliJson(b, 'attach', 'final');
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', image(b, 'final')])).stdout) as { 'virtual-size': number };
    t.equal(info['virtual-size'], 384 * MiB, 'the final snapshot has the grown size');
    const g2 = Guest.boot(t, { image: guest.image, file: image(b, 'final'), step: 'verify', console: join(b.dataDir, 'console-verify.log') });
    await g2.waitConsole(/island: (PASS|FAIL)/, BOOT_MS);
    t.equal(await g2.waitExit(BOOT_MS), 0, 'the verifying guest powered off');
    const read = await g2.console();
    t.match(read, /island: PASS 8 files/, 'every file of the final snapshot has its checksum');
    t.same(sums(read), expected, 'exactly what the guest under libvirt wrote');
    phase('final snapshot verified');

    // And the frozen one: a clean file system; the files written before the freeze are whole.
    await cliJson(b, 'volume', 'create', 'frozen', '--from', frozen.id);
    await cliJson(b, 'attach', 'frozen');
    const raw = join(b.dataDir, 'frozen.raw');
    await run('qemu-img', ['convert', '-O', 'raw', image(b, 'frozen'), raw]);
    const fsck = await code('e2fsck', ['-fn', raw]);
    if (img.agent) t.equal(fsck.code, 0, `e2fsck -fn: the frozen snapshot is a clean file system${fsck.code ? `:\n${fsck.out}` : ''}`);
    const got = await fileSums(raw);
    const want4 = new Map(expected.map((l) => l.split(/\s+/)).map((f) => [f[3] as string, f[2] as string]));
    for (const n of ['file1', 'file2', 'file3', 'file4']) t.equal(got.get(n), want4.get(n), `${n} in the frozen snapshot has its checksum`);
    t.ok([...got.keys()].some((n) => n.startsWith('churn')), `the files being rewritten are there too (${[...got.keys()].join(', ')})`);
    await rm(raw, { force: true });
    phase('frozen snapshot verified');
  });
  t.test('without a guest agent: the snapshot records the pause it got, an explicit freeze fails, a destroyed domain gets a crash-consistent final snapshot', async (t) => {
    const h = await makeHost(t, 'lv-host-c');
    await chmod(h.dataDir, 0o711);
    h.env = { ISLAND_LIBVIRT_URI: lv.uri };
    await serve(h);
    await cliJson(h, 'volume', 'create', 'na', '--size', '128M');
    const xml = join(lv.dir, 'noagent.xml');
    await writeFile(xml, domainXml('island-lv-noagent', img, image(h, 'na'), lv, 'console=ttyS0 panic=-1 quiet island.step=write island.files=2 island.mib=1 island.churn=300', false));
    await lv.virsh('define', xml);
    await cliJson(h, 'attach', 'na', '--domain', 'island-lv-noagent');
    await lv.virsh('start', '--domain', 'island-lv-noagent');
    const consolePath = join(lv.dir, 'island-lv-noagent.console');
    await waitFor('the guest to write its files', async () => /island: churn start/.test(await readFile(consolePath, 'utf8').catch(() => '')), BOOT_MS);
    const list = async (): Promise<Snap[]> => (await cliJson(h, 'snapshot', 'list', 'na')).snapshots as Snap[];

    const strict = await cli(h, 'snapshot', 'create', 'na', '--consistency', 'freeze', '--json');
    t.equal(strict.code, 1, 'an explicit freeze fails without an agent');
    t.comment(`virsh said: ${(JSON.parse(strict.stdout) as { error: { message: string } }).error.message}`);
    t.match(JSON.parse(strict.stdout), { error: { code: 'LIBVIRT_ERROR', details: { reason: 'agent', command: 'domfsfreeze' } } }, 'LIBVIRT_ERROR, reason agent');
    t.same(await list(), [], 'and takes no snapshot');
    t.equal((await lv.virsh('domstate', '--domain', 'island-lv-noagent')).trim(), 'running', 'the domain was not left paused');

    const paused = ((await cliJson(h, 'snapshot', 'create', 'na')).snapshots as Snap[])[0] as Snap;
    t.equal(paused.consistency, 'qemu-flushed', 'without a level: the pause it got, recorded as qemu-flushed');
    t.ok(paused.pauseMs !== null, `with its pause (${paused.pauseMs} ms)`);
    t.match(await log(h), /"msg":"the guest agent did not freeze the file systems: the snapshot is flushed only"/, 'the missing agent is logged');

    await lv.virsh('destroy', '--domain', 'island-lv-noagent');
    let snaps: Snap[] = [];
    await waitFor('the final snapshot after destroy', async () => (snaps = await list()).length >= 2, STOP_MS);
    t.equal(snaps.find((s) => s.id !== paused.id)?.consistency, 'crash', 'a destroyed domain: crash-consistent final snapshot');
    t.match(await log(h), /"reason":"Destroyed".*"msg":"domain stopped: final snapshot"/, 'the lifecycle event said why');

    const off = ((await cliJson(h, 'snapshot', 'create', 'na')).snapshots as Snap[])[0] as Snap;
    t.equal(off.consistency, 'crash', 'a domain shut off: crash');
    const flush = await cli(h, 'snapshot', 'create', 'na', '--consistency', 'flush', '--json');
    t.match(JSON.parse(flush.stdout), { error: { code: 'LIBVIRT_ERROR', details: { reason: 'not-running' } } }, 'an explicit flush of a shut off domain fails');
    await cliJson(h, 'detach', 'na');
  });
}
