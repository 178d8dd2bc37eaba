import { mkdtemp, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
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

t.test('stale temp files from a crash are removed on open', async (t) => {
  const dir = join(root, 'crash');
  await mkdir(join(dir, '.tmp'), { recursive: true });
  await writeFile(join(dir, '.tmp', 'half-written'), 'partial');
  const s = new FsStore(dir);
  await s.put('a', Buffer.from('b'));
  t.same(await readdir(join(dir, '.tmp')), [], 'temp directory cleared');
  t.same((await s.list('')).items.map((o) => o.key), ['a'], 'temp files are never listed');
});
