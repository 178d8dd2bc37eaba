/**
 * The object store conformance suite: the same cases against every backend
 * (mem, fs, and a real Swift through s3). Each backend's test file calls
 * `conformance(t, factory)` with a factory that gives a fresh, empty store.
 */
import type { Test } from 'tap';
import { IslandError } from '../../src/errors.js';
import { FaultStore } from '../../src/store/fault.js';
import { composeStore } from '../../src/store/open.js';
import { listAll, type ObjectStore } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';

export type StoreFactory = () => Promise<ObjectStore>;

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return (err as IslandError).code ?? `not an IslandError: ${String(err)}`;
  }
}

async function keysOf(s: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of listAll(s, prefix)) out.push(o.key);
  return out;
}

export function conformance(t: Test, make: StoreFactory): void {
  const rng = new Rng(42);

  t.test('round trips: empty, small, multi-MiB', async (t) => {
    const s = await make();
    const bodies: Record<string, Buffer> = { 'rt/empty': Buffer.alloc(0), 'rt/small': Buffer.from('island'), 'rt/big': rng.bytes(5 * 1024 * 1024 + 3) };
    for (const [k, v] of Object.entries(bodies)) await s.put(k, v);
    for (const [k, v] of Object.entries(bodies)) {
      t.ok((await s.get(k)).equals(v), `${k} reads back identical`);
      t.equal((await s.head(k))?.size, v.length, `${k} head size`);
    }
    t.equal(await s.head('rt/missing'), undefined, 'head of a missing key is undefined');
    t.equal(await code(s.get('rt/missing')), 'STORE_NOT_FOUND');
    await s.put('rt/small', Buffer.from('overwritten'));
    t.equal((await s.get('rt/small')).toString(), 'overwritten', 'overwrite returns the new bytes');
    await s.close();
  });

  t.test('ranged reads at the edges', async (t) => {
    const s = await make();
    const body = rng.bytes(100_000);
    await s.put('range/obj', body);
    await s.put('range/empty', Buffer.alloc(0));
    t.ok((await s.getRange('range/obj', 0, 1)).equals(body.subarray(0, 1)), 'first byte');
    t.ok((await s.getRange('range/obj', 99_999, 1)).equals(body.subarray(99_999)), 'last byte');
    t.ok((await s.getRange('range/obj', 65_536, 4096)).equals(body.subarray(65_536, 69_632)), 'middle');
    t.ok((await s.getRange('range/obj', 99_000, 5000)).equals(body.subarray(99_000)), 'a range past the end is cut at the end');
    t.ok((await s.getRange('range/obj', 0, 100_000)).equals(body), 'the whole object');
    t.equal(await code(s.getRange('range/obj', 100_000, 1)), 'STORE_RANGE', 'offset at the end');
    t.equal(await code(s.getRange('range/obj', 200_000, 10)), 'STORE_RANGE', 'offset past the end');
    t.equal(await code(s.getRange('range/empty', 0, 1)), 'STORE_RANGE', 'range of an empty object');
    t.equal(await code(s.getRange('range/missing', 0, 1)), 'STORE_NOT_FOUND');
    t.equal(await code(s.getRange('range/obj', 0, 0)), 'STORE_BAD_REQUEST', 'zero length refused');
    t.equal(await code(s.getRange('range/obj', -1, 5)), 'STORE_BAD_REQUEST', 'negative offset refused');
    await s.close();
  });

  t.test('listing thousands of keys with pagination and prefixes', async (t) => {
    const s = await make();
    const keys: string[] = [];
    for (let i = 0; i < 2100; i++) keys.push(`list/k/${(i * 7919 % 2100).toString(16).padStart(4, '0')}`);
    keys.push('list/k2', 'list/kx/a', 'list/other/z', 'listing/x');
    const small = Buffer.from('x');
    for (let i = 0; i < keys.length; i += 64) await Promise.all(keys.slice(i, i + 64).map((k) => s.put(k, small)));
    const expectK = keys.filter((k) => k.startsWith('list/k/')).sort();
    const got = await keysOf(s, 'list/k/');
    t.same(got, expectK, `all ${expectK.length} keys under list/k/ in order`);
    const first = await s.list('list/k/', { limit: 1000 });
    t.equal(first.items.length, 1000, 'a full first page');
    t.equal(first.next, first.items[999]?.key, 'next names the last key of the page');
    const third = await s.list('list/k/', { startAfter: expectK[1999] });
    t.same(third.items.map((o) => o.key), expectK.slice(2000), 'startAfter resumes after the key');
    t.equal(third.next, undefined, 'the last page has no next');
    t.same(await keysOf(s, 'list/k'), [...expectK, 'list/k2', 'list/kx/a'].sort(), 'a prefix ending mid-segment');
    t.same(await keysOf(s, 'list/k/00a'), expectK.filter((k) => k.startsWith('list/k/00a')), 'a prefix ending mid-name');
    t.same(await keysOf(s, 'list/'), keys.filter((k) => k.startsWith('list/')).sort(), 'a parent prefix lists everything below');
    t.same(await keysOf(s, 'nothing/'), [], 'an empty prefix range');
    t.equal(first.items[0]?.size, 1, 'listing reports sizes');
    t.equal(await code(s.list('list/', { limit: 0 })), 'STORE_BAD_REQUEST', 'limit 0 refused');
    await s.close();
  });

  t.test('deletes: missing keys are fine, many at once', async (t) => {
    const s = await make();
    await s.delete('del/never-existed');
    const keys = Array.from({ length: 30 }, (_, i) => `del/${i}`);
    for (const k of keys) await s.put(k, Buffer.from(k));
    await s.delete('del/0');
    t.equal(await s.head('del/0'), undefined, 'deleted');
    await s.deleteMany([...keys.slice(1), 'del/missing']);
    for (const k of keys) t.equal(await code(s.get(k)), 'STORE_NOT_FOUND', `${k} gone`);
    await s.deleteMany([]);
    await s.close();
  });

  t.test('keys with unusual characters round-trip and list; bad keys are refused', async (t) => {
    const s = await make();
    const odd = ['odd/with space', 'odd/plus+sign', 'odd/percent%20', 'odd/équipe', 'odd/日本語', 'odd/emoji-😀', "odd/q'uote", 'odd/a=b&c', 'odd/hash#x', 'odd/tilde~', 'odd/star*(1)', 'odd/.hidden', 'odd/..dots', 'odd/x.'];
    for (const k of odd) await s.put(k, Buffer.from(k, 'utf8'));
    for (const k of odd) t.equal((await s.get(k)).toString('utf8'), k, `${JSON.stringify(k)} reads back`);
    t.same(await keysOf(s, 'odd/'), [...odd].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))), 'listed in UTF-8 byte order');
    for (const bad of ['', '/abs', 'a//b', 'a/../b', 'a/./b', '..', 'a/', 'ctl\nchar', 'nul\u0000', 'x'.repeat(1025), `seg/${'y'.repeat(81)}`, 'lone\ud800']) {
      t.equal(await code(s.put(bad, Buffer.from('x'))), 'STORE_BAD_REQUEST', `refused: ${JSON.stringify(bad.slice(0, 20))}`);
    }
    await s.close();
  });

  t.test('concurrent puts', async (t) => {
    const s = await make();
    const bodies = Array.from({ length: 48 }, (_, i) => rng.bytes(1000 + i));
    await Promise.all(bodies.map((b, i) => s.put(`conc/${i}`, b)));
    for (let i = 0; i < bodies.length; i++) t.ok((await s.get(`conc/${i}`)).equals(bodies[i] as Buffer), `conc/${i}`);
    const racers = Array.from({ length: 8 }, (_, i) => Buffer.alloc(4096, i));
    await Promise.all(racers.map((b) => s.put('conc/same', b)));
    const won = await s.get('conc/same');
    t.ok(racers.some((b) => b.equals(won)), 'racing puts of one key leave one whole value');
    await s.close();
  });

  t.test('create-if-absent: one winner among racers, never an overwrite', async (t) => {
    const s = await make();
    if (!(await s.conditionalPut())) {
      t.equal(await code(s.putIfAbsent('cond/x', Buffer.from('a'))), 'STORE_BAD_REQUEST', `${s.description} has no create-if-absent: conditionalPut() is false and putIfAbsent is refused`);
      t.equal(await s.head('cond/x'), undefined, 'the refused call wrote nothing');
      await s.close();
      return;
    }
    t.equal(await s.putIfAbsent('cond/a', Buffer.from('first')), true, 'a new key is created');
    t.equal(await s.putIfAbsent('cond/a', Buffer.from('second')), false, 'an existing key is not');
    t.equal((await s.get('cond/a')).toString(), 'first', 'and keeps its bytes');
    await s.put('cond/b', Buffer.from('plain'));
    t.equal(await s.putIfAbsent('cond/b', Buffer.from('late')), false, 'a key written by put exists too');
    await s.delete('cond/b');
    t.equal(await s.putIfAbsent('cond/b', Buffer.from('again')), true, 'a deleted key can be created again');
    t.equal(await s.putIfAbsent('cond/empty', Buffer.alloc(0)), true, 'an empty body');
    t.equal((await s.head('cond/empty'))?.size, 0);
    for (let round = 0; round < 3; round++) {
      const racers = Array.from({ length: 16 }, (_, i) => Buffer.from(`racer ${i} of round ${round}`));
      const won = await Promise.all(racers.map((b) => s.putIfAbsent(`cond/race${round}`, b)));
      t.equal(won.filter(Boolean).length, 1, `round ${round}: exactly one of 16 racing calls creates the key`);
      t.ok((await s.get(`cond/race${round}`)).equals(racers[won.indexOf(true)] as Buffer), 'it holds the winner\'s bytes');
    }
    t.equal(await code(s.putIfAbsent('bad//key', Buffer.from('x'))), 'STORE_BAD_REQUEST', 'bad keys are refused');
    await s.close();
  });

  t.test('a retried create-if-absent whose first answer was lost still says it created the key', async (t) => {
    const backend = await make();
    if (!(await backend.conditionalPut())) {
      t.pass(`${backend.description} has no create-if-absent`);
      await backend.close();
      return;
    }
    const faults = new FaultStore(backend);
    const { store, stats } = composeStore(faults, { retry: { baseDelayMs: 1, maxDelayMs: 5 } });
    faults.add({ op: 'put-if-absent', action: { kind: 'lose-answer' } });
    t.equal(await store.putIfAbsent('lost/a', Buffer.from('mine')), true, 'the retry finds its own bytes: created');
    t.equal(stats.ops.put_if_absent.requests, 2, 'two attempts reached the store');
    await backend.put('lost/b', Buffer.from('theirs'));
    faults.add({ op: 'put-if-absent', action: { kind: 'fail', code: 'STORE_UNAVAILABLE' } });
    t.equal(await store.putIfAbsent('lost/b', Buffer.from('mine')), false, "after a failed attempt, another writer's object still means: existed");
    t.equal(await store.putIfAbsent('lost/b', Buffer.from('theirs')), false, 'without a failed attempt, even equal bytes mean: existed');
    await store.close();
  });

  t.test('retries under injected faults', async (t) => {
    const backend = await make();
    const faults = new FaultStore(backend);
    const { store, stats } = composeStore(faults, { retry: { baseDelayMs: 1, maxDelayMs: 5 } });
    faults.failNext('put', 2);
    await store.put('fault/a', Buffer.from('ok'));
    t.equal(stats.ops.put.requests, 3, 'two transient failures then success: three requests');
    t.equal(stats.ops.put.errors.FAULT_INJECTED, 2, 'both failures counted');
    faults.add({ op: 'get', action: { kind: 'fail', code: 'STORE_ACCESS_DENIED' } });
    t.equal(await code(store.get('fault/a')), 'STORE_ACCESS_DENIED', 'a permanent error is not retried');
    t.equal(stats.ops.get.requests, 1, 'one request for a permanent error');
    faults.add({ op: 'get', action: { kind: 'corrupt' } });
    t.not((await store.get('fault/a')).toString(), 'ok', 'the corruption fault flips a byte');
    faults.add({ op: 'get', action: { kind: 'hang' } });
    const hung = composeStore(faults, { retry: { deadlineMs: 300, baseDelayMs: 1 } }).store;
    t.equal(await code(hung.get('fault/a')), 'STORE_TIMEOUT', 'a hung request ends at the deadline as STORE_TIMEOUT');
    faults.failNext('get', Infinity, 'STORE_UNAVAILABLE');
    const err = await composeStore(faults, { retry: { attempts: 4, baseDelayMs: 1, maxDelayMs: 2 } }).store.get('fault/a').catch((e: unknown) => e as IslandError);
    t.equal(err.code, 'STORE_UNAVAILABLE', 'gives up with the transient error');
    t.match(err.message, /gave up after 4 attempts/, 'the message says how hard it tried');
    const ac = new AbortController();
    faults.clear();
    faults.add({ op: 'get', action: { kind: 'hang' } });
    const p = code(store.get('fault/a', { signal: ac.signal }));
    ac.abort();
    t.equal(await p, 'ABORTED', "the caller's AbortSignal ends a call at once");
    await store.close();
  });
}
