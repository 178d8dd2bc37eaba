/**
 * The side log: where the content of a sealed cluster is copied before the guest overwrites
 * it, so that a snapshot reads every cluster as it was at the seal (invariant 7).
 *
 * Layout of the file `sidelog` (no header): slot i holds one cluster at bytes
 * [i * clusterSize, (i + 1) * clusterSize); a cluster shorter than clusterSize (the last one
 * of the image) fills its slot's beginning. Which cluster a slot holds, and how many of its
 * bytes count, is known only to the running engine: the side log serves the one open seal of
 * the running process. It is never synced; after a crash or a restart it is emptied, and the
 * seal it served is merged into the dirty set (the snapshot starts again).
 *
 * Space: at most `budget` bytes of slots are in use; a slot is freed when its cluster is
 * marked uploaded. When a copy would exceed the budget the engine abandons the seal instead:
 * the guest never sees ENOSPC because of the side log.
 */
import type { LocalFile } from './files.js';

export const SIDE_LOG_FILE = 'sidelog';

export class SideLog {
  private free: number[] = [];
  private next = 0;
  private inUse = 0;
  /** True when something may have been written since the last reset. */
  private written = false;

  constructor(
    private readonly file: LocalFile,
    private readonly clusterSize: number,
    private readonly budget: number,
  ) {}

  get bytesInUse(): number {
    return this.inUse * this.clusterSize;
  }

  /** A free slot, or null when taking one would exceed the budget. */
  allocate(): number | null {
    if ((this.inUse + 1) * this.clusterSize > this.budget) return null;
    this.inUse++;
    this.written = true;
    return this.free.pop() ?? this.next++;
  }

  release(slot: number): void {
    this.inUse--;
    this.free.push(slot);
  }

  write(slot: number, buf: Uint8Array, len: number): Promise<void> {
    return this.file.write(buf, 0, len, slot * this.clusterSize);
  }

  /** Read `len` bytes of a slot (zeros past what was written). */
  async read(slot: number, len: number): Promise<Buffer> {
    const buf = Buffer.alloc(len);
    const n = await this.file.read(buf, 0, len, slot * this.clusterSize);
    if (n < len) buf.fill(0, n);
    return buf;
  }

  /** Forget every slot and give the space back. */
  async reset(): Promise<void> {
    this.free = [];
    this.next = 0;
    this.inUse = 0;
    if (!this.written) return;
    this.written = false;
    await this.file.truncate(0);
  }

  close(): Promise<void> {
    return this.file.close();
  }
}
