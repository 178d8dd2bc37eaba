/**
 * What a file on the mount carries besides its data: owner, group, permission bits and
 * extended attributes. They start from the configured defaults (fileOwner, fileGroup,
 * fileMode) and live in memory with the file: chown, chmod and setxattr change them for as
 * long as the file stays on the mount (libvirt chowns a disk to its QEMU user before it
 * starts a domain, records the previous owner in trusted.libvirt.security.* attributes, and
 * restores both after). A detach, a snapshot unmount or a daemon restart returns the file to
 * the defaults. Nothing here is persisted or reaches the volume's data.
 *
 * The kernel checks who may change what (the mount uses default_permissions): only a
 * privileged process changes the owner, the owner or a privileged process the mode, and
 * trusted.* and security.* attributes need CAP_SYS_ADMIN to set. Only those two namespaces
 * are kept; user.*, system.* and the rest answer ENOTSUP.
 *
 * Bounds, since any process that may set attributes could otherwise grow the daemon's memory:
 * a value up to XATTR_VALUE_MAX bytes (E2BIG past it), and per file at most XATTR_COUNT_MAX
 * attributes holding XATTR_BYTES_MAX bytes of names and values (ENOSPC past them).
 */
import { ERR } from './errno.js';

/** Owner, group and permission bits a file starts with. */
export interface FileDefaults {
  uid: number;
  gid: number;
  /** Permission bits (no file type). */
  mode: number;
}

/** The namespaces kept: where libvirt (trusted.libvirt.security.*) and LSMs (security.*) write. */
export const XATTR_NAMESPACES = ['security.', 'trusted.'] as const;
/** libvirt's values are a few dozen bytes (uid:gid, a reference count, a timestamp), SELinux labels under 256. */
export const XATTR_VALUE_MAX = 4096;
/** libvirt keeps three attributes per security driver; 64 leaves room for every driver and LSM. */
export const XATTR_COUNT_MAX = 64;
/** Names and values of one file together: 64 KiB, the most one Linux xattr value may hold. */
export const XATTR_BYTES_MAX = 64 * 1024;
/** setxattr(2) flags (linux/xattr.h). */
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;
/** chown(2) leaves an id unchanged when it is (uid_t)-1, which arrives as this unsigned value. */
const ID_UNCHANGED = 0xffff_ffff;
/** chmod keeps the permission bits with setuid, setgid and sticky; the file type is ours. */
const MODE_BITS = 0o7777;
const WRITE_BITS = 0o222;

/** Is the name in a kept namespace (a non-empty name after the prefix)? */
export function keptXattr(name: string): boolean {
  return XATTR_NAMESPACES.some((p) => name.startsWith(p) && name.length > p.length);
}

export class FileAttrs {
  uid: number;
  gid: number;
  private mode: number;
  /** When the owner, mode or an attribute last changed (undefined: never). */
  changed: Date | undefined;
  private readonly xattrs = new Map<string, Buffer>();
  private bytes = 0;

  constructor(d: FileDefaults) {
    this.uid = d.uid;
    this.gid = d.gid;
    this.mode = d.mode & MODE_BITS;
  }

  /** The permission bits shown; a read-only file never shows write bits. */
  modeBits(readOnly: boolean): number {
    return readOnly ? this.mode & ~WRITE_BITS : this.mode;
  }

  chown(uid: number, gid: number): void {
    if (uid !== ID_UNCHANGED) this.uid = uid;
    if (gid !== ID_UNCHANGED) this.gid = gid;
    this.changed = new Date();
  }

  chmod(mode: number): void {
    this.mode = mode & MODE_BITS;
    this.changed = new Date();
  }

  /** setxattr: 0, or a negative errno. The value is copied (the caller's buffer is borrowed). */
  setXattr(name: string, value: Buffer, flags: number): number {
    if (!keptXattr(name)) return ERR.ENOTSUP;
    if (value.length > XATTR_VALUE_MAX) return ERR.E2BIG;
    const old = this.xattrs.get(name);
    if (old && flags & XATTR_CREATE) return ERR.EEXIST;
    if (!old && flags & XATTR_REPLACE) return ERR.ENODATA;
    if (!old && this.xattrs.size >= XATTR_COUNT_MAX) return ERR.ENOSPC;
    const nameBytes = Buffer.byteLength(name);
    const bytes = this.bytes - (old ? nameBytes + old.length : 0) + nameBytes + value.length;
    if (bytes > XATTR_BYTES_MAX) return ERR.ENOSPC;
    this.xattrs.set(name, Buffer.from(value));
    this.bytes = bytes;
    this.changed = new Date();
    return 0;
  }

  /** getxattr: the value, or a negative errno (ENODATA when absent). */
  getXattr(name: string): Buffer | number {
    if (!keptXattr(name)) return ERR.ENOTSUP;
    return this.xattrs.get(name) ?? ERR.ENODATA;
  }

  listXattrs(): string[] {
    return [...this.xattrs.keys()];
  }

  removeXattr(name: string): number {
    if (!keptXattr(name)) return ERR.ENOTSUP;
    const old = this.xattrs.get(name);
    if (!old) return ERR.ENODATA;
    this.xattrs.delete(name);
    this.bytes -= Buffer.byteLength(name) + old.length;
    this.changed = new Date();
    return 0;
  }
}
