/**
 * Who may open a volume file: the mount is allow_other with default_permissions, so the
 * kernel checks each open against the owner, group and mode the daemon shows. fileOwner,
 * fileGroup and fileMode set them; chown and chmod change them per file until the detach
 * (libvirt chowns a disk to its QEMU user before a domain starts); security.* and trusted.*
 * extended attributes round-trip, bounded. Other users run as child processes through
 * setpriv, with python3 for the system calls.
 */
import { existsSync } from 'node:fs';
import { chmod, chown, stat } from 'node:fs/promises';
import t from 'tap';
import { cliJson, image, makeHost, run, serve, type Host } from '../helpers/daemon.js';

/** Not in /etc/passwd: setpriv needs no entry, and no real account is borrowed. */
const STRANGER = 4242;
const NOBODY = 65534;
const NOGROUP = 65534;
/** The system's python3 (a python3 first in root's PATH may live where other users cannot reach). */
const PYTHON = '/usr/bin/python3';

/** open + pread (+ pwrite at the end of the file and read back) as the calling user. */
const PROBE = `
import errno, os, sys
path, how = sys.argv[1], sys.argv[2]
try:
    fd = os.open(path, os.O_RDWR if how == 'rw' else os.O_RDONLY)
    head = os.pread(fd, 4, 0)
    if how == 'rw':
        end = os.fstat(fd).st_size
        os.pwrite(fd, b'island', end)
        assert os.pread(fd, 6, end) == b'island'
    print('ok', head.hex())
except OSError as e:
    print(errno.errorcode[e.errno])
`;

/** xattr calls as root: one per argv tuple, each printing its result or its errno name. */
const XATTR = `
import ctypes, errno, json, os, sys
path = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
out = []
for op in json.loads(sys.argv[2]):
    try:
        if op[0] == 'set': os.setxattr(path, op[1], bytes.fromhex(op[2]), op[3] if len(op) > 3 else 0); out.append('ok')
        elif op[0] == 'setsize': os.setxattr(path, op[1], b'x' * op[2]); out.append('ok')
        elif op[0] == 'get': out.append(os.getxattr(path, op[1]).hex())
        elif op[0] == 'list': out.append(sorted(os.listxattr(path)))
        elif op[0] == 'remove': os.removexattr(path, op[1]); out.append('ok')
        elif op[0] == 'getsmall':
            buf = ctypes.create_string_buffer(op[2])
            n = libc.getxattr(path.encode(), op[1].encode(), buf, op[2])
            out.append(n if n >= 0 else errno.errorcode[ctypes.get_errno()])
        elif op[0] == 'listsmall':
            buf = ctypes.create_string_buffer(op[1])
            n = libc.listxattr(path.encode(), buf, op[1])
            out.append(n if n >= 0 else errno.errorcode[ctypes.get_errno()])
    except OSError as e:
        out.append(errno.errorcode[e.errno])
print(json.dumps(out))
`;

async function asUser(uid: number, gid: number, file: string, how: 'r' | 'rw', groups: number[] = []): Promise<string> {
  const ids = ['--reuid', String(uid), '--regid', String(gid), ...(groups.length ? ['--groups', groups.join(',')] : ['--clear-groups'])];
  const r = await run('setpriv', [...ids, PYTHON, '-c', PROBE, file, how]);
  return r.stdout.trim().split(' ')[0] ?? '';
}

/** chmod or chown as a user, through python (EPERM and the like are printed, not thrown). */
async function asUserCall(uid: number, gid: number, file: string, call: string): Promise<string> {
  const code = `import errno, os, sys\ntry:\n    ${call}\n    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])`;
  const r = await run('setpriv', ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', PYTHON, '-c', code, file]);
  return r.stdout.trim();
}

async function xattrs(file: string, ops: unknown[][]): Promise<unknown[]> {
  const r = await run(PYTHON, ['-c', XATTR, file, JSON.stringify(ops)]);
  return JSON.parse(r.stdout) as unknown[];
}

async function owner(file: string): Promise<[number, number, string]> {
  const s = await stat(file);
  return [s.uid, s.gid, (s.mode & 0o7777).toString(8)];
}

/** A daemon whose data directory other users may traverse (mkdtemp makes it 0700). */
async function host(t: Tap, id: string, env: Record<string, string> = {}): Promise<Host> {
  const h = await makeHost(t, id);
  h.env = env;
  await chmod(h.dataDir, 0o711);
  await serve(h);
  return h;
}
type Tap = Parameters<typeof makeHost>[0];

const hex = (s: string): string => Buffer.from(s).toString('hex');

if (!existsSync('/dev/fuse') || !existsSync('/usr/bin/setpriv') || !existsSync(PYTHON) || process.getuid?.() !== 0) {
  t.skip('needs /dev/fuse, setpriv and root');
} else {
  t.test('by default a volume file is root-only 0600: another user cannot open it', async (t) => {
    const h = await host(t, 'perm-default');
    await cliJson(h, 'volume', 'create', 'v', '--size', '16M');
    await cliJson(h, 'attach', 'v');
    const f = image(h, 'v');
    t.same(await owner(f), [0, 0, '600'], 'root:root 0600');
    t.equal(await asUser(NOBODY, NOGROUP, f, 'r'), 'EACCES', 'nobody cannot read it');
    t.equal(await asUser(STRANGER, STRANGER, f, 'r', [0]), 'EACCES', 'nor a member of group root');
    t.equal((await run(PYTHON, ['-c', PROBE, f, 'rw'])).stdout.split(' ')[0], 'ok', 'root can');
    t.match((await run('grep', [` ${h.mount} `, '/proc/mounts'])).stdout, /default_permissions,allow_other/, 'mounted allow_other with default_permissions');
  });

  t.test('fileOwner, fileGroup and fileMode decide who opens a file; chown and chmod change it until the detach', async (t) => {
    const h = await host(t, 'perm-owner', { ISLAND_FILE_OWNER: 'nobody', ISLAND_FILE_GROUP: 'nogroup', ISLAND_FILE_MODE: '0600' });
    await cliJson(h, 'volume', 'create', 'v', '--size', '16M');
    await cliJson(h, 'attach', 'v');
    const f = image(h, 'v');
    t.same(await owner(f), [NOBODY, NOGROUP, '600'], 'the configured owner, group and mode');
    if (existsSync('/usr/bin/qemu-io')) {
      const qemuIo = (uid: number): Promise<string> =>
        run('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'qemu-io', '-t', 'none', '-c', 'write -P 0x5a 1M 64k', '-c', 'read -P 0x5a 1M 64k', f]).then(
          (r) => r.stdout,
          (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
        );
      const out = await qemuIo(NOBODY);
      t.match(out, /wrote 65536\/65536 bytes[^]*read 65536\/65536 bytes/, 'QEMU running as the owner writes and reads the image');
      t.notMatch(out, /Pattern verification failed/, '... and reads back what it wrote');
      t.match(await qemuIo(STRANGER), /Permission denied/, 'QEMU running as another user cannot open it');
    }
    t.equal(await asUser(NOBODY, NOGROUP, f, 'rw'), 'ok', 'the owner reads and writes it');
    t.equal(await asUser(STRANGER, STRANGER, f, 'r'), 'EACCES', 'another user cannot read it');
    t.equal(await asUser(STRANGER, STRANGER, f, 'r', [NOGROUP]), 'EACCES', 'nor can a member of its group at 0600');

    await chmod(f, 0o640);
    t.same(await owner(f), [NOBODY, NOGROUP, '640'], 'chmod 0640 shows');
    t.equal(await asUser(STRANGER, STRANGER, f, 'r', [NOGROUP]), 'ok', 'a group member reads it now');
    t.equal(await asUser(STRANGER, STRANGER, f, 'rw', [NOGROUP]), 'EACCES', 'but cannot write it');
    t.equal(await asUser(STRANGER, STRANGER, f, 'r'), 'EACCES', 'and others still cannot read it');
    t.equal(await asUserCall(STRANGER, STRANGER, f, 'os.chmod(sys.argv[1], 0o666)'), 'EPERM', 'only the owner or root may chmod');

    await chown(f, STRANGER, STRANGER);
    t.same(await owner(f), [STRANGER, STRANGER, '640'], 'chown shows');
    t.equal(await asUser(STRANGER, STRANGER, f, 'rw'), 'ok', 'the new owner reads and writes it');
    t.equal(await asUser(NOBODY, NOGROUP, f, 'r'), 'EACCES', 'the old owner no longer can');
    t.equal(await asUserCall(STRANGER, STRANGER, f, 'os.chmod(sys.argv[1], 0o600)'), 'ok', 'the owner may chmod');
    t.same(await owner(f), [STRANGER, STRANGER, '600']);
    t.equal(await asUserCall(STRANGER, STRANGER, f, `os.chown(sys.argv[1], ${NOBODY}, -1)`), 'EPERM', 'only root gives a file away');
    await chown(f, -1, 0);
    t.same(await owner(f), [STRANGER, 0, '600'], 'chown with -1 keeps the owner');

    await cliJson(h, 'detach', 'v');
    await cliJson(h, 'attach', 'v');
    t.same(await owner(f), [NOBODY, NOGROUP, '600'], 'a detach returns the file to the configured owner, group and mode');
    t.equal(await asUser(NOBODY, NOGROUP, f, 'r'), 'ok', 'and to the configured owner');

    const snap = ((await cliJson(h, 'snapshot', 'create', 'v')).snapshots as { id: string }[])[0]!;
    const mounted = await cliJson(h, 'snapshot', 'mount', snap.id);
    const view = mounted.file as string;
    t.same(await owner(view), [NOBODY, NOGROUP, '400'], 'a snapshot view: same owner and group, no write bits');
    t.equal(await asUser(NOBODY, NOGROUP, view, 'r'), 'ok', 'the owner reads it');
    t.equal(await asUser(NOBODY, NOGROUP, view, 'rw'), 'EACCES', 'and cannot open it for writing');
    t.equal(await asUser(STRANGER, STRANGER, view, 'r'), 'EACCES', 'another user cannot read it');
    await chmod(view, 0o666);
    t.same(await owner(view), [NOBODY, NOGROUP, '444'], 'chmod on a view keeps it without write bits');
    t.equal(await asUser(STRANGER, STRANGER, view, 'r'), 'ok', 'and lets others read it');
  });

  t.test('security.* and trusted.* attributes round-trip per file, bounded; others are ENOTSUP', async (t) => {
    const h = await host(t, 'perm-xattr');
    for (const v of ['a', 'b', 'c']) {
      await cliJson(h, 'volume', 'create', v, '--size', '16M');
      await cliJson(h, 'attach', v);
    }
    const f = image(h, 'a');
    const dac = 'trusted.libvirt.security.dac';
    const ref = 'trusted.libvirt.security.ref_dac';
    t.same(
      await xattrs(f, [
        ['list'],
        ['get', dac],
        ['set', dac, hex('+0:+0')],
        ['set', ref, hex('1')],
        ['set', 'security.selinux', hex('system_u:object_r:svirt_image_t:s0')],
        ['get', dac],
        ['list'],
        ['set', dac, hex('+64055:+64055'), 1],
        ['set', 'trusted.absent', hex('x'), 2],
        ['set', dac, hex('+107:+107'), 2],
        ['get', dac],
        ['remove', ref],
        ['get', ref],
        ['remove', ref],
        ['set', 'user.comment', hex('x')],
        ['get', 'user.comment'],
        ['set', 'system.island', hex('x')],
      ]),
      [[], 'ENODATA', 'ok', 'ok', 'ok', hex('+0:+0'), ['security.selinux', dac, ref].sort(), 'EEXIST', 'ENODATA', 'ok', hex('+107:+107'), 'ok', 'ENODATA', 'ENODATA', 'ENOTSUP', 'ENOTSUP', 'ENOTSUP'],
      'set, get, list and remove; XATTR_CREATE and XATTR_REPLACE; user.* and system.* refused',
    );
    t.same(await xattrs(image(h, 'b'), [['list']]), [[]], 'attributes are per file');
    const value = hex('+107:+107');
    t.same(await xattrs(f, [['getsmall', dac, 0], ['getsmall', dac, 3], ['getsmall', dac, 64], ['listsmall', 0], ['listsmall', 4]]), [value.length / 2, 'ERANGE', value.length / 2, Buffer.byteLength(`${dac}\0security.selinux\0`), 'ERANGE'], 'a buffer too small is ERANGE, a size query gets the length');
    t.equal(await asUser(NOBODY, NOGROUP, f, 'r'), 'EACCES', 'attributes give no access');
    t.equal(await asUserCall(NOBODY, NOGROUP, f, `os.getxattr(sys.argv[1], '${dac}')`), 'ENODATA', 'another user cannot read a trusted.* value (the kernel hides it)');
    t.equal(await asUserCall(NOBODY, NOGROUP, f, `os.setxattr(sys.argv[1], 'security.x', b'1')`), 'EPERM', 'nor set a security.* one');
    t.match(await asUserCall(NOBODY, NOGROUP, f, 'print(sorted(os.listxattr(sys.argv[1])))'), /security\.selinux/, 'but may list the names (as README says)');
    t.same(await xattrs(f, [['setsize', 'trusted.big', 4097], ['setsize', 'trusted.big', 4096], ['remove', 'trusted.big']]), ['E2BIG', 'ok', 'ok'], 'a value over 4 KiB is E2BIG; 4 KiB fits');

    const many = await xattrs(image(h, 'b'), Array.from({ length: 65 }, (_, i) => ['set', `trusted.n${i}`, hex('v')]));
    t.same(many.slice(0, 64), Array(64).fill('ok'), '64 attributes fit');
    t.same(many[64], 'ENOSPC', 'the 65th is ENOSPC');
    t.same(await xattrs(image(h, 'b'), [['set', 'trusted.n0', hex('w')], ['remove', 'trusted.n1'], ['set', 'trusted.again', hex('v')]]), ['ok', 'ok', 'ok'], 'replacing one is fine, and removing one makes room');

    const big = await xattrs(image(h, 'c'), Array.from({ length: 17 }, (_, i) => ['setsize', `security.big${i}`, 4000]));
    t.same(big.slice(0, 16), Array(16).fill('ok'), 'values up to 64 KiB a file in all fit');
    t.equal(big.at(-1), 'ENOSPC', 'past 64 KiB of names and values: ENOSPC');

    await cliJson(h, 'detach', 'a');
    await cliJson(h, 'attach', 'a');
    t.same(await xattrs(f, [['list']]), [[]], 'a detach drops them');
  });
}
