/**
 * The one errno table: what a FUSE reply carries for each error code. A store failure
 * reaches a FUSE request only behind a lazy read of a file that exists, asked for with
 * valid arguments: it is an I/O error, never "no such file" or "invalid argument".
 */
import { constants } from 'node:os';
import t from 'tap';
import { CODES, IslandError, type ErrorCode } from '../../src/errors.js';
import { fuseErrno } from '../../src/fuse/errno.js';

const { errno } = constants;

t.test('store damage behind a lazy read is EIO, not ENOENT or EINVAL', async (t) => {
  for (const code of ['STORE_NOT_FOUND', 'STORE_RANGE', 'STORE_BAD_REQUEST', 'STORE_CONFIG', 'STORE_ACCESS_DENIED', 'STORE_UNAVAILABLE', 'STORE_INTEGRITY', 'FORMAT_CORRUPT', 'HASH_MISMATCH'] as ErrorCode[]) {
    t.equal(fuseErrno(new IslandError(code, 'x')), -errno.EIO, `${code} is EIO`);
  }
  t.equal(fuseErrno(new IslandError('STORE_TIMEOUT', 'x')), -errno.ETIMEDOUT, 'a store timeout stays ETIMEDOUT');
  for (const code of Object.keys(CODES) as ErrorCode[]) {
    if (!code.startsWith('STORE_')) continue;
    t.ok(CODES[code].errno === 'EIO' || CODES[code].errno === 'ETIMEDOUT', `${code}: every store code is EIO or ETIMEDOUT`);
  }
});

t.test('errors of the request itself keep their errno', async (t) => {
  t.equal(fuseErrno(new IslandError('READ_ONLY', 'x')), -errno.EROFS);
  t.equal(fuseErrno(new IslandError('NOT_PERMITTED', 'x')), -errno.EPERM);
  t.equal(fuseErrno(new IslandError('TOO_LARGE', 'x')), -errno.EFBIG);
  t.equal(fuseErrno(new IslandError('NO_SPACE', 'x')), -errno.ENOSPC);
  t.equal(fuseErrno(new Error('plain')), -errno.EIO, 'anything else is EIO');
});
