import t from 'tap';
import { MemFs } from '../../src/volume/memfs.js';
import { Rng } from '../../src/util/random.js';

t.test('a crash keeps what was synced and drops the rest', async (t) => {
  const fs = new MemFs();
  await fs.mkdir('/d');
  const f = await fs.open('/d/a', 'create');
  await f.write(Buffer.alloc(10000, 1), 0, 10000, 0);
  await f.datasync();
  await fs.syncDir('/d');
  await f.write(Buffer.alloc(100, 2), 0, 100, 20000);
  await f.truncate(5000);
  fs.crash();
  await t.rejects(f.read(Buffer.alloc(1), 0, 1, 0), { code: 'LOCAL_IO' }, 'handles of before the crash are dead');
  const g = await fs.open('/d/a', 'r+');
  t.equal(await g.size(), 10000);
  t.same(fs.contents('/d/a'), Buffer.alloc(10000, 1));
});

t.test('names need a directory sync', async (t) => {
  const fs = new MemFs();
  await fs.mkdir('/d');
  const f = await fs.open('/d/new', 'create');
  await f.write(Buffer.from('x'), 0, 1, 0);
  await f.sync();
  fs.crash();
  t.equal(await fs.exists('/d/new'), false, 'created, synced, but the directory was not');
  const g = await fs.open('/d/tmp', 'create');
  await g.write(Buffer.from('y'), 0, 1, 0);
  await g.sync();
  await fs.syncDir('/d');
  await fs.rename('/d/tmp', '/d/final');
  fs.crash();
  t.equal(await fs.exists('/d/tmp'), true, 'an unsynced rename is undone');
  await fs.rename('/d/tmp', '/d/final');
  await fs.syncDir('/d');
  fs.crash();
  t.equal(await fs.exists('/d/final'), true);
  t.equal(await fs.exists('/d/tmp'), false);
});

t.test('a crash with a generator tears unsynced writes by sector', async (t) => {
  let mixed = 0;
  for (let seed = 1; seed <= 20; seed++) {
    const fs = new MemFs();
    await fs.mkdir('/d');
    const f = await fs.open('/d/a', 'create');
    await f.write(Buffer.alloc(4096, 1), 0, 4096, 0);
    await f.datasync();
    await fs.syncDir('/d');
    await f.write(Buffer.alloc(4096, 2), 0, 4096, 0);
    fs.crash(new Rng(seed));
    const c = fs.contents('/d/a');
    const sectors = new Set<number>();
    for (let s = 0; s < 4096; s += 512) {
      const v = c[s]!;
      t.ok(c.subarray(s, s + 512).every((x) => x === v), 'each sector is whole') || t.fail('sector not whole');
      sectors.add(v);
    }
    if (sectors.size === 2) mixed++;
  }
  t.ok(mixed > 0, 'some crashes leave a mix of old and new sectors');
});

t.test('holes', async (t) => {
  const fs = new MemFs();
  await fs.mkdir('/d');
  const f = await fs.open('/d/a', 'create');
  await f.write(Buffer.alloc(5 * 4096, 1), 0, 5 * 4096, 0);
  t.equal(await f.punchHole(4096, 2 * 4096 + 10), true);
  t.equal(fs.allocatedBytes('/d/a'), 3 * 4096);
  t.same(await f.dataExtents(0, 5 * 4096), [
    [0, 4096],
    [3 * 4096, 2 * 4096],
  ]);
  const b = Buffer.alloc(20);
  await f.read(b, 0, 20, 3 * 4096);
  t.same(b, Buffer.concat([Buffer.alloc(10), Buffer.alloc(10, 1)]), 'a partial punch zeroes in place');
});
