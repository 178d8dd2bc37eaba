/**
 * A repository: one region's object store seen as island objects (records, packs,
 * tree nodes), with every byte read verified before use (invariant 4).
 *
 * This layer knows object names (keys.ts) and formats; it does not know volumes on
 * local disk, FUSE or QMP. Protocols (commit, delete, attach, GC) are built on it.
 */
import { randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { IslandError } from '../errors.js';
import type { BlobKind } from '../format/blob.js';
import { PLAIN_FRAMES, type FrameCodec, type PackFrames } from '../format/frame-codec.js';
import { hex, type BlobLocation } from '../format/location.js';
import { FOOTER_LEN, PACK_TARGET_SIZE, PackBuilder, parsePackFooter, parsePackTrailer, type PackEntry } from '../format/pack.js';
import {
  decodeDamageMark,
  decodeLease,
  decodeManifest,
  decodePin,
  decodeTombstone,
  decodeVolumeRecord,
  encodeDamageMark,
  encodeLease,
  encodeManifest,
  encodePin,
  encodeTombstone,
  encodeVolumeRecord,
  type DamageMark,
  type Lease,
  type Manifest,
  type Pin,
  type Tombstone,
  type VolumeRecord,
} from '../format/records.js';
import { blobEntry, type BlobEntry, type NodeRef, type TreeEntry, type TreeNodeReader, type TreeNodeWriter } from '../format/tree.js';
import { ulidFactory, type UlidGenerator } from '../format/ulid.js';
import { listAll, type ObjectStore, type OpOptions } from '../store/types.js';
import { keys } from './keys.js';

export interface RepositoryOptions {
  /** This host's id, written into leases, pins, tombstones and manifests. */
  host: string;
  region?: string;
  /** Clock (ms since the epoch); simulations pass a virtual one. */
  now?: () => number;
  ulid?: UlidGenerator;
  /** 32 random bytes for pack ids; simulations pass a seeded source. */
  randomId?: () => Buffer;
  packTargetSize?: number;
  /** How blob frames are made and read: PLAIN_FRAMES, or sealed (an encrypted repository). */
  frames?: FrameCodec;
}

async function orUndefined<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if ((err as IslandError).code === 'STORE_NOT_FOUND') return undefined;
    throw err;
  }
}

export class Repository {
  readonly store: ObjectStore;
  readonly host: string;
  readonly region: string;
  readonly now: () => number;
  readonly ulid: UlidGenerator;
  readonly randomId: () => Buffer;
  readonly packTargetSize: number;
  readonly frames: FrameCodec;

  constructor(store: ObjectStore, opts: RepositoryOptions) {
    this.store = store;
    this.host = opts.host;
    this.region = opts.region ?? 'default';
    this.now = opts.now ?? Date.now;
    this.ulid = opts.ulid ?? ulidFactory({ now: this.now });
    this.randomId = opts.randomId ?? (() => randomBytes(32));
    this.packTargetSize = opts.packTargetSize ?? PACK_TARGET_SIZE;
    this.frames = opts.frames ?? PLAIN_FRAMES;
  }

  // ---- records ---------------------------------------------------------------------------

  async getManifest(volume: string, id: string, opts?: OpOptions): Promise<Manifest | undefined> {
    const buf = await orUndefined(this.store.get(keys.manifest(volume, id), opts));
    if (buf === undefined) return undefined;
    const m = this.verified(() => decodeManifest(buf), keys.manifest(volume, id));
    if (m.id !== id || m.volume !== volume) throw new IslandError('FORMAT_CORRUPT', `manifest ${keys.manifest(volume, id)} names ${m.volume}/${m.id}`, { details: { key: keys.manifest(volume, id) } });
    return m;
  }

  async putManifest(m: Manifest, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.manifest(m.volume, m.id), encodeManifest(m), opts);
  }

  /** The chain link from `parent` for generation g: a copy of the child's manifest. */
  async getLink(volume: string, parent: string | null, g: number, opts?: OpOptions): Promise<Manifest | undefined> {
    const key = keys.link(volume, parent, g);
    const buf = await orUndefined(this.store.get(key, opts));
    if (buf === undefined) return undefined;
    const m = this.verified(() => decodeManifest(buf), key);
    if (m.volume !== volume || m.parent !== parent || m.generation !== g) throw new IslandError('FORMAT_CORRUPT', `link ${key} holds ${m.volume}/${m.id} (parent ${m.parent}, generation ${m.generation})`, { details: { key } });
    return m;
  }

  async putLink(m: Manifest, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.link(m.volume, m.parent, m.generation), encodeManifest(m), opts);
  }

  async getTombstone(id: string, opts?: OpOptions): Promise<Tombstone | undefined> {
    const buf = await orUndefined(this.store.get(keys.tombstone(id), opts));
    return buf === undefined ? undefined : this.verified(() => decodeTombstone(buf), keys.tombstone(id));
  }

  async putTombstone(t: Tombstone, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.tombstone(t.snapshot), encodeTombstone(t), opts);
  }

  async putPin(p: Pin, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.pin(p.snapshot, p.id), encodePin(p), opts);
  }

  async deletePin(p: Pin, opts?: OpOptions): Promise<void> {
    await this.store.delete(keys.pin(p.snapshot, p.id), opts);
  }

  /** Pins of a snapshot as the (possibly lagging) listing shows them. */
  async listPins(snapshot: string | undefined, opts?: OpOptions): Promise<Pin[]> {
    const out: Pin[] = [];
    for await (const o of listAll(this.store, keys.pinsPrefix(snapshot), opts)) {
      const buf = await orUndefined(this.store.get(o.key, opts));
      if (buf !== undefined) out.push(this.verified(() => decodePin(buf), o.key));
    }
    return out;
  }

  async getGeneration(volume: string, g: number, opts?: OpOptions): Promise<Lease | undefined> {
    const buf = await orUndefined(this.store.get(keys.generation(volume, g), opts));
    return buf === undefined ? undefined : this.verified(() => decodeLease(buf), keys.generation(volume, g));
  }

  /**
   * Write the record of generation l.generation only if none exists (create-if-absent):
   * true when this host won the generation. Only on stores whose conditionalPut() is true.
   */
  async claimGeneration(l: Lease, opts?: OpOptions): Promise<boolean> {
    return this.store.putIfAbsent(keys.generation(l.volume, l.generation), encodeLease(l), opts);
  }

  /** Write the generation record outright: only the winner of a claim round does this. */
  async putGeneration(l: Lease, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.generation(l.volume, l.generation), encodeLease(l), opts);
  }

  /** This host's claim of a generation in one round (write-once per round and host). */
  async putClaim(l: Lease, round: number, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.claim(l.volume, l.generation, round, l.host), encodeLease(l), opts);
  }

  async getClaim(volume: string, g: number, round: number, host: string, opts?: OpOptions): Promise<Lease | undefined> {
    const key = keys.claim(volume, g, round, host);
    const buf = await orUndefined(this.store.get(key, opts));
    return buf === undefined ? undefined : this.verified(() => decodeLease(buf), key);
  }

  /** Hosts whose claims of a round the (lagging) listing shows: a hint, never proof. */
  async listClaimants(volume: string, g: number, round: number, opts?: OpOptions): Promise<string[]> {
    const prefix = keys.claimsPrefix(volume, g, round);
    const out: string[] = [];
    for await (const o of listAll(this.store, prefix, opts)) out.push(o.key.slice(prefix.length));
    return out;
  }

  /** This host's verdict that it lost a claim round (write-once). */
  async putClaimLost(l: Lease, round: number, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.claimLost(l.volume, l.generation, round, l.host), encodeLease(l), opts);
  }

  async getClaimLost(volume: string, g: number, round: number, host: string, opts?: OpOptions): Promise<Lease | undefined> {
    const key = keys.claimLost(volume, g, round, host);
    const buf = await orUndefined(this.store.get(key, opts));
    return buf === undefined ? undefined : this.verified(() => decodeLease(buf), key);
  }

  /** Register this host as a contender of claim rounds (idempotent: the body is empty). */
  async registerHost(opts?: OpOptions): Promise<void> {
    await this.store.put(keys.host(this.host), Buffer.alloc(0), opts);
  }

  /** Registered hosts as the (lagging) listing shows them. */
  async listHosts(opts?: OpOptions): Promise<string[]> {
    const out: string[] = [];
    for await (const o of listAll(this.store, keys.hostsPrefix, opts)) out.push(o.key.slice(keys.hostsPrefix.length));
    return out;
  }

  async getDetached(volume: string, g: number, opts?: OpOptions): Promise<Lease | undefined> {
    const buf = await orUndefined(this.store.get(keys.detached(volume, g), opts));
    return buf === undefined ? undefined : this.verified(() => decodeLease(buf), keys.detached(volume, g));
  }

  async putDetached(l: Lease, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.detached(l.volume, l.generation), encodeLease(l), opts);
  }

  /**
   * The head record of generation g (heads/<volume>/<g>): the manifest of the chain's end
   * as the host that detached g left it. A hint that attach proves before it trusts it.
   */
  async getHeadRecord(volume: string, g: number, opts?: OpOptions): Promise<Manifest | undefined> {
    const key = keys.head(volume, g);
    const buf = await orUndefined(this.store.get(key, opts));
    if (buf === undefined) return undefined;
    const m = this.verified(() => decodeManifest(buf), key);
    if (m.volume !== volume || m.generation > g) throw new IslandError('FORMAT_CORRUPT', `head record ${key} holds ${m.volume}/${m.id} of generation ${m.generation}`, { details: { key } });
    return m;
  }

  async putHeadRecord(generation: number, m: Manifest, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.head(m.volume, generation), encodeManifest(m), opts);
  }

  async getVolume(name: string, opts?: OpOptions): Promise<VolumeRecord | undefined> {
    const buf = await orUndefined(this.store.get(keys.volume(name), opts));
    return buf === undefined ? undefined : this.verified(() => decodeVolumeRecord(buf), keys.volume(name));
  }

  async putVolume(v: VolumeRecord, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.volume(v.name), encodeVolumeRecord(v), opts);
  }

  /** The damage mark fsck wrote for a snapshot it could not repair, if any. */
  async getDamage(id: string, opts?: OpOptions): Promise<DamageMark | undefined> {
    const buf = await orUndefined(this.store.get(keys.damage(id), opts));
    return buf === undefined ? undefined : this.verified(() => decodeDamageMark(buf), keys.damage(id));
  }

  async putDamage(d: DamageMark, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.damage(d.snapshot), encodeDamageMark(d), opts);
  }

  private verified<T>(decode: () => T, key: string): T {
    try {
      return decode();
    } catch (err) {
      const e = err as IslandError;
      if (e.code === 'FORMAT_CORRUPT' || e.code === 'FORMAT_UNSUPPORTED' || e.code === 'HASH_MISMATCH' || e.code === 'AUTH_FAILED') {
        throw new IslandError(e.code, `${key}: ${e.message}`, { cause: e, details: { ...e.details, key } });
      }
      throw err;
    }
  }

  // ---- blobs and packs -------------------------------------------------------------------

  /** Fetch one blob by its direct location and verify it (hash of the plain bytes). */
  async readBlob(kind: BlobKind, loc: BlobLocation, opts?: OpOptions): Promise<Buffer> {
    const key = keys.pack(kind, loc.pack);
    const frame = await this.store.getRange(key, loc.offset, loc.length, opts);
    if (frame.length !== loc.length) throw new IslandError('FORMAT_CORRUPT', `${key}: blob at ${loc.offset} cut short (${frame.length} of ${loc.length} bytes)`, { details: { key, offset: loc.offset } });
    return this.verified(() => this.frames.decode(frame, loc.id, { base: loc.offset, kind }), key);
  }

  /** Footer and trailer of a pack: two small ranged reads, no blob data. */
  async readPackIndex(kind: BlobKind, packId: Buffer, opts?: OpOptions): Promise<{ size: number; entries: PackEntry[] }> {
    const key = keys.pack(kind, packId);
    const info = await this.store.head(key, opts);
    if (!info) throw new IslandError('STORE_NOT_FOUND', `no such pack: ${key}`, { details: { key } });
    if (info.size < FOOTER_LEN) throw new IslandError('FORMAT_CORRUPT', `${key}: ${info.size} bytes is too small for a pack`, { details: { key } });
    const tail = await this.store.getRange(key, info.size - FOOTER_LEN, FOOTER_LEN, opts);
    const footer = this.verified(() => parsePackFooter(tail, info.size), key);
    const trailer = footer.trailerLength === 0 ? Buffer.alloc(0) : await this.store.getRange(key, footer.trailerOffset, footer.trailerLength, opts);
    return { size: info.size, entries: this.verified(() => parsePackTrailer(trailer, footer, footer.trailerOffset), key) };
  }

  /**
   * Tree nodes, verified, through a cache bounded in bytes that merges concurrent loads
   * of one node (lru-cache fetchMethod). Keyed by location: a node's bytes never change.
   */
  private readonly nodes = new LRUCache<string, Buffer, BlobLocation>({
    maxSize: 64 * 1024 * 1024,
    sizeCalculation: (b) => Math.max(1, b.length),
    fetchMethod: async (_key, _stale, { context }) => this.readBlob('metadata', context),
  });

  nodeReader(): TreeNodeReader {
    return {
      readNode: async (ref: NodeRef) => {
        const b = await this.nodes.fetch(`${hex(ref.loc.pack)}:${ref.loc.offset}:${ref.loc.length}`, { context: ref.loc });
        if (!b) throw new IslandError('INTERNAL', 'node cache returned nothing');
        return b;
      },
    };
  }

  async putCheckpoint(m: Manifest, n: number, opts?: OpOptions): Promise<void> {
    await this.store.put(keys.checkpoint(m.volume, m.id, n), encodeManifest(m), opts);
  }

  /** A writer of new packs of one kind. */
  packSink(kind: BlobKind, opts: PackSinkOptions = {}): PackSink {
    return new PackSink(this, kind, opts);
  }
}

/**
 * Collects blobs into packs and uploads each full pack. A pack's id is chosen when the
 * pack is opened (32 random bytes: unique, so the name is written once), which lets a
 * location be handed out as soon as a blob is added; a location is usable by readers
 * only after `flush()` resolves.
 */
export interface PackSinkOptions {
  signal?: AbortSignal;
  /** A pack upload is about to start. */
  onIssue?: () => void;
  /** A pack is durable. */
  onPack?: (id: Buffer, bytes: number) => void;
  /** Pack uploads in flight at most (default 4: 64 MiB of 16 MiB packs). */
  maxInflight?: number;
  /**
   * MD5 of a pack for its Content-MD5, computed elsewhere (a worker thread: EncodePool
   * packMd5). Without it the store hashes the pack on the calling thread.
   */
  packMd5?: (bytes: Buffer, signal?: AbortSignal) => Promise<Buffer>;
}

/** Packs from this size on have their MD5 taken by PackSinkOptions.packMd5 (smaller ones cost less than the hand-off). */
const OFFLOAD_MD5_MIN = 1 << 20;

export class PackSink implements TreeNodeWriter {
  private builder: PackBuilder | undefined;
  /** How frames are placed in the pack being filled (sealed for its position when encrypted). */
  private packFrames: PackFrames | undefined;
  private packOffset = 0;
  private packId: Buffer | undefined;
  /** Pack uploads in flight; at most maxInflight (plus the pack being filled) in memory. */
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown;
  readonly maxInflight: number;
  /** Blobs added so far by id: identical content (tree nodes repeat) is stored once. */
  private readonly locations = new Map<string, BlobLocation>();
  readonly written: Buffer[] = [];
  bytes = 0;
  blobs = 0;

  constructor(
    private readonly repo: Repository,
    readonly kind: BlobKind,
    private readonly opts: PackSinkOptions,
  ) {
    this.maxInflight = opts.maxInflight ?? 4;
  }

  /** Add an encoded frame; returns where it will live. */
  add(frame: Buffer, id: Buffer): BlobLocation {
    const known = this.locations.get(hex(id));
    if (known) return known;
    if (this.builder && !this.builder.fits(this.repo.frames.placedLength(frame.length))) this.cut();
    if (!this.builder) {
      this.builder = new PackBuilder(this.kind, this.repo.packTargetSize);
      this.packId = this.repo.randomId();
      this.packFrames = this.repo.frames.newPack(this.kind);
      this.packOffset = 0;
    }
    const placed = (this.packFrames as PackFrames).place(frame, this.builder.count, this.packOffset);
    const offset = this.builder.add(placed, id);
    this.packOffset = offset + placed.length;
    this.blobs++;
    const loc = { pack: this.packId as Buffer, offset, length: placed.length, id };
    this.locations.set(hex(id), loc);
    return loc;
  }

  /** Encode (hash, compress, frame) and add plain bytes. */
  addPlain(plain: Buffer): BlobLocation {
    const b = this.repo.frames.encode(plain, this.kind);
    return this.add(b.frame, b.id);
  }

  /**
   * Add an encoded blob unless the same content is already in this sink (`seen`, by id)
   * or equals the parent's blob for the cluster (`parentBlob`): then reuse that location.
   */
  async addDedup(
    b: { frame: Buffer; id: Buffer },
    seen: Map<string, TreeEntry>,
    parentBlob?: (id: Buffer) => Promise<BlobEntry | undefined>,
  ): Promise<{ entry: BlobEntry; reused: boolean }> {
    const key = hex(b.id);
    const known = seen.get(key);
    if (known?.kind === 'blob') return { entry: known, reused: true };
    const prev = parentBlob ? await parentBlob(b.id) : undefined;
    if (prev) {
      seen.set(key, prev);
      return { entry: prev, reused: true };
    }
    const entry = blobEntry(this.add(b.frame, b.id));
    seen.set(key, entry);
    return { entry, reused: false };
  }

  async writeNode(encoded: Buffer): Promise<NodeRef> {
    return { loc: this.addPlain(encoded) };
  }

  private cut(): void {
    const builder = this.builder;
    const id = this.packId;
    this.builder = undefined;
    this.packId = undefined;
    if (!builder || !id || builder.count === 0) return;
    const built = builder.finish();
    this.written.push(id);
    this.bytes += built.bytes.length;
    const key = keys.pack(this.kind, id);
    this.opts.onIssue?.();
    const signal = this.opts.signal;
    const digest = this.opts.packMd5 && built.bytes.length >= OFFLOAD_MD5_MIN ? this.opts.packMd5(built.bytes, signal) : Promise.resolve(undefined);
    const p: Promise<void> = digest.then((md5) => this.repo.store.put(key, built.bytes, { signal, md5 })).then(
      () => {
        this.inflight.delete(p);
        this.opts.onPack?.(id, built.bytes.length);
      },
      (err: unknown) => {
        this.inflight.delete(p);
        this.failure ??= err;
      },
    );
    this.inflight.add(p);
  }

  /** Wait while too many packs are uploading (callers await this between blobs). */
  async backpressure(): Promise<void> {
    while (this.inflight.size >= this.maxInflight) await Promise.race(this.inflight);
    if (this.failure !== undefined) throw this.failure;
  }

  /** Upload what is pending; resolves when every pack handed out so far is durable. */
  async flush(): Promise<Buffer[]> {
    this.cut();
    while (this.inflight.size) await Promise.race(this.inflight);
    if (this.failure !== undefined) throw this.failure;
    return this.written;
  }

  get pendingUploads(): number {
    return this.inflight.size;
  }
}

export { hex };
