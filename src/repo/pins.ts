/**
 * Pins held by one long operation (a copy) on snapshots in one or more regions: each pin
 * expires after the window W, is renewed by writing a new pin before the old one is
 * removed (so protection never lapses), and every pin is removed when the operation ends.
 * A pin left by a crash expires on its own.
 */
import { IslandError } from '../errors.js';
import type { Manifest, Pin } from '../format/records.js';
import type { OpOptions } from '../store/types.js';
import { keys } from './keys.js';
import type { Repository } from './repository.js';

interface Held {
  repo: Repository;
  snapshot: Manifest;
  pin: Pin;
}

export class PinSet {
  private readonly held: Held[] = [];

  constructor(
    private readonly holder: Pin['holder'],
    private readonly windowMs: number,
  ) {}

  private async write(repo: Repository, m: Manifest, opts: OpOptions): Promise<Pin> {
    const now = repo.now();
    const pin: Pin = { id: repo.ulid(), snapshot: m.id, volume: m.volume, holder: this.holder, host: repo.host, created: now, expires: now + this.windowMs };
    await repo.putPin(pin, opts);
    return pin;
  }

  /** Pin `m` in `repo`, then check it is still live (in this order: see checkLive). */
  async add(repo: Repository, m: Manifest, what: string, opts: OpOptions = {}): Promise<void> {
    this.held.push({ repo, snapshot: m, pin: await this.write(repo, m, opts) });
    await checkLive(repo, m, what, opts);
  }

  /** New pins first, then the old ones go; each snapshot is checked again. */
  async renew(opts: OpOptions = {}): Promise<void> {
    for (const h of this.held) {
      const old = h.pin;
      h.pin = await this.write(h.repo, h.snapshot, opts);
      await h.repo.deletePin(old, opts).catch(() => undefined);
      await checkLive(h.repo, h.snapshot, `snapshot ${h.snapshot.id}`, opts);
    }
  }

  /** Remove every pin (a failure leaves a pin that expires after W). May be called twice. */
  async release(): Promise<void> {
    for (const h of this.held.splice(0)) await h.repo.deletePin(h.pin).catch(() => undefined);
  }
}

/**
 * A snapshot is live when it has no tombstone and its manifest still exists, read in this
 * order: GC removes the manifest before the tombstone, so a snapshot collected between
 * the two reads is seen as missing by the second.
 */
export async function checkLive(repo: Repository, m: Manifest, what: string, opts: OpOptions = {}): Promise<void> {
  if (await repo.getTombstone(m.id, opts)) {
    throw new IslandError('SNAPSHOT_DELETED', `${what} ${m.id} of ${m.volume} is deleted in region ${repo.region}`, { details: { snapshot: m.id, region: repo.region } });
  }
  if (!(await repo.store.head(keys.manifest(m.volume, m.id), opts))) {
    throw new IslandError('NOT_FOUND', `${what} ${m.id} of ${m.volume} is gone from region ${repo.region}`, { details: { snapshot: m.id, region: repo.region } });
  }
}
