/**
 * The worker pool that hashes and compresses clusters off the main thread (which serves
 * FUSE). One pool per daemon; threads default to the number of cores.
 */
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { ID_LEN } from '../format/location.js';
import type { EncodeResult, EncodeTask, PackMd5Task } from '../workers/encode.js';

/** dist/ runs encode.js; tests running the sources load encode.ts through their loader. */
function workerFile(): string {
  const self = fileURLToPath(import.meta.url);
  const ext = self.endsWith('.ts') ? '.ts' : '.js';
  return fileURLToPath(new URL(`../workers/encode${ext}`, import.meta.url));
}

/** One cluster encoded: all zero, or its frame and blob id (views of the batch's buffer). */
export type Encoded = { zero: true } | { zero: false; frame: Buffer; id: Buffer };

export class EncodePool {
  private readonly pool: Piscina<EncodeTask, EncodeResult>;

  constructor(threads = Math.max(1, availableParallelism())) {
    this.pool = new Piscina({ filename: workerFile(), minThreads: 1, maxThreads: threads, idleTimeout: 30_000 });
  }

  get threads(): number {
    return this.pool.options.maxThreads;
  }

  /** Hash and frame one cluster. */
  async encode(plain: Buffer, idKey?: Buffer): Promise<Encoded> {
    return (await this.encodeBatch([plain], undefined, idKey))[0] as Encoded;
  }

  /**
   * Hash and frame several clusters in one task (one message each way). `idKey`: the id key
   * of an encrypted repository (ids keyed, frames left for the pack writer to seal).
   */
  async encodeBatch(plains: readonly Buffer[], signal?: AbortSignal, idKey?: Buffer): Promise<Encoded[]> {
    // Copy into one transferable buffer of its own (a plain may be a view of a shared pool).
    let total = 0;
    for (const p of plains) total += p.length;
    const own = new Uint8Array(total);
    let at = 0;
    for (const p of plains) {
      own.set(p, at);
      at += p.length;
    }
    const lengths = plains.map((p) => p.length);
    const r = await this.pool.run({ plain: own, lengths, idKey }, { transferList: [own.buffer], signal });
    const out = Buffer.from(r.buffer, r.byteOffset, r.byteLength);
    const n = lengths.length;
    const result: Encoded[] = [];
    let end = n * (4 + ID_LEN);
    for (let i = 0; i < n; i++) {
      const len = out.readUInt32BE(i * 4);
      if (len === 0) {
        result.push({ zero: true });
        continue;
      }
      const idAt = n * 4 + i * ID_LEN;
      result.push({ zero: false, frame: out.subarray(end, end + len), id: out.subarray(idAt, idAt + ID_LEN) });
      end += len;
    }
    return result;
  }

  /**
   * MD5 of a pack, on a worker thread (the bytes are copied there, a few ms for 16 MiB;
   * hashing them here would take ~30 ms of the thread that packs and serves).
   */
  async packMd5(bytes: Buffer, signal?: AbortSignal): Promise<Buffer> {
    const task: PackMd5Task = { bytes };
    const md5 = (await this.pool.run(task as unknown as EncodeTask, { name: 'packMd5', signal })) as Uint8Array;
    return Buffer.from(md5.buffer, md5.byteOffset, md5.byteLength);
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
