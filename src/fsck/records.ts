/**
 * The records tier of fsck: every catalog record, manifest, chain link, tombstone, pin,
 * generation record, checkpoint and damage mark is read and decoded (its checksum checked).
 * Listings are the only way to enumerate a store: a lagging listing makes fsck miss a
 * fresh record, never report a sound one as damaged.
 */
import { codeOf, isTransient } from '../errors.js';
import {
  decodeDamageMark,
  decodeLease,
  decodeManifest,
  decodePin,
  decodeTombstone,
  decodeVolumeRecord,
  type DamageMark,
  type Manifest,
  type Pin,
  type Tombstone,
  type VolumeRecord,
} from '../format/records.js';
import { keys, parseHeadKey, parseLinkKey, parseManifestKey } from '../repo/keys.js';
import type { Repository } from '../repo/repository.js';
import { listAll, type OpOptions } from '../store/types.js';
import type { Findings } from './findings.js';

export interface RecordSet {
  readonly volumes: Map<string, VolumeRecord>;
  /** Manifests by snapshot id. */
  readonly manifests: Map<string, Manifest>;
  /** Snapshot ids whose manifest exists but does not decode, with its volume. */
  readonly badManifests: Map<string, string>;
  readonly tombstones: Map<string, Tombstone>;
  readonly pins: Pin[];
  readonly damage: Map<string, DamageMark>;
  /** Packs named by upload checkpoints (an upload in flight may still commit them). */
  readonly checkpointPacks: Set<string>;
  /** Chain links that decode, by volume: copies of manifests (a repair source). */
  readonly links: Map<string, Manifest[]>;
  /** The same chain links by key (a link whose record does not match its key is left out). */
  readonly linkAt: Map<string, Manifest>;
  /** Head records that decode and match their key, by key: copies of manifests too. */
  readonly headAt: Map<string, Manifest>;
  /** Records read. */
  count: number;
}

/** Read and decode every object under `prefix`; a bad one becomes a finding, not a stop. */
async function* decoded<T>(repo: Repository, prefix: string, decode: (b: Buffer) => T, findings: Findings, what: string, out: RecordSet, opts: OpOptions): AsyncGenerator<{ key: string; value: T }> {
  for await (const { key, buf } of fetched(repo, prefix, opts)) {
    out.count++;
    let value: T;
    try {
      value = decode(buf);
    } catch (err) {
      if (isTransient(err)) throw err;
      const msg = (err as Error).message;
      findings.add(/checksum/.test(msg) ? 'checksum-mismatch' : 'undecodable', key, `${what} ${key}: ${msg}`, repairOf(prefix));
      continue;
    }
    yield { key, value };
  }
}

/** Records read side by side at most (a GET costs ~10 ms whatever its size). */
const RECORD_READ_CONCURRENCY = 16;

/** Every object under `prefix` with its bytes, in listing order, read RECORD_READ_CONCURRENCY at a time. */
async function* fetched(repo: Repository, prefix: string, opts: OpOptions): AsyncGenerator<{ key: string; buf: Buffer }> {
  type Got = { key: string; buf: Buffer } | { missing: true } | { error: unknown };
  // Settled, never rejected: an error waits in the window until its turn comes.
  const get = (key: string): Promise<Got> =>
    repo.store.get(key, opts).then(
      (buf) => ({ key, buf }),
      (error: unknown) => (codeOf(error) === 'STORE_NOT_FOUND' ? { missing: true as const } : { error }),
    );
  const window: Promise<Got>[] = [];
  const take = async function* (p: Promise<Got>): AsyncGenerator<{ key: string; buf: Buffer }> {
    const r = await p;
    if ('error' in r) throw r.error;
    if ('buf' in r) yield r; // a missing one was deleted since the listing: not damage
  };
  for await (const o of listAll(repo.store, prefix, opts)) {
    window.push(get(o.key));
    if (window.length >= RECORD_READ_CONCURRENCY) yield* take(window.shift()!);
  }
  for (const p of window) yield* take(p);
}

/** Where chain links live (keys.link). */
const LINKS_PREFIX = 'next/';

function repairOf(prefix: string): string {
  if (prefix === LINKS_PREFIX) return 'rebuild it from the manifest it should hold (same volume, parent and generation)';
  if (prefix === keys.manifestsPrefix()) return 'rewrite it from its copy in the chain link, if that one is sound; otherwise mark the snapshot damaged';
  if (prefix === keys.volumesPrefix) return 'none: recreate the catalog record by hand (its snapshots are intact)';
  if (prefix === keys.headsPrefix) return 'remove it: attach then finds the head by walking the chain';
  return 'none: report it; the record is a hint or history';
}

export async function readRecords(repo: Repository, findings: Findings, opts: OpOptions = {}): Promise<RecordSet> {
  const out: RecordSet = { volumes: new Map(), manifests: new Map(), badManifests: new Map(), tombstones: new Map(), pins: [], damage: new Map(), checkpointPacks: new Set(), links: new Map(), linkAt: new Map(), headAt: new Map(), count: 0 };
  for await (const { key, value } of decoded(repo, keys.volumesPrefix, decodeVolumeRecord, findings, 'catalog record', out, opts)) {
    if (key !== keys.volume(value.name)) findings.add('undecodable', key, `catalog record ${key} names volume ${value.name}`, repairOf(keys.volumesPrefix));
    else out.volumes.set(value.name, value);
  }
  // Manifests: a name that is not island's, or a record naming another snapshot, is damage.
  const before = findings.size;
  for await (const { key, value } of decoded(repo, keys.manifestsPrefix(), decodeManifest, findings, 'manifest', out, opts)) {
    const k = parseManifestKey(key);
    if (!k) {
      findings.add('undecodable', key, `${key} is not a manifest name`, 'none: remove it by hand if it is not yours');
      continue;
    }
    if (k.id !== value.id || k.volume !== value.volume) {
      findings.add('undecodable', key, `manifest ${key} holds ${value.volume}/${value.id}`, repairOf(keys.manifestsPrefix()));
      out.badManifests.set(k.id, k.volume);
      continue;
    }
    out.manifests.set(value.id, value);
  }
  if (findings.size > before) {
    for (const f of findings.all()) {
      const k = parseManifestKey(f.key);
      if (k && !out.manifests.has(k.id)) {
        out.badManifests.set(k.id, k.volume);
        findings.affect(f, k.id);
      }
    }
  }
  for await (const { key, value } of decoded(repo, LINKS_PREFIX, decodeManifest, findings, 'chain link', out, opts)) {
    const k = parseLinkKey(key);
    if (!k || k.volume !== value.volume || k.parent !== value.parent || k.generation !== value.generation) {
      // Readers refuse it (HEAD_UNCERTAIN): it names another place in the chain than its own.
      findings.add('undecodable', key, `chain link ${key} holds ${value.volume}/${value.id} (parent ${value.parent ?? 'root'}, generation ${value.generation})`, repairOf(LINKS_PREFIX));
      continue;
    }
    out.linkAt.set(key, value);
    const list = out.links.get(value.volume) ?? [];
    list.push(value);
    out.links.set(value.volume, list);
  }
  for await (const { value } of decoded(repo, keys.tombstonesPrefix, decodeTombstone, findings, 'tombstone', out, opts)) out.tombstones.set(value.snapshot, value);
  for await (const { value } of decoded(repo, keys.pinsPrefix(), decodePin, findings, 'pin', out, opts)) out.pins.push(value);
  for await (const { value } of decoded(repo, keys.damagePrefix, decodeDamageMark, findings, 'damage mark', out, opts)) out.damage.set(value.snapshot, value);
  for (const prefix of ['gens/', 'detached/']) {
    for await (const _ of decoded(repo, prefix, decodeLease, findings, 'generation record', out, opts)) void _;
  }
  // Head records (attach's hint, proved before use): one that names another place is
  // ignored by attach, which then walks the chain.
  for await (const { key, value } of decoded(repo, keys.headsPrefix, decodeManifest, findings, 'head record', out, opts)) {
    const k = parseHeadKey(key);
    if (!k || k.volume !== value.volume || value.generation > k.generation) {
      findings.add('undecodable', key, `head record ${key} holds ${value.volume}/${value.id} (generation ${value.generation})`, repairOf(keys.headsPrefix));
    } else out.headAt.set(key, value);
  }
  for await (const { value } of decoded(repo, keys.checkpointsPrefix, decodeManifest, findings, 'upload checkpoint', out, opts)) {
    for (const p of value.packs) out.checkpointPacks.add(p.toString('hex'));
  }
  return out;
}
