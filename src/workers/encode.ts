/**
 * Worker-thread task (piscina): hash and compress a batch of clusters into blob frames.
 * Imports format/ only. Input and output buffers are transferred, not copied.
 *
 * A batch is several clusters in one buffer (one message each way instead of one per
 * cluster: the message round trip costs about as much as hashing a 64 KiB cluster).
 *
 * Compression is tried only where a sample says it may pay (`worthCompressing`): LZ4 on a
 * cluster that does not compress costs about four times its SHA-256 here (a 64 KiB random
 * cluster: ~400 us against ~100 us), and such clusters (compressed or encrypted guest
 * data, media) are common. The sample is 4 pieces of 1 KiB at 0, 1/4, 1/2 and 3/4 of the
 * cluster, concatenated and compressed together (so repeats between distant parts count);
 * it costs about 1/16 of compressing the whole. A cluster whose sample saves less than
 * 1/32 is stored plain at once; any other is compressed whole and kept compressed only if
 * that saves at least 1/16 (the codec's own rule, format/codec.ts). The sample can only
 * make island store a cluster plain that would have compressed a little (its compressible
 * part lies outside the sample): that costs bytes in the store, never correctness.
 */
import { compressSync } from 'lz4-napi';
import { createHash } from 'node:crypto';
import { Piscina } from 'piscina';
import { BLOB_HEADER_LEN, blobId, encodeBlob, encodeBlobHeader } from '../format/blob.js';
import { CODEC_NONE } from '../format/codec.js';
import { keyedBlobId, encodeUnsealedBlob } from '../format/encrypted-frame.js';
import { ID_LEN } from '../format/location.js';

export interface EncodeTask {
  /** The clusters, back to back. */
  plain: Uint8Array;
  /** Bytes of each cluster in `plain`, in order. */
  lengths: number[];
  /** The id key of an encrypted repository: the id is keyed and the frame left unsealed (the pack writer seals it). */
  idKey?: Uint8Array | undefined;
}

/**
 * The result, one buffer (moved to the caller's thread, not copied), for n clusters:
 *
 *   bytes 0 .. 4n            per cluster, u32 big-endian: its frame length, 0 for an
 *                            all-zero cluster (no frame)
 *   bytes 4n .. 36n          per cluster, its 32-byte blob id (zeros for an all-zero cluster)
 *   bytes 36n ..             the frames, back to back, in cluster order
 */
export type EncodeResult = Uint8Array;

const PIECES = 4;
const PIECE = 1024;
/** Below this many bytes a cluster is compressed whole (the sample would be most of it). */
const SAMPLE_MIN = 4 * PIECES * PIECE;

function allZero(b: Uint8Array): boolean {
  if (b.byteOffset % 8 !== 0) return b.every((x) => x === 0);
  const words = new BigUint64Array(b.buffer, b.byteOffset, b.byteLength >>> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length << 3; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** Whether compressing the whole cluster may pay, judged by compressing a sample of it. */
export function worthCompressing(plain: Uint8Array): boolean {
  if (plain.length < SAMPLE_MIN) return true;
  const sample = Buffer.allocUnsafe(PIECES * PIECE);
  for (let i = 0; i < PIECES; i++) {
    const at = Math.floor((plain.length * i) / PIECES);
    sample.set(plain.subarray(at, at + PIECE), i * PIECE);
  }
  // lz4-napi puts a 4-byte size before the block; saving < 1/32 of the sample: plain.
  const packed = compressSync(sample).length - 4;
  return packed * 32 <= sample.length * 31;
}

export default function encode(task: EncodeTask): EncodeResult {
  const n = task.lengths.length;
  const head = n * (4 + ID_LEN);
  // A frame is never longer than a header plus the plain bytes: one buffer holds them all.
  const out = Buffer.from(new ArrayBuffer(head + task.plain.length + n * BLOB_HEADER_LEN));
  let at = 0;
  let end = head;
  for (let i = 0; i < n; i++) {
    const len = task.lengths[i] as number;
    const plain = task.plain.subarray(at, at + len);
    at += len;
    if (allZero(plain)) {
      out.writeUInt32BE(0, i * 4);
      continue;
    }
    let id: Buffer;
    let frameLength: number;
    if (worthCompressing(plain)) {
      const b = task.idKey === undefined ? encodeBlob(plain, 'data') : encodeUnsealedBlob(plain, 'data', task.idKey);
      out.set(b.frame, end);
      id = b.id;
      frameLength = b.frame.length;
    } else {
      id = task.idKey === undefined ? blobId(plain) : keyedBlobId(task.idKey, plain);
      encodeBlobHeader({ kind: 'data', codec: CODEC_NONE, plainLength: len, storedLength: len, id }, out, end);
      out.set(plain, end + BLOB_HEADER_LEN);
      frameLength = BLOB_HEADER_LEN + len;
    }
    out.writeUInt32BE(frameLength, i * 4);
    out.set(id, n * 4 + i * ID_LEN);
    end += frameLength;
  }
  return Piscina.move(new Uint8Array(out.buffer, 0, end)) as EncodeResult;
}

/** MD5 of a pack for its upload's Content-MD5: ~30 ms for 16 MiB that the main thread does not spend. */
export function packMd5(task: PackMd5Task): Uint8Array {
  return createHash('md5').update(task.bytes).digest();
}

export interface PackMd5Task {
  bytes: Uint8Array;
}
