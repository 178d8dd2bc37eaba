/**
 * S3 backend on @aws-sdk/client-s3, for OpenStack Swift's s3api and for AWS S3.
 *
 * What Swift's s3api needs, and why each option is set:
 * - forcePathStyle: Swift serves buckets as paths (http://host:port/bucket/key).
 * - requestChecksumCalculation / responseChecksumValidation WHEN_REQUIRED: otherwise
 *   streamed bodies are sent aws-chunked, which Swift answers with 501. Swift accepts
 *   and ignores x-amz-checksum-* headers, so they prove nothing there.
 * - Content-MD5 on every PUT and on DeleteObjects: Swift verifies Content-MD5 (a
 *   mismatch is 400 BadDigest), so it is the integrity check in transit that works on
 *   both stores, and DeleteObjects without it is refused with 400 InvalidRequest.
 * - Bodies of 64 KiB and more are signed with x-amz-content-sha256: UNSIGNED-PAYLOAD:
 *   SigV4 then signs the Content-MD5 header rather than a SHA-256 of the body, which the
 *   SDK would compute on the main thread (for a 16 MiB pack, more CPU than its MD5).
 * - CreateBucket answering 409 BucketAlreadyOwnedByYou is success.
 * - maxAttempts 1: island's retry wrapper is the only place that retries.
 * - putIfAbsent is a PUT with `If-None-Match: *` (412 PreconditionFailed: the key
 *   exists; 409 ConditionalRequestConflict, a concurrent conditional write on AWS:
 *   transient, the retry wrapper tries again). Swift 2.30's s3api answers it with 501
 *   NotImplemented, and an endpoint that ignored the header would overwrite: so the
 *   store probes once (conditionalPut) by creating a unique probe key twice; only when
 *   the second answer is 412 is the primitive used. The answer is cached per store
 *   (one store per region and endpoint).
 * AWS S3 needs no code change: leave `endpoint` unset and give region and credentials.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { IslandError, redactUrlCredentials } from '../errors.js';
import { listLimit, throwIfAborted, validateKey, validatePrefix, validateRange } from './keys.js';
import { conditionalPutUnsupported, type ListOptions, type ListPage, type ObjectInfo, type ObjectStore, type OpOptions, type PutOptions } from './types.js';

export interface S3StoreConfig {
  /** e.g. http://127.0.0.1:8080 for Swift; unset for AWS S3. */
  endpoint?: string | undefined;
  /** Must equal s3api's `location` on Swift (us-east-1 by default). */
  region: string;
  bucket: string;
  /** Prepended to every key, e.g. "island/"; lets several stores share a bucket. */
  prefix?: string | undefined;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string | undefined;
  /** Default: true when an endpoint is given (Swift, MinIO), false for AWS. */
  forcePathStyle?: boolean | undefined;
  /** Create the bucket on first use (default true). */
  createBucket?: boolean | undefined;
  /** Per-request timeouts (ms). A stalled request fails as STORE_TIMEOUT. */
  connectTimeoutMs?: number | undefined;
  requestTimeoutMs?: number | undefined;
  /** Sockets kept per host; the concurrency wrapper bounds requests anyway. */
  maxSockets?: number | undefined;
}

const MAX_DELETE_BATCH = 1000; // S3 DeleteObjects limit
/** Where the conditional-PUT probe writes (and then deletes) its unique key. */
const PROBE_PREFIX = 'probe/conditional-put/';
const HTTP_PRECONDITION_FAILED = 412;
const HTTP_CONFLICT = 409;
const HTTP_NOT_IMPLEMENTED = 501;

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND', 'ECONNABORTED', 'ETIMEDOUT', 'ESOCKETTIMEDOUT']);

/** Bodies from this size on are signed as UNSIGNED-PAYLOAD (their Content-MD5 is signed). */
const UNSIGNED_PAYLOAD_MIN = 64 * 1024;

function md5b64(body: Uint8Array | string): string {
  return createHash('md5').update(body).digest('base64');
}

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $fault?: string;
}

/** Map any SDK or network failure to a store error code. Exported for tests. */
export function mapS3Error(err: unknown, op: string, key: string, signal?: AbortSignal): IslandError {
  if (err instanceof IslandError) return err;
  const e = (err ?? {}) as SdkError;
  const name = e.name ?? '';
  const status = e.$metadata?.httpStatusCode;
  const details = { key, op, status, s3Code: name };
  const msg = `${op} ${key}: ${name || 'error'}${status ? ` (HTTP ${status})` : ''}: ${e.message ?? ''}`.trim();
  if (signal?.aborted || name === 'AbortError') return new IslandError('ABORTED', `${op} ${key}: aborted`, { cause: err, details });
  if (name === 'NoSuchBucket') return new IslandError('STORE_NOT_FOUND', `${op} ${key}: the bucket does not exist`, { cause: err, details });
  if (name === 'NotFound' || name === 'NoSuchKey' || status === 404) return new IslandError('STORE_NOT_FOUND', `no such object: ${key}`, { cause: err, details });
  if (name === 'InvalidRange' || status === 416) return new IslandError('STORE_RANGE', msg, { cause: err, details });
  if (name === 'BadDigest') return new IslandError('STORE_INTEGRITY', msg, { cause: err, details });
  if (status === 403 || name === 'AccessDenied' || name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch') return new IslandError('STORE_ACCESS_DENIED', msg, { cause: err, details });
  if (name === 'TimeoutError' || name === 'RequestTimeout' || e.code === 'ETIMEDOUT' || name === 'RequestTimeTooSkewed') return new IslandError('STORE_TIMEOUT', msg, { cause: err, details });
  if (status !== undefined && status >= 500) return new IslandError('STORE_UNAVAILABLE', msg, { cause: err, details });
  if (status === 429 || name === 'SlowDown') return new IslandError('STORE_UNAVAILABLE', msg, { cause: err, details });
  if (status !== undefined && status >= 400) return new IslandError('STORE_BAD_REQUEST', msg, { cause: err, details });
  if (e.code !== undefined && NETWORK_CODES.has(e.code)) return new IslandError('STORE_UNAVAILABLE', msg, { cause: err, details });
  // No HTTP answer at all (socket hang up, DNS, parse error of a truncated reply): transient.
  return new IslandError('STORE_UNAVAILABLE', msg, { cause: err, details });
}

function checkConfig(c: S3StoreConfig): void {
  const bad = (m: string): never => {
    throw new IslandError('STORE_CONFIG', `s3 store: ${m}`);
  };
  if (!c.bucket || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(c.bucket)) bad(`invalid bucket name ${JSON.stringify(c.bucket)}`);
  if (!c.region) bad('region is required (Swift: the s3api location, usually us-east-1)');
  if (!c.accessKeyId || !c.secretAccessKey) bad('accessKeyId and secretAccessKey are required');
  if (c.endpoint !== undefined) {
    let u: URL;
    try {
      u = new URL(c.endpoint);
    } catch {
      return bad(`endpoint is not a URL: ${JSON.stringify(c.endpoint)}`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') bad('endpoint must be http:// or https://');
  }
  if (c.prefix !== undefined && c.prefix !== '') validatePrefix(c.prefix);
}

export class S3Store implements ObjectStore {
  readonly description: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly createBucket: boolean;
  private ready: Promise<void> | undefined;
  private probed: Promise<boolean> | undefined;
  private closed = false;

  constructor(config: S3StoreConfig) {
    checkConfig(config);
    this.bucket = config.bucket;
    this.prefix = config.prefix ?? '';
    this.createBucket = config.createBucket ?? true;
    this.description = redactUrlCredentials(`s3:${config.endpoint ?? 'aws'}/${config.bucket}/${this.prefix}`);
    this.client = new S3Client({
      endpoint: config.endpoint,
      region: config.region,
      forcePathStyle: config.forcePathStyle ?? config.endpoint !== undefined,
      credentials: { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey, sessionToken: config.sessionToken },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1,
      requestHandler: {
        connectionTimeout: config.connectTimeoutMs ?? 5_000,
        requestTimeout: config.requestTimeoutMs ?? 60_000,
        httpAgent: { keepAlive: true, maxSockets: config.maxSockets ?? 64 },
        httpsAgent: { keepAlive: true, maxSockets: config.maxSockets ?? 64 },
      },
    });
    // Swift refuses DeleteObjects without Content-MD5 and verifies it on PUT: add it to
    // every request with a body that lacks one.
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { headers?: Record<string, string>; body?: unknown };
        if (req.headers && !Object.keys(req.headers).some((h) => h.toLowerCase() === 'content-md5')) {
          const body = req.body;
          if (typeof body === 'string' || body instanceof Uint8Array) req.headers['content-md5'] = md5b64(body);
        }
        // The signature covers Content-MD5 (a signed header) instead of a SHA-256 of the
        // body: a second full pass over every pack on the main thread bought nothing the
        // verified, signed MD5 does not already give.
        if (req.headers && req.body instanceof Uint8Array && req.body.length >= UNSIGNED_PAYLOAD_MIN) req.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
        return next(args);
      },
      { step: 'build', name: 'islandContentMd5', priority: 'low' },
    );
  }

  private k(key: string): string {
    validateKey(key);
    return this.prefix + key;
  }

  private async init(signal: AbortSignal | undefined): Promise<void> {
    if (this.closed) throw new IslandError('STORE_CONFIG', 'store is closed');
    if (!this.createBucket) return Promise.resolve();
    this.ready ??= (async () => {
      try {
        await this.client.send(new CreateBucketCommand({ Bucket: this.bucket }), { abortSignal: signal });
      } catch (err) {
        const name = (err as SdkError).name;
        const status = (err as SdkError).$metadata?.httpStatusCode;
        if (name === 'BucketAlreadyOwnedByYou' || name === 'BucketAlreadyExists' || status === 409) return;
        throw mapS3Error(err, 'create-bucket', this.bucket, signal);
      }
    })().catch((err: unknown) => {
      this.ready = undefined; // try again next time
      throw err;
    });
    return this.ready;
  }

  async put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    const k = this.k(key);
    throwIfAborted(opts.signal);
    await this.init(opts.signal);
    try {
      await this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: k, Body: body, ContentLength: body.length, ContentMD5: opts.md5?.toString('base64') ?? md5b64(body) }),
        { abortSignal: opts.signal },
      );
    } catch (err) {
      throw mapS3Error(err, 'put', key, opts.signal);
    }
  }

  /** One conditional PUT: true created, false exists; 501 and the like: unsupported. */
  private async conditionalPutOnce(key: string, body: Buffer, opts: OpOptions): Promise<boolean> {
    const k = this.k(key);
    throwIfAborted(opts.signal);
    await this.init(opts.signal);
    try {
      await this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: k, Body: body, ContentLength: body.length, ContentMD5: md5b64(body), IfNoneMatch: '*' }),
        { abortSignal: opts.signal },
      );
      return true;
    } catch (err) {
      const e = err as SdkError;
      const status = e.$metadata?.httpStatusCode;
      if (status === HTTP_PRECONDITION_FAILED || e.name === 'PreconditionFailed') return false;
      if (status === HTTP_NOT_IMPLEMENTED || e.name === 'NotImplemented') throw conditionalPutUnsupported(this.description, key);
      if (status === HTTP_CONFLICT || e.name === 'ConditionalRequestConflict') {
        throw new IslandError('STORE_UNAVAILABLE', `put-if-absent ${key}: a concurrent conditional write conflicted (HTTP 409); try again`, { cause: err, details: { key } });
      }
      throw mapS3Error(err, 'put-if-absent', key, opts.signal);
    }
  }

  async putIfAbsent(key: string, body: Buffer, opts: OpOptions = {}): Promise<boolean> {
    if (!(await this.conditionalPut(opts))) throw conditionalPutUnsupported(this.description, key);
    return this.conditionalPutOnce(key, body, opts);
  }

  /**
   * Probe once: create a unique key with If-None-Match, then again. Honoured only if the
   * first creates it and the second answers 412. A transient failure is not cached.
   */
  conditionalPut(opts: OpOptions = {}): Promise<boolean> {
    this.probed ??= (async () => {
      const key = PROBE_PREFIX + randomBytes(16).toString('hex');
      const body = Buffer.from('island conditional-put probe');
      try {
        const first = await this.conditionalPutOnce(key, body, opts);
        const second = first && !(await this.conditionalPutOnce(key, body, opts));
        return first && second;
      } catch (err) {
        if ((err as IslandError).code === 'STORE_BAD_REQUEST') return false; // 501, or 400 for an unknown header
        throw err;
      } finally {
        await this.delete(key, opts).catch(() => undefined);
      }
    })().catch((err: unknown) => {
      this.probed = undefined;
      throw err;
    });
    return this.probed;
  }

  private async fetch(key: string, range: string | undefined, opts: OpOptions): Promise<Buffer> {
    const k = this.k(key);
    throwIfAborted(opts.signal);
    await this.init(opts.signal);
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: k, Range: range }), { abortSignal: opts.signal });
      // A Buffer over the SDK's own array (a copy would cost a memcpy and garbage per GET).
      const u8 = res.Body ? await res.Body.transformToByteArray() : new Uint8Array(0);
      const bytes = Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
      if (res.ContentLength !== undefined && res.ContentLength !== bytes.length) {
        throw new IslandError('STORE_INTEGRITY', `get ${key}: received ${bytes.length} bytes, announced ${res.ContentLength}`, { details: { key } });
      }
      return bytes;
    } catch (err) {
      throw mapS3Error(err, 'get', key, opts.signal);
    }
  }

  async get(key: string, opts: OpOptions = {}): Promise<Buffer> {
    return this.fetch(key, undefined, opts);
  }

  async getRange(key: string, offset: number, length: number, opts: OpOptions = {}): Promise<Buffer> {
    validateRange(offset, length);
    return this.fetch(key, `bytes=${offset}-${offset + length - 1}`, opts);
  }

  async head(key: string, opts: OpOptions = {}): Promise<ObjectInfo | undefined> {
    const k = this.k(key);
    throwIfAborted(opts.signal);
    await this.init(opts.signal);
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal: opts.signal });
      return { key, size: res.ContentLength ?? 0, mtime: res.LastModified?.getTime() ?? 0 };
    } catch (err) {
      const mapped = mapS3Error(err, 'head', key, opts.signal);
      if (mapped.code === 'STORE_NOT_FOUND' && (err as SdkError).name !== 'NoSuchBucket') return undefined;
      throw mapped;
    }
  }

  async list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    validatePrefix(prefix);
    const limit = listLimit(opts.limit);
    throwIfAborted(opts.signal);
    await this.init(opts.signal);
    try {
      const res = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: this.prefix + prefix,
          StartAfter: opts.startAfter === undefined ? undefined : this.prefix + opts.startAfter,
          MaxKeys: limit,
        }),
        { abortSignal: opts.signal },
      );
      const items: ObjectInfo[] = [];
      for (const o of res.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix)) continue;
        items.push({ key: o.Key.slice(this.prefix.length), size: o.Size ?? 0, mtime: o.LastModified?.getTime() ?? 0 });
      }
      const last = items[items.length - 1];
      return { items, next: res.IsTruncated && last ? last.key : undefined };
    } catch (err) {
      throw mapS3Error(err, 'list', prefix, opts.signal);
    }
  }

  async delete(key: string, opts: OpOptions = {}): Promise<void> {
    const k = this.k(key);
    throwIfAborted(opts.signal);
    await this.init(opts.signal);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal: opts.signal });
    } catch (err) {
      const mapped = mapS3Error(err, 'delete', key, opts.signal);
      if (mapped.code === 'STORE_NOT_FOUND' && (err as SdkError).name !== 'NoSuchBucket') return;
      throw mapped;
    }
  }

  async deleteMany(keys: readonly string[], opts: OpOptions = {}): Promise<void> {
    const full = keys.map((key) => this.k(key));
    throwIfAborted(opts.signal);
    if (full.length === 0) return;
    await this.init(opts.signal);
    const failed: { key: string; code: string }[] = [];
    for (let i = 0; i < full.length; i += MAX_DELETE_BATCH) {
      const batch = full.slice(i, i + MAX_DELETE_BATCH);
      try {
        const res = await this.client.send(
          new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } }),
          { abortSignal: opts.signal },
        );
        for (const e of res.Errors ?? []) {
          if (e.Code === 'NoSuchKey') continue;
          failed.push({ key: (e.Key ?? '').slice(this.prefix.length), code: e.Code ?? 'unknown' });
        }
      } catch (err) {
        throw mapS3Error(err, 'delete-many', batch[0] ?? '', opts.signal);
      }
    }
    if (failed.length) throw new IslandError('STORE_UNAVAILABLE', `${failed.length} of ${keys.length} deletes failed`, { details: { failed } });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
  }
}
