/**
 * The writer of a local volume's state record, one for both write paths (engine.ts, the
 * TypeScript oracle, and native-volume.ts). It owns the two facts only the record holds,
 * the committed snapshot and the filled mark, and writes the record one at a time with a
 * rising sequence number (docs/formats/local-state.md). What the bitmaps and the image say
 * at the moment of a write comes from the write path (`now`), which also learns when the
 * record is durable (`written`: the intent epoch it carried is then recorded).
 */
import { Mutex } from './concurrency.js';
import type { LocalFs } from './files.js';
import { writeState, type VolumeState } from './state.js';

/** What the write path knows at the moment of a write. */
export type RecordFacts = Pick<VolumeState, 'imageLength' | 'epoch' | 'completedEpoch' | 'intentEpoch' | 'baseLength' | 'syncedPages'>;

export interface StateKeeperParts {
  fs: LocalFs;
  dir: string;
  /**
   * The record the volume opened with: what never changes while it is open (name, sizes,
   * generation, base snapshot), and the committed snapshot, filled mark and sequence.
   */
  initial: VolumeState;
  now: () => RecordFacts;
  written: (s: VolumeState) => void;
}

export class StateKeeper {
  private committed: string | null;
  private isFilled: boolean;
  private sequence: number;
  private readonly mutex = new Mutex();
  /** Records written since open. */
  writes = 0;

  constructor(private readonly p: StateKeeperParts) {
    this.committed = p.initial.committedSnapshot;
    this.isFilled = p.initial.filled;
    this.sequence = p.initial.sequence;
  }

  get committedSnapshot(): string | null {
    return this.committed;
  }

  get filled(): boolean {
    return this.isFilled;
  }

  /** Write the record as things are now (`clean`: the close's mark that nothing is left to replay). */
  save(clean = false): Promise<void> {
    return this.mutex.run(async () => {
      const { name, virtualSize, clusterSize, regionSize, generation, baseSnapshot } = this.p.initial;
      const fixed = { name, virtualSize, clusterSize, regionSize, generation, baseSnapshot };
      const s: VolumeState = { ...fixed, ...this.p.now(), committedSnapshot: this.committed, filled: this.isFilled, clean, sequence: ++this.sequence };
      await writeState(this.p.fs, this.p.dir, s);
      this.writes++;
      this.p.written(s);
    });
  }

  /** Record `id` (or null: none, or unknown) as the committed snapshot, in the next record written now. */
  async commit(id: string | null): Promise<void> {
    this.committed = id;
    await this.save();
  }

  /** Record durably that every cluster of the base snapshot is local; the mark is not kept if the write fails. */
  async markFilled(): Promise<void> {
    if (this.isFilled) return;
    this.isFilled = true;
    try {
      await this.save();
    } catch (err) {
      this.isFilled = false;
      throw err;
    }
  }
}
