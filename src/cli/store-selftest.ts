/**
 * `island store selftest`: prove a store works end to end: put objects of several
 * sizes, list them, read them back whole and by range, verify, delete, and report
 * what each step took, with the store's own request counters.
 */
import { createHash, randomBytes } from 'node:crypto';
import { isAbsolute } from 'node:path';
import { IslandError } from '../errors.js';
import { openStore, type BackendConfig } from '../store/open.js';
import { listAll } from '../store/types.js';

export interface SelftestReport {
  store: string;
  objects: number;
  bytes: number;
  steps: { step: string; ms: number }[];
  requests: number;
  lines: string[];
}

/**
 * The directory `--dir` names. Store directories are absolute everywhere (storeDir in the
 * configuration must be): a relative one would test, and leave objects in, whatever the
 * current directory happens to be.
 */
export function selftestDir(dir: string | undefined, storeDir: string): string {
  if (dir === undefined) return storeDir;
  if (!isAbsolute(dir)) throw new IslandError('INVALID_ARGUMENT', `--dir must be an absolute path, got ${JSON.stringify(dir.slice(0, 200))} (store directories are absolute, as storeDir is; try --dir "$PWD/${dir.slice(0, 200)}")`);
  return dir;
}

export async function storeSelftest(config: BackendConfig): Promise<SelftestReport> {
  const { store, stats } = openStore(config);
  const prefix = `selftest/${Date.now().toString(36)}-${randomBytes(4).toString('hex')}/`;
  const sizes = [0, 1, 4096, 65536, 1 << 20, 4 << 20];
  const bodies = sizes.map((n) => randomBytes(n));
  const steps: { step: string; ms: number }[] = [];
  const step = async (name: string, fn: () => Promise<void>): Promise<void> => {
    const t0 = performance.now();
    await fn();
    steps.push({ step: name, ms: Math.round((performance.now() - t0) * 10) / 10 });
  };
  try {
    await step('put', async () => {
      await Promise.all(bodies.map((b, i) => store.put(`${prefix}${i}`, b)));
    });
    await step('list', async () => {
      const keys: string[] = [];
      for await (const o of listAll(store, prefix)) keys.push(o.key);
      if (keys.length !== bodies.length) throw new IslandError('STORE_INTEGRITY', `listed ${keys.length} of ${bodies.length} objects`);
    });
    await step('get', async () => {
      for (const [i, b] of bodies.entries()) {
        const got = await store.get(`${prefix}${i}`);
        if (!createHash('sha256').update(got).digest().equals(createHash('sha256').update(b).digest())) {
          throw new IslandError('STORE_INTEGRITY', `object ${prefix}${i} read back different`);
        }
      }
    });
    await step('get-range', async () => {
      const big = bodies[bodies.length - 1] as Buffer;
      const got = await store.getRange(`${prefix}${bodies.length - 1}`, 12345, 65536);
      if (!got.equals(big.subarray(12345, 12345 + 65536))) throw new IslandError('STORE_INTEGRITY', 'ranged read differs');
    });
    await step('delete', async () => {
      await store.deleteMany(bodies.map((_, i) => `${prefix}${i}`));
    });
  } finally {
    await store.close();
  }
  const bytes = sizes.reduce((a, b) => a + b, 0);
  const lines = [
    `store ${store.description}: ok`,
    `  ${bodies.length} objects, ${bytes} bytes: ` + steps.map((s) => `${s.step} ${s.ms} ms`).join(', '),
    `  ${stats.requests} store requests`,
  ];
  return { store: store.description, objects: bodies.length, bytes, steps, requests: stats.requests, lines };
}
