import t from 'tap';
import { crc32 } from 'node:zlib';
import {
  BITMAP_PAGE_MAGIC,
  BITMAP_PAGE_SIZE,
  BITMAP_PAYLOAD_BYTES,
  BITS_PER_PAGE,
  PAGE_KIND_DIRTY,
  PAGE_KIND_INTENT,
  PAGE_KIND_PRESENT,
  PG_CRC,
  PG_GENERATION,
  PG_INDEX,
  PG_KIND,
  PG_MAGIC,
  PG_PAYLOAD,
  PG_STAMP,
  PG_VERSION,
  choosePage,
  decodeSlot,
  encodePage,
  slotOffset,
} from '../../src/volume/bitmap-page.js';
import { BitmapFile } from '../../src/volume/bitmap-file.js';
import { PagedBitmap } from '../../src/volume/bitmap.js';
import { MemFs } from '../../src/volume/memfs.js';
import { Rng } from '../../src/util/random.js';

function page(kind: typeof PAGE_KIND_DIRTY | typeof PAGE_KIND_INTENT, index: number, gen: number, stamp: number, bits: number[]): Buffer {
  const payload = new Uint8Array(BITMAP_PAYLOAD_BYTES);
  for (const b of bits) payload[b >> 3]! |= 1 << (b & 7);
  return encodePage(kind, index, gen, stamp, payload, Buffer.alloc(BITMAP_PAGE_SIZE));
}

t.test('golden layout of one slot', async (t) => {
  const p = page(PAGE_KIND_DIRTY, 7, 3, 42, [0, 9, BITS_PER_PAGE - 1]);
  t.equal(p.length, 4096);
  t.equal(BITS_PER_PAGE, 32512);
  t.equal(p.readUInt32BE(PG_MAGIC), BITMAP_PAGE_MAGIC);
  t.equal(p.subarray(0, 4).toString('latin1'), 'ISBP');
  t.equal(p[PG_VERSION], 1);
  t.equal(p[PG_KIND], 2);
  t.same([...p.subarray(6, 8)], [0, 0], 'reserved bytes are zero');
  t.equal(p.readBigUInt64BE(PG_GENERATION), 3n);
  t.equal(p.readBigUInt64BE(PG_STAMP), 42n);
  t.equal(p.readUInt32BE(PG_INDEX), 7);
  const expected = crc32(p.subarray(PG_CRC + 4), crc32(p.subarray(0, PG_CRC))) >>> 0;
  t.equal(p.readUInt32BE(PG_CRC), expected, 'CRC-32 of bytes 0-27 then 32-4095');
  t.equal(p[PG_PAYLOAD], 0b0000_0001, 'bit 0: payload byte 0, least significant bit');
  t.equal(p[PG_PAYLOAD + 1], 0b0000_0010, 'bit 9: payload byte 1, bit 1');
  t.equal(p[BITMAP_PAGE_SIZE - 1], 0b1000_0000, 'last bit: last byte, most significant bit');
  t.equal(slotOffset(7, 0), 14 * 4096);
  t.equal(slotOffset(7, 1), 15 * 4096);
});

t.test('round trip and the checks of decodeSlot', async (t) => {
  const p = page(PAGE_KIND_INTENT, 2, 9, 5, [3, 1000]);
  const d = decodeSlot(p, 0, PAGE_KIND_INTENT, 2);
  t.equal(d.state, 'valid');
  if (d.state === 'valid') {
    t.equal(d.generation, 9);
    t.equal(d.stamp, 5);
    t.equal(d.payload[0], 8);
  }
  t.equal(decodeSlot(Buffer.alloc(4096), 0, PAGE_KIND_INTENT, 2).state, 'blank', 'all zero bytes: never written');
  t.equal(decodeSlot(Buffer.alloc(0), 0, PAGE_KIND_INTENT, 2).state, 'blank', 'past the end of the file: never written');
  t.match(decodeSlot(p, 0, PAGE_KIND_DIRTY, 2), { state: 'bad', reason: /kind/ }, 'a page of another kind');
  t.match(decodeSlot(p, 0, PAGE_KIND_INTENT, 3), { state: 'bad', reason: /index/ }, 'a page stored in the wrong place');
  t.match(decodeSlot(p.subarray(0, 1000), 0, PAGE_KIND_INTENT, 2), { state: 'bad', reason: /truncated/ });
  // Every single bit flip anywhere is caught.
  const rng = new Rng(11);
  for (let i = 0; i < 200; i++) {
    const q = Buffer.from(p);
    const at = rng.int(BITMAP_PAGE_SIZE);
    q[at]! ^= 1 << rng.int(8);
    t.equal(decodeSlot(q, 0, PAGE_KIND_INTENT, 2).state, 'bad', `flip at byte ${at}`);
  }
  t.throws(() => encodePage(PAGE_KIND_DIRTY, 0, 0, 0, null, Buffer.alloc(4096)), /generation/);
});

t.test('two slots: the newest valid copy wins; a torn copy loses to the other', async (t) => {
  const older = page(PAGE_KIND_DIRTY, 4, 5, 1, [1]);
  const newer = page(PAGE_KIND_DIRTY, 4, 6, 1, [1, 2]);
  const both = Buffer.concat([older, newer]);
  t.same([...(choosePage(both, 0, PAGE_KIND_DIRTY, 4, 'f').content?.payload.subarray(0, 1) ?? [])], [0b110]);
  t.same(choosePage(both, 0, PAGE_KIND_DIRTY, 4, 'f').slotGenerations, [5, 6]);
  const swapped = Buffer.concat([newer, older]);
  t.equal(choosePage(swapped, 0, PAGE_KIND_DIRTY, 4, 'f').content?.generation, 6, 'slot order does not matter');

  // Tear the newer copy: half of its sectors are from an earlier content.
  const torn = Buffer.from(both);
  Buffer.alloc(512, 0xee).copy(torn, BITMAP_PAGE_SIZE + 1024);
  const c = choosePage(torn, 0, PAGE_KIND_DIRTY, 4, 'f');
  t.equal(c.content?.generation, 5, 'the intact older copy is used');
  t.match(c.repaired, /slot 1: checksum/);

  const blankAndTorn = Buffer.concat([Buffer.alloc(4096), torn.subarray(4096)]);
  const d = choosePage(blankAndTorn, 0, PAGE_KIND_DIRTY, 4, 'f');
  t.equal(d.content, null, 'a torn first write: the page was never durably written');
  t.equal(choosePage(Buffer.alloc(8192), 0, PAGE_KIND_DIRTY, 4, 'f').content, null, 'never written');
});

t.test('both copies bad: FORMAT_CORRUPT naming the file, the page and the slots', async (t) => {
  const bad = Buffer.alloc(8192, 0x5a);
  const err = t.throws(() => choosePage(bad, 0, PAGE_KIND_DIRTY, 12, '/v/dirty.0')) as { code?: string; message?: string; details?: Record<string, unknown> };
  t.equal(err.code, 'FORMAT_CORRUPT');
  t.match(err.message, /\/v\/dirty\.0: bitmap page 12 is unreadable: slot 0 bad magic.*slot 1 bad magic/);
  t.same(err.details?.['slots'], [slotOffset(12, 0), slotOffset(12, 1)]);
  t.equal(err.details?.['page'], 12);
});

t.test('BitmapFile alternates slots and never overwrites the last synced copy', async (t) => {
  const fs = new MemFs();
  await fs.mkdir('/v');
  const f = await BitmapFile.open(fs, '/v/dirty.0', PAGE_KIND_DIRTY, 'create');
  const bits = new PagedBitmap();
  bits.set(5);
  bits.set(BITS_PER_PAGE + 1); // page 1
  await f.writePages([
    { index: 0, stamp: 1, payload: bits.page(0) ?? null },
    { index: 1, stamp: 1, payload: bits.page(1) ?? null },
  ]);
  const first = fs.contents('/v/dirty.0');
  for (const slot of [0, 1]) t.match(decodeSlot(first, slotOffset(0, slot), PAGE_KIND_DIRTY, 0), { state: 'valid', generation: 1, stamp: 1 }, `a first write fills slot ${slot} too`);
  await f.datasync();
  t.equal(f.syncedPages, 2, 'two pages synced');
  bits.set(6);
  await f.writePages([{ index: 0, stamp: 2, payload: bits.page(0) ?? null }]);
  // Not synced: a second write of page 0 must go over the unsynced copy, not the synced one.
  bits.set(7);
  await f.writePages([{ index: 0, stamp: 2, payload: bits.page(0) ?? null }]);
  const raw = fs.contents('/v/dirty.0');
  const slot0 = decodeSlot(raw, slotOffset(0, 0), PAGE_KIND_DIRTY, 0);
  const slot1 = decodeSlot(raw, slotOffset(0, 1), PAGE_KIND_DIRTY, 0);
  t.match(slot0, { state: 'valid', generation: 3, stamp: 2 });
  t.match(slot1, { state: 'valid', generation: 1, stamp: 1 }, 'the synced copy is intact');
  await f.datasync();
  await f.writePages([{ index: 0, stamp: 3, payload: null }]);
  const after = decodeSlot(fs.contents('/v/dirty.0'), slotOffset(0, 1), PAGE_KIND_DIRTY, 0);
  t.match(after, { state: 'valid', generation: 4, stamp: 3 }, 'after a sync the older slot is written');
  await f.datasync();

  // Reload: newest copies, and a torn slot falls back to the other.
  fs.poke('/v/dirty.0', slotOffset(0, 1) + 2048, Buffer.alloc(512, 1));
  const g = await BitmapFile.open(fs, '/v/dirty.0', PAGE_KIND_DIRTY);
  const loaded = await g.load(100);
  t.equal(loaded.pages.length, 2);
  t.equal(loaded.pages[0]?.content?.generation, 3);
  t.equal(loaded.pages[0]?.content?.payload[0], 0b1110_0000);
  t.equal(loaded.repaired.length, 1);
  t.equal(loaded.pages[1]?.content?.stamp, 1);
  t.same(loaded.unreadable, []);

  fs.poke('/v/dirty.0', slotOffset(1, 0), Buffer.alloc(8192, 3));
  const h = await BitmapFile.open(fs, '/v/dirty.0', PAGE_KIND_DIRTY);
  const broken = await h.load(100);
  t.equal(broken.unreadable.length, 1);
  t.equal(broken.unreadable[0]?.index, 1);
  t.match(broken.unreadable[0]?.error.message, /page 1 is unreadable/);
  await t.rejects(BitmapFile.open(fs, '/v/dirty.1', PAGE_KIND_DIRTY), { code: 'NOT_FOUND' }, 'a bitmap file that must exist is not created');
});

t.test('a synced page never reads as empty: garbage in one slot, a truncated file', async (t) => {
  const fs = new MemFs();
  await fs.mkdir('/v');
  const f = await BitmapFile.open(fs, '/v/present', PAGE_KIND_PRESENT, 'create');
  const bits = new PagedBitmap();
  bits.set(3);
  await f.writePages([{ index: 0, stamp: 0, payload: bits.page(0) ?? null }]);
  await f.datasync();
  // Garbage over the first slot (version 1 read that as a torn first write: an empty page).
  fs.poke('/v/present', slotOffset(0, 0), Buffer.alloc(BITMAP_PAGE_SIZE, 0x41));
  const g = await BitmapFile.open(fs, '/v/present', PAGE_KIND_PRESENT);
  const loaded = await g.load(100);
  t.equal(loaded.pages[0]?.content?.payload[0], 0b1000, 'the second copy is read');
  t.equal(loaded.repaired.length, 1);
  // A file cut shorter than the state record says it was: the lost pages are unreadable.
  const h = await BitmapFile.open(fs, '/v/present', PAGE_KIND_PRESENT);
  await (await fs.open('/v/present', 'r+')).truncate(0);
  const cut = await h.load(100, 1);
  t.equal(cut.pages.length, 0);
  t.equal(cut.unreadable.length, 1);
  t.match(cut.unreadable[0]?.error, { code: 'FORMAT_CORRUPT', message: /page 0 is missing/ });
});

t.test('settle gives a single copy its second slot', async (t) => {
  const fs = new MemFs();
  await fs.mkdir('/v');
  // A version 1 first write: slot 0 only.
  const buf = encodePage(PAGE_KIND_INTENT, 0, 1, 5, new Uint8Array([1]), Buffer.alloc(BITMAP_PAGE_SIZE));
  const w = await fs.open('/v/intent', 'create');
  await w.write(buf, 0, buf.length, 0);
  await w.datasync();
  const f = await BitmapFile.open(fs, '/v/intent', PAGE_KIND_INTENT);
  await f.load(100);
  await f.settle();
  t.equal(f.syncedPages, 1);
  const raw = fs.contents('/v/intent');
  t.match(decodeSlot(raw, slotOffset(0, 1), PAGE_KIND_INTENT, 0), { state: 'valid', generation: 1, stamp: 5 });
});

t.test('PagedBitmap against a Set', async (t) => {
  const rng = new Rng(5);
  const bm = new PagedBitmap();
  const model = new Set<number>();
  const span = BITS_PER_PAGE * 3 + 100;
  for (let i = 0; i < 5000; i++) {
    const b = rng.int(span);
    if (rng.chance(0.8)) {
      if (bm.set(b) !== !model.has(b)) t.fail(`set ${b}`);
      model.add(b);
    } else {
      if (bm.clear(b) !== model.has(b)) t.fail(`clear ${b}`);
      model.delete(b);
    }
  }
  const bits = [...bm.bits()];
  t.same(bits, [...model].sort((a, b) => a - b), 'the same bits, ascending');
  t.equal(bm.count(), model.size);
  const other = new PagedBitmap();
  other.setRange(10, 20);
  other.set(BITS_PER_PAGE * 5);
  bm.takeUnsaved();
  bm.or(other);
  t.ok(bm.allSet(10, 20));
  t.ok(bm.get(BITS_PER_PAGE * 5));
  t.ok(bm.takeUnsaved().includes(5), 'OR marks changed pages unsaved');
});
