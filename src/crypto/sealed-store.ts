/**
 * The store as an encrypted repository sees it: every record (manifest, catalog, tombstone,
 * pin, lease, damage mark, chain link, checkpoint) is sealed on the way in and opened on
 * the way out, under its own object name (docs/formats/encryption.md, "Sealed record"), so
 * the code above reads and writes plain records as before. Packs pass through unchanged
 * (their frames are sealed by the frame codec), but a pack whose first frame is not
 * encrypted is refused (ENCRYPTION_MIXED) before it reaches the store: a writer that
 * forgot the key can never mix plain data into an encrypted repository.
 *
 * Objects that are not records (host registrations, the encryption record, key file
 * entries) pass through. A plain record read from an encrypted repository is refused
 * (FORMAT_UNSUPPORTED): mixing is refused in both directions.
 */
import { IslandError } from '../errors.js';
import { BH_KEY_ID_OFF, BLOB_HEADER_LEN, KEY_ID_NONE, readBlobHeader } from '../format/blob.js';
import { recordTypeOf } from '../format/records.js';
import { ForwardingStore, type ObjectStore, type OpOptions, type PutOptions } from '../store/types.js';
import type { RepositoryKeys } from './keys.js';

/** Prefixes of objects that are never records: passed through untouched. */
const PASS_PREFIXES = ['crypto/', 'hosts/'] as const;
const PACK_PREFIXES = ['data/', 'meta/'] as const;

function isPack(key: string): boolean {
  return PACK_PREFIXES.some((p) => key.startsWith(p));
}

function passes(key: string): boolean {
  return PASS_PREFIXES.some((p) => key.startsWith(p));
}

export class SealedStore extends ForwardingStore {
  constructor(
    inner: ObjectStore,
    readonly keys: RepositoryKeys,
  ) {
    super(inner);
  }

  /** Refuse a pack of plain frames, seal a record, pass anything else. */
  private inbound(key: string, body: Buffer): Buffer {
    if (isPack(key)) {
      if (body.length >= BLOB_HEADER_LEN) {
        const h = readBlobHeader(body, 0);
        if (h.keyId === KEY_ID_NONE) {
          throw new IslandError('ENCRYPTION_MIXED', `refusing to write ${key}: its frames are not encrypted and the repository is (key id at byte ${BH_KEY_ID_OFF} is 0)`, { details: { key } });
        }
      }
      return body;
    }
    if (passes(key) || recordTypeOf(body) === null) return body;
    return this.keys.sealRecord(body, key);
  }

  private outbound(key: string, body: Buffer): Buffer {
    if (isPack(key) || passes(key) || recordTypeOf(body) === null) return body;
    return this.keys.openRecord(body, key);
  }

  override async put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    const sealed = this.inbound(key, body);
    // A sealed record is other bytes than the caller hashed (packs pass unchanged).
    await this.inner.put(key, sealed, sealed === body ? opts : { signal: opts?.signal });
  }

  override putIfAbsent(key: string, body: Buffer, opts?: OpOptions): Promise<boolean> {
    return this.inner.putIfAbsent(key, this.inbound(key, body), opts);
  }

  override async get(key: string, opts?: OpOptions): Promise<Buffer> {
    return this.outbound(key, await this.inner.get(key, opts));
  }

  override async getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    if (!isPack(key) && !passes(key)) {
      // A range of a sealed record means nothing: read it whole, open it, cut the range.
      const whole = await this.get(key, opts);
      if (offset >= whole.length) throw new IslandError('STORE_RANGE', `range starts at ${offset}, past the end of ${key} (${whole.length} bytes)`, { details: { key } });
      return whole.subarray(offset, offset + length);
    }
    return this.inner.getRange(key, offset, length, opts);
  }
}
