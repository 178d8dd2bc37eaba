/**
 * The worker pool that hashes and compresses clusters off the main thread (which serves
 * FUSE). One pool per daemon; threads default to the number of cores.
 */
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { EncodeResult, EncodeTask } from '../workers/encode.js';

/** dist/ runs encode.js; tests running the sources load encode.ts through their loader. */
function workerFile(): string {
  const self = fileURLToPath(import.meta.url);
  const ext = self.endsWith('.ts') ? '.ts' : '.js';
  return fileURLToPath(new URL(`../workers/encode${ext}`, import.meta.url));
}

export class EncodePool {
  private readonly pool: Piscina<EncodeTask, EncodeResult>;

  constructor(threads = Math.max(1, availableParallelism())) {
    this.pool = new Piscina({ filename: workerFile(), minThreads: 1, maxThreads: threads, idleTimeout: 30_000 });
  }

  get threads(): number {
    return this.pool.options.maxThreads;
  }

  encode(plain: Buffer, idKey?: Buffer): Promise<EncodeResult> {
    // Copy into a transferable buffer of its own (plain may be a view of a shared pool).
    const own = new Uint8Array(plain.length);
    own.set(plain);
    return this.pool.run({ plain: own, idKey }, { transferList: [own.buffer] });
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
