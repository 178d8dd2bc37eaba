import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { IslandError } from '../../src/errors.js';
import {
  BH_CODEC_OFF,
  BH_CRC_OFF,
  BH_FLAGS_OFF,
  BH_ID_OFF,
  BH_KEY_ID_OFF,
  BH_KIND_OFF,
  BH_NONCE_OFF,
  BH_PLAIN_LEN_OFF,
  BH_STORED_LEN_OFF,
  BH_VERSION_OFF,
  BLOB_HEADER_LEN,
  BLOB_MAGIC,
  decodeBlob,
  encodeBlob,
  encodeBlobHeader,
  readBlobHeader,
} from '../../src/format/blob.js';
import {
  CODEC_LZ4,
  CODEC_NONE,
  CODEC_ZSTD,
  compressBlock,
  compressionPays,
  decompressBlock,
  MAX_BLOB_PLAIN,
} from '../../src/format/codec.js';
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

/** Source-like text that compresses. */
function textBlock(n: number): Buffer {
  const line = 'export function readCluster(volume: Volume, index: number): Promise<Buffer> { return volume.read(index); }\n';
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

/** Recompute the header checksum after a test edits header fields. */
function reseal(frame: Buffer): Buffer {
  frame.writeUInt32BE(crc32(frame.subarray(0, BH_CRC_OFF)) >>> 0, BH_CRC_OFF);
  return frame;
}

t.test('golden frame: a plain blob encodes to exactly these bytes', async (t) => {
  const { frame, id, codec } = encodeBlob(Buffer.from('island\n'));
  t.equal(codec, CODEC_NONE, 'seven bytes never compress');
  t.equal(
    frame.toString('hex'),
    '49534c42' + // magic "ISLB"
      '01' + // version
      '01' + // kind: data
      '00' + // codec: none
      '00' + // flags
      '00000000' + // key id: none
      '00'.repeat(24) + // nonce
      '00000007' + // plain length
      '00000007' + // stored length
      '598ec1282398a2f5840f0d043046f80ca04143c5277941e3d0c8f45a3c255a43' + // SHA-256("island\n")
      '8e23f974' + // CRC-32 of bytes 0-75
      '69736c616e640a', // payload
  );
  t.equal(id.toString('hex'), createHash('sha256').update('island\n').digest('hex'));
  t.equal(decodeBlob(frame, id).toString(), 'island\n');
});

t.test('golden frame: a fixed lz4 metadata frame decodes (decoder compatibility)', async (t) => {
  const frame = Buffer.from(
    '49534c42010201000000000000000000000000000000000000000000000000000000000000000048' +
      '0000000e07827a89742ce3609069032d064596c9d544a45950c543a2d1bda500a9c174f534ef58c1' +
      '3f61626303002c60616263616263',
    'hex',
  );
  const h = readBlobHeader(frame);
  t.equal(h.kind, 'metadata');
  t.equal(h.codec, CODEC_LZ4);
  t.equal(h.plainLength, 72);
  t.equal(h.storedLength, 14);
  t.equal(decodeBlob(frame, undefined, { kind: 'metadata' }).toString(), 'abc'.repeat(24));
  t.equal(codeOf(() => decodeBlob(frame, undefined, { kind: 'data' })), 'FORMAT_CORRUPT', 'kind is checked when asked');
});

t.test('header fields sit at their documented offsets', async (t) => {
  const plain = textBlock(CLUSTER);
  const { frame, id } = encodeBlob(plain, 'metadata');
  t.equal(frame.readUInt32BE(0), BLOB_MAGIC);
  t.equal(frame[BH_VERSION_OFF], 1);
  t.equal(frame[BH_KIND_OFF], 2);
  t.equal(frame[BH_CODEC_OFF], CODEC_LZ4);
  t.equal(frame[BH_FLAGS_OFF], 0);
  t.equal(frame.readUInt32BE(BH_KEY_ID_OFF), 0);
  t.ok(frame.subarray(BH_NONCE_OFF, BH_PLAIN_LEN_OFF).every((b) => b === 0));
  t.equal(frame.readUInt32BE(BH_PLAIN_LEN_OFF), CLUSTER);
  t.equal(frame.readUInt32BE(BH_STORED_LEN_OFF), frame.length - BLOB_HEADER_LEN);
  t.ok(frame.subarray(BH_ID_OFF, BH_ID_OFF + 32).equals(id));
  t.ok(frame.length < CLUSTER / 4, 'text compresses well');
});

t.test('round trips', async (t) => {
  const rand = prng(1);
  const cases: [string, Buffer, number | null][] = [
    ['empty', Buffer.alloc(0), CODEC_NONE],
    ['one byte', Buffer.from([7]), CODEC_NONE],
    ['zero cluster', Buffer.alloc(CLUSTER), CODEC_LZ4],
    ['incompressible cluster', randomBytes(CLUSTER), CODEC_NONE],
    ['text cluster', textBlock(CLUSTER), CODEC_LZ4],
    ['half zero cluster', Buffer.concat([Buffer.alloc(CLUSTER / 2), seededBytes(rand, CLUSTER / 2)]), CODEC_LZ4],
    ['largest blob', Buffer.alloc(MAX_BLOB_PLAIN, 1), CODEC_LZ4],
  ];
  for (let i = 0; i < 40; i++) {
    const n = Math.floor(rand() * 3 * CLUSTER);
    const b = rand() < 0.5 ? seededBytes(rand, n) : textBlock(n);
    cases.push([`random ${i} (${n} bytes)`, b, null]);
  }
  for (const [name, plain, codec] of cases) {
    for (const kind of ['data', 'metadata'] as const) {
      const enc = encodeBlob(plain, kind);
      if (codec !== null) t.equal(enc.codec, codec, `${name}: codec`);
      t.equal(enc.plainLength, plain.length);
      const h = readBlobHeader(enc.frame);
      t.equal(h.kind, kind);
      t.equal(h.frameLength, enc.frame.length);
      const out = decodeBlob(enc.frame, enc.id, { kind });
      t.ok(out.equals(plain), `${name} (${kind}) round trips`);
    }
  }
  const empty = encodeBlob(Buffer.alloc(0));
  t.equal(empty.frame.length, BLOB_HEADER_LEN, 'an empty blob is a bare header');
  t.equal(empty.id.toString('hex'), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
});

t.test('compression is kept only when it saves at least 1/16', async (t) => {
  t.equal(compressionPays(15, 16), true);
  t.equal(compressionPays(16, 16), false);
  t.equal(compressionPays(0, 0), false, 'an empty block is stored plain');
  t.equal(compressionPays(61440, 65536), true, 'exactly 1/16 saved');
  t.equal(compressionPays(61441, 65536), false);
  // 2 KiB of zeros in a random cluster: compresses a little, not enough.
  const mostlyRandom = Buffer.concat([randomBytes(CLUSTER - 2048), Buffer.alloc(2048)]);
  const c = compressBlock(mostlyRandom);
  t.equal(c.codec, CODEC_NONE);
  t.equal(c.data, mostlyRandom, 'stored plain without a copy');
  t.equal(codeOf(() => compressBlock(Buffer.alloc(MAX_BLOB_PLAIN + 1))), 'TOO_LARGE');
});

t.test('decompressBlock is bounded and strict', async (t) => {
  const c = compressBlock(textBlock(CLUSTER));
  t.equal(c.codec, CODEC_LZ4);
  t.ok(decompressBlock(CODEC_LZ4, c.data, CLUSTER).equals(textBlock(CLUSTER)));
  t.equal(codeOf(() => decompressBlock(CODEC_LZ4, c.data, CLUSTER - 1)), 'FORMAT_CORRUPT', 'shorter plain length');
  t.equal(codeOf(() => decompressBlock(CODEC_LZ4, c.data, CLUSTER + 1)), 'FORMAT_CORRUPT', 'longer plain length');
  t.equal(codeOf(() => decompressBlock(CODEC_LZ4, c.data, MAX_BLOB_PLAIN + 1)), 'FORMAT_CORRUPT', 'past the limit');
  t.equal(codeOf(() => decompressBlock(CODEC_LZ4, c.data.subarray(0, c.data.length - 3), CLUSTER)), 'FORMAT_CORRUPT', 'truncated');
  t.equal(codeOf(() => decompressBlock(CODEC_LZ4, Buffer.alloc(0), CLUSTER)), 'FORMAT_CORRUPT', 'empty payload');
  t.equal(codeOf(() => decompressBlock(CODEC_NONE, Buffer.alloc(5), 6)), 'FORMAT_CORRUPT');
  t.equal(codeOf(() => decompressBlock(CODEC_ZSTD, c.data, CLUSTER)), 'FORMAT_UNSUPPORTED', 'zstd is reserved');
  t.equal(codeOf(() => decompressBlock(200, c.data, CLUSTER)), 'FORMAT_UNSUPPORTED');
  // An LZ4 block that claims a huge match: decodes to more than the plain length.
  const bomb = compressBlock(Buffer.alloc(MAX_BLOB_PLAIN)).data;
  t.equal(codeOf(() => decompressBlock(CODEC_LZ4, bomb, CLUSTER)), 'FORMAT_CORRUPT', 'output is capped at the plain length');
});

t.test('a flipped payload byte is a HASH_MISMATCH naming the id', async (t) => {
  const plain = randomBytes(1000);
  const { frame, id } = encodeBlob(plain);
  const bad = Buffer.from(frame);
  bad[BLOB_HEADER_LEN + 500]! ^= 0x01;
  try {
    decodeBlob(bad);
    t.fail('decoded a damaged blob');
  } catch (err) {
    t.ok(err instanceof IslandError);
    t.equal((err as IslandError).code, 'HASH_MISMATCH');
    t.match((err as IslandError).message, id.toString('hex'));
    t.equal((err as IslandError).details.id, id.toString('hex'));
  }
  // In a compressed payload a flip either breaks the LZ4 stream or the hash.
  const z = encodeBlob(textBlock(CLUSTER));
  for (let i = BLOB_HEADER_LEN; i < z.frame.length; i += 7) {
    const b = Buffer.from(z.frame);
    b[i]! ^= 0x10;
    t.ok(['FORMAT_CORRUPT', 'HASH_MISMATCH'].includes(codeOf(() => decodeBlob(b))), `flip at ${i}`);
  }
});

t.test('a flipped header byte is FORMAT_CORRUPT (or UNSUPPORTED for the version)', async (t) => {
  const { frame } = encodeBlob(textBlock(3000));
  for (let i = 0; i < BLOB_HEADER_LEN; i++) {
    for (const bit of [0x01, 0x80]) {
      const b = Buffer.from(frame);
      b[i]! ^= bit;
      const code = codeOf(() => decodeBlob(b));
      t.equal(code, i === BH_VERSION_OFF ? 'FORMAT_UNSUPPORTED' : 'FORMAT_CORRUPT', `flip 0x${bit.toString(16)} at header byte ${i}`);
    }
  }
});

t.test('the id must match what the caller asked for and what the bytes hash to', async (t) => {
  const a = encodeBlob(Buffer.from('cluster a'));
  const b = encodeBlob(Buffer.from('cluster b'));
  t.equal(codeOf(() => decodeBlob(a.frame, b.id)), 'HASH_MISMATCH', 'wrong frame for the location');
  // A forged header (valid checksum) naming another id.
  const forged = Buffer.from(a.frame);
  b.id.copy(forged, BH_ID_OFF);
  reseal(forged);
  t.equal(codeOf(() => decodeBlob(forged)), 'HASH_MISMATCH');
});

t.test('versions, kinds, codecs, flags and keys this build does not know', async (t) => {
  const { frame } = encodeBlob(textBlock(2000));
  const edit = (write: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(frame);
    write(b);
    return reseal(b);
  };
  t.equal(codeOf(() => decodeBlob(edit((b) => (b[BH_VERSION_OFF] = 2)))), 'FORMAT_UNSUPPORTED');
  t.equal(codeOf(() => decodeBlob(edit((b) => (b[BH_KIND_OFF] = 9)))), 'FORMAT_UNSUPPORTED');
  t.equal(codeOf(() => decodeBlob(edit((b) => (b[BH_CODEC_OFF] = 77)))), 'FORMAT_UNSUPPORTED');
  t.equal(codeOf(() => decodeBlob(edit((b) => (b[BH_CODEC_OFF] = CODEC_ZSTD)))), 'FORMAT_UNSUPPORTED');
  t.equal(codeOf(() => decodeBlob(edit((b) => (b[BH_FLAGS_OFF] = 1)))), 'FORMAT_UNSUPPORTED');
  t.equal(codeOf(() => decodeBlob(edit((b) => b.writeUInt32BE(3, BH_KEY_ID_OFF)))), 'FORMAT_UNSUPPORTED', 'encrypted');
  t.equal(codeOf(() => decodeBlob(edit((b) => (b[BH_NONCE_OFF + 5] = 1)))), 'FORMAT_CORRUPT', 'nonce without a key');
  t.equal(
    codeOf(() => decodeBlob(edit((b) => b.writeUInt32BE(MAX_BLOB_PLAIN + 1, BH_PLAIN_LEN_OFF)))),
    'FORMAT_CORRUPT',
    'plain length past the limit',
  );
  t.equal(
    codeOf(() => decodeBlob(edit((b) => (b[BH_CODEC_OFF] = CODEC_NONE)))),
    'FORMAT_CORRUPT',
    'codec none with a stored length unlike the plain length',
  );
  const plainFrame = encodeBlob(Buffer.from('abc')).frame;
  const asLz4 = Buffer.from(plainFrame);
  asLz4[BH_CODEC_OFF] = CODEC_LZ4;
  t.equal(codeOf(() => decodeBlob(reseal(asLz4))), 'FORMAT_CORRUPT', 'a compressed payload as large as the plain bytes');
});

t.test('truncated and overlong frames', async (t) => {
  const { frame } = encodeBlob(textBlock(5000));
  for (const n of [0, 3, 4, 5, BLOB_HEADER_LEN - 1, BLOB_HEADER_LEN, frame.length - 1]) {
    t.equal(codeOf(() => decodeBlob(frame.subarray(0, n))), 'FORMAT_CORRUPT', `cut at ${n}`);
  }
  t.equal(codeOf(() => decodeBlob(Buffer.concat([frame, Buffer.alloc(1)]))), 'FORMAT_CORRUPT', 'a trailing byte');
  t.equal(codeOf(() => readBlobHeader(frame, frame.length + 10)), 'FORMAT_CORRUPT', 'offset past the end');
});

t.test('readBlobHeader scans frames inside a larger buffer', async (t) => {
  const blobs = [encodeBlob(Buffer.from('one')), encodeBlob(textBlock(9000)), encodeBlob(Buffer.alloc(0))];
  const all = Buffer.concat(blobs.map((b) => b.frame));
  let off = 0;
  for (const b of blobs) {
    const h = readBlobHeader(all, off);
    t.ok(h.id.equals(b.id));
    t.ok(decodeBlob(all.subarray(off, off + h.frameLength), b.id).length === b.plainLength);
    off += h.frameLength;
  }
  t.equal(off, all.length);
  const damaged = Buffer.from(all);
  damaged[blobs[0]!.frame.length + 40]! ^= 1;
  try {
    readBlobHeader(damaged, blobs[0]!.frame.length, 1000);
    t.fail('read a damaged header');
  } catch (err) {
    t.equal((err as IslandError).code, 'FORMAT_CORRUPT');
    t.equal((err as IslandError).details.offset, 1000 + blobs[0]!.frame.length, 'the error names the absolute offset');
  }
});

t.test('encodeBlobHeader refuses impossible fields', async (t) => {
  const id = Buffer.alloc(32);
  t.equal(codeOf(() => encodeBlobHeader({ kind: 'data', codec: 9, plainLength: 1, storedLength: 1, id })), 'INVALID_ARGUMENT');
  t.equal(codeOf(() => encodeBlobHeader({ kind: 'data', codec: 0, plainLength: -1, storedLength: 1, id })), 'INVALID_ARGUMENT');
  t.equal(codeOf(() => encodeBlobHeader({ kind: 'data', codec: 0, plainLength: 1, storedLength: 1, id: Buffer.alloc(31) })), 'INVALID_ARGUMENT');
  t.equal(codeOf(() => encodeBlobHeader({ kind: 'data', codec: 0, plainLength: 1, storedLength: 1, id }, Buffer.alloc(79))), 'INVALID_ARGUMENT');
});

t.test('fuzz: mutated and truncated frames decode or fail with a format error', async (t) => {
  const CASES = 30000;
  const rand = prng(0x151a4d);
  const seeds = [
    encodeBlob(Buffer.from('island\n')),
    encodeBlob(Buffer.alloc(0)),
    encodeBlob(textBlock(700), 'metadata'),
    encodeBlob(textBlock(CLUSTER)),
    encodeBlob(Buffer.alloc(CLUSTER)),
    encodeBlob(Buffer.concat([Buffer.alloc(4096), seededBytes(rand, 4096)])),
    encodeBlob(seededBytes(rand, 3000)),
  ];
  const counts = new Map<string, number>();
  const started = Date.now();
  for (let i = 0; i < CASES; i++) {
    const seed = seeds[Math.floor(rand() * seeds.length)]!;
    let b = Buffer.from(seed.frame);
    const mode = Math.floor(rand() * 6);
    const mutations = 1 + Math.floor(rand() * 4);
    if (mode === 0) {
      // random bytes anywhere
      for (let m = 0; m < mutations; m++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
    } else if (mode === 1) {
      // payload only: the header checksum still holds, the decoder sees hostile data
      if (b.length > BLOB_HEADER_LEN) {
        for (let m = 0; m < mutations; m++) b[BLOB_HEADER_LEN + Math.floor(rand() * (b.length - BLOB_HEADER_LEN))] = Math.floor(rand() * 256);
      }
    } else if (mode === 2) {
      // header fields, then a valid checksum: reaches every field check
      for (let m = 0; m < mutations; m++) b[Math.floor(rand() * BH_CRC_OFF)] = rand() < 0.5 ? Math.floor(rand() * 256) : b[Math.floor(rand() * BH_CRC_OFF)]! ^ 1;
      reseal(b);
    } else if (mode === 3) {
      b = b.subarray(0, Math.floor(rand() * b.length));
    } else if (mode === 4) {
      b = Buffer.concat([b, seededBytes(rand, 1 + Math.floor(rand() * 64))]);
    } else {
      // length fields set to hostile values, with a valid checksum
      const field = rand() < 0.5 ? BH_PLAIN_LEN_OFF : BH_STORED_LEN_OFF;
      const hostile = [0, 1, 0xffffffff, MAX_BLOB_PLAIN, MAX_BLOB_PLAIN + 1, b.readUInt32BE(field) + 1, b.readUInt32BE(field) - 1];
      b.writeUInt32BE(hostile[Math.floor(rand() * hostile.length)]! >>> 0, field);
      reseal(b);
    }
    let outcome: string;
    try {
      const plain = decodeBlob(b, rand() < 0.2 ? seed.id : undefined);
      // Success means the bytes are what the (checksummed) header names.
      if (!createHash('sha256').update(plain).digest().equals(readBlobHeader(b).id)) throw new Error('decoded bytes do not hash to the id');
      outcome = 'ok';
    } catch (err) {
      if (!(err instanceof IslandError) || !ALLOWED.has(err.code)) {
        t.fail(`case ${i} (mode ${mode}): unexpected ${err instanceof IslandError ? err.code : String(err)}`);
        return;
      }
      outcome = err.code;
    }
    counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
  }
  t.pass(`${CASES} cases in ${Date.now() - started} ms: ${JSON.stringify(Object.fromEntries(counts))}`);
  t.ok((counts.get('FORMAT_CORRUPT') ?? 0) > 0 && (counts.get('HASH_MISMATCH') ?? 0) > 0 && (counts.get('FORMAT_UNSUPPORTED') ?? 0) > 0, 'every error path is reached');
});
