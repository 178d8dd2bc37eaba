import { createHash } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import t, { type Test } from 'tap';
import { IslandError } from '../../src/errors.js';
import { isHostId, isRegionName, isVolumeName } from '../../src/format/names.js';
import {
  type DamageMark,
  type Lease,
  type Manifest,
  type Pin,
  type RecordType,
  type Tombstone,
  type VolumeRecord,
  CONSISTENCY_LEVELS,
  MAX_DAMAGE_FINDINGS,
  MAX_MANIFEST_PACKS,
  MAX_MANIFEST_WARNINGS,
  MAX_TEXT_BYTES,
  MAX_TIME_MS,
  PIN_HOLDERS,
  RECORD_MAX_BYTES,
  VOLUME_STATUSES,
  decodeDamageMark,
  decodeLease,
  decodeManifest,
  decodePin,
  decodeTombstone,
  decodeVolumeRecord,
  encodeDamageMark,
  encodeLease,
  encodeManifest,
  encodePin,
  encodeTombstone,
  encodeVolumeRecord,
  recordTypeOf,
} from '../../src/format/records.js';
import { encodeUlid } from '../../src/format/ulid.js';

// ---- helpers -------------------------------------------------------------------------

/** A seeded generator (mulberry32): every random case below is reproducible. */
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let z = this.s;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return (z ^ (z >>> 14)) >>> 0;
  }
  /** An integer in [0, n) for n up to 2^53. */
  below(n: number): number {
    if (n <= 2 ** 32) return this.u32() % n;
    return ((this.u32() & 0x1fffff) * 2 ** 32 + this.u32()) % n;
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(xs: ArrayLike<T>): T {
    return xs[this.below(xs.length)] as T;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** A copy of b with byte i xor-ed with mask. */
function flip(b: Buffer, i: number, mask: number): Buffer {
  const c = Buffer.from(b);
  c[i] = (c[i] as number) ^ mask;
  return c;
}

const sha = (b: Buffer): Buffer => createHash('sha256').update(b).digest();

/** The envelope built independently of the code under test, from the documented byte table. */
function envelope(magic: string, version: number, flags: number, body: Buffer, bodyLen = body.length): Buffer {
  const head = Buffer.alloc(12);
  head.write(magic, 0, 'latin1');
  head.writeUInt16BE(version, 4);
  head.writeUInt16BE(flags, 6);
  head.writeUInt32BE(bodyLen, 8);
  const covered = Buffer.concat([head, body]);
  return Buffer.concat([covered, sha(covered)]);
}

function parts(buf: Buffer): { magic: string; version: number; flags: number; body: Buffer } {
  return {
    magic: buf.subarray(0, 4).toString('latin1'),
    version: buf.readUInt16BE(4),
    flags: buf.readUInt16BE(6),
    body: buf.subarray(12, 12 + buf.readUInt32BE(8)),
  };
}

/** The same record with another body, version or flags, and a correct checksum. */
function reseal(buf: Buffer, change: { body?: Buffer | string; version?: number; flags?: number }): Buffer {
  const p = parts(buf);
  const body = typeof change.body === 'string' ? Buffer.from(change.body, 'utf8') : (change.body ?? p.body);
  return envelope(p.magic, change.version ?? p.version, change.flags ?? p.flags, body);
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

function expectCode(t: Test, fn: () => unknown, code: string, message?: RegExp, name = message?.source ?? code): void {
  const e = thrown(fn);
  if (!(e instanceof IslandError)) {
    t.fail(`${name}: expected IslandError ${code}, got ${e === undefined ? 'no error' : String(e)}`);
    return;
  }
  t.equal(e.code, code, `${name}: ${e.message}`);
  if (message !== undefined) t.match(e.message, message, name);
}

interface Kind<T> {
  readonly type: RecordType;
  readonly encode: (v: T) => Buffer;
  readonly decode: (b: Buffer) => T;
  readonly random: (r: Rng) => T;
}

// ---- values --------------------------------------------------------------------------

const T0 = Date.UTC(2024, 4, 1, 12, 0, 0, 0);
const SNAP = '01HZX3C6Y1V8K9E2R5T7W0Q4MN';
const PARENT = '01HZX2Y8B7A6F5E4D3C2B1A0ZZ';
const SOURCE = '01HZW0000000000000000BASE0';
const PIN_ID = '01HZX3D00000000000000000PN';

const goldenManifest: Manifest = {
  volume: 'vm1-root',
  id: SNAP,
  parent: PARENT,
  base: { volume: 'golden-image', id: SOURCE },
  generation: 3,
  host: 'node-1',
  created: T0,
  region: 'local',
  imageLength: 10 * 2 ** 30 + 3 * 65536,
  clusterSize: 65536,
  tree: {
    root: { pack: Buffer.alloc(32, 0xaa), offset: 4096, length: 65600, id: Buffer.alloc(32, 0xbb) },
    nClusters: 163843,
    fanout: 1024,
    depth: 2,
  },
  qcow2: { version: 3, dirty: false, lazyRefcounts: false, nbSnapshots: 0, corrupt: false },
  consistency: 'qemu-flushed',
  stats: {
    changedClusters: 120,
    zeroClusters: 8,
    uploadedBlobs: 100,
    uploadedBytes: 4_000_000,
    reusedBlobs: 12,
    packs: 2,
    pauseMs: 35,
    durationMs: 2100,
  },
  warnings: ['guest agent absent: "fsfreeze" skipped'],
  packs: [Buffer.alloc(32, 0x11), Buffer.alloc(32, 0x22)],
};

const goldenVolume: VolumeRecord = {
  name: 'vm1-root',
  virtualSize: 10 * 2 ** 30,
  clusterSize: 65536,
  region: 'local',
  created: T0,
  source: { volume: 'golden-image', id: SOURCE },
  status: 'attached',
  host: 'node-1',
  generation: 3,
  revision: 7,
};

const goldenTombstone: Tombstone = {
  snapshot: SNAP,
  volume: 'vm1-root',
  created: T0 + 1,
  host: 'node-1',
  reason: 'retention: older than 30 days',
  forced: false,
};

const goldenPin: Pin = {
  id: PIN_ID,
  snapshot: SNAP,
  volume: 'vm1-root',
  holder: 'attach',
  host: 'node-2',
  created: T0,
  expires: T0 + 3_600_000,
};

const goldenLease: Lease = { volume: 'vm1-root', host: 'node-1', generation: 3, created: T0, expires: T0 + 60_000 };

const goldenDamage: DamageMark = {
  snapshot: SNAP,
  volume: 'vm1-root',
  findings: ['blob 3f2a... in pack 9c1e... fails its hash', 'tree node at depth 1 missing'],
  created: T0 + 86_400_000,
};

// ---- random valid values -------------------------------------------------------------

const NAME_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789._-';
function randomName(r: Rng, max: number, valid: (s: string) => boolean): string {
  for (;;) {
    const len = 1 + r.below(r.chance(0.2) ? max : 12);
    let s = '';
    for (let i = 0; i < len; i++) s += r.pick(NAME_CHARS);
    if (valid(s)) return s;
  }
}
const volume = (r: Rng): string => randomName(r, 63, isVolumeName);
const host = (r: Rng): string => randomName(r, 63, isHostId);
const region = (r: Rng): string => randomName(r, 32, isRegionName);
const ulid = (r: Rng): string => encodeUlid(r.below(2 ** 48), r.bytes(10));
const time = (r: Rng): number => (r.chance(0.2) ? r.below(MAX_TIME_MS) : T0 + r.below(10 ** 10));
const TEXT_PIECES = ['a', 'Z', ' ', '0', '"', '\\', '/', 'é', '日本', '😀', '\u2028', '<x>', 'é', '{', '}'];
function text(r: Rng, minLen = 1): string {
  let s = '';
  const n = minLen + r.below(30);
  for (let i = 0; i < n; i++) s += r.pick(TEXT_PIECES);
  return s;
}
const count = (r: Rng): number => (r.chance(0.1) ? r.below(Number.MAX_SAFE_INTEGER + 1) : r.below(100_000));
const nullable = <T>(r: Rng, f: () => T): T | null => (r.chance(0.3) ? null : f());

function randomManifest(r: Rng): Manifest {
  const clusterSize = 2 ** (9 + r.below(13));
  const imageLength = r.chance(0.1) ? 0 : r.below(r.chance(0.5) ? 2 ** 40 : Number.MAX_SAFE_INTEGER);
  const packs: Buffer[] = [];
  for (let i = r.below(6); i > 0; i--) packs.push(r.bytes(32));
  packs.sort(Buffer.compare);
  return {
    volume: volume(r),
    id: ulid(r),
    parent: nullable(r, () => ulid(r)),
    base: nullable(r, () => ({ volume: volume(r), id: ulid(r) })),
    generation: 1 + r.below(1000),
    host: host(r),
    created: time(r),
    region: region(r),
    imageLength,
    clusterSize,
    tree: {
      root: nullable(r, () => ({ pack: r.bytes(32), offset: count(r), length: 1 + r.below(2 ** 32 - 1), id: r.bytes(32) })),
      nClusters: Math.ceil(imageLength / clusterSize),
      fanout: 2 + r.below(65535),
      depth: r.below(49),
    },
    qcow2: nullable(r, () => ({
      version: r.pick([2, 3] as const),
      dirty: r.chance(0.5),
      lazyRefcounts: r.chance(0.5),
      nbSnapshots: r.below(65537),
      corrupt: r.chance(0.5),
    })),
    consistency: r.pick(CONSISTENCY_LEVELS),
    stats: {
      changedClusters: count(r),
      zeroClusters: count(r),
      uploadedBlobs: count(r),
      uploadedBytes: count(r),
      reusedBlobs: count(r),
      packs: count(r),
      pauseMs: nullable(r, () => count(r)),
      durationMs: count(r),
    },
    warnings: Array.from({ length: r.below(4) }, () => text(r)),
    packs,
  };
}

function randomVolume(r: Rng): VolumeRecord {
  const status = r.pick(VOLUME_STATUSES);
  return {
    name: volume(r),
    virtualSize: 512 * (1 + r.below(2 ** 42)),
    clusterSize: 2 ** (9 + r.below(13)),
    region: region(r),
    created: time(r),
    source: nullable(r, () => ({ volume: volume(r), id: ulid(r) })),
    status,
    host: status === 'attached' ? host(r) : null,
    generation: status === 'attached' ? 1 + r.below(1000) : r.below(1000),
    revision: 1 + r.below(r.chance(0.1) ? Number.MAX_SAFE_INTEGER : 1000),
  };
}

const randomTombstone = (r: Rng): Tombstone => ({
  snapshot: ulid(r),
  volume: volume(r),
  created: time(r),
  host: host(r),
  reason: r.chance(0.2) ? '' : text(r),
  forced: r.chance(0.5),
});

function randomPin(r: Rng): Pin {
  const created = time(r) % (MAX_TIME_MS - 10 ** 9);
  return {
    id: ulid(r),
    snapshot: ulid(r),
    volume: volume(r),
    holder: r.pick(PIN_HOLDERS),
    host: host(r),
    created,
    expires: created + 1 + r.below(10 ** 9),
  };
}

function randomLease(r: Rng): Lease {
  const created = time(r) % (MAX_TIME_MS - 10 ** 9);
  return { volume: volume(r), host: host(r), generation: 1 + count(r) % 2 ** 40, created, expires: created + 1 + r.below(10 ** 9) };
}

const randomDamage = (r: Rng): DamageMark => ({
  snapshot: ulid(r),
  volume: volume(r),
  findings: Array.from({ length: 1 + r.below(5) }, () => text(r)),
  created: time(r),
});

/** Erase a kind's value type so all six fit one list (each kind only meets its own values). */
const kind = <T>(k: Kind<T>): Kind<unknown> => k as unknown as Kind<unknown>;
const KINDS: readonly Kind<unknown>[] = [
  kind({ type: 'manifest', encode: encodeManifest, decode: decodeManifest, random: randomManifest }),
  kind({ type: 'volume', encode: encodeVolumeRecord, decode: decodeVolumeRecord, random: randomVolume }),
  kind({ type: 'tombstone', encode: encodeTombstone, decode: decodeTombstone, random: randomTombstone }),
  kind({ type: 'pin', encode: encodePin, decode: decodePin, random: randomPin }),
  kind({ type: 'lease', encode: encodeLease, decode: decodeLease, random: randomLease }),
  kind({ type: 'damage', encode: encodeDamageMark, decode: decodeDamageMark, random: randomDamage }),
];

// ---- golden bytes --------------------------------------------------------------------

interface Golden {
  /** Bytes 0-11: magic, version, flags, body length. */
  readonly header: string;
  /** The body, exactly. */
  readonly body: string;
  /** SHA-256 of header and body. */
  readonly sha256: string;
}

const GOLDEN: Record<RecordType, { value: unknown; golden: Golden }> = {
  manifest: {
    value: goldenManifest,
    golden: {
      header: '4953524d00010000000003e5',
      body:
        '{"volume":"vm1-root","id":"01HZX3C6Y1V8K9E2R5T7W0Q4MN",' +
        '"parent":"01HZX2Y8B7A6F5E4D3C2B1A0ZZ","base":{"volume":"golden-image",' +
        '"id":"01HZW0000000000000000BASE0"},"generation":3,"host":"node-1",' +
        '"created":"2024-05-01T12:00:00.000Z","region":"local","imageLength":10737614848,' +
        '"clusterSize":65536,' +
        '"tree":{"root":{"pack":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",' +
        '"offset":4096,"length":65600,' +
        '"id":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},' +
        '"nClusters":163843,"fanout":1024,"depth":2},"qcow2":{"version":3,"dirty":false,' +
        '"lazyRefcounts":false,"nbSnapshots":0,"corrupt":false},"consistency":"qemu-flushed",' +
        '"stats":{"changedClusters":120,"zeroClusters":8,"uploadedBlobs":100,' +
        '"uploadedBytes":4000000,"reusedBlobs":12,"packs":2,"pauseMs":35,"durationMs":2100},' +
        '"warnings":["guest agent absent: \\"fsfreeze\\" skipped"],' +
        '"packs":["1111111111111111111111111111111111111111111111111111111111111111",' +
        '"2222222222222222222222222222222222222222222222222222222222222222"]}',
      sha256: 'fd8f5debc8469bc9fc1db4041f7d1ad59d726338ca731ab68faad34369fcdb09',
    },
  },
  volume: {
    value: goldenVolume,
    golden: {
      header: '4953525600010000000000fc',
      body:
        '{"name":"vm1-root","virtualSize":10737418240,"clusterSize":65536,"region":"local",' +
        '"created":"2024-05-01T12:00:00.000Z","source":{"volume":"golden-image",' +
        '"id":"01HZW0000000000000000BASE0"},"status":"attached","host":"node-1","generation":3,' +
        '"revision":7}',
      sha256: '9e0ea96688207c2cd6d99f4d484d2d10fd7fde1a435d919f8e6744b04040e405',
    },
  },
  tombstone: {
    value: goldenTombstone,
    golden: {
      header: '4953525400010000000000aa',
      body:
        '{"snapshot":"01HZX3C6Y1V8K9E2R5T7W0Q4MN","volume":"vm1-root",' +
        '"created":"2024-05-01T12:00:00.001Z","host":"node-1",' +
        '"reason":"retention: older than 30 days","forced":false}',
      sha256: 'ba8c9eeb4b3f4d75166fd307a7e5dbf3992ae085c6b4f4795473deff721985a4',
    },
  },
  pin: {
    value: goldenPin,
    golden: {
      header: '4953525000010000000000cb',
      body:
        '{"id":"01HZX3D00000000000000000PN","snapshot":"01HZX3C6Y1V8K9E2R5T7W0Q4MN",' +
        '"volume":"vm1-root","holder":"attach","host":"node-2",' +
        '"created":"2024-05-01T12:00:00.000Z","expires":"2024-05-01T13:00:00.000Z"}',
      sha256: 'c516b0a0468c238ba656793dc3fb4d2aefa40cf04fa74e4b9cff295cd50068ed',
    },
  },
  lease: {
    value: goldenLease,
    golden: {
      header: '4953524c000100000000007e',
      body:
        '{"volume":"vm1-root","host":"node-1","generation":3,' +
        '"created":"2024-05-01T12:00:00.000Z","expires":"2024-05-01T12:01:00.000Z"}',
      sha256: '59ebf4435494aa8f17655db6e673da601fb8273c78df9b97f2df604449dd1581',
    },
  },
  damage: {
    value: goldenDamage,
    golden: {
      header: '4953524400010000000000bc',
      body:
        '{"snapshot":"01HZX3C6Y1V8K9E2R5T7W0Q4MN","volume":"vm1-root",' +
        '"findings":["blob 3f2a... in pack 9c1e... fails its hash",' +
        '"tree node at depth 1 missing"],"created":"2024-05-02T12:00:00.000Z"}',
      sha256: '3c959dd53744b705ffc19e530d687bd98425e72cae504814e33f13391ac335da',
    },
  },
};

// ISLAND_PRINT_GOLDEN=1 prints the current encodings: for writing a new version's golden
// bytes, never for papering over drift in an existing one.
if (process.env.ISLAND_PRINT_GOLDEN) {
  for (const kind of KINDS) {
    const got = kind.encode(GOLDEN[kind.type].value);
    const g = { header: got.subarray(0, 12).toString('hex'), body: parts(got).body.toString('utf8'), sha256: got.subarray(-32).toString('hex') };
    console.log(`GOLDEN ${kind.type} ${JSON.stringify(g)}`);
  }
}

t.test('golden bytes', async (t) => {
  for (const kind of KINDS) {
    const { value, golden } = GOLDEN[kind.type];
    const want = Buffer.concat([Buffer.from(golden.header, 'hex'), Buffer.from(golden.body, 'utf8'), Buffer.from(golden.sha256, 'hex')]);
    const got = kind.encode(value);
    t.equal(got.toString('hex'), want.toString('hex'), `${kind.type} encodes to the golden bytes`);
    t.ok(isDeepStrictEqual(kind.decode(want), value), `${kind.type} golden bytes decode to the value`);
    t.equal(recordTypeOf(want), kind.type);
    t.ok(envelope(parts(want).magic, 1, 0, parts(want).body).equals(want), `${kind.type} follows the documented envelope`);
  }
});

// ---- round trips ---------------------------------------------------------------------

t.test('round trips of random valid values are exact and stable', async (t) => {
  const r = new Rng(0x15_1a_4d);
  for (const kind of KINDS) {
    let bad = 0;
    for (let i = 0; i < 400; i++) {
      const value = kind.random(r);
      const bytes = kind.encode(value);
      const back = kind.decode(bytes);
      if (!isDeepStrictEqual(back, value) || !kind.encode(back).equals(bytes) || !kind.encode(value).equals(bytes)) {
        if (bad++ < 3) t.fail(`${kind.type} round trip #${i}`, { value, back });
      }
    }
    t.equal(bad, 0, `${kind.type}: 400 random values round-trip`);
  }
});

t.test('the encoding depends on the value, not on key order or set order', async (t) => {
  const reversed = Object.fromEntries(Object.entries(goldenManifest).reverse()) as unknown as Manifest;
  t.ok(encodeManifest(reversed).equals(encodeManifest(goldenManifest)), 'key order');
  const swapped: Manifest = { ...goldenManifest, packs: [...goldenManifest.packs].reverse() };
  t.ok(encodeManifest(swapped).equals(encodeManifest(goldenManifest)), 'pack order');
  t.strictSame(
    decodeManifest(encodeManifest(swapped)).packs.map((p) => p.toString('hex')),
    goldenManifest.packs.map((p) => p.toString('hex')),
    'packs decode sorted',
  );
});

t.test('records at their limits encode and decode within the size limit', async (t) => {
  const quotes = '"'.repeat(MAX_TEXT_BYTES); // the worst case for JSON escaping
  const packs = Array.from({ length: MAX_MANIFEST_PACKS }, (_, i) => {
    const b = Buffer.alloc(32, 0xff);
    b.writeUInt32BE(i, 0);
    return b;
  });
  const big: Manifest = { ...goldenManifest, packs, warnings: Array.from({ length: MAX_MANIFEST_WARNINGS }, () => quotes) };
  const bytes = encodeManifest(big);
  t.ok(bytes.length <= RECORD_MAX_BYTES.manifest, `largest manifest: ${bytes.length} bytes`);
  t.equal(decodeManifest(bytes).packs.length, MAX_MANIFEST_PACKS);
  expectCode(t, () => encodeManifest({ ...big, packs: [...packs, Buffer.alloc(32)] }), 'INVALID_ARGUMENT', /manifest\.packs must have 0 to 262144 items/);

  const damage: DamageMark = { ...goldenDamage, findings: Array.from({ length: MAX_DAMAGE_FINDINGS }, () => quotes) };
  const d = encodeDamageMark(damage);
  t.ok(d.length <= RECORD_MAX_BYTES.damage, `largest damage mark: ${d.length} bytes`);
  t.ok(isDeepStrictEqual(decodeDamageMark(d), damage));
  const ts = encodeTombstone({ ...goldenTombstone, reason: quotes });
  t.ok(ts.length <= RECORD_MAX_BYTES.tombstone, `largest tombstone: ${ts.length} bytes`);
  const longest = 'x'.repeat(63);
  const v = encodeVolumeRecord({ ...goldenVolume, name: longest, host: longest, region: 'r'.repeat(32), source: { volume: longest, id: SNAP } });
  t.ok(v.length <= RECORD_MAX_BYTES.volume);
});

// ---- refusals when encoding ----------------------------------------------------------

t.test('invalid values are refused at encode time with INVALID_ARGUMENT', async (t) => {
  const m = goldenManifest;
  const manifests: [string, unknown, RegExp][] = [
    ['bad volume name', { ...m, volume: '../x' }, /manifest\.volume must be a volume name/],
    ['uppercase volume', { ...m, volume: 'VM' }, /manifest\.volume/],
    ['lowercase id', { ...m, id: SNAP.toLowerCase() }, /manifest\.id must be a ULID/],
    ['parent is self', { ...m, parent: SNAP }, /manifest\.parent must differ/],
    ['base is self', { ...m, base: { volume: 'x', id: SNAP } }, /manifest\.base\.id must differ/],
    ['generation 0', { ...m, generation: 0 }, /manifest\.generation must be an integer from 1/],
    ['negative image length', { ...m, imageLength: -1 }, /manifest\.imageLength/],
    ['fractional image length', { ...m, imageLength: 1.5 }, /manifest\.imageLength/],
    ['image length past 2^53', { ...m, imageLength: 2 ** 53 }, /manifest\.imageLength/],
    ['cluster size 1000', { ...m, clusterSize: 1000 }, /manifest\.clusterSize must be a power of two/],
    ['cluster size 4M', { ...m, clusterSize: 4 * 2 ** 20 }, /manifest\.clusterSize/],
    ['nClusters mismatch', { ...m, tree: { ...m.tree, nClusters: 1 } }, /manifest\.tree\.nClusters must be ceil/],
    ['depth 49', { ...m, tree: { ...m.tree, depth: 49 } }, /manifest\.tree\.depth/],
    ['fanout 1', { ...m, tree: { ...m.tree, fanout: 1 } }, /manifest\.tree\.fanout/],
    ['empty frame', { ...m, tree: { ...m.tree, root: { ...m.tree.root, length: 0 } } }, /manifest\.tree\.root\.length/],
    ['short pack id', { ...m, tree: { ...m.tree, root: { ...m.tree.root, pack: Buffer.alloc(31) } } }, /manifest\.tree\.root\.pack must be a 32-byte Buffer/],
    ['hex pack id', { ...m, packs: ['11'.repeat(32)] }, /manifest\.packs\[0\] must be a 32-byte Buffer/],
    ['duplicate packs', { ...m, packs: [Buffer.alloc(32, 1), Buffer.alloc(32, 1)] }, /manifest\.packs must not repeat/],
    ['qcow2 version 4', { ...m, qcow2: { ...m.qcow2, version: 4 } }, /manifest\.qcow2\.version must be one of 2, 3/],
    ['qcow2 dirty "yes"', { ...m, qcow2: { ...m.qcow2, dirty: 'yes' } }, /manifest\.qcow2\.dirty must be true or false/],
    ['consistency', { ...m, consistency: 'fsync' }, /manifest\.consistency must be one of/],
    ['negative stat', { ...m, stats: { ...m.stats, uploadedBytes: -5 } }, /manifest\.stats\.uploadedBytes/],
    ['fractional pause', { ...m, stats: { ...m.stats, pauseMs: 1.5 } }, /manifest\.stats\.pauseMs/],
    ['created before 1970', { ...m, created: -1 }, /manifest\.created must be a time/],
    ['created after 9999', { ...m, created: MAX_TIME_MS + 1 }, /manifest\.created/],
    ['created as Date', { ...m, created: new Date(T0) }, /manifest\.created/],
    ['bad host', { ...m, host: 'Node 1' }, /manifest\.host must be a host id/],
    ['dotted region', { ...m, region: 'eu.west' }, /manifest\.region must be a region name/],
    ['warning with newline', { ...m, warnings: ['a\nb'] }, /manifest\.warnings\[0\] must not contain control characters/],
    ['empty warning', { ...m, warnings: [''] }, /manifest\.warnings\[0\] must be 1 to 1024 bytes/],
    ['long warning', { ...m, warnings: ['é'.repeat(513)] }, /must be 1 to 1024 bytes of UTF-8, got 1026/],
    ['lone surrogate', { ...m, warnings: ['\ud800x'] }, /well-formed Unicode/],
    ['too many warnings', { ...m, warnings: Array.from({ length: 257 }, () => 'w') }, /manifest\.warnings must have 0 to 256 items/],
    ['unknown field', { ...m, extra: 1 }, /manifest\.extra is not a known field/],
    ['unknown nested field', { ...m, tree: { ...m.tree, width: 3 } }, /manifest\.tree\.width is not a known field/],
    ['missing field', (({ region: _r, ...rest }) => rest)(m), /manifest\.region is missing/],
    ['undefined field', { ...m, parent: undefined }, /manifest\.parent must be a ULID/],
    ['not an object', 'manifest', /manifest must be an object/],
    ['null', null, /manifest must be an object/],
  ];
  for (const [name, value, message] of manifests) expectCode(t, () => encodeManifest(value as Manifest), 'INVALID_ARGUMENT', message, name);

  const v = goldenVolume;
  const volumes: [string, unknown, RegExp][] = [
    ['empty name', { ...v, name: '' }, /volume\.name/],
    ['size 0', { ...v, virtualSize: 0 }, /volume\.virtualSize must be an integer from 512/],
    ['negative size', { ...v, virtualSize: -512 }, /volume\.virtualSize/],
    ['size not in sectors', { ...v, virtualSize: 1000 }, /volume\.virtualSize must be a multiple of 512/],
    ['size past the limit', { ...v, virtualSize: 2 ** 51 + 512 }, /volume\.virtualSize/],
    ['attached without host', { ...v, host: null }, /volume\.host must be set exactly when status is "attached"/],
    ['available with host', { ...v, status: 'available' }, /volume\.host must be set exactly/],
    ['attached at generation 0', { ...v, generation: 0 }, /volume\.generation must be at least 1/],
    ['revision 0', { ...v, revision: 0 }, /volume\.revision/],
    ['status', { ...v, status: 'gone' }, /volume\.status must be one of/],
    ['source id', { ...v, source: { volume: 'a', id: 'x' } }, /volume\.source\.id/],
  ];
  for (const [name, value, message] of volumes) expectCode(t, () => encodeVolumeRecord(value as VolumeRecord), 'INVALID_ARGUMENT', message, name);

  expectCode(t, () => encodeTombstone({ ...goldenTombstone, reason: 'x\u0007' }), 'INVALID_ARGUMENT', /tombstone\.reason/);
  expectCode(t, () => encodeTombstone({ ...goldenTombstone, forced: 'yes' as unknown as boolean }), 'INVALID_ARGUMENT', /tombstone\.forced/);
  expectCode(t, () => encodeTombstone({ ...goldenTombstone, snapshot: '../x' }), 'INVALID_ARGUMENT', /tombstone\.snapshot/);
  expectCode(t, () => encodePin({ ...goldenPin, expires: goldenPin.created }), 'INVALID_ARGUMENT', /pin\.expires must be later than created/);
  expectCode(t, () => encodePin({ ...goldenPin, holder: 'other' as 'copy' }), 'INVALID_ARGUMENT', /pin\.holder must be one of "attach", "copy", "upload", "mount"/);
  expectCode(t, () => encodeLease({ ...goldenLease, generation: 0 }), 'INVALID_ARGUMENT', /lease\.generation/);
  expectCode(t, () => encodeLease({ ...goldenLease, expires: goldenLease.created - 1 }), 'INVALID_ARGUMENT', /lease\.expires/);
  expectCode(t, () => encodeDamageMark({ ...goldenDamage, findings: [] }), 'INVALID_ARGUMENT', /damage\.findings must have 1 to 64 items/);
  expectCode(t, () => encodeDamageMark({ ...goldenDamage, findings: Array.from({ length: 65 }, () => 'f') }), 'INVALID_ARGUMENT', /damage\.findings/);
  const e = thrown(() => encodeManifest({ ...m, volume: `x\n${'y'.repeat(10_000)}` })) as IslandError;
  t.ok(e.message.length < 400 && !e.message.includes('\n'), 'a hostile value is quoted escaped and cut');
});

// ---- refusals when decoding ----------------------------------------------------------

t.test('damaged, foreign and newer records are refused with a FORMAT_ code', async (t) => {
  const good = encodeTombstone(goldenTombstone);
  const body = parts(good).body.toString('utf8');
  const corrupt = (name: string, buf: Buffer, message?: RegExp): void =>
    expectCode(t, () => decodeTombstone(buf), 'FORMAT_CORRUPT', message, name);

  expectCode(t, () => decodeTombstone(reseal(good, { version: 2 })), 'FORMAT_UNSUPPORTED', /tombstone record version 2 is not supported \(this build reads 1\)/);
  expectCode(t, () => decodeTombstone(reseal(good, { version: 0 })), 'FORMAT_UNSUPPORTED', /version 0/);
  expectCode(t, () => decodeTombstone(reseal(good, { flags: 1 })), 'FORMAT_UNSUPPORTED', /unknown flags 0x1/);
  expectCode(t, () => decodeTombstone(reseal(good, { flags: 0x8000 })), 'FORMAT_UNSUPPORTED', /unknown flags/);
  // Version 1 -> 3 without fixing the checksum: damage, not a newer record.
  corrupt('version bit flip', flip(good, 5, 0x02), /checksum mismatch/);

  corrupt('empty', Buffer.alloc(0), /truncated: magic/);
  corrupt('magic only', good.subarray(0, 4), /truncated: version/);
  corrupt('header only', good.subarray(0, 12), /does not fit the object/);
  for (let n = 0; n < good.length; n++) {
    const e = thrown(() => decodeTombstone(good.subarray(0, n)));
    if (!(e instanceof IslandError) || e.code !== 'FORMAT_CORRUPT') t.fail(`truncated to ${n}: ${String(e)}`);
  }
  corrupt('trailing byte', Buffer.concat([good, Buffer.alloc(1)]), /does not fit the object/);
  corrupt('another record type', encodePin(goldenPin), /not a tombstone record: it is a pin record \(at byte 0\)/);
  corrupt('foreign magic', Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), good.subarray(4)]), /magic is 514649fb/);
  corrupt('checksum byte', flip(good, good.length - 1, 1), new RegExp(`checksum mismatch \\(at byte ${good.length - 32}\\)`));
  const bodyLen = Buffer.from(good);
  bodyLen.writeUInt32BE(0xffffffff, 8);
  corrupt('huge body length', bodyLen, /body length 4294967295 does not fit/);
  corrupt('over the size limit', envelope('ISRT', 1, 0, Buffer.alloc(RECORD_MAX_BYTES.tombstone, 0x20)), /exceeds the limit of 16384/);

  const bodies: [string, string | Buffer, RegExp][] = [
    ['whitespace', JSON.stringify(JSON.parse(body), null, 1), /not in canonical form/],
    ['reordered keys', JSON.stringify(Object.fromEntries(Object.entries(JSON.parse(body) as object).reverse())), /not in canonical form \(first difference at body byte 2\)/],
    ['duplicate key', body.replace('{', `{"forced":true,`), /not in canonical form/],
    ['escaped ASCII', body.replace('vm1-root', 'vm1\\u002droot'), /not in canonical form/],
    ['time without ms', body.replace('12:00:00.001Z', '12:00:00Z'), /tombstone\.created must be a UTC time/],
    ['impossible date', body.replace('2024-05-01', '2024-02-30'), /tombstone\.created must be a UTC time/],
    ['time with offset', body.replace('12:00:00.001Z', '12:00:00.001+00:00'), /tombstone\.created/],
    ['unknown field', body.replace('{', '{"x":1,'), /tombstone\.x is not a known field/],
    ['__proto__ field', body.replace('{', '{"__proto__":{"forced":true},'), /tombstone\.__proto__ is not a known field/],
    ['missing field', body.replace(',"forced":false', ''), /tombstone\.forced is missing/],
    ['null', 'null', /tombstone must be an object/],
    ['array', '[]', /tombstone must be an object/],
    ['string for bool', body.replace('"forced":false', '"forced":"false"'), /tombstone\.forced must be true or false/],
    ['bad host', body.replace('node-1', 'NODE-1'), /tombstone\.host must be a host id/],
    ['control character', body.replace('retention', 'reten\\u0000tion'), /tombstone\.reason must not contain control characters/],
    ['lone surrogate', body.replace('retention', '\\ud800retention'), /tombstone\.reason must be well-formed Unicode/],
    ['not JSON', body.slice(0, -1), /tombstone body is not valid UTF-8 JSON \(at byte 12\)/],
    ['BOM', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(body)]), /not valid UTF-8 JSON/],
    ['invalid UTF-8', Buffer.concat([Buffer.from(body.slice(0, 20)), Buffer.from([0xc3, 0x28]), Buffer.from(body.slice(20))]), /not valid UTF-8 JSON/],
    ['overlong UTF-8', Buffer.concat([Buffer.from(body.slice(0, 80)), Buffer.from([0xc0, 0x80]), Buffer.from(body.slice(80))]), /not valid UTF-8 JSON/],
    ['deep nesting', `${'['.repeat(8000)}${']'.repeat(8000)}`, /tombstone must be an object/],
  ];
  for (const [name, b, message] of bodies) {
    const buf = reseal(good, { body: b });
    const e = thrown(() => decodeTombstone(buf));
    t.ok(e instanceof IslandError && e.code === 'FORMAT_CORRUPT', `${name}: ${String(e)}`);
    t.match(String((e as Error | undefined)?.message), message, name);
    t.type((e as IslandError).details.offset, 'number', `${name}: the error says where`);
  }

  const m = encodeManifest(goldenManifest);
  const mb = parts(m).body.toString('utf8');
  const mcorrupt = (name: string, b: string, message: RegExp): void =>
    expectCode(t, () => decodeManifest(reseal(m, { body: b })), 'FORMAT_CORRUPT', message, name);
  mcorrupt('float', mb.replace('"generation":3', '"generation":3.0'), /not in canonical form/);
  mcorrupt('exponent', mb.replace('"generation":3', '"generation":3e0'), /not in canonical form/);
  mcorrupt('negative zero', mb.replace('"nbSnapshots":0', '"nbSnapshots":-0'), /not in canonical form/);
  mcorrupt('huge integer', mb.replace('"generation":3', '"generation":1e400'), /manifest\.generation must be an integer/);
  mcorrupt('unsafe integer', mb.replace('"imageLength":10737614848', '"imageLength":9007199254740993'), /manifest\.imageLength/);
  mcorrupt('uppercase hex', mb.replace('aaaaaaaa', 'AAAAAAAA'), /manifest\.tree\.root\.pack must be 64 lowercase hex digits/);
  mcorrupt('unsorted packs', mb.replace(/"1{64}","2{64}"/, `"${'2'.repeat(64)}","${'1'.repeat(64)}"`), /manifest\.packs\[1\] must be sorted ascending without repeats/);
  mcorrupt('repeated packs', mb.replace(/"1{64}","2{64}"/, `"${'1'.repeat(64)}","${'1'.repeat(64)}"`), /manifest\.packs\[1\] must be sorted/);
  mcorrupt('nClusters', mb.replace('163843', '163844'), /manifest\.tree\.nClusters must be ceil/);
  mcorrupt('string count', mb.replace('"packs":2', '"packs":"2"'), /manifest\.stats\.packs must be an integer/);
  mcorrupt('null tree', mb.replace(/"tree":\{.*?"depth":2\}/, '"tree":null'), /manifest\.tree must be an object/);
  mcorrupt('lowercase ULID', mb.replace(SNAP, SNAP.toLowerCase()), /manifest\.id must be a ULID/);
  t.ok(isDeepStrictEqual(decodeManifest(reseal(m, { body: mb })), goldenManifest), 'the unchanged body still decodes');
});

// ---- fuzz ----------------------------------------------------------------------------

type Mutation = (r: Rng, b: Buffer) => Buffer;
const MUTATIONS: readonly Mutation[] = [
  (r, b) => {
    let c = b;
    for (let n = 1 + r.below(4); n > 0 && c.length > 0; n--) c = flip(c, r.below(c.length), 1 << r.below(8));
    return c;
  },
  (r, b) => {
    const c = Buffer.from(b);
    if (c.length > 0) c[r.below(c.length)] = r.pick([0, 0xff, 0x22, 0x5c, 0x7b, 0x30, r.below(256)]);
    return c;
  },
  (r, b) => b.subarray(0, r.below(b.length + 1)),
  (r, b) => Buffer.concat([b, r.bytes(1 + r.below(8))]),
  (r, b) => {
    const at = r.below(b.length + 1);
    return Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + r.below(16)))]);
  },
  (r, b) => {
    const at = r.below(b.length + 1);
    return Buffer.concat([b.subarray(0, at), r.bytes(1 + r.below(8)), b.subarray(at)]);
  },
  (r, b) => {
    const c = Buffer.from(b);
    if (c.length > 2) {
      const from = r.below(c.length);
      b.copy(c, r.below(c.length), from, Math.min(c.length, from + 1 + r.below(32)));
    }
    return c;
  },
];

/** Replacement values for a JSON mutation: wrong types, edge numbers, hostile strings. */
const JUNK: readonly unknown[] = [
  null, true, false, 0, -1, 1.5, 2 ** 53, -(2 ** 31), 1e308, '', 'x', '../x', 'a'.repeat(2000), '\u0000', '\ud800',
  {}, [], [1], [null], SNAP, SNAP.toLowerCase(), '2024-05-01T12:00:00.000Z', '2024-05-01', '11'.repeat(32), 'AA'.repeat(32),
  'attached', 'crash', { volume: 'a', id: SNAP }, { pack: '11'.repeat(32), offset: 0, length: 1, id: '22'.repeat(32) },
];

type JsonPath = (string | number)[];
function jsonPaths(v: unknown, at: JsonPath = [], out: JsonPath[] = []): JsonPath[] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => jsonPaths(x, [...at, i], out));
  else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) jsonPaths(x, [...at, k], out);
  return out;
}

/** Change one place of a parsed body: replace, delete, add a field, reorder, repeat or reverse. */
function mutateJson(r: Rng, root: unknown): unknown {
  const paths = jsonPaths(root);
  const path = r.pick(paths);
  if (path.length === 0) return r.chance(0.5) ? r.pick(JUNK) : root;
  const parent = path.slice(0, -1).reduce<any>((o, k) => o[k], root); // eslint-disable-line @typescript-eslint/no-explicit-any
  const key = path[path.length - 1] as string | number;
  switch (r.below(5)) {
    case 0:
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete parent[key];
      break;
    case 1:
      if (Array.isArray(parent)) parent.push(parent[key as number]);
      else parent[`${String(key)}2`] = parent[key];
      break;
    case 2:
      if (Array.isArray(parent)) parent.reverse();
      else {
        const entries = Object.entries(parent);
        for (const [k] of entries) delete parent[k];
        for (const [k, x] of entries.reverse()) parent[k] = x;
      }
      break;
    default:
      parent[key] = r.pick(JUNK);
  }
  return root;
}

t.test('fuzz: mutated encodings decode to the original, to a canonical value, or fail with FORMAT_*', async (t) => {
  const r = new Rng(20240501);
  const samples = KINDS.flatMap((kind) => Array.from({ length: 30 }, () => {
    const value = kind.random(r);
    return { kind, value, bytes: kind.encode(value) };
  }));
  const CASES = 40_000;
  const failures: string[] = [];
  const tally = { original: 0, otherValid: 0, corrupt: 0, unsupported: 0 };
  for (let i = 0; i < CASES; i++) {
    const s = r.pick(samples);
    const mode = r.below(10);
    let input: Buffer;
    let resealed = false;
    let decoder = s.kind;
    if (mode < 4) {
      input = r.pick(MUTATIONS)(r, s.bytes); // raw: the checksum is not fixed
    } else if (mode < 7) {
      resealed = true;
      const p = parts(s.bytes);
      const version = r.chance(0.1) ? r.below(4) : 1;
      const flags = r.chance(0.05) ? 1 << r.below(16) : 0;
      input = envelope(p.magic, version, flags, r.pick(MUTATIONS)(r, p.body));
    } else if (mode < 9) {
      resealed = true;
      const json = mutateJson(r, JSON.parse(parts(s.bytes).body.toString('utf8')));
      input = envelope(parts(s.bytes).magic, 1, 0, Buffer.from(JSON.stringify(json) ?? 'undefined', 'utf8'));
    } else {
      decoder = r.pick(KINDS); // another decoder, or garbage
      input = r.chance(0.5) ? s.bytes : r.bytes(r.below(200));
    }
    try {
      const got = decoder.decode(input);
      if (decoder === s.kind && input.equals(s.bytes)) {
        if (isDeepStrictEqual(got, s.value)) tally.original++;
        else failures.push(`#${i} ${s.kind.type}: unchanged bytes decoded to another value`);
      } else if (resealed && decoder.encode(got).equals(input) && parts(input).version === 1) {
        tally.otherValid++; // a valid record whose only encoding is exactly these bytes
      } else {
        failures.push(`#${i} ${s.kind.type} mode ${mode}: changed bytes accepted: ${input.toString('hex').slice(0, 120)}`);
      }
    } catch (e) {
      if (!(e instanceof IslandError)) failures.push(`#${i} ${s.kind.type} mode ${mode}: ${e instanceof Error ? e.stack : String(e)}`);
      else if (e.code === 'FORMAT_CORRUPT') {
        tally.corrupt++;
        const at = e.details.offset;
        if (typeof at !== 'number' || at < 0 || at > input.length) failures.push(`#${i}: FORMAT_CORRUPT without a valid offset: ${e.message}`);
      } else if (e.code === 'FORMAT_UNSUPPORTED') tally.unsupported++;
      else failures.push(`#${i} ${s.kind.type} mode ${mode}: ${e.code}: ${e.message}`);
    }
  }
  t.strictSame(failures.slice(0, 10), [], `${CASES} cases: ${JSON.stringify(tally)}`);
  t.ok(tally.corrupt > CASES / 2 && tally.unsupported > 0 && tally.otherValid > 0 && tally.original > 0, 'every outcome was exercised');
});
