/**
 * One interface for what a repository does with blob frames, encrypted or not, so the
 * code that writes packs and reads blobs does not branch on encryption:
 *
 *   idOf(plain)             the blob id: SHA-256, or HMAC-SHA-256 under the id key
 *   encode(plain, kind)     hash and compress into a frame (a worker can do this part: it
 *                           needs no position). Encrypted: an unsealed frame (key id 0,
 *                           keyed id), never stored as such
 *   newPack(kind)           a PackFrames for one new pack: `place(frame, index, offset)`
 *                           gives the bytes stored at that place (sealed under the pack's
 *                           subkey; unchanged when not encrypted) and `placedLength`
 *   decode(frame, id, opts) check and decode a stored frame into its plain bytes
 *
 * Pure: no I/O, no logger.
 */
import { randomBytes } from 'node:crypto';
import { IslandError } from '../errors.js';
import { decodeBlob, encodeBlob, type BlobKind, type EncodedBlob, blobId } from './blob.js';
import { decodeEncryptedBlob, encodeUnsealedBlob, keyedBlobId, PACK_SALT_LEN, packSealKey, sealedFrameLength, sealFrame, type FrameOpenKeys } from './encrypted-frame.js';

export interface PackFrames {
  /** The bytes of `frame` as stored as frame `index` at `offset` of this pack. */
  place(frame: Buffer, index: number, offset: number): Buffer;
  /** The stored length of a frame of `length` bytes from encode(). */
  placedLength(length: number): number;
}

export interface FrameDecodeOptions {
  readonly base: number;
  readonly kind?: BlobKind;
}

export interface FrameCodec {
  readonly encrypted: boolean;
  /** The id key, for worker threads that encode (undefined when not encrypted). */
  readonly idKey: Buffer | undefined;
  idOf(plain: Uint8Array): Buffer;
  encode(plain: Uint8Array, kind: BlobKind): EncodedBlob;
  newPack(kind: BlobKind): PackFrames;
  /** The stored length of a frame of `length` bytes from encode() (a pack writer's size check). */
  placedLength(length: number): number;
  decode(frame: Buffer, expectedId: Uint8Array | undefined, opts: FrameDecodeOptions): Buffer;
}

const SAME: PackFrames = { place: (frame) => frame, placedLength: (n) => n };

/** Frames as island always wrote them: SHA-256 ids, nothing sealed. */
export const PLAIN_FRAMES: FrameCodec = {
  encrypted: false,
  idKey: undefined,
  idOf: (plain) => blobId(plain),
  encode: (plain, kind) => encodeBlob(plain, kind),
  newPack: () => SAME,
  placedLength: (n) => n,
  decode: (frame, id, opts) => decodeBlob(frame, id, { base: opts.base, ...(opts.kind === undefined ? {} : { kind: opts.kind }) }),
};

/** What an encrypted codec needs: the key set of a repository (crypto/keys.ts). */
export interface FrameKeys extends FrameOpenKeys {
  readonly idKey: Buffer;
  readonly writeKeyId: number;
}

/** Frames of an encrypted repository (docs/formats/encryption.md). */
export function encryptedFrames(keys: FrameKeys): FrameCodec {
  return {
    encrypted: true,
    idKey: keys.idKey,
    idOf: (plain) => keyedBlobId(keys.idKey, plain),
    encode: (plain, kind) => encodeUnsealedBlob(plain, kind, keys.idKey),
    newPack(kind) {
      const encKey = keys.encKey(keys.writeKeyId);
      if (encKey === undefined) throw new IslandError('KEY_MISSING', `no data key ${keys.writeKeyId} in this key set`);
      const key = packSealKey(keys.writeKeyId, encKey, randomBytes(PACK_SALT_LEN), kind);
      return { place: (frame, index, offset) => sealFrame(frame, key, index, offset), placedLength: sealedFrameLength };
    },
    placedLength: sealedFrameLength,
    decode: (frame, id, opts) => decodeEncryptedBlob(frame, keys, id, { frameOffset: opts.base, ...(opts.kind === undefined ? {} : { kind: opts.kind }) }),
  };
}
