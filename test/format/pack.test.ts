import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { IslandError } from '../../src/errors.js';
import { BH_CRC_OFF, BH_KIND_OFF, BLOB_HEADER_LEN, decodeBlob, encodeBlob, type EncodedBlob } from '../../src/format/blob.js';
import { CODEC_LZ4, CODEC_NONE } from '../../src/format/codec.js';
import { sameLocation } from '../../src/format/location.js';
import {
  encodePackFooter,
  encodePackTrailer,
  FOOTER_LEN,
  locationOf,
  MAX_PACK_BLOBS,
  PACK_MAGIC,
  PACK_TARGET_SIZE,
  PackBuilder,
  parsePack,
  parsePackFooter,
  parsePackTrailer,
  PF_COUNT_OFF,
  PF_CRC_OFF,
  PF_FLAGS_OFF,
  PF_KIND_OFF,
  PF_TRAILER_HASH_OFF,
  PF_TRAILER_LEN_OFF,
  PF_TRAILER_OFF_OFF,
  PF_VERSION_OFF,
  recoverPackTrailer,
  TE_CODEC_OFF,
  TE_RESERVED_OFF,
  TRAILER_ENTRY_LEN,
  type PackEntry,
  type PackKind,
} from '../../src/format/pack.js';
import { Rng } from '../../src/util/random.js';

const CLUSTER = 64 * 1024;
const ALLOWED = new Set(['FORMAT_CORRUPT', 'FORMAT_UNSUPPORTED', 'HASH_MISMATCH']);

/** Seeded generator (src/util/random.ts) as a () => [0, 1) function. */
function prng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

function seededBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

function textBlock(n: number, salt = ''): Buffer {
  const line = `const cluster${salt} = await volume.read(index); // island keeps it\n`;
  return Buffer.from(line.repeat(Math.ceil(n / line.length)).slice(0, n));
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return err instanceof IslandError ? err.code : `not an IslandError: ${String(err)}`;
  }
  return 'no error';
}

function build(blobs: EncodedBlob[], kind: PackKind = 'data') {
  const b = new PackBuilder(kind);
  for (const x of blobs) b.add(x.frame, x.id);
  return b.finish();
}

/** A pack with a hand-made trailer whose checksums are all valid. */
function forge(blobArea: Buffer, entries: PackEntry[], kind: PackKind = 'data', patch?: (trailer: Buffer) => void): Buffer {
  const trailer = encodePackTrailer(entries);
  const count = entries.length;
  patch?.(trailer);
  const footer = encodePackFooter({ kind, count, trailerOffset: blobArea.length, trailerHash: createHash('sha256').update(trailer).digest() });
  return Buffer.concat([blobArea, trailer, footer]);
}

function resealFooter(pack: Buffer): Buffer {
  const off = pack.length - FOOTER_LEN;
  pack.writeUInt32BE(crc32(pack.subarray(off, off + PF_CRC_OFF)) >>> 0, off + PF_CRC_OFF);
  return pack;
}

t.test('golden pack: two plain blobs encode to exactly these bytes', async (t) => {
  const p = build([encodeBlob(Buffer.from('a')), encodeBlob(Buffer.from('hello island'))]);
  const frameA =
    '49534c42010100000000000000000000000000000000000000000000000000000000000000000001' +
    '00000001ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb4e925ee7' +
    '61';
  const frameB =
    '49534c4201010000000000000000000000000000000000000000000000000000000000000000000c' +
    '0000000c0b3f7e68961547220f789546365dd3196fbf7e390caf3758224e04284f2fad6e6c85d5c6' +
    '68656c6c6f2069736c616e64';
  const trailer =
    'ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb' + // id of "a"
    '0000000000000000' + // offset 0
    '00000051' + // frame length 81
    '00000001' + // plain length 1
    '00' + // codec none
    '000000' + // reserved
    '0b3f7e68961547220f789546365dd3196fbf7e390caf3758224e04284f2fad6e' +
    '0000000000000051' + // offset 81
    '0000005c' + // frame length 92
    '0000000c' + // plain length 12
    '00' +
    '000000';
  const footer =
    '49534c50' + // magic "ISLP"
    '01' + // version
    '01' + // kind: data
    '0000' + // flags
    '00000002' + // blob count
    '00000068' + // trailer length 104
    '00000000000000ad' + // trailer offset 173
    'bb3d1ba739d2fcc9e66bfe3c7393f509ec9cee57ccd14fe13348ebda649c2e20' + // SHA-256 of the trailer
    '00000000' + // reserved
    '6622bf18'; // CRC-32 of footer bytes 0-59
  t.equal(p.bytes.toString('hex'), frameA + frameB + trailer + footer);
  t.equal(p.id.toString('hex'), '4f1de017bfd55130bf71fe98925c4bf33825fcb655f002f631fedfb6d87529c6');
  t.equal(p.id.toString('hex'), createHash('sha256').update(p.bytes).digest('hex'));
  t.same(parsePack(p.bytes, p.id), { footer: p.footer, entries: p.entries });
});

t.test('footer fields sit at their documented offsets', async (t) => {
  const p = build([encodeBlob(textBlock(CLUSTER), 'metadata'), encodeBlob(randomBytes(100), 'metadata')], 'metadata');
  const f = p.bytes.subarray(p.bytes.length - FOOTER_LEN);
  t.equal(f.readUInt32BE(0), PACK_MAGIC);
  t.equal(f[PF_VERSION_OFF], 1);
  t.equal(f[PF_KIND_OFF], 2);
  t.equal(f.readUInt16BE(PF_FLAGS_OFF), 0);
  t.equal(f.readUInt32BE(PF_COUNT_OFF), 2);
  t.equal(f.readUInt32BE(PF_TRAILER_LEN_OFF), 2 * TRAILER_ENTRY_LEN);
  t.equal(Number(f.readBigUInt64BE(PF_TRAILER_OFF_OFF)), p.footer.trailerOffset);
  t.ok(f.subarray(PF_TRAILER_HASH_OFF, PF_TRAILER_HASH_OFF + 32).equals(p.footer.trailerHash));
  t.equal(p.footer.packSize, p.bytes.length);
});

t.test('round trip: every blob comes back from its location', async (t) => {
  const rand = prng(7);
  const blobs = [
    encodeBlob(Buffer.alloc(0)),
    encodeBlob(Buffer.alloc(CLUSTER)),
    encodeBlob(randomBytes(CLUSTER)),
    encodeBlob(textBlock(CLUSTER)),
    encodeBlob(Buffer.concat([Buffer.alloc(CLUSTER / 2), seededBytes(rand, CLUSTER / 2)])),
  ];
  for (let i = 0; i < 30; i++) blobs.push(encodeBlob(rand() < 0.5 ? seededBytes(rand, Math.floor(rand() * CLUSTER)) : textBlock(CLUSTER, String(i))));
  const plains = new Map<string, number>(blobs.map((b) => [b.id.toString('hex'), b.plainLength]));
  const b = new PackBuilder('data');
  const offsets = blobs.map((x) => b.add(x.frame, x.id));
  t.equal(b.count, blobs.length);
  const sizeBefore = b.size;
  const p = b.finish();
  t.equal(p.bytes.length, sizeBefore, 'size predicted the pack size');
  t.same(
    p.entries.map((e) => e.offset),
    offsets,
  );
  t.ok(p.entries.some((e) => e.codec === CODEC_LZ4) && p.entries.some((e) => e.codec === CODEC_NONE));
  const parsed = parsePack(p.bytes, p.id);
  t.same(parsed.entries, p.entries);
  for (const e of parsed.entries) {
    const loc = locationOf(p.id, e);
    t.ok(sameLocation(loc, { pack: p.id, offset: e.offset, length: e.frameLength, id: e.id }));
    const plain = decodeBlob(p.bytes.subarray(loc.offset, loc.offset + loc.length), loc.id, { kind: 'data', base: loc.offset });
    t.equal(plain.length, plains.get(e.id.toString('hex')));
  }
});

t.test('ranged reads: footer from the tail, then the trailer alone', async (t) => {
  const p = build([encodeBlob(textBlock(CLUSTER)), encodeBlob(randomBytes(5000)), encodeBlob(Buffer.alloc(CLUSTER))]);
  const size = p.bytes.length;
  const footer = parsePackFooter(p.bytes.subarray(size - FOOTER_LEN), size);
  t.same(footer, p.footer);
  const trailer = p.bytes.subarray(footer.trailerOffset, footer.trailerOffset + footer.trailerLength);
  t.same(parsePackTrailer(trailer, footer, footer.trailerOffset), p.entries, 'exactly the trailer range');
  const tail = p.bytes.subarray(size - 4096);
  t.same(parsePackTrailer(tail, parsePackFooter(tail, size), size - tail.length), p.entries, 'one larger tail read');
  t.equal(codeOf(() => parsePackTrailer(trailer.subarray(1), footer, footer.trailerOffset + 1)), 'INVALID_ARGUMENT', 'a window that misses the trailer');
  t.equal(codeOf(() => parsePackFooter(p.bytes.subarray(size - FOOTER_LEN), size + 1)), 'FORMAT_CORRUPT', 'object size disagrees');
  t.equal(codeOf(() => parsePackFooter(p.bytes.subarray(size - FOOTER_LEN + 1))), 'FORMAT_CORRUPT', 'short tail');
});

t.test('PackBuilder: target size, kinds, duplicates', async (t) => {
  t.equal(new PackBuilder().targetSize, PACK_TARGET_SIZE);
  const b = new PackBuilder('data', 200 * 1024);
  let n = 0;
  while (!b.full) {
    const x = encodeBlob(randomBytes(CLUSTER));
    if (!b.fits(x.frame.length)) break;
    b.add(x.frame, x.id);
    n++;
  }
  t.equal(n, 3, 'three incompressible clusters fit 200 KiB, a fourth would not');
  t.notOk(b.full);
  t.notOk(b.fits(CLUSTER + BLOB_HEADER_LEN));
  t.ok(new PackBuilder('data', 1024).fits(CLUSTER), 'an empty pack takes any frame');

  const x = encodeBlob(Buffer.from('x'));
  const y = encodeBlob(Buffer.from('y'));
  const m = encodeBlob(Buffer.from('node'), 'metadata');
  const d = new PackBuilder('data');
  t.equal(d.add(x.frame, x.id), 0);
  t.ok(d.has(x.id));
  t.equal(codeOf(() => d.add(x.frame, x.id)), 'INVALID_ARGUMENT', 'duplicate id');
  t.equal(codeOf(() => d.add(m.frame, m.id)), 'INVALID_ARGUMENT', 'metadata blob in a data pack');
  t.equal(codeOf(() => d.add(y.frame, x.id)), 'INVALID_ARGUMENT', 'frame and id disagree');
  t.equal(codeOf(() => d.add(y.frame.subarray(0, y.frame.length - 1), y.id)), 'INVALID_ARGUMENT', 'truncated frame');
  t.equal(codeOf(() => d.add(Buffer.concat([y.frame, Buffer.alloc(1)]), y.id)), 'INVALID_ARGUMENT', 'frame with trailing bytes');
  t.equal(d.add(y.frame, y.id), x.frame.length);
  d.finish();
  t.equal(codeOf(() => d.finish()), 'INVALID_ARGUMENT', 'finish twice');
  t.equal(codeOf(() => d.add(m.frame, m.id)), 'INVALID_ARGUMENT', 'add after finish');
  t.equal(codeOf(() => new PackBuilder('data').finish()), 'INVALID_ARGUMENT', 'empty pack');
  t.equal(codeOf(() => new PackBuilder('data', 10)), 'INVALID_ARGUMENT', 'target below a footer');
  t.equal(codeOf(() => encodePackTrailer([{ id: x.id, offset: -1, frameLength: 81, plainLength: 1, codec: 0 }])), 'INVALID_ARGUMENT');
  t.equal(codeOf(() => encodePackTrailer([{ id: x.id, offset: 0, frameLength: 81, plainLength: 1, codec: 99 }])), 'INVALID_ARGUMENT');
  const meta = build([m], 'metadata');
  t.equal(parsePack(meta.bytes).footer.kind, 'metadata');
});

t.test('recoverPackTrailer rebuilds exactly the original trailer', async (t) => {
  const rand = prng(99);
  const blobs: EncodedBlob[] = [encodeBlob(Buffer.alloc(0)), encodeBlob(Buffer.alloc(CLUSTER))];
  for (let i = 0; i < 20; i++) blobs.push(encodeBlob(rand() < 0.5 ? seededBytes(rand, 1 + Math.floor(rand() * CLUSTER)) : textBlock(CLUSTER, `r${i}`)));
  const p = build(blobs);
  const original = p.bytes.subarray(p.footer.trailerOffset, p.footer.trailerOffset + p.footer.trailerLength);

  const whole = recoverPackTrailer(p.bytes);
  t.same(whole.entries, p.entries);
  t.ok(encodePackTrailer(whole.entries).equals(original), 'same trailer bytes');
  t.equal(whole.kind, 'data');
  t.equal(whole.blobAreaEnd, p.footer.trailerOffset);
  t.equal(whole.stop?.offset, p.footer.trailerOffset, 'the scan stops at the old trailer');
  t.same(whole.damaged, []);

  const lost = recoverPackTrailer(p.bytes.subarray(0, p.footer.trailerOffset));
  t.same(lost.entries, p.entries, 'trailer and footer cut off');
  t.equal(lost.stop, null);

  const zeroed = Buffer.from(p.bytes);
  zeroed.fill(0, p.footer.trailerOffset);
  t.ok(encodePackTrailer(recoverPackTrailer(zeroed).entries).equals(original), 'trailer and footer zeroed');

  // A damaged payload keeps its entry (the frames still tile) and is reported.
  const hurt = Buffer.from(p.bytes);
  const victim = p.entries[3]!;
  hurt[victim.offset + BLOB_HEADER_LEN]! ^= 0xff;
  const r = recoverPackTrailer(hurt);
  t.same(r.entries, p.entries);
  t.equal(r.damaged.length, 1);
  t.same(r.damaged[0]!.entry, victim);
  t.ok(['FORMAT_CORRUPT', 'HASH_MISMATCH'].includes(r.damaged[0]!.code));
  t.same(recoverPackTrailer(hurt, { verify: false }).damaged, [], 'verification can be skipped');

  // A damaged header ends the scan there.
  const torn = Buffer.from(p.bytes);
  torn[p.entries[5]!.offset + 10]! ^= 1;
  const s = recoverPackTrailer(torn);
  t.same(s.entries, p.entries.slice(0, 5));
  t.equal(s.stop?.offset, p.entries[5]!.offset);
  t.equal(s.stop?.code, 'FORMAT_CORRUPT');

  // A frame of the other kind ends the scan.
  const mixed = Buffer.concat([blobs[2]!.frame, encodeBlob(Buffer.from('node'), 'metadata').frame]);
  const mr = recoverPackTrailer(mixed);
  t.equal(mr.entries.length, 1);
  t.equal(mr.stop?.offset, blobs[2]!.frame.length);

  const nothing = recoverPackTrailer(Buffer.alloc(0));
  t.same([nothing.kind, nothing.entries, nothing.stop], [null, [], null]);
});

t.test('damaged and inconsistent packs are refused', async (t) => {
  const blobs = [encodeBlob(textBlock(CLUSTER)), encodeBlob(Buffer.from('small')), encodeBlob(randomBytes(300))];
  const p = build(blobs);
  const area = p.bytes.subarray(0, p.footer.trailerOffset);
  const good = p.entries;
  const flip = (at: number): Buffer => {
    const b = Buffer.from(p.bytes);
    b[at]! ^= 0x04;
    return b;
  };
  t.equal(codeOf(() => parsePack(flip(p.footer.trailerOffset + 5))), 'FORMAT_CORRUPT', 'trailer byte');
  t.equal(codeOf(() => parsePack(flip(p.bytes.length - 30))), 'FORMAT_CORRUPT', 'footer byte');
  t.equal(codeOf(() => parsePack(flip(p.bytes.length - FOOTER_LEN + PF_VERSION_OFF))), 'FORMAT_UNSUPPORTED', 'footer version');
  t.equal(codeOf(() => parsePack(flip(good[1]!.offset + 3))), 'FORMAT_CORRUPT', 'frame header byte');
  t.equal(codeOf(() => parsePack(flip(5), p.id)), 'HASH_MISMATCH', 'payload byte, checked against the pack id');
  t.equal(codeOf(() => parsePack(p.bytes.subarray(0, p.bytes.length - 1))), 'FORMAT_CORRUPT', 'truncated');
  t.equal(codeOf(() => parsePack(Buffer.concat([Buffer.alloc(1), p.bytes]))), 'FORMAT_CORRUPT', 'shifted');

  t.ok(parsePack(forge(area, good)), 'the forge helper makes valid packs');
  const e0 = good[0]!;
  const e1 = good[1]!;
  const e2 = good[2]!;
  t.equal(codeOf(() => parsePack(forge(area, [e0, { ...e1, offset: e1.offset - 1 }, e2]))), 'FORMAT_CORRUPT', 'overlap');
  t.equal(codeOf(() => parsePack(forge(area, [e0, e2, e1]))), 'FORMAT_CORRUPT', 'out of order');
  t.equal(codeOf(() => parsePack(forge(area, [e0, e1]))), 'FORMAT_CORRUPT', 'a frame missing from the trailer');
  t.equal(codeOf(() => parsePack(forge(area, [e0, e1, { ...e2, frameLength: e2.frameLength + 1 }]))), 'FORMAT_CORRUPT', 'past the blob area');
  t.equal(codeOf(() => parsePack(forge(area, [e0, e1, { ...e2, plainLength: e2.plainLength + 1 }]))), 'FORMAT_CORRUPT', 'entry and header disagree');
  t.equal(codeOf(() => parsePack(forge(area, [e0, e1, { ...e2, id: e0.id }]))), 'FORMAT_CORRUPT', 'entry names another id');
  t.equal(codeOf(() => parsePack(forge(area, good, 'data', (tr) => (tr[2 * TRAILER_ENTRY_LEN + TE_CODEC_OFF] = 9)))), 'FORMAT_UNSUPPORTED', 'unknown codec');
  t.equal(codeOf(() => parsePack(forge(area, good, 'data', (tr) => (tr[TE_RESERVED_OFF] = 1)))), 'FORMAT_CORRUPT', 'reserved entry byte');
  t.equal(codeOf(() => parsePack(forge(area, good, 'metadata'))), 'FORMAT_CORRUPT', 'data frames in a metadata pack');
  t.equal(codeOf(() => parsePack(forge(Buffer.alloc(0), []))), 'no error', 'an empty pack parses');
  t.equal(codeOf(() => parsePack(forge(area, []))), 'FORMAT_CORRUPT', 'blob area without blobs');

  // Footer fields with a valid checksum.
  const footerEdit = (edit: (f: Buffer) => void): Buffer => {
    const b = Buffer.from(p.bytes);
    edit(b.subarray(b.length - FOOTER_LEN));
    return resealFooter(b);
  };
  t.equal(codeOf(() => parsePack(footerEdit((f) => f.writeUInt32BE(0xffffffff, PF_COUNT_OFF)))), 'FORMAT_CORRUPT', 'huge count');
  t.equal(codeOf(() => parsePack(footerEdit((f) => f.writeUInt32BE(MAX_PACK_BLOBS, PF_COUNT_OFF)))), 'FORMAT_CORRUPT', 'count past what fits');
  t.equal(codeOf(() => parsePack(footerEdit((f) => f.writeBigUInt64BE(2n ** 63n, PF_TRAILER_OFF_OFF)))), 'FORMAT_CORRUPT', 'huge offset');
  t.equal(codeOf(() => parsePack(footerEdit((f) => f.writeBigUInt64BE(1n, PF_TRAILER_OFF_OFF)))), 'FORMAT_CORRUPT', 'size disagrees');
  t.equal(codeOf(() => parsePack(footerEdit((f) => f.writeUInt32BE(1, PF_TRAILER_LEN_OFF)))), 'FORMAT_CORRUPT', 'trailer length');
  t.equal(codeOf(() => parsePack(footerEdit((f) => (f[PF_KIND_OFF] = 7)))), 'FORMAT_UNSUPPORTED', 'unknown kind');
  t.equal(codeOf(() => parsePack(footerEdit((f) => f.writeUInt16BE(0x8000, PF_FLAGS_OFF)))), 'FORMAT_UNSUPPORTED', 'unknown flag');
  t.equal(codeOf(() => parsePack(footerEdit((f) => (f[PF_CRC_OFF - 1] = 1)))), 'FORMAT_CORRUPT', 'reserved byte');

  // A frame header of the wrong kind, resealed, in a data pack.
  const wrongKind = Buffer.from(p.bytes);
  wrongKind[BH_KIND_OFF] = 2;
  wrongKind.writeUInt32BE(crc32(wrongKind.subarray(0, BH_CRC_OFF)) >>> 0, BH_CRC_OFF);
  t.equal(codeOf(() => parsePack(wrongKind)), 'FORMAT_CORRUPT');
});

t.test('fuzz: mutated and truncated packs parse or fail with a format error', async (t) => {
  const CASES = 20000;
  const rand = prng(0x9ac4);
  const seeds = [
    build([encodeBlob(Buffer.from('a')), encodeBlob(Buffer.from('hello island'))]),
    build([encodeBlob(textBlock(4000), 'metadata'), encodeBlob(Buffer.alloc(0), 'metadata'), encodeBlob(seededBytes(rand, 900), 'metadata')], 'metadata'),
    build([encodeBlob(Buffer.alloc(8192)), encodeBlob(textBlock(3000, 'x')), encodeBlob(seededBytes(rand, 200)), encodeBlob(textBlock(2500, 'y'))]),
  ];
  const counts = new Map<string, number>();
  const started = Date.now();
  for (let i = 0; i < CASES; i++) {
    const seed = seeds[Math.floor(rand() * seeds.length)]!;
    let b = Buffer.from(seed.bytes);
    const mode = Math.floor(rand() * 6);
    const mutations = 1 + Math.floor(rand() * 4);
    if (mode === 0) {
      for (let m = 0; m < mutations; m++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
    } else if (mode === 1) {
      // footer only, resealed: reaches every footer field check
      for (let m = 0; m < mutations; m++) b[b.length - FOOTER_LEN + Math.floor(rand() * PF_CRC_OFF)] = Math.floor(rand() * 256);
      resealFooter(b);
    } else if (mode === 2) {
      // trailer entries edited, trailer hash and footer rewritten: reaches the entry checks
      const f = seed.footer;
      const trailer = Buffer.from(b.subarray(f.trailerOffset, f.trailerOffset + f.trailerLength));
      for (let m = 0; m < mutations; m++) {
        const at = Math.floor(rand() * trailer.length);
        trailer[at] = rand() < 0.5 ? Math.floor(rand() * 256) : trailer[at]! ^ (1 << Math.floor(rand() * 8));
      }
      const footer = encodePackFooter({ kind: f.kind, count: f.count, trailerOffset: f.trailerOffset, trailerHash: createHash('sha256').update(trailer).digest() });
      b = Buffer.concat([b.subarray(0, f.trailerOffset), trailer, footer]);
    } else if (mode === 3) {
      b = b.subarray(Math.floor(rand() * 2) * Math.floor(rand() * b.length), Math.floor(rand() * (b.length + 1)));
    } else if (mode === 4) {
      // the blob area only: footer and trailer stay valid, payloads and headers are hostile
      for (let m = 0; m < mutations; m++) b[Math.floor(rand() * seed.footer.trailerOffset)] = Math.floor(rand() * 256);
    } else {
      b = rand() < 0.5 ? Buffer.concat([seededBytes(rand, 1 + Math.floor(rand() * 80)), b]) : Buffer.concat([b, seededBytes(rand, 1 + Math.floor(rand() * 80))]);
    }
    let outcome: string;
    try {
      const { entries } = parsePack(b, rand() < 0.1 ? seed.id : undefined);
      for (const e of entries) decodeBlob(b.subarray(e.offset, e.offset + e.frameLength), e.id, { base: e.offset });
      outcome = 'ok';
    } catch (err) {
      if (!(err instanceof IslandError) || !ALLOWED.has(err.code)) {
        t.fail(`case ${i} (mode ${mode}): unexpected ${err instanceof IslandError ? `${err.code}: ${err.message}` : String(err)}`);
        return;
      }
      outcome = err.code;
    }
    // Recovery never throws on hostile bytes and its entries always tile what it scanned.
    try {
      const r = recoverPackTrailer(b, { verify: rand() < 0.3 });
      let end = 0;
      for (const e of r.entries) {
        if (e.offset !== end) throw new Error('recovered entries do not tile');
        end += e.frameLength;
      }
      if (end !== r.blobAreaEnd || end > b.length) throw new Error('recovered area end is wrong');
    } catch (err) {
      t.fail(`case ${i} (mode ${mode}): recovery threw ${String(err)}`);
      return;
    }
    counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
  }
  t.pass(`${CASES} cases in ${Date.now() - started} ms: ${JSON.stringify(Object.fromEntries(counts))}`);
  t.ok((counts.get('FORMAT_CORRUPT') ?? 0) > 0 && (counts.get('HASH_MISMATCH') ?? 0) > 0 && (counts.get('FORMAT_UNSUPPORTED') ?? 0) > 0, 'every error path is reached');

  // Random tails never get past the footer checks by accident, and never crash.
  for (let i = 0; i < 5000; i++) {
    const tail = seededBytes(rand, FOOTER_LEN + Math.floor(rand() * 8));
    if (rand() < 0.5) tail.writeUInt32BE(PACK_MAGIC, tail.length - FOOTER_LEN);
    if (rand() < 0.5) tail[tail.length - FOOTER_LEN + PF_VERSION_OFF] = 1;
    if (rand() < 0.5) resealFooter(tail);
    const code = codeOf(() => parsePackFooter(tail, rand() < 0.5 ? 1 << 20 : undefined));
    if (code !== 'no error' && !ALLOWED.has(code)) {
      t.fail(`random tail ${i}: ${code}`);
      return;
    }
  }
  t.pass('5000 random footers');
});
