/**
 * The one table from island error codes to the negative errno numbers a FUSE reply
 * carries. errors.ts names the errno of every code; this maps names to numbers.
 */
import { constants } from 'node:os';
import { errnoOf } from '../errors.js';

const { errno } = constants;

/** Negative errno for a FUSE reply, from any thrown value. */
export function fuseErrno(err: unknown): number {
  const name = errnoOf(err);
  const n = (errno as Record<string, number | undefined>)[name];
  return -(n ?? errno.EIO);
}

export const ERR = {
  ENOENT: -errno.ENOENT,
  EPERM: -errno.EPERM,
  EACCES: -errno.EACCES,
  EBADF: -errno.EBADF,
  EISDIR: -errno.EISDIR,
  ENOTDIR: -errno.ENOTDIR,
  EROFS: -errno.EROFS,
  EINVAL: -errno.EINVAL,
  EIO: -errno.EIO,
  ENOTSUP: -errno.ENOTSUP,
  EBUSY: -errno.EBUSY,
  EEXIST: -errno.EEXIST,
  ENODATA: -errno.ENODATA,
  ENOSPC: -errno.ENOSPC,
  E2BIG: -errno.E2BIG,
  ERANGE: -errno.ERANGE,
} as const;
