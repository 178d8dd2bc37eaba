/**
 * The one place store wrappers are composed:
 *
 *     retry( limit( metrics( backend ) ) )
 *
 * metrics counts every request that reaches the backend (each attempt), limit bounds
 * requests in flight (a retry sleeping holds no slot), retry is outermost.
 */
import { IslandError } from '../errors.js';
import { FsStore } from './fs.js';
import { LimitStore } from './limit.js';
import { MemStore } from './mem.js';
import { MetricsStore, StoreStats, type Observation } from './metrics.js';
import { RetryStore, type RetryOptions } from './retry.js';
import { S3Store, type S3StoreConfig } from './s3.js';
import type { ObjectStore } from './types.js';

export type BackendConfig = { type: 'fs'; dir: string } | { type: 'mem'; name?: string } | ({ type: 's3' } & S3StoreConfig);

export interface OpenStoreOptions {
  /** Requests in flight at most (default 16). */
  concurrency?: number;
  retry?: RetryOptions;
  stats?: StoreStats;
  onObserve?: (o: Observation) => void;
  /** Extra wrappers around the backend, innermost first (fault injection, simulation). */
  wrap?: Array<(s: ObjectStore) => ObjectStore>;
}

export interface OpenedStore {
  store: ObjectStore;
  stats: StoreStats;
}

export function openBackend(config: BackendConfig): ObjectStore {
  switch (config.type) {
    case 'fs':
      return new FsStore(config.dir);
    case 'mem':
      return new MemStore({ name: config.name });
    case 's3':
      return new S3Store(config);
    default:
      throw new IslandError('STORE_CONFIG', `unknown store type ${JSON.stringify((config as { type?: unknown }).type)}`);
  }
}

export function composeStore(backend: ObjectStore, opts: OpenStoreOptions = {}): OpenedStore {
  const stats = opts.stats ?? new StoreStats();
  let s = backend;
  for (const w of opts.wrap ?? []) s = w(s);
  s = new MetricsStore(s, stats, opts.onObserve);
  s = new LimitStore(s, opts.concurrency ?? 16);
  s = new RetryStore(s, opts.retry);
  return { store: s, stats };
}

export function openStore(config: BackendConfig, opts: OpenStoreOptions = {}): OpenedStore {
  return composeStore(openBackend(config), opts);
}
