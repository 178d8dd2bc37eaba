import t from 'tap';
import { EventualStore } from '../../src/store/eventual.js';
import { MemStore } from '../../src/store/mem.js';
import { listAll } from '../../src/store/types.js';

async function keys(s: EventualStore, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for await (const o of listAll(s, prefix)) out.push(o.key);
  return out;
}

t.test('new keys reach listings late, but reads see them at once', async (t) => {
  let now = 0;
  const s = new EventualStore(new MemStore(), { seed: 1, now: () => now, maxListLagMs: 1000, missProb: 0 });
  for (let i = 0; i < 50; i++) await s.put(`k/${i}`, Buffer.from(String(i)));
  const early = await keys(s, 'k/');
  t.ok(early.length < 50, `right after the writes the listing shows ${early.length} of 50`);
  t.equal((await s.get('k/7')).toString(), '7', 'read-after-write for a new key');
  now = 1001;
  t.equal((await keys(s, 'k/')).length, 50, 'after the lag every key is listed');
});

t.test('deleted keys linger in listings and reads of overwritten keys may be stale', async (t) => {
  let now = 0;
  const s = new EventualStore(new MemStore(), { seed: 7, now: () => now, maxListLagMs: 1000, maxStaleReadMs: 1000, missProb: 0 });
  for (let i = 0; i < 20; i++) await s.put(`d/${i}`, Buffer.from('old'));
  now = 2000;
  for (let i = 0; i < 20; i++) await s.put(`d/${i}`, Buffer.from('new'));
  let stale = 0;
  for (let i = 0; i < 20; i++) if ((await s.get(`d/${i}`)).toString() === 'old') stale++;
  t.ok(stale > 0, `${stale} of 20 overwritten keys still read old bytes`);
  for (let i = 0; i < 20; i++) await s.delete(`d/${i}`);
  t.ok((await keys(s, 'd/')).length > 0, 'deleted keys still listed right after the delete');
  now = 4001;
  t.same(await keys(s, 'd/'), [], 'ghosts are gone after the lag');
  for (let i = 0; i < 20; i++) t.equal((await s.get(`d/${i}`).catch(() => null)), null, `d/${i} not readable after the stale window`);
});

t.test('listings may miss visible keys at random, deterministically per seed', async (t) => {
  const run = async (seed: number): Promise<number[]> => {
    let now = 0;
    const s = new EventualStore(new MemStore(), { seed, now: () => now, maxListLagMs: 1000, missProb: 0.5 });
    for (let i = 0; i < 40; i++) await s.put(`m/${String(i).padStart(2, '0')}`, Buffer.from('x'));
    const seen: number[] = [];
    for (const at of [200, 600, 900]) {
      now = at;
      seen.push((await keys(s, 'm/')).length);
    }
    return seen;
  };
  t.same(await run(3), await run(3), 'the same seed gives the same listings');
  t.ok((await run(3)).some((n) => n < 40), 'some listings miss keys');
});

t.test('create-if-absent is atomic over last-writer-wins overwrites, and can be switched off', async (t) => {
  let now = 0;
  const s = new EventualStore(new MemStore(), { seed: 5, now: () => now, maxStaleReadMs: 1000, missProb: 0 });
  t.equal(await s.conditionalPut(), true, 'offered by default');
  t.equal(await s.putIfAbsent('c/a', Buffer.from('one')), true);
  t.equal(await s.putIfAbsent('c/a', Buffer.from('two')), false, 'an existing key is never overwritten');
  await s.put('c/a', Buffer.from('three'));
  t.equal(await s.putIfAbsent('c/a', Buffer.from('four')), false, 'not even while its reads are stale');
  const off = new EventualStore(new MemStore(), { seed: 5, now: () => now, conditionalPut: false });
  t.equal(await off.conditionalPut(), false, 'switched off, like Swift s3api');
  const err = await off.putIfAbsent('c/a', Buffer.from('x')).catch((e: unknown) => e as { code: string });
  t.equal((err as { code: string }).code, 'STORE_BAD_REQUEST', 'putIfAbsent refused');
  t.equal(await off.head('c/a'), undefined, 'nothing written');
});

t.test('reads of new keys may lag when asked to (a store without read-after-write)', async (t) => {
  let now = 0;
  const s = new EventualStore(new MemStore(), { seed: 9, now: () => now, maxNewKeyReadLagMs: 1000, missProb: 0 });
  for (let i = 0; i < 20; i++) await s.put(`n/${i}`, Buffer.from(String(i)));
  let missing = 0;
  for (let i = 0; i < 20; i++) if ((await s.head(`n/${i}`)) === undefined) missing++;
  t.ok(missing > 0, `${missing} of 20 new keys read as missing right after their write`);
  now = 1001;
  for (let i = 0; i < 20; i++) t.equal((await s.get(`n/${i}`)).toString(), String(i), `n/${i} readable after the lag`);
});
