/**
 * The data directory's lock (flock on <dataDir>/lock): one holder at a time, released by
 * release() or by the holder's death, with the holder's pid in the refusal.
 */
import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalDirectories } from '../../src/volume/directories.js';

t.test('one holder at a time; release lets the next one in', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-lock-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const a = new LocalDirectories(join(dir, 'data'));
  const lock = await a.lock();
  // A second open file in the same process conflicts too (flock is per open file).
  await t.rejects(new LocalDirectories(join(dir, 'data')).lock(), { code: 'DATA_DIR_LOCKED', message: new RegExp(`pid ${process.pid}`) }, 'a second taker is refused, naming the holder');
  await lock.release();
  await lock.release(); // twice is harmless
  const again = await new LocalDirectories(join(dir, 'data')).lock();
  t.pass('taken again after release');
  await again.release();
});
