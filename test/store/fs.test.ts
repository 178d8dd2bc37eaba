import { mkdtemp, readdir, rm, utimes, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { FsStore } from '../../src/store/fs.js';
import { conformance } from '../helpers/store-conformance.js';

const root = await mkdtemp(join(tmpdir(), 'island-fs-store-'));
t.teardown(() => rm(root, { recursive: true, force: true }));
let n = 0;
conformance(t, async () => new FsStore(join(root, `s${n++}`)));

t.test('objects fan out and never escape the root', async (t) => {
  const dir = join(root, 'layout');
  const s = new FsStore(dir);
  for (let i = 0; i < 300; i++) await s.put(`data/${i.toString(16).padStart(2, '0')}${'ab'.repeat(31)}`, Buffer.from('x'));
  const fans = await readdir(join(dir, 'ddata'));
  t.ok(fans.length > 200, `300 hex keys spread over ${fans.length} fan-out directories`);
  t.ok(fans.every((f) => f.startsWith('f')), 'fan-out directories are tagged');
  await s.put('%2E%2E/x', Buffer.from('y'));
  t.same((await readdir(dir)).sort(), ['.tmp', 'd%252E%252E', 'ddata'], 'percent signs are encoded too: nothing outside the root');
});

t.test('stale temp files from a crash are removed on open, a live writer\'s are not', async (t) => {
  const dir = join(root, 'crash');
  await mkdir(join(dir, '.tmp'), { recursive: true });
  await writeFile(join(dir, '.tmp', 'half-written'), 'partial');
  const twoHoursAgo = new Date(Date.now() - 2 * 3600 * 1000);
  await utimes(join(dir, '.tmp', 'half-written'), twoHoursAgo, twoHoursAgo);
  await writeFile(join(dir, '.tmp', 'being-written'), 'another process writes this now');
  const s = new FsStore(dir);
  await s.put('a', Buffer.from('b'));
  t.same(await readdir(join(dir, '.tmp')), ['being-written'], 'the crash leftover is gone, the fresh temp file stays');
  t.same((await s.list('')).items.map((o) => o.key), ['a'], 'temp files are never listed');
});

t.test('a directory where an object file should be is a permanent error, never retried', async (t) => {
  const { openStore } = await import('../../src/store/open.js');
  const { isTransient } = await import('../../src/errors.js');
  const dir = join(root, 'eisdir');
  const s = new FsStore(dir);
  await s.put('data/abc', Buffer.from('x'));
  const file = join(dir, 'ddata', 'fab', 'oabc');
  await rm(file);
  await mkdir(join(file, 'inner'), { recursive: true });
  for (const [what, op] of [
    ['get', () => s.get('data/abc')],
    ['getRange', () => s.getRange('data/abc', 0, 1)],
    ['put', () => s.put('data/abc', Buffer.from('y'))],
    ['head', () => s.head('data/abc')],
  ] as const) {
    const err = (await (op as () => Promise<unknown>)().then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: string; message?: string } | undefined;
    t.equal(err?.code, 'STORE_DAMAGED', `${what}: STORE_DAMAGED (${err?.message})`);
    t.notOk(isTransient(err), `${what}: not transient`);
  }
  const retries: string[] = [];
  const { store, stats } = openStore({ type: 'fs', dir }, { retry: { attempts: 3, baseDelayMs: 1, onRetry: (i) => retries.push(i.op) } });
  await t.rejects(store.get('data/abc'), { code: 'STORE_DAMAGED' });
  t.same(retries, [], 'the retry wrapper does not retry it');
  t.equal(stats.requests, 1, 'one request reached the store');
});

t.test('two store objects on one directory do not remove each other\'s temp files', async (t) => {
  const dir = join(root, 'shared');
  const stores = Array.from({ length: 20 }, () => new FsStore(dir));
  await Promise.all(stores.map((s, i) => s.put(`k/${i}`, Buffer.alloc(64 * 1024, i))));
  for (let i = 0; i < stores.length; i++) t.equal((await stores[0]!.get(`k/${i}`))[0], i, `k/${i} written whole`);
});
