/**
 * island's small records: manifest, volume catalog record, tombstone, pin, lease, damage mark.
 *
 * Every record is one object in one envelope (big-endian, as all island formats):
 *
 *   Byte 0-3        magic, 4 ASCII bytes naming the record type (RECORD_MAGIC)
 *   Byte 4-5        version of the body (u16); this build writes and reads version 1
 *   Byte 6-7        flags (u16); none are defined, a set bit means a newer writer (reserved
 *                   for an encrypted body)
 *   Byte 8-11       n = body length in bytes (u32), bounded per type (RECORD_MAX_BYTES)
 *   Byte 12..11+n   body: canonical JSON (UTF-8) of the record's fields, in schema order
 *   Byte 12+n..43+n SHA-256 of bytes 0..11+n
 *
 * The envelope is the same for every version; a version changes only the body. Decoding
 * checks, in order: magic, size limit, body length against the object's length, checksum,
 * then version and flags (FORMAT_UNSUPPORTED: a valid record from a newer build), then the
 * body: UTF-8, JSON, every field's type and range, cross-field rules, and finally that the
 * body is byte for byte the canonical encoding of what was read. So one value has exactly
 * one encoding, and anything else is FORMAT_CORRUPT naming the field and offset.
 *
 * Canonical JSON: fields in the order of this file's schemas, no whitespace, integers only
 * (safe integers), times as ISO-8601 UTC with milliseconds ("2024-05-01T12:00:00.000Z"),
 * ids (packs, blobs) as 64 lowercase hex digits, snapshot and pin ids as uppercase ULIDs,
 * sets (a manifest's packs) sorted ascending. Encoding validates the same rules and refuses
 * a bad value with INVALID_ARGUMENT, so everything encoded decodes.
 */
import { IslandError } from '../errors.js';
import { Reader, SHA256_LEN, Writer, corrupt, sha256 } from './bytes.js';
import { type BlobLocation, hex } from './location.js';
import {
  MAX_CLUSTER_SIZE,
  MAX_VOLUME_SIZE,
  MIN_CLUSTER_SIZE,
  SECTOR_SIZE,
  isClusterSize,
  isHostId,
  isRegionName,
  isVolumeName,
  quoteInput,
} from './names.js';
import { isUlid } from './ulid.js';
import { type Fail, type Codec, same, int, bool, oneOf, named, text, time, id32, nullable, array, object } from './record-codec.js';

export { MAX_TIME_MS } from './record-codec.js';

// ---- envelope ------------------------------------------------------------------------

const OFF_MAGIC = 0;
const MAGIC_LEN = 4;
const OFF_VERSION = 4;
const OFF_FLAGS = 6;
const OFF_BODY_LEN = 8;
/** Bytes before the body. */
export const RECORD_HEADER_LEN = 12;
/** Envelope bytes around the body: header and checksum. */
export const RECORD_OVERHEAD = RECORD_HEADER_LEN + SHA256_LEN;
/** Flags this build understands (none yet). */
const FLAGS_KNOWN = 0;

export type RecordType = 'manifest' | 'volume' | 'tombstone' | 'pin' | 'lease' | 'damage';

/** "ISR" (island record) and a letter per type: distinct from every other island object's magic. */
export const RECORD_MAGIC: Readonly<Record<RecordType, string>> = {
  manifest: 'ISRM', volume: 'ISRV', tombstone: 'ISRT', pin: 'ISRP', lease: 'ISRL', damage: 'ISRD',
};

/** The body version this build writes, per record type. */
export const RECORD_VERSION: Readonly<Record<RecordType, number>> = {
  manifest: 1, volume: 1, tombstone: 1, pin: 1, lease: 1, damage: 1,
};

/** A manifest lists at most this many new packs: 4 TiB of new data at the 16 MiB pack target. */
export const MAX_MANIFEST_PACKS = 2 ** 18;
/** Longest free text (warning, reason, finding) in UTF-8 bytes: one readable line. */
export const MAX_TEXT_BYTES = 1024;
export const MAX_MANIFEST_WARNINGS = 256;
export const MAX_DAMAGE_FINDINGS = 64;

/**
 * Largest object per type, envelope included. A manifest is bounded by its pack list
 * (2^18 ids * 67 bytes of JSON = 17.6 MB) plus warnings (256 * ~2 KiB escaped); a damage
 * mark by 64 findings of ~2 KiB escaped; the others hold a few names and one short text.
 */
export const RECORD_MAX_BYTES: Readonly<Record<RecordType, number>> = {
  manifest: 32 * 1024 * 1024, volume: 16 * 1024, tombstone: 16 * 1024, pin: 16 * 1024, lease: 16 * 1024, damage: 256 * 1024,
};

/** Largest count of clusters: the largest image at the smallest cluster size. */
const MAX_CLUSTERS = Math.ceil(Number.MAX_SAFE_INTEGER / MIN_CLUSTER_SIZE);
/** Widest tree node: nodes are 16-64 KiB and an entry takes well over one byte. */
export const MAX_TREE_FANOUT = 65536;
/** Deepest tree: fan-out >= 2 over fewer than 2^45 clusters needs at most 45 levels. */
export const MAX_TREE_DEPTH = 48;
/** Frames are one cluster or tree node plus framing; 32 bits is ample. */
const MAX_FRAME_LEN = 2 ** 32 - 1;
/** QEMU's limit on internal snapshots in one image (QCOW_MAX_SNAPSHOTS). */
const MAX_QCOW2_SNAPSHOTS = 65536;
const MAX_COUNT = Number.MAX_SAFE_INTEGER;

// ---- record types ----------------------------------------------------------------------

/** A snapshot named across volumes. */
export interface SnapshotRef {
  readonly volume: string;
  readonly id: string;
}

export interface TreeRef {
  /** Location of the root node, or null for an empty tree (every cluster unallocated). */
  readonly root: BlobLocation | null;
  /** Clusters the tree covers: ceil(imageLength / clusterSize). */
  readonly nClusters: number;
  readonly fanout: number;
  readonly depth: number;
}

/** What the image's qcow2 header said at the seal (null when it could not be parsed). */
export interface Qcow2Facts {
  readonly version: 2 | 3;
  readonly dirty: boolean;
  readonly lazyRefcounts: boolean;
  readonly nbSnapshots: number;
  readonly corrupt: boolean;
}

export const CONSISTENCY_LEVELS = ['crash', 'qemu-flushed', 'guest-frozen'] as const;
export type Consistency = (typeof CONSISTENCY_LEVELS)[number];

export interface SnapshotStats {
  readonly changedClusters: number;
  readonly zeroClusters: number;
  readonly uploadedBlobs: number;
  readonly uploadedBytes: number;
  readonly reusedBlobs: number;
  readonly packs: number;
  /** How long the guest was paused, or null when it was not paused (no QMP). */
  readonly pauseMs: number | null;
  readonly durationMs: number;
}

/** The commit record of one snapshot. Write-once. */
export interface Manifest {
  readonly volume: string;
  /** The snapshot id (ULID). */
  readonly id: string;
  /** The previous snapshot of this volume, or null for its first. */
  readonly parent: string | null;
  /** For a volume created from a snapshot: that source snapshot; else null. */
  readonly base: SnapshotRef | null;
  /** Attachment generation of the writer (forks differ in it, invariant 9). */
  readonly generation: number;
  readonly host: string;
  /** Commit time, ms since the Unix epoch. */
  readonly created: number;
  readonly region: string;
  /** Length of the image file in bytes at the seal. */
  readonly imageLength: number;
  readonly clusterSize: number;
  readonly tree: TreeRef;
  readonly qcow2: Qcow2Facts | null;
  readonly consistency: Consistency;
  readonly stats: SnapshotStats;
  readonly warnings: readonly string[];
  /** Ids of the packs this snapshot wrote; encoded sorted, duplicates refused. */
  readonly packs: readonly Buffer[];
}

export const VOLUME_STATUSES = ['available', 'attached', 'deleting'] as const;
export type VolumeStatus = (typeof VOLUME_STATUSES)[number];

/** The catalog record of a volume: the only record that is rewritten. */
export interface VolumeRecord {
  readonly name: string;
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly region: string;
  readonly created: number;
  /** The snapshot the volume was created from, or null. */
  readonly source: SnapshotRef | null;
  readonly status: VolumeStatus;
  /** The host holding the attachment: set exactly when status is 'attached'. */
  readonly host: string | null;
  /** The latest attachment generation granted (0 before the first attach; never decreases). */
  readonly generation: number;
  /** Incremented by every rewrite; the highest revision wins. */
  readonly revision: number;
}

/** A write-once record that a snapshot is deleted. */
export interface Tombstone {
  readonly snapshot: string;
  readonly volume: string;
  readonly created: number;
  readonly host: string;
  readonly reason: string;
  /** Deleted despite pins or a live dependant. */
  readonly forced: boolean;
}

/** attach: a restore filling from it; copy: a region copy; upload: a snapshot reusing its blobs;
 * mount: a read-only mount; clone: a volume created from it that has no snapshot of its own yet. */
export const PIN_HOLDERS = ['attach', 'copy', 'upload', 'mount', 'clone'] as const;
export type PinHolder = (typeof PIN_HOLDERS)[number];

/** A write-once record that something live depends on a snapshot. */
export interface Pin {
  /** The pin's own id (ULID). */
  readonly id: string;
  readonly snapshot: string;
  /** The volume of the pinned snapshot. */
  readonly volume: string;
  readonly holder: PinHolder;
  readonly host: string;
  readonly created: number;
  /** After this time a pin that was not renewed is stale (its holder is presumed dead). */
  readonly expires: number;
}

/** A write-once record of an attachment generation, for fencing. */
export interface Lease {
  readonly volume: string;
  readonly host: string;
  readonly generation: number;
  readonly created: number;
  readonly expires: number;
}

/** A write-once record by fsck that a snapshot is damaged. */
export interface DamageMark {
  readonly snapshot: string;
  readonly volume: string;
  /** What was found, one line each. */
  readonly findings: readonly string[];
  readonly created: number;
}

const volumeName = named(isVolumeName, 'a volume name ([a-z0-9][a-z0-9._-]{0,62})');
const hostId = named(isHostId, 'a host id ([a-z0-9][a-z0-9._-]{0,62})');
const regionName = named(isRegionName, 'a region name ([a-z0-9][a-z0-9_-]{0,31})');
const ulidId = named(isUlid, 'a ULID (26 uppercase Crockford base32 characters)');

// ---- schemas (version 1) -------------------------------------------------------------

const snapshotRef = object<SnapshotRef>({ volume: volumeName, id: ulidId });

const location = object<BlobLocation>({
  pack: id32,
  offset: int(0, Number.MAX_SAFE_INTEGER),
  length: int(1, MAX_FRAME_LEN),
  id: id32,
});

const count = int(0, MAX_COUNT);

const clusterSize: Codec<number> = same((v, fail, path) =>
  isClusterSize(v) ? v : fail(path, `must be a power of two from ${MIN_CLUSTER_SIZE} to ${MAX_CLUSTER_SIZE}, got ${quoteInput(v)}`),
);

const manifestV1 = object<Manifest>(
  {
    volume: volumeName,
    id: ulidId,
    parent: nullable(ulidId),
    base: nullable(snapshotRef),
    generation: int(1, MAX_COUNT),
    host: hostId,
    created: time,
    region: regionName,
    imageLength: int(0, Number.MAX_SAFE_INTEGER),
    clusterSize,
    tree: object<TreeRef>({
      root: nullable(location),
      nClusters: int(0, MAX_CLUSTERS),
      fanout: int(2, MAX_TREE_FANOUT),
      depth: int(0, MAX_TREE_DEPTH),
    }),
    qcow2: nullable(
      object<Qcow2Facts>({
        version: oneOf([2, 3]),
        dirty: bool,
        lazyRefcounts: bool,
        nbSnapshots: int(0, MAX_QCOW2_SNAPSHOTS),
        corrupt: bool,
      }),
    ),
    consistency: oneOf(CONSISTENCY_LEVELS),
    stats: object<SnapshotStats>({
      changedClusters: count,
      zeroClusters: count,
      uploadedBlobs: count,
      uploadedBytes: count,
      reusedBlobs: count,
      packs: count,
      pauseMs: nullable(count),
      durationMs: count,
    }),
    warnings: array(text(1, MAX_TEXT_BYTES), 0, MAX_MANIFEST_WARNINGS),
    packs: array(id32, 0, MAX_MANIFEST_PACKS, true),
  },
  (m, fail, path) => {
    if (m.parent === m.id) fail(`${path}.parent`, 'must differ from the snapshot id');
    if (m.base !== null && m.base.id === m.id) fail(`${path}.base.id`, 'must differ from the snapshot id');
    const covered = Math.ceil(m.imageLength / m.clusterSize);
    if (m.tree.nClusters !== covered) {
      fail(`${path}.tree.nClusters`, `must be ceil(imageLength / clusterSize) = ${covered}, got ${m.tree.nClusters}`);
    }
  },
);

const volumeV1 = object<VolumeRecord>(
  {
    name: volumeName,
    virtualSize: int(SECTOR_SIZE, MAX_VOLUME_SIZE),
    clusterSize,
    region: regionName,
    created: time,
    source: nullable(snapshotRef),
    status: oneOf(VOLUME_STATUSES),
    host: nullable(hostId),
    generation: int(0, MAX_COUNT),
    revision: int(1, MAX_COUNT),
  },
  (v, fail, path) => {
    if (v.virtualSize % SECTOR_SIZE !== 0) fail(`${path}.virtualSize`, `must be a multiple of ${SECTOR_SIZE}, got ${v.virtualSize}`);
    if ((v.status === 'attached') !== (v.host !== null)) fail(`${path}.host`, `must be set exactly when status is "attached" (status is "${v.status}")`);
    if (v.status === 'attached' && v.generation < 1) fail(`${path}.generation`, 'must be at least 1 while attached');
  },
);

const tombstoneV1 = object<Tombstone>({
  snapshot: ulidId,
  volume: volumeName,
  created: time,
  host: hostId,
  reason: text(0, MAX_TEXT_BYTES),
  forced: bool,
});

const expiresAfterCreated = (v: { created: number; expires: number }, fail: Fail, path: string): void => {
  if (v.expires <= v.created) fail(`${path}.expires`, 'must be later than created');
};

const pinV1 = object<Pin>(
  {
    id: ulidId,
    snapshot: ulidId,
    volume: volumeName,
    holder: oneOf(PIN_HOLDERS),
    host: hostId,
    created: time,
    expires: time,
  },
  expiresAfterCreated,
);

const leaseV1 = object<Lease>(
  { volume: volumeName, host: hostId, generation: int(1, MAX_COUNT), created: time, expires: time },
  expiresAfterCreated,
);

const damageV1 = object<DamageMark>({
  snapshot: ulidId,
  volume: volumeName,
  findings: array(text(1, MAX_TEXT_BYTES), 1, MAX_DAMAGE_FINDINGS),
  created: time,
});

// ---- encode / decode ------------------------------------------------------------------

interface RecordSpec<T> {
  readonly type: RecordType;
  readonly magic: Buffer;
  /** Body schema per readable version. */
  readonly versions: ReadonlyMap<number, Codec<T>>;
}

function spec<T>(type: RecordType, v1: Codec<T>): RecordSpec<T> {
  return { type, magic: Buffer.from(RECORD_MAGIC[type], 'latin1'), versions: new Map([[1, v1]]) };
}

const MANIFEST = spec('manifest', manifestV1);
const VOLUME = spec('volume', volumeV1);
const TOMBSTONE = spec('tombstone', tombstoneV1);
const PIN = spec('pin', pinV1);
const LEASE = spec('lease', leaseV1);
const DAMAGE = spec('damage', damageV1);

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function encodeRecord<T>(s: RecordSpec<T>, value: T): Buffer {
  const version = RECORD_VERSION[s.type];
  const codec = s.versions.get(version) as Codec<T>;
  const fail: Fail = (path, msg) => {
    throw new IslandError('INVALID_ARGUMENT', `invalid ${s.type} record: ${path} ${msg}`, { details: { record: s.type, field: path } });
  };
  const body = Buffer.from(JSON.stringify(codec.toJson(value, fail, s.type)), 'utf8');
  const total = RECORD_OVERHEAD + body.length;
  if (total > RECORD_MAX_BYTES[s.type]) {
    throw new IslandError('INVALID_ARGUMENT', `${s.type} record of ${total} bytes exceeds the limit of ${RECORD_MAX_BYTES[s.type]}`);
  }
  const w = new Writer(total);
  w.bytes(s.magic).u16(version).u16(FLAGS_KNOWN).u32(body.length).bytes(body);
  w.bytes(sha256(w.finish()));
  return w.finish();
}

function decodeRecord<T>(s: RecordSpec<T>, buf: Buffer): T {
  const r = new Reader(buf);
  const magic = r.bytes(MAGIC_LEN, 'magic');
  if (!magic.equals(s.magic)) {
    const other = recordTypeOf(buf);
    throw corrupt(`not a ${s.type} record: ${other !== null ? `it is a ${other} record` : `magic is ${hex(magic)}`}`, OFF_MAGIC);
  }
  const max = RECORD_MAX_BYTES[s.type];
  if (buf.length > max) throw corrupt(`${s.type} record of ${buf.length} bytes exceeds the limit of ${max}`, OFF_MAGIC);
  const version = r.u16('version');
  const flags = r.u16('flags');
  const n = r.u32('body length');
  if (n + SHA256_LEN !== r.remaining) {
    throw corrupt(`${s.type} body length ${n} does not fit the object: ${r.remaining} bytes follow the header, ${n + SHA256_LEN} expected`, OFF_BODY_LEN);
  }
  const body = r.bytes(n, 'body');
  const sumAt = r.offset;
  const sum = r.bytes(SHA256_LEN, 'checksum');
  r.done(`${s.type} record`);
  if (!sha256(buf.subarray(0, sumAt)).equals(sum)) throw corrupt(`${s.type} record checksum mismatch`, sumAt);

  const codec = s.versions.get(version);
  if (codec === undefined) {
    throw new IslandError('FORMAT_UNSUPPORTED', `${s.type} record version ${version} is not supported (this build reads ${[...s.versions.keys()].join(', ')})`, {
      details: { record: s.type, version, offset: OFF_VERSION },
    });
  }
  if ((flags & ~FLAGS_KNOWN) !== 0) {
    throw new IslandError('FORMAT_UNSUPPORTED', `${s.type} record has unknown flags 0x${flags.toString(16)}`, {
      details: { record: s.type, flags, offset: OFF_FLAGS },
    });
  }

  let json: unknown;
  try {
    json = JSON.parse(UTF8.decode(body));
  } catch {
    // The parser's own message quotes the input; say only what it is.
    throw corrupt(`${s.type} body is not valid UTF-8 JSON`, RECORD_HEADER_LEN);
  }
  const fail: Fail = (path, msg) => {
    throw corrupt(`${s.type} record: ${path} ${msg}`, RECORD_HEADER_LEN, { record: s.type, field: path });
  };
  const value = codec.fromJson(json, fail, s.type);
  const canonical = Buffer.from(JSON.stringify(codec.toJson(value, fail, s.type)), 'utf8');
  if (!canonical.equals(body)) {
    let i = 0;
    while (i < body.length && canonical[i] === body[i]) i++;
    throw corrupt(`${s.type} body is not in canonical form (first difference at body byte ${i})`, RECORD_HEADER_LEN + i);
  }
  return value;
}

/** The record type a buffer's magic names, or null (nothing else is checked). */
export function recordTypeOf(buf: Uint8Array): RecordType | null {
  if (buf.length < MAGIC_LEN) return null;
  const magic = Buffer.from(buf.buffer, buf.byteOffset, MAGIC_LEN).toString('latin1');
  for (const [type, m] of Object.entries(RECORD_MAGIC)) if (m === magic) return type as RecordType;
  return null;
}

export const encodeManifest = (m: Manifest): Buffer => encodeRecord(MANIFEST, m);
export const decodeManifest = (buf: Buffer): Manifest => decodeRecord(MANIFEST, buf);
export const encodeVolumeRecord = (v: VolumeRecord): Buffer => encodeRecord(VOLUME, v);
export const decodeVolumeRecord = (buf: Buffer): VolumeRecord => decodeRecord(VOLUME, buf);
export const encodeTombstone = (t: Tombstone): Buffer => encodeRecord(TOMBSTONE, t);
export const decodeTombstone = (buf: Buffer): Tombstone => decodeRecord(TOMBSTONE, buf);
export const encodePin = (p: Pin): Buffer => encodeRecord(PIN, p);
export const decodePin = (buf: Buffer): Pin => decodeRecord(PIN, buf);
export const encodeLease = (l: Lease): Buffer => encodeRecord(LEASE, l);
export const decodeLease = (buf: Buffer): Lease => decodeRecord(LEASE, buf);
export const encodeDamageMark = (d: DamageMark): Buffer => encodeRecord(DAMAGE, d);
export const decodeDamageMark = (buf: Buffer): DamageMark => decodeRecord(DAMAGE, buf);
