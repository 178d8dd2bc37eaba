/**
 * Reading a qcow2 header back (the layout is in qcow2-layout.ts): every field range-checked
 * before it is used, extensions and feature names decoded, and the warnings island gives for
 * features that make snapshots or restores costly.
 */
import { IslandError } from '../errors.js';
import { Reader, corrupt, toSafeNumber } from './bytes.js';
import {
  QCOW2_COMPAT_LAZY_REFCOUNTS,
  QCOW2_COMPRESSION_ZLIB,
  QCOW2_COMPRESSION_ZSTD,
  QCOW2_CRYPT_AES,
  QCOW2_CRYPT_LUKS,
  QCOW2_CRYPT_NONE,
  QCOW2_EXTL2_MIN_CLUSTER_BITS,
  QCOW2_EXT_ALIGN,
  QCOW2_EXT_BACKING_FORMAT,
  QCOW2_EXT_BITMAPS,
  QCOW2_EXT_CRYPTO_HEADER,
  QCOW2_EXT_DATA,
  QCOW2_EXT_DATA_FILE,
  QCOW2_EXT_END,
  QCOW2_EXT_FEATURE_TABLE,
  QCOW2_EXT_HEADER_SIZE,
  QCOW2_EXT_LENGTH,
  QCOW2_EXT_TYPE,
  QCOW2_FEATURE_ENTRY_BIT,
  QCOW2_FEATURE_ENTRY_NAME,
  QCOW2_FEATURE_ENTRY_SIZE,
  QCOW2_FEATURE_ENTRY_TYPE,
  QCOW2_FEATURE_TYPE_INCOMPAT,
  QCOW2_HDR_AUTOCLEAR_FEATURES,
  QCOW2_HDR_BACKING_FILE_OFFSET,
  QCOW2_HDR_BACKING_FILE_SIZE,
  QCOW2_HDR_CLUSTER_BITS,
  QCOW2_HDR_COMPATIBLE_FEATURES,
  QCOW2_HDR_COMPRESSION_TYPE,
  QCOW2_HDR_CRYPT_METHOD,
  QCOW2_HDR_HEADER_LENGTH,
  QCOW2_HDR_INCOMPATIBLE_FEATURES,
  QCOW2_HDR_L1_SIZE,
  QCOW2_HDR_L1_TABLE_OFFSET,
  QCOW2_HDR_MAGIC,
  QCOW2_HDR_NB_SNAPSHOTS,
  QCOW2_HDR_REFCOUNT_ORDER,
  QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS,
  QCOW2_HDR_REFCOUNT_TABLE_OFFSET,
  QCOW2_HDR_SIZE,
  QCOW2_HDR_SNAPSHOTS_OFFSET,
  QCOW2_HDR_VERSION,
  QCOW2_HEADER_ALIGN,
  QCOW2_INCOMPAT_COMPRESSION,
  QCOW2_INCOMPAT_CORRUPT,
  QCOW2_INCOMPAT_DIRTY,
  QCOW2_INCOMPAT_EXTL2,
  QCOW2_INCOMPAT_MASK,
  QCOW2_INCOMPAT_REFUSED,
  QCOW2_L1E_SIZE,
  QCOW2_L2E_SIZE,
  QCOW2_L2E_SIZE_EXTENDED,
  QCOW2_MAGIC,
  QCOW2_MAX_BACKING_FILE_NAME,
  QCOW2_MAX_CLUSTER_BITS,
  QCOW2_MAX_HEADER_BYTES,
  QCOW2_MAX_HEADER_EXTENSIONS,
  QCOW2_MAX_L1_SIZE,
  QCOW2_MAX_REFCOUNT_ORDER,
  QCOW2_MAX_REFTABLE_BYTES,
  QCOW2_MAX_SNAPSHOTS,
  QCOW2_MAX_VIRTUAL_SIZE,
  QCOW2_MIN_CLUSTER_BITS,
  QCOW2_REFCOUNT_ORDER,
  QCOW2_V2_HEADER_LENGTH,
  QCOW2_V3_MIN_HEADER_LENGTH,
  QCOW2_VERSION_2,
  QCOW2_VERSION_3,
  type Qcow2BackingFile,
  type Qcow2CompressionType,
  type Qcow2CryptMethod,
  type Qcow2Extension,
  type Qcow2ExtensionKind,
  type Qcow2Header,
  qcow2BytesPerL1Entry,
} from './qcow2-layout.js';

function unsupported(what: string, offset: number, details: Record<string, unknown> = {}): IslandError {
  return new IslandError('FORMAT_UNSUPPORTED', `${what} (at byte ${offset})`, { details: { ...details, offset } });
}

function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

const EXTENSION_KINDS: ReadonlyMap<number, Qcow2ExtensionKind> = new Map([
  [QCOW2_EXT_BACKING_FORMAT, 'backing_format'],
  [QCOW2_EXT_FEATURE_TABLE, 'feature_table'],
  [QCOW2_EXT_BITMAPS, 'bitmaps'],
  [QCOW2_EXT_CRYPTO_HEADER, 'crypto_header'],
  [QCOW2_EXT_DATA_FILE, 'data_file'],
]);

const COMPRESSION_TYPES: ReadonlyMap<number, Qcow2CompressionType> = new Map([
  [QCOW2_COMPRESSION_ZLIB, 'zlib'],
  [QCOW2_COMPRESSION_ZSTD, 'zstd'],
]);

const CRYPT_METHODS: ReadonlyMap<number, Qcow2CryptMethod> = new Map([
  [QCOW2_CRYPT_NONE, 'none'],
  [QCOW2_CRYPT_AES, 'aes'],
  [QCOW2_CRYPT_LUKS, 'luks'],
]);

/** One function names extension types; callers never compare type numbers themselves. */
export function qcow2ExtensionKind(type: number): Qcow2ExtensionKind {
  return EXTENSION_KINDS.get(type) ?? 'unknown';
}

function u32At(r: Reader, off: number, field: string): number {
  r.pos = off;
  return r.u32(field);
}

function u64At(r: Reader, off: number, field: string): bigint {
  r.pos = off;
  return r.u64(field);
}

/** A 64-bit offset that must fit a number, be cluster-aligned and not point into cluster 0. */
function tableOffsetAt(r: Reader, off: number, field: string, clusterSize: number, used: boolean): number {
  const v = toSafeNumber(u64At(r, off, field), field, off);
  if (v % clusterSize !== 0) throw corrupt(`${field} ${v} is not aligned to the ${clusterSize}-byte cluster`, off);
  if (used && v < clusterSize) throw corrupt(`${field} ${v} points into the header cluster`, off);
  return v;
}

/** A table of `bytes` bytes at `start` must end at a safe offset. */
function checkTableEnd(start: number, bytes: number, field: string, off: number): void {
  if (start + bytes > Number.MAX_SAFE_INTEGER) throw corrupt(`${field} ends past the largest supported offset`, off);
}

/** Read the header extensions from `start` up to `end` (exclusive), stopping at the end marker. */
function readExtensions(buf: Buffer, start: number, end: number): Qcow2Extension[] {
  const r = new Reader(buf);
  const out: Qcow2Extension[] = [];
  let off = start;
  while (off < end) {
    if (end - off < QCOW2_EXT_HEADER_SIZE) throw corrupt(`header extension at ${off} crosses the end of the extension area (${end})`, off);
    const type = u32At(r, off + QCOW2_EXT_TYPE, 'header extension type');
    const length = u32At(r, off + QCOW2_EXT_LENGTH, 'header extension length');
    if (type === QCOW2_EXT_END) return out;
    const dataAt = off + QCOW2_EXT_DATA;
    if (length > end - dataAt) throw corrupt(`header extension of ${length} bytes crosses the end of the extension area (${end})`, off + QCOW2_EXT_LENGTH);
    if (out.length >= QCOW2_MAX_HEADER_EXTENSIONS) throw corrupt(`more than ${QCOW2_MAX_HEADER_EXTENSIONS} header extensions`, off);
    r.pos = dataAt;
    const data = Buffer.from(r.bytes(length, 'header extension data'));
    out.push({ type, kind: qcow2ExtensionKind(type), offset: off, data });
    off = dataAt + alignUp(length, QCOW2_EXT_ALIGN);
  }
  return out;
}

/** Names the image itself gives its feature bits (for messages about unknown bits). */
function featureName(exts: readonly Qcow2Extension[], type: number, bit: number): string | null {
  for (const e of exts) {
    if (e.type !== QCOW2_EXT_FEATURE_TABLE) continue;
    for (let at = 0; at + QCOW2_FEATURE_ENTRY_SIZE <= e.data.length; at += QCOW2_FEATURE_ENTRY_SIZE) {
      if (e.data[at + QCOW2_FEATURE_ENTRY_TYPE] !== type || e.data[at + QCOW2_FEATURE_ENTRY_BIT] !== bit) continue;
      const raw = e.data.subarray(at + QCOW2_FEATURE_ENTRY_NAME, at + QCOW2_FEATURE_ENTRY_SIZE);
      const nul = raw.indexOf(0);
      return raw.subarray(0, nul < 0 ? raw.length : nul).toString('utf8');
    }
  }
  return null;
}

function bitsOf(mask: bigint): number[] {
  const bits: number[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) bits.push(bit);
  return bits;
}

function describeBits(exts: readonly Qcow2Extension[], type: number, mask: bigint): string {
  return bitsOf(mask)
    .map((bit) => {
      const name = featureName(exts, type, bit);
      return name === null ? `bit ${bit}` : `bit ${bit} (${JSON.stringify(name)})`;
    })
    .join(', ');
}

/**
 * Parse and validate a qcow2 header (version 2 or 3) with its extensions and backing file name.
 * `buf` holds the start of the image; everything read lies in the first cluster, so
 * min(file length, QCOW2_MAX_HEADER_BYTES) bytes are always enough.
 */
export function parseQcow2Header(buf: Buffer): Qcow2Header {
  const r = new Reader(buf);
  r.need(QCOW2_V2_HEADER_LENGTH, 'qcow2 header');
  const magic = u32At(r, QCOW2_HDR_MAGIC, 'magic');
  if (magic !== QCOW2_MAGIC) throw corrupt(`not a qcow2 image: magic 0x${magic.toString(16).padStart(8, '0')}`, QCOW2_HDR_MAGIC);
  const version = u32At(r, QCOW2_HDR_VERSION, 'version');
  if (version !== QCOW2_VERSION_2 && version !== QCOW2_VERSION_3) throw unsupported(`unsupported qcow2 version ${version}`, QCOW2_HDR_VERSION, { version });

  const clusterBits = u32At(r, QCOW2_HDR_CLUSTER_BITS, 'cluster_bits');
  if (clusterBits < QCOW2_MIN_CLUSTER_BITS) throw corrupt(`cluster_bits ${clusterBits} is below ${QCOW2_MIN_CLUSTER_BITS}`, QCOW2_HDR_CLUSTER_BITS);
  if (clusterBits > QCOW2_MAX_CLUSTER_BITS) {
    throw unsupported(`cluster size 2^${clusterBits} exceeds 2 MiB`, QCOW2_HDR_CLUSTER_BITS, { clusterBits });
  }
  const clusterSize = 2 ** clusterBits;

  let headerLength = QCOW2_V2_HEADER_LENGTH;
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = QCOW2_REFCOUNT_ORDER;
  let compression = QCOW2_COMPRESSION_ZLIB;
  if (version === QCOW2_VERSION_3) {
    r.pos = 0;
    r.need(QCOW2_V3_MIN_HEADER_LENGTH, 'qcow2 version 3 header');
    headerLength = u32At(r, QCOW2_HDR_HEADER_LENGTH, 'header_length');
    if (headerLength < QCOW2_V3_MIN_HEADER_LENGTH || headerLength % QCOW2_HEADER_ALIGN !== 0 || headerLength > clusterSize) {
      throw corrupt(`header_length ${headerLength} is not a multiple of 8 from 104 to the cluster size`, QCOW2_HDR_HEADER_LENGTH);
    }
    r.pos = 0;
    r.need(headerLength, 'qcow2 header (header_length)');
    incompatibleFeatures = u64At(r, QCOW2_HDR_INCOMPATIBLE_FEATURES, 'incompatible_features');
    compatibleFeatures = u64At(r, QCOW2_HDR_COMPATIBLE_FEATURES, 'compatible_features');
    autoclearFeatures = u64At(r, QCOW2_HDR_AUTOCLEAR_FEATURES, 'autoclear_features');
    refcountOrder = u32At(r, QCOW2_HDR_REFCOUNT_ORDER, 'refcount_order');
    if (headerLength > QCOW2_HDR_COMPRESSION_TYPE) {
      r.pos = QCOW2_HDR_COMPRESSION_TYPE;
      compression = r.u8('compression_type');
    }
  }

  // Backing file name and the end of the extension area.
  const backingOffsetBig = u64At(r, QCOW2_HDR_BACKING_FILE_OFFSET, 'backing_file_offset');
  if (backingOffsetBig > BigInt(clusterSize)) throw corrupt(`backing_file_offset ${backingOffsetBig} is outside the header cluster`, QCOW2_HDR_BACKING_FILE_OFFSET);
  const backingOffset = Number(backingOffsetBig);
  if (backingOffset !== 0 && backingOffset < headerLength) throw corrupt(`backing_file_offset ${backingOffset} overlaps the header`, QCOW2_HDR_BACKING_FILE_OFFSET);
  const extensions = readExtensions(buf, headerLength, backingOffset !== 0 ? backingOffset : clusterSize);

  // Features before anything else: an unknown incompatible bit may change any field's meaning.
  const unknownIncompat = incompatibleFeatures & ~QCOW2_INCOMPAT_MASK;
  if (unknownIncompat !== 0n) {
    const bits = describeBits(extensions, QCOW2_FEATURE_TYPE_INCOMPAT, unknownIncompat);
    throw unsupported(`unknown qcow2 incompatible features: ${bits}`, QCOW2_HDR_INCOMPATIBLE_FEATURES, { bits: bitsOf(unknownIncompat) });
  }
  if (incompatibleFeatures & QCOW2_INCOMPAT_REFUSED) {
    throw unsupported('qcow2 external data file: the guest data lives outside the image, which island cannot snapshot', QCOW2_HDR_INCOMPATIBLE_FEATURES, {
      bits: bitsOf(incompatibleFeatures & QCOW2_INCOMPAT_REFUSED),
    });
  }
  const extendedL2 = (incompatibleFeatures & QCOW2_INCOMPAT_EXTL2) !== 0n;
  if (extendedL2 && clusterBits < QCOW2_EXTL2_MIN_CLUSTER_BITS) {
    throw corrupt(`extended L2 entries need clusters of at least 16 KiB, not ${clusterSize} bytes`, QCOW2_HDR_INCOMPATIBLE_FEATURES);
  }
  const compressionType = COMPRESSION_TYPES.get(compression);
  if (compressionType === undefined) throw unsupported(`unknown qcow2 compression type ${compression}`, QCOW2_HDR_COMPRESSION_TYPE, { compression });
  if ((compression !== QCOW2_COMPRESSION_ZLIB) !== ((incompatibleFeatures & QCOW2_INCOMPAT_COMPRESSION) !== 0n)) {
    throw corrupt(`compression type ${compressionType} disagrees with the compression type feature bit`, QCOW2_HDR_COMPRESSION_TYPE);
  }
  if (refcountOrder > QCOW2_MAX_REFCOUNT_ORDER) throw corrupt(`refcount_order ${refcountOrder} exceeds ${QCOW2_MAX_REFCOUNT_ORDER}`, QCOW2_HDR_REFCOUNT_ORDER);

  const cryptRaw = u32At(r, QCOW2_HDR_CRYPT_METHOD, 'crypt_method');
  const cryptMethod = CRYPT_METHODS.get(cryptRaw);
  if (cryptMethod === undefined) throw unsupported(`unknown qcow2 encryption method ${cryptRaw}`, QCOW2_HDR_CRYPT_METHOD, { cryptMethod: cryptRaw });

  const sizeBig = u64At(r, QCOW2_HDR_SIZE, 'size');
  if (sizeBig > BigInt(QCOW2_MAX_VIRTUAL_SIZE)) {
    throw unsupported(`virtual size ${sizeBig} exceeds island's limit of ${QCOW2_MAX_VIRTUAL_SIZE}`, QCOW2_HDR_SIZE, { virtualSize: String(sizeBig) });
  }
  const virtualSize = Number(sizeBig);

  // Active L1 table: bounded, cluster-aligned, large enough for the virtual size.
  const l1Size = u32At(r, QCOW2_HDR_L1_SIZE, 'l1_size');
  if (l1Size > QCOW2_MAX_L1_SIZE) throw corrupt(`l1_size ${l1Size} exceeds ${QCOW2_MAX_L1_SIZE} entries (a 32 MiB L1 table)`, QCOW2_HDR_L1_SIZE);
  const l1Needed = Math.ceil(virtualSize / qcow2BytesPerL1Entry(clusterSize, extendedL2 ? QCOW2_L2E_SIZE_EXTENDED : QCOW2_L2E_SIZE));
  if (l1Size < l1Needed) throw corrupt(`l1_size ${l1Size} is too small for virtual size ${virtualSize} (needs ${l1Needed})`, QCOW2_HDR_L1_SIZE);
  const l1TableOffset = tableOffsetAt(r, QCOW2_HDR_L1_TABLE_OFFSET, 'l1_table_offset', clusterSize, l1Size > 0);
  checkTableEnd(l1TableOffset, l1Size * QCOW2_L1E_SIZE, 'L1 table', QCOW2_HDR_L1_TABLE_OFFSET);

  // Refcount table: present, bounded, cluster-aligned.
  const refcountTableClusters = u32At(r, QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS, 'refcount_table_clusters');
  if (refcountTableClusters === 0) throw corrupt('the image has no refcount table', QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS);
  if (refcountTableClusters > QCOW2_MAX_REFTABLE_BYTES / clusterSize) {
    throw corrupt(`refcount_table_clusters ${refcountTableClusters} exceeds an 8 MiB refcount table`, QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS);
  }
  const refcountTableOffset = tableOffsetAt(r, QCOW2_HDR_REFCOUNT_TABLE_OFFSET, 'refcount_table_offset', clusterSize, true);
  checkTableEnd(refcountTableOffset, refcountTableClusters * clusterSize, 'refcount table', QCOW2_HDR_REFCOUNT_TABLE_OFFSET);

  // Internal snapshot table: bounded count, cluster-aligned.
  const nbSnapshots = u32At(r, QCOW2_HDR_NB_SNAPSHOTS, 'nb_snapshots');
  if (nbSnapshots > QCOW2_MAX_SNAPSHOTS) throw corrupt(`nb_snapshots ${nbSnapshots} exceeds ${QCOW2_MAX_SNAPSHOTS}`, QCOW2_HDR_NB_SNAPSHOTS);
  const snapshotsOffset = tableOffsetAt(r, QCOW2_HDR_SNAPSHOTS_OFFSET, 'snapshots_offset', clusterSize, nbSnapshots > 0);

  let backingFile: Qcow2BackingFile | null = null;
  if (backingOffset !== 0) {
    const size = u32At(r, QCOW2_HDR_BACKING_FILE_SIZE, 'backing_file_size');
    if (size > Math.min(QCOW2_MAX_BACKING_FILE_NAME, clusterSize - backingOffset)) {
      throw corrupt(`backing_file_size ${size} exceeds ${QCOW2_MAX_BACKING_FILE_NAME} bytes or the header cluster`, QCOW2_HDR_BACKING_FILE_SIZE);
    }
    r.pos = backingOffset;
    const name = r.bytes(size, 'backing file name').toString('utf8');
    backingFile = { offset: backingOffset, size, name };
  }
  const backingFormatExt = extensions.find((e) => e.type === QCOW2_EXT_BACKING_FORMAT);

  return {
    version,
    headerLength,
    virtualSize,
    clusterBits,
    clusterSize,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    refcountOrder,
    refcountBits: 2 ** refcountOrder,
    nbSnapshots,
    snapshotsOffset,
    backingFile,
    backingFormat: backingFormatExt === undefined ? null : backingFormatExt.data.toString('utf8'),
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    dirty: (incompatibleFeatures & QCOW2_INCOMPAT_DIRTY) !== 0n,
    corrupt: (incompatibleFeatures & QCOW2_INCOMPAT_CORRUPT) !== 0n,
    extendedL2,
    lazyRefcounts: (compatibleFeatures & QCOW2_COMPAT_LAZY_REFCOUNTS) !== 0n,
    compressionType,
    extensions,
  };
}

/** What in a parsed header hurts island's snapshots or restores, one sentence each. */
export function qcow2Warnings(h: Qcow2Header): string[] {
  const out: string[] = [];
  if (h.lazyRefcounts) {
    out.push('lazy refcounts are on: an image snapshotted while in use carries the dirty bit, and QEMU repairs a restored copy by reading every metadata cluster');
  }
  if (h.dirty) {
    out.push('the dirty bit is set: refcounts may be inconsistent, and QEMU repairs them on open by reading every L1 and L2 table (on a restore, fetching every metadata cluster)');
  }
  if (h.corrupt) {
    out.push('the corrupt bit is set: QEMU found an inconsistency and opens the image read-only until `qemu-img check -r` repairs it');
  }
  if (h.nbSnapshots > 0) {
    out.push(`${h.nbSnapshots} internal snapshot(s): their clusters (and any saved VM state) stay in the image, so every island snapshot uploads and keeps them`);
  }
  if (h.backingFile !== null) {
    const name = JSON.stringify(h.backingFile.name);
    out.push(`backing file ${name}: island snapshots this image alone; the backing file is in no snapshot and must exist wherever the volume is restored`);
  }
  if (h.cryptMethod === 'aes') {
    out.push('the image is encrypted with qcow2 AES-CBC, which QEMU system emulators refuse to open; island stores its ciphertext, so equal content is never deduplicated');
  } else if (h.cryptMethod === 'luks') {
    out.push('the image is LUKS-encrypted: island stores its ciphertext, so equal content is never deduplicated and compression does not pay');
  }
  return out;
}
