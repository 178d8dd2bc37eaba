/**
 * Fencing: whether this host still holds a volume's attachment generation. A host holds
 * generation g while gens/<volume>/<g> names it and no generation g + 1 exists; a forced
 * attach elsewhere takes g + 1, and from then on this host must neither accept writes it
 * cannot commit nor upload anything for the volume (docs/protocols.md, "Attach").
 *
 * Checked at three places: before a restarted daemon lets a reopened volume be written,
 * before a snapshot uploads its first pack, and at the commit point of every snapshot.
 */
import { IslandError } from '../errors.js';
import type { OpOptions } from '../store/types.js';
import type { Repository } from './repository.js';

/** Throws FENCED when this host no longer holds `generation` of `volume`. */
export async function checkHolds(repo: Repository, volume: string, generation: number, opts: OpOptions = {}): Promise<void> {
  // Both reads at once: each answers on its own (g must name this host, g + 1 must not exist).
  const [holder, next] = await Promise.all([repo.getGeneration(volume, generation, opts), repo.getGeneration(volume, generation + 1, opts)]);
  if (holder?.host !== repo.host) {
    throw new IslandError('FENCED', `generation ${generation} of ${volume} is held by ${holder?.host ?? 'nobody'}, not ${repo.host}`, { details: { volume, generation, holder: holder?.host ?? null } });
  }
  if (next) {
    throw new IslandError('FENCED', `volume ${volume} was taken by host ${next.host} (generation ${generation + 1}): this host (generation ${generation}) may no longer write or commit it`, {
      details: { volume, generation, holder: next.host },
    });
  }
}
