/**
 * A file's owner, mode and extended attributes as the mount keeps them (src/fuse/attrs.ts):
 * chown's "unchanged" ids, the permission bits kept, and the bounds on attributes with
 * their accounting through replacements and removals. The mount itself is exercised in
 * permissions.test.ts.
 */
import { constants } from 'node:os';
import t from 'tap';
import { FileAttrs, XATTR_BYTES_MAX, XATTR_COUNT_MAX, XATTR_VALUE_MAX, keptXattr } from '../../src/fuse/attrs.js';

const { errno } = constants;
const fresh = (): FileAttrs => new FileAttrs({ uid: 65534, gid: 65534, mode: 0o640 });

t.test('chown with (uid_t)-1 keeps that id; chmod keeps permission bits only; read-only drops write bits', async (t) => {
  const a = fresh();
  t.equal(a.changed, undefined, 'unchanged at first');
  a.chown(0xffff_ffff, 107);
  t.same([a.uid, a.gid], [65534, 107]);
  a.chown(107, 0xffff_ffff);
  t.same([a.uid, a.gid], [107, 107]);
  a.chmod(0o100664);
  t.equal(a.modeBits(false), 0o664, 'the file type is not kept');
  t.equal(a.modeBits(true), 0o444, 'read-only: no write bits');
  t.ok(a.changed instanceof Date, 'the change time is set');
});

t.test('only security.* and trusted.* names with something after the prefix are kept', async (t) => {
  for (const n of ['security.selinux', 'trusted.libvirt.security.dac']) t.ok(keptXattr(n), n);
  for (const n of ['security.', 'trusted.', 'user.x', 'system.posix_acl_access', 'securityx', '']) t.notOk(keptXattr(n), JSON.stringify(n));
  const a = fresh();
  t.equal(a.setXattr('user.x', Buffer.from('1'), 0), -errno.ENOTSUP);
  t.equal(a.getXattr('user.x'), -errno.ENOTSUP);
  t.equal(a.removeXattr('user.x'), -errno.ENOTSUP);
});

t.test('the value is copied: the caller may reuse its buffer', async (t) => {
  const a = fresh();
  const b = Buffer.from('+0:+0');
  t.equal(a.setXattr('trusted.v', b, 0), 0);
  b.fill(0);
  t.same(a.getXattr('trusted.v'), Buffer.from('+0:+0'));
});

t.test('bounds: value size, count and bytes, with replacements and removals accounted', async (t) => {
  const a = fresh();
  t.equal(a.setXattr('trusted.big', Buffer.alloc(XATTR_VALUE_MAX + 1), 0), -errno.E2BIG);
  for (let i = 0; i < XATTR_COUNT_MAX; i++) t.equal(a.setXattr(`trusted.n${i}`, Buffer.from('v'), 0), 0);
  t.equal(a.setXattr('trusted.one-more', Buffer.from('v'), 0), -errno.ENOSPC, 'count cap');
  t.equal(a.setXattr('trusted.n0', Buffer.from('w'), 0), 0, 'a replacement is not a new one');
  t.equal(a.removeXattr('trusted.n1'), 0);
  t.equal(a.setXattr('trusted.one-more', Buffer.from('v'), 0), 0, 'a removal makes room');
  t.equal(a.listXattrs().length, XATTR_COUNT_MAX);

  const b = fresh();
  const name = (i: number): string => `security.b${String(i).padStart(2, '0')}`;
  const value = XATTR_VALUE_MAX - name(0).length;
  const fit = Math.floor(XATTR_BYTES_MAX / XATTR_VALUE_MAX);
  for (let i = 0; i < fit; i++) t.equal(b.setXattr(name(i), Buffer.alloc(value), 0), 0, `${name(i)} fits`);
  t.equal(b.setXattr(name(fit), Buffer.alloc(1), 0), -errno.ENOSPC, 'the byte cap is reached exactly');
  t.equal(b.setXattr(name(0), Buffer.alloc(value - 10), 0), 0, 'shrinking one frees bytes');
  t.equal(b.setXattr('trusted.x', Buffer.alloc(10 - 'trusted.x'.length), 0), 0, 'which a new one may use');
  t.equal(b.setXattr('trusted.y', Buffer.alloc(0), 0), -errno.ENOSPC, 'and no more');
  t.equal(b.setXattr(name(1), Buffer.alloc(value + 1), 0), -errno.ENOSPC, 'growing one past the cap is refused');
  t.same((b.getXattr(name(1)) as Buffer).length, value, 'and leaves it as it was');
  t.equal(b.removeXattr(name(2)), 0);
  t.equal(b.setXattr(name(1), Buffer.alloc(value + 1), 0), 0, 'after a removal it fits');
});

t.test('XATTR_CREATE and XATTR_REPLACE', async (t) => {
  const a = fresh();
  t.equal(a.setXattr('trusted.r', Buffer.from('1'), 2), -errno.ENODATA, 'replace of an absent one');
  t.equal(a.setXattr('trusted.r', Buffer.from('1'), 1), 0, 'create');
  t.equal(a.setXattr('trusted.r', Buffer.from('2'), 1), -errno.EEXIST, 'create of an existing one');
  t.equal(a.setXattr('trusted.r', Buffer.from('3'), 2), 0, 'replace');
  t.same(a.getXattr('trusted.r'), Buffer.from('3'));
  t.equal(a.removeXattr('trusted.r'), 0);
  t.equal(a.removeXattr('trusted.r'), -errno.ENODATA);
  t.equal(a.getXattr('trusted.r'), -errno.ENODATA);
});
