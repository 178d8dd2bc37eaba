/**
 * Object names in an island repository (one region's store, under its prefix).
 *
 *   volumes/<volume>                          catalog record (the only rewritten object; a hint)
 *   gens/<volume>/<generation:010>            generation record (Lease): who holds generation g,
 *                                             created only by the host that won it
 *   claims/<volume>/<gen:010>/<round:04>/claim/<host>  claim of a generation by a host in one
 *                                             round (Lease; stores without create-if-absent only)
 *   claims/<volume>/<gen:010>/<round:04>/lost/<host>   that host's verdict: it lost the round
 *   hosts/<host>                              host registration (empty; the contenders a claim
 *                                             round must read, on stores without create-if-absent)
 *   detached/<volume>/<generation:010>        clean-detach record (Lease) of generation g
 *   heads/<volume>/<generation:010>           head record: a copy of the manifest of the chain's
 *                                             end when generation g detached, written beside
 *                                             its detach record (lets an attach skip the walk)
 *   snapshots/<volume>/<snapshotId>           manifest: the commit record of a snapshot
 *   next/<volume>/<parentId|root>/<gen:010>   chain link: a copy of the child's manifest,
 *                                             written after the manifest (a hint for "latest")
 *   tombstones/<snapshotId>                   tombstone
 *   pins/<snapshotId>/<pinId>                 pin
 *   checkpoints/<volume>/<snapshotId>.<n>     upload checkpoint: a manifest without a tree that
 *                                             lists the packs an upload has written so far
 *   damage/<snapshotId>                       damage mark written by fsck
 *   data/<hex[0:2]>/<packId>                  data pack
 *   meta/<hex[0:2]>/<packId>                  metadata pack (tree nodes)
 *
 * Every name but the catalog's is written once: content-addressed (packs), a ULID
 * (snapshots, pins), or fixed by (volume, parent, generation) so that two writers who
 * could collide are told apart by the generation. Generations and sequence-free chain
 * links let a reader find the newest snapshot by HEAD/GET of names it can compute,
 * without trusting a listing (see docs/protocols.md).
 */
import { IslandError } from '../errors.js';
import { hex } from '../format/location.js';

const GEN_DIGITS = 10;
const ROUND_DIGITS = 4;
/** Claim rounds per generation: contention is broken by random backoff long before this. */
export const MAX_CLAIM_ROUNDS = 10 ** ROUND_DIGITS;

function round(r: number): string {
  if (!Number.isSafeInteger(r) || r < 0 || r >= MAX_CLAIM_ROUNDS) throw new IslandError('INVALID_ARGUMENT', `claim round out of range: ${r}`);
  return String(r).padStart(ROUND_DIGITS, '0');
}

function gen(g: number): string {
  if (!Number.isSafeInteger(g) || g < 0 || g >= 10 ** GEN_DIGITS) throw new IslandError('INVALID_ARGUMENT', `generation out of range: ${g}`);
  return String(g).padStart(GEN_DIGITS, '0');
}

export const ROOT_PARENT = 'root';

export const keys = {
  volume: (name: string): string => `volumes/${name}`,
  volumesPrefix: 'volumes/',
  generation: (volume: string, g: number): string => `gens/${volume}/${gen(g)}`,
  generationsPrefix: (volume: string): string => `gens/${volume}/`,
  detached: (volume: string, g: number): string => `detached/${volume}/${gen(g)}`,
  head: (volume: string, g: number): string => `heads/${volume}/${gen(g)}`,
  headsPrefix: 'heads/',
  claim: (volume: string, g: number, r: number, host: string): string => `claims/${volume}/${gen(g)}/${round(r)}/claim/${host}`,
  claimsPrefix: (volume: string, g: number, r: number): string => `claims/${volume}/${gen(g)}/${round(r)}/claim/`,
  claimLost: (volume: string, g: number, r: number, host: string): string => `claims/${volume}/${gen(g)}/${round(r)}/lost/${host}`,
  host: (host: string): string => `hosts/${host}`,
  hostsPrefix: 'hosts/',
  manifest: (volume: string, id: string): string => `snapshots/${volume}/${id}`,
  manifestsPrefix: (volume?: string): string => (volume === undefined ? 'snapshots/' : `snapshots/${volume}/`),
  link: (volume: string, parent: string | null, g: number): string => `next/${volume}/${parent ?? ROOT_PARENT}/${gen(g)}`,
  linksPrefix: (volume: string, parent: string | null): string => `next/${volume}/${parent ?? ROOT_PARENT}/`,
  volumeLinksPrefix: (volume: string): string => `next/${volume}/`,
  allLinksPrefix: 'next/',
  tombstone: (id: string): string => `tombstones/${id}`,
  tombstonesPrefix: 'tombstones/',
  pin: (snapshot: string, pinId: string): string => `pins/${snapshot}/${pinId}`,
  pinsPrefix: (snapshot?: string): string => (snapshot === undefined ? 'pins/' : `pins/${snapshot}/`),
  damage: (id: string): string => `damage/${id}`,
  damagePrefix: 'damage/',
  checkpoint: (volume: string, id: string, n: number): string => `checkpoints/${volume}/${id}.${n}`,
  checkpointsPrefix: 'checkpoints/',
  pack: (kind: 'data' | 'metadata', id: Uint8Array): string => {
    const h = hex(id);
    return `${kind === 'data' ? 'data' : 'meta'}/${h.slice(0, 2)}/${h}`;
  },
  packPrefixes: ['data/', 'meta/'] as const,
};

/** Parse a pack key back into kind and id; undefined for anything else. */
export function parsePackKey(key: string): { kind: 'data' | 'metadata'; id: string } | undefined {
  const m = /^(data|meta)\/([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(key);
  if (!m || m[3]?.slice(0, 2) !== m[2]) return undefined;
  return { kind: m[1] === 'data' ? 'data' : 'metadata', id: m[3] as string };
}

/** Parse "snapshots/<volume>/<id>" into its parts. */
export function parseManifestKey(key: string): { volume: string; id: string } | undefined {
  const m = /^snapshots\/([^/]+)\/([0-9A-HJKMNP-TV-Z]{26})$/.exec(key);
  return m ? { volume: m[1] as string, id: m[2] as string } : undefined;
}

/** Parse "next/<volume>/<parent|root>/<generation>" into its parts (parent null for the root). */
export function parseLinkKey(key: string): { volume: string; parent: string | null; generation: number } | undefined {
  const m = /^next\/([^/]+)\/([0-9A-HJKMNP-TV-Z]{26}|root)\/(\d{10})$/.exec(key);
  if (!m) return undefined;
  return { volume: m[1] as string, parent: m[2] === ROOT_PARENT ? null : (m[2] as string), generation: Number(m[3]) };
}

/** Parse "heads/<volume>/<generation>" into its parts. */
export function parseHeadKey(key: string): { volume: string; generation: number } | undefined {
  const m = /^heads\/([^/]+)\/(\d{10})$/.exec(key);
  return m ? { volume: m[1] as string, generation: Number(m[2]) } : undefined;
}

export function parseGeneration(s: string): number | undefined {
  return /^\d{10}$/.test(s) ? Number(s) : undefined;
}
