/**
 * Worker-thread task (piscina): hash and compress one cluster into a blob frame.
 * Imports format/ only. Input and output buffers are transferred, not copied.
 */
import { encodeBlob } from '../format/blob.js';
import { encodeUnsealedBlob } from '../format/encrypted-frame.js';

export interface EncodeTask {
  plain: Uint8Array;
  /** The id key of an encrypted repository: the id is keyed and the frame left unsealed (the pack writer seals it). */
  idKey?: Uint8Array | undefined;
}

export type EncodeResult = { zero: true } | { zero: false; frame: Uint8Array; id: Uint8Array; codec: number; plainLength: number };

function allZero(b: Uint8Array): boolean {
  const words = new BigUint64Array(b.buffer, b.byteOffset, b.byteLength >>> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length << 3; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

export default function encode(task: EncodeTask): EncodeResult {
  const plain = task.plain;
  if (plain.byteOffset % 8 === 0 ? allZero(plain) : plain.every((x) => x === 0)) return { zero: true };
  const b = task.idKey === undefined ? encodeBlob(plain, 'data') : encodeUnsealedBlob(plain, 'data', task.idKey);
  return { zero: false, frame: b.frame, id: b.id, codec: b.codec, plainLength: b.plainLength };
}
