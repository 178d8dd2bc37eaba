/**
 * GC's live-bytes count per pack (src/repo/pack-usage.ts): each distinct frame once,
 * however often and in whatever order it is referenced, across the compactions of its
 * buffer; references no pack can hold make the pack unaccounted instead of miscounted.
 */
import t from 'tap';
import { MAX_BLOB_FRAME } from '../../src/format/blob.js';
import { MAX_PACK_SIZE } from '../../src/format/pack.js';
import { PackUsage } from '../../src/repo/pack-usage.js';
import { Rng } from '../../src/util/random.js';

t.test('random references with repeats match a plain map', async (t) => {
  const rng = new Rng(99);
  const usage = new PackUsage();
  const oracle = new Map<string, Map<number, number>>();
  for (let i = 0; i < 200_000; i++) {
    const pack = `data/p${rng.int(7)}`;
    // Few distinct frames per pack, so most references repeat and buffers compact often.
    const frame = rng.int(i < 100_000 ? 300 : 5_000);
    const offset = frame * 40_000;
    const length = 80 + ((frame * 7919) % 30_000);
    usage.add(pack, offset, length);
    let m = oracle.get(pack);
    if (!m) oracle.set(pack, (m = new Map()));
    m.set(offset, length);
    if (i === 50_000) t.ok(usage.live('data/p3'), 'reading in the middle does not disturb the count');
  }
  t.equal(usage.size, oracle.size);
  for (const [pack, frames] of oracle) {
    let bytes = 0;
    for (const l of frames.values()) bytes += l;
    t.same(usage.live(pack), { bytes, frames: frames.size }, `${pack}: ${frames.size} frames, ${bytes} bytes`);
  }
  t.equal(usage.live('data/nothing'), undefined, 'a pack nothing references');
  t.notOk(usage.has('data/nothing'));
});

t.test('the largest frame at the last offset a pack can hold is counted exactly', async (t) => {
  const usage = new PackUsage();
  const offset = MAX_PACK_SIZE - MAX_BLOB_FRAME - 64;
  usage.add('meta/x', offset, MAX_BLOB_FRAME);
  usage.add('meta/x', 0, 1);
  usage.add('meta/x', offset, MAX_BLOB_FRAME);
  t.same(usage.live('meta/x'), { bytes: MAX_BLOB_FRAME + 1, frames: 2 });
});

t.test('a reference outside any readable pack makes its pack unaccounted, still live', async (t) => {
  for (const [offset, length] of [
    [MAX_PACK_SIZE, 100],
    [0, MAX_BLOB_FRAME + 1],
    [-1, 100],
    [0, 0],
    [1.5, 100],
  ] as [number, number][]) {
    const usage = new PackUsage();
    usage.add('data/y', 0, 100);
    usage.add('data/y', offset, length);
    t.ok(usage.has('data/y') && usage.live('data/y') === undefined, `offset ${offset}, length ${length}`);
  }
});
