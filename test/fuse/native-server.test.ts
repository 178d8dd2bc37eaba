/**
 * island's native FUSE server (native/fuse/) on a real mount, in this process, serving
 * JavaScript-backed files of memory (every read, write, fsync and truncate goes through
 * the addon's callback and back). All file I/O runs in child processes (python3, qemu-img,
 * qemu-io): this process serves the mount and must never wait on it itself.
 */
import { execFile } from 'node:child_process';
import { constants as fsConstants, existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import type { FuseVolume, VolumeTable } from '../../src/fuse/adapter.js';
import { NativeFuseMount, fuseAddon } from '../../src/fuse/native-server.js';
import { waitFor } from '../helpers/daemon.js';

const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';

/** A file in memory; reads can be held back (the answer comes late, the server must not wait). */
class MemVolume implements FuseVolume {
  data: Buffer;
  gate: Promise<void> | undefined;
  reads = 0;
  constructor(size: number, fill = 0) {
    this.data = Buffer.alloc(size, fill);
  }
  get length(): number {
    return this.data.length;
  }
  async read(buf: Buffer, offset: number): Promise<number> {
    this.reads++;
    if (this.gate) await this.gate;
    const n = Math.max(0, Math.min(buf.length, this.data.length - offset));
    this.data.copy(buf, 0, offset, offset + n);
    return n;
  }
  async write(buf: Buffer, offset: number): Promise<number> {
    if (offset + buf.length > this.data.length) this.data = Buffer.concat([this.data, Buffer.alloc(offset + buf.length - this.data.length)]);
    buf.copy(this.data, offset);
    return buf.length;
  }
  async fsync(): Promise<void> {}
  async truncate(length: number): Promise<void> {
    this.data = length <= this.data.length ? Buffer.from(this.data.subarray(0, length)) : Buffer.concat([this.data, Buffer.alloc(length - this.data.length)]);
  }
}

class MemTable implements VolumeTable {
  readonly vols = new Map<string, MemVolume>();
  readonly ro = new Set<string>();
  names(): string[] {
    return [...this.vols.keys()];
  }
  get(name: string): FuseVolume | undefined {
    return this.vols.get(name);
  }
  readOnly(name: string): boolean {
    return this.ro.has(name);
  }
}

/** Python snippet: each op prints its result or the errno name. */
const PY = `
import errno, json, os, sys
out = []
def tryit(f):
    try: out.append(f())
    except OSError as e: out.append(errno.errorcode[e.errno])
for op in json.loads(sys.argv[1]):
    k = op[0]
    if k == 'list': tryit(lambda: sorted(os.listdir(op[1])))
    elif k == 'size': tryit(lambda: os.stat(op[1]).st_size)
    elif k == 'mode': tryit(lambda: oct(os.stat(op[1]).st_mode))
    elif k == 'write': tryit(lambda: (lambda fd: (os.pwrite(fd, bytes.fromhex(op[2]), op[3]), os.fsync(fd), os.close(fd))[0])(os.open(op[1], os.O_RDWR)))
    elif k == 'read': tryit(lambda: (lambda fd: (os.pread(fd, op[2], op[3]).hex(), os.close(fd))[0])(os.open(op[1], os.O_RDONLY)))
    elif k == 'openrw': tryit(lambda: os.close(os.open(op[1], os.O_RDWR)) or 'ok')
    elif k == 'truncate': tryit(lambda: os.truncate(op[1], op[2]) or 'ok')
    elif k == 'unlink': tryit(lambda: os.unlink(op[1]) or 'ok')
    elif k == 'create': tryit(lambda: os.close(os.open(op[1], os.O_CREAT | os.O_RDWR, 0o600)) or 'ok')
    elif k == 'seekdata': tryit(lambda: (lambda fd: (os.lseek(fd, op[2], os.SEEK_DATA), os.close(fd))[0])(os.open(op[1], os.O_RDONLY)))
    elif k == 'statfs': tryit(lambda: (lambda s: [s.f_bavail * s.f_frsize, s.f_namemax])(os.statvfs(op[1])))
print(json.dumps(out))
`;

async function py(ops: unknown[]): Promise<unknown[]> {
  const r = await run(PYTHON, ['-c', PY, JSON.stringify(ops)]);
  return JSON.parse(r.stdout) as unknown[];
}

async function mounted(path: string): Promise<boolean> {
  return (await readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === path);
}

async function setup(t: Test, threads = 2): Promise<{ dir: string; mnt: string; table: MemTable; m: NativeFuseMount; errors: string[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'island-native-fuse-'));
  const mnt = join(dir, 'mnt');
  const table = new MemTable();
  const errors: string[] = [];
  const m = new NativeFuseMount({ mountpoint: mnt, table, spaceDir: dir, threads, onError: (op, path, err) => errors.push(`${op} ${path} ${String(err)}`) });
  await m.mount();
  t.teardown(async () => {
    await m.unmount();
    if (await mounted(mnt)) await run('umount', ['-l', mnt]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });
  return { dir, mnt, table, m, errors };
}

if (!existsSync('/dev/fuse') || process.getuid?.() !== 0) {
  t.skip('needs /dev/fuse and root');
} else {
  t.test('mount, list, getattr, read, write, fsync and truncate through real file I/O', async (t) => {
    const { mnt, table, m } = await setup(t);
    table.vols.set('a', new MemVolume(1 << 20, 0x11));
    table.vols.set('b', new MemVolume(4096));
    const a = join(mnt, 'a.qcow2');
    const r = await py([
      ['list', mnt],
      ['size', a],
      ['mode', a],
      ['write', a, 'cafe', 1000],
      ['read', a, 6, 999],
      ['truncate', a, 8192],
      ['size', a],
      ['read', a, 4, 8190],
      ['statfs', mnt],
    ]);
    t.same(r.slice(0, 3), [['a.qcow2', 'b.qcow2'], 1 << 20, '0o100600'], 'the files, their size and mode');
    t.equal(r[3], 2, 'a write of 2 bytes');
    t.equal(r[4], '11cafe111111', 'reads back through the server');
    t.same(r.slice(5, 8), ['ok', 8192, '1111'], 'truncate changes the size; a read at the end is short');
    t.equal((r[8] as number[])[1], 255, 'statfs: names up to 255 bytes');
    t.ok((r[8] as number[])[0] > 0, 'statfs: the free space of the data directory');
    t.same(table.vols.get('a')?.data.subarray(999, 1003), Buffer.from('11cafe11', 'hex'), 'the write reached the volume');
    const d = m.describe();
    t.equal(d.transport, 'native');
    t.equal(d.protocol, '7.38', 'protocol 7.38 negotiated with this kernel');
    t.equal(d.parallelDirectWrites, true, 'opens answered FOPEN_DIRECT_IO|FOPEN_PARALLEL_DIRECT_WRITES');
  });

  t.test('files come and go with the table; read-only files refuse writes; files are not made by hand', async (t) => {
    const { mnt, table } = await setup(t);
    table.vols.set('v', new MemVolume(65536));
    t.same(await py([['list', mnt]]), [['v.qcow2']]);
    table.vols.set('v@01ABC', new MemVolume(65536, 7));
    table.ro.add('v@01ABC');
    const view = join(mnt, 'v@01ABC.qcow2');
    const r = await py([['list', mnt], ['mode', view], ['openrw', view], ['read', view, 2, 0], ['truncate', view, 0]]);
    t.same(r, [['v.qcow2', 'v@01ABC.qcow2'], '0o100400', 'EROFS', '0707', 'EROFS'], 'a read-only view reads, shows no write bits and refuses writes');
    table.vols.delete('v');
    t.same(await py([['list', mnt], ['size', join(mnt, 'v.qcow2')]]), [['v@01ABC.qcow2'], 'ENOENT'], 'a removed file is gone');
    t.same(await py([['unlink', view], ['create', join(mnt, 'new.qcow2')]]), ['EPERM', 'EPERM'], 'no unlink, no create');
  });

  t.test('a parked read does not hold a server thread: other requests are answered meanwhile', async (t) => {
    const { mnt, table } = await setup(t, 1);
    const slow = new MemVolume(65536, 0xaa);
    let release: () => void = () => undefined;
    slow.gate = new Promise((r) => (release = r));
    table.vols.set('slow', slow);
    table.vols.set('fast', new MemVolume(65536, 0xbb));
    const late = py([['read', join(mnt, 'slow.qcow2'), 4, 0]]);
    await waitFor('the slow read to reach the volume', () => slow.reads > 0);
    // One server thread only: these are answered while the slow read waits.
    t.same(await py([['read', join(mnt, 'fast.qcow2'), 4, 0], ['list', mnt], ['size', join(mnt, 'slow.qcow2')]]), ['bbbbbbbb', ['fast.qcow2', 'slow.qcow2'], 65536]);
    let answered = false;
    void late.then(() => (answered = true));
    t.notOk(answered, 'the slow read is still waiting');
    release();
    t.same(await late, ['aaaaaaaa'], 'and is answered once its data is there');
  });

  t.test('an operation the server does not implement is a clean ENOSYS (the kernel falls back)', async (t) => {
    const { mnt, table, m } = await setup(t);
    table.vols.set('s', new MemVolume(65536, 1));
    const before = m.describe().unknownOps as number;
    t.same(await py([['seekdata', join(mnt, 's.qcow2'), 100]]), [100], 'SEEK_DATA: the kernel takes ENOSYS for "all data"');
    t.ok((m.describe().unknownOps as number) > before, 'the server answered LSEEK with ENOSYS');
    t.same(await py([['read', join(mnt, 's.qcow2'), 2, 0]]), ['0101'], 'and keeps serving');
  });

  t.test('qemu-img and qemu-io on a served file', { skip: !existsSync('/usr/bin/qemu-img') && 'no QEMU' }, async (t) => {
    const { mnt, table } = await setup(t);
    table.vols.set('q', new MemVolume(0));
    const f = join(mnt, 'q.qcow2');
    await run('qemu-img', ['create', '-f', 'qcow2', f, '64M']);
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x5c 1M 3M', '-c', 'flush', f]);
    const rd = await run('qemu-io', ['-t', 'none', '-c', 'read -P 0x5c 1M 3M', '-c', 'read -P 0 0 1M', f]);
    t.notMatch(rd.stdout + rd.stderr, /Pattern verification failed|error/i, 'the pattern reads back, the rest is zero');
    t.match((await run('qemu-img', ['check', f])).stdout, /No errors were found/);
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', f])).stdout) as { 'virtual-size': number };
    t.equal(info['virtual-size'], 64 << 20);
  });

  t.test('unmount leaves no mount, also with a file held open', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'island-native-fuse-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const mnt = join(dir, 'mnt');
    const table = new MemTable();
    table.vols.set('held', new MemVolume(4096));
    const m = new NativeFuseMount({ mountpoint: mnt, table, spaceDir: dir, threads: 2 });
    await m.mount();
    t.ok(await mounted(mnt), 'mounted');
    const holder = execFile(PYTHON, ['-c', `import os, sys, time\nfd = os.open(${JSON.stringify(join(mnt, 'held.qcow2'))}, os.O_RDWR)\nprint('open', flush=True)\nsys.stdin.read()\ntry:\n  os.pread(fd, 1, 0); print('read')\nexcept OSError as e: print('error', e.errno)\n`]);
    let out = '';
    holder.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the holder to open its file', () => out.includes('open'));
    t.equal(m.openCount('held'), 1, 'one open handle');
    await m.unmount();
    t.notOk(await mounted(mnt), 'no mount left');
    holder.stdin?.end();
    await waitFor('the holder to finish', () => holder.exitCode !== null);
    t.match(out, /error/, 'the open file fails its I/O instead of hanging');
  });

  t.test('bad arguments to the addon are refused, nothing served changes', async (t) => {
    const { mnt, table, m } = await setup(t);
    table.vols.set('ok', new MemVolume(4096));
    t.same(await py([['list', mnt]]), [['ok.qcow2']]);
    const a = fuseAddon();
    const h = (m as unknown as { handle: unknown }).handle;
    t.throws(() => a.fuseAddFile(h, 'no-suffix', false, 0, 0, 0o600, 99, 0), /NAME\.qcow2/, 'a name without .qcow2');
    t.throws(() => a.fuseAddFile(h, 'a/b.qcow2', false, 0, 0, 0o600, 99, 0), /slash/, 'a name with a slash');
    t.throws(() => a.fuseAddFile(h, 'x'.repeat(300) + '.qcow2', false, 0, 0, 0o600, 99, 0), /shorter/, 'a name too long');
    t.throws(() => a.fuseAddFile(h, 'x.qcow2', false, -1, 0, 0o600, 99, 0), /uid/, 'a negative uid');
    t.throws(() => a.fuseAddFile(h, 'x.qcow2', false, 0, 0, 0o10000, 99, 0), /mode/, 'mode past permission bits');
    t.throws(() => a.fuseAddFile(h, 'x.qcow2', false, 0, 0, 0o600, 99, -5), /size/, 'a negative size');
    t.throws(() => a.fuseAddFile(h, 'ok.qcow2', false, 0, 0, 0o600, 99, 0), /exists/, 'a name already served');
    t.throws(() => a.fuseAddFile({}, 'y.qcow2', false, 0, 0, 0o600, 99, 0), /not a FUSE mount/, 'not a mount');
    t.equal(a.fuseComplete(h, 123456789, 0, 0), false, 'an answer to no call is ignored');
    t.throws(() => a.fuseComplete(h, 1, 1 << 30, 0), /result/, 'a byte count past 1 MiB');
    t.throws(() => a.fuseComplete(h, 1.5, 0, 0), /callId/, 'a call id that is not an integer');
    t.throws(() => a.fuseMount({ mountpoint: mnt, spaceDir: mnt, threads: 0 }, () => undefined), /threads/, 'zero threads');
    t.equal(a.fuseRemoveFile(h, 'never.qcow2'), false, 'removing what is not served');
    t.same(await py([['list', mnt], ['read', join(mnt, 'ok.qcow2'), 2, 0]]), [['ok.qcow2'], '0000'], 'the mount serves as before');
  });
}

/** A raw FUSE request: fuse_in_header (40 bytes) and the argument bytes. */
function request(opcode: number, nodeid: number, arg: Buffer = Buffer.alloc(0), opts: { len?: number; extlen?: number; unique?: number } = {}): Buffer {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(opts.len ?? 40 + arg.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(BigInt(opts.unique ?? 77), 8);
  h.writeBigUInt64LE(BigInt(nodeid), 16);
  h.writeUInt16LE(opts.extlen ?? 0, 36);
  return Buffer.concat([h, arg]);
}

/** fuse_read_in / fuse_write_in: fh, offset, size, then zeros to 40 bytes. */
function rw(fh: bigint, offset: number, size: number): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(fh, 0);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(size, 16);
  return b;
}

const OP = { LOOKUP: 1, GETATTR: 3, OPEN: 14, READ: 15, WRITE: 16, RELEASE: 18, SETXATTR: 21, BATCH_FORGET: 42 };

if (existsSync('/dev/fuse') && process.getuid?.() === 0) {
  t.test('malformed requests get an errno (or, too short to answer, nothing), never a crash', async (t) => {
    const { mnt, table, m } = await setup(t);
    table.vols.set('raw', new MemVolume(65536, 9));
    t.same(await py([['list', mnt]]), [['raw.qcow2']]);
    const a = fuseAddon();
    const h = (m as unknown as { handle: unknown }).handle;
    const send = (req: Buffer): { error: number; len: number; unique: number; body: Buffer } | 'none' | 'parked' => {
      const r = a.fuseTestRequest(h, req);
      if (r === null) return 'parked';
      if (r.length === 0) return 'none';
      return { len: r.readUInt32LE(0), error: r.readInt32LE(4), unique: Number(r.readBigUInt64LE(8)), body: r.subarray(16) };
    };
    const errOf = (req: Buffer): number | string => {
      const r = send(req);
      return typeof r === 'string' ? r : r.error;
    };
    const E = constants.errno;
    const malformed0 = m.describe().malformed as number;

    t.equal(errOf(Buffer.alloc(10)), 'none', 'shorter than a header: dropped (no id to answer)');
    t.equal(errOf(request(OP.GETATTR, 1, Buffer.alloc(16), { len: 100 })), -E.EINVAL, 'a length that is not what was read');
    t.equal(errOf(request(OP.GETATTR, 1, Buffer.alloc(16), { extlen: 0xffff })), -E.EINVAL, 'extensions longer than the request');
    t.equal(errOf(request(OP.GETATTR, 999_999, Buffer.alloc(16))), -E.ENOENT, 'an unknown node');
    const root = send(request(OP.GETATTR, 1, Buffer.alloc(16)));
    t.ok(typeof root === 'object' && root.error === 0 && root.len === 16 + 104 && root.unique === 77, 'the root answers: fuse_attr_out, the request id echoed');
    t.equal(errOf(request(OP.LOOKUP, 1, Buffer.from('raw.qcow2'))), -E.EINVAL, 'a name without its NUL');
    t.equal(errOf(request(OP.LOOKUP, 12345, Buffer.from('raw.qcow2\0'))), -E.ENOENT, 'a lookup under an unknown node');
    const entry = send(request(OP.LOOKUP, 1, Buffer.from('raw.qcow2\0')));
    if (typeof entry !== 'object' || entry.error !== 0) throw new Error('lookup failed');
    const node = Number(entry.body.readBigUInt64LE(0));
    t.equal(errOf(request(OP.LOOKUP, node, Buffer.from('x.qcow2\0'))), -E.ENOTDIR, 'a lookup under a file');
    const openIn = Buffer.alloc(8);
    openIn.writeUInt32LE(fsConstants.O_RDWR, 0);
    const opened = send(request(OP.OPEN, node, openIn));
    if (typeof opened !== 'object' || opened.error !== 0) throw new Error('open failed');
    const fh = opened.body.readBigUInt64LE(0);
    t.equal(errOf(request(OP.READ, node, rw(0xdeadbeefn, 0, 4096))), -E.EBADF, 'a handle never given');
    t.equal(errOf(request(OP.READ, node, rw(fh + (1n << 32n), 0, 4096))), -E.EBADF, 'a handle with the wrong generation');
    t.equal(errOf(request(OP.READ, node, rw(fh, 0, 2 << 20))), -E.EINVAL, 'a read past 1 MiB');
    t.equal(errOf(request(OP.READ, node, Buffer.alloc(12))), -E.EINVAL, 'a read argument too short');
    t.equal(errOf(request(OP.WRITE, node, Buffer.concat([rw(fh, 0, 4096), Buffer.alloc(8)]))), -E.EINVAL, 'a write with less data than it says');
    const xattr = Buffer.alloc(8);
    xattr.writeUInt32LE(100, 0);
    t.equal(errOf(request(OP.SETXATTR, node, Buffer.concat([xattr, Buffer.from('security.x\0abc')]))), -E.EINVAL, 'an attribute value shorter than it says');
    t.equal(errOf(request(OP.SETXATTR, node, Buffer.concat([xattr, Buffer.from('security.x')]))), -E.EINVAL, 'an attribute name without its NUL');
    const forget = Buffer.alloc(8);
    forget.writeUInt32LE(1_000_000_000, 0);
    t.equal(errOf(request(OP.BATCH_FORGET, 0, forget)), 'none', 'a batch forget claiming a billion entries: no answer is due, nothing read');
    t.equal(errOf(request(9999, 1)), -E.ENOSYS, 'an unknown opcode');
    const release = Buffer.alloc(24);
    release.writeBigUInt64LE(fh, 0);
    t.equal(errOf(request(OP.RELEASE, node, release)), 0, 'the handle is released');
    t.equal(errOf(request(OP.RELEASE, node, release)), -E.EBADF, 'twice is EBADF');
    t.equal(errOf(request(OP.READ, node, rw(fh, 0, 4096))), -E.EBADF, 'and it reads no more');
    t.ok((m.describe().malformed as number) >= malformed0 + 8, 'the malformed ones are counted');
    t.same(await py([['list', mnt], ['read', join(mnt, 'raw.qcow2'), 2, 0]]), [['raw.qcow2'], '0909'], 'the mount serves as before');
  });
}
