/**
 * fsck cost by tier, in one run against one real Swift: a store is built with a history of
 * snapshots of one volume (each changing a slice of it), then the structure tier (records,
 * tree nodes, pack trailers), a 10% deep sample and the full deep tier are timed on it,
 * with the bytes each one read from the store. The structure tier should grow with the
 * number of nodes and packs, not with bytes stored; the deep tier with bytes stored.
 *
 *   npx tsx scripts/bench-fsck.ts [--swift swift.json] [--mib 256] [--snapshots 8] [--json]
 *
 * Without --swift it starts a private Swift (scripts/swift.sh) and stops it after.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runFsck } from '../src/fsck/check.js';
import type { Manifest } from '../src/format/records.js';
import { acquireGeneration } from '../src/repo/attach.js';
import { Repository } from '../src/repo/repository.js';
import { takeSnapshot } from '../src/snapshot/create.js';
import { EncodePool } from '../src/snapshot/pool.js';
import { composeStore } from '../src/store/open.js';
import { S3Store } from '../src/store/s3.js';
import { Volume } from '../src/volume/engine.js';
import { withSwift } from './bench-swift.js';

const { values } = parseArgs({ options: { swift: { type: 'string' }, mib: { type: 'string', default: '256' }, snapshots: { type: 'string', default: '8' }, json: { type: 'boolean', default: false } } });
const MiB = 1 << 20;

await withSwift(values.swift, async (cfg) => {
  const mib = Number(values.mib);
  const history = Number(values.snapshots);
  const work = await mkdtemp(join(tmpdir(), 'island-bench-fsck-'));
  const bucket = `bench-fsck-${Date.now().toString(36)}`;
  const { store, stats } = composeStore(new S3Store({ ...cfg, bucket }), { concurrency: 16 });
  const repo = new Repository(store, { host: 'bench' });
  const pool = new EncodePool();
  try {
    const g = (await acquireGeneration(repo, 'bench')).generation;
    const v = await Volume.create(join(work, 'vol'), { name: 'bench', virtualSize: mib * MiB, generation: g, flushIntervalMs: 0 });
    // The whole volume once, then each snapshot rewrites 1/8 of it: incompressible data.
    let parent: Manifest | null = null;
    for (let i = 0; i < history; i++) {
      const from = i === 0 ? 0 : ((i * mib) / 8) % mib;
      const len = i === 0 ? mib : mib / 8;
      for (let off = 0; off < len; off += 4) await v.write(randomBytes(4 * MiB), (from + off) * MiB);
      await v.fsync();
      parent = await takeSnapshot(repo, pool, { volume: v, generation: g, parent, consistency: 'crash', windowMs: 3_600_000 });
    }
    await v.close();
    const stored = (await listSizes(store)).reduce((a, b) => a + b, 0);

    const tiers: { tier: string; ms: number; bytesRead: number; gets: number; nodes: number; packs: number }[] = [];
    for (const [tier, deepPercent] of [['structure', undefined], ['deep 10%', 10], ['deep', 100]] as const) {
      const before = stats.snapshot();
      const fresh = new Repository(store, { host: 'bench' }); // cold node cache
      const t0 = performance.now();
      const r = await runFsck(fresh, { graceMs: 0, deepPercent, seed: 1 });
      const ms = performance.now() - t0;
      const after = stats.snapshot();
      const bytesIn = (o: typeof after): number => Object.values(o).reduce((n, x) => n + x.bytesIn, 0);
      const gets = (o: typeof after): number => o.get.requests + o.get_range.requests;
      if (r.exitCode !== 0) throw new Error(`fsck ${tier} found errors: ${JSON.stringify(r.findings)}`);
      tiers.push({ tier, ms: Math.round(ms), bytesRead: bytesIn(after) - bytesIn(before), gets: gets(after) - gets(before), nodes: r.summary.nodes, packs: r.summary.packsVerified || r.summary.trailerReads });
    }
    const base = tiers[0]!.ms;
    if (values.json) {
      process.stdout.write(JSON.stringify({ mib, history, storedBytes: stored, tiers }) + '\n');
    } else {
      console.log(`store: ${history} snapshots of a ${mib} MiB volume, ${(stored / MiB).toFixed(1)} MiB stored`);
      console.log('tier        time ms   vs structure   read MiB   GETs   nodes   packs');
      for (const x of tiers) console.log(`${x.tier.padEnd(10)}  ${String(x.ms).padStart(7)}   ${(x.ms / base).toFixed(2).padStart(12)}   ${(x.bytesRead / MiB).toFixed(1).padStart(8)}   ${String(x.gets).padStart(4)}   ${String(x.nodes).padStart(5)}   ${String(x.packs).padStart(5)}`);
    }
  } finally {
    await pool.close();
    await store.close();
    await rm(work, { recursive: true, force: true });
  }
});

async function listSizes(store: { list(prefix: string, o?: { startAfter?: string }): Promise<{ items: { size: number; key: string }[]; next: string | undefined }> }): Promise<number[]> {
  const out: number[] = [];
  for (const prefix of ['data/', 'meta/']) {
    let startAfter: string | undefined;
    for (;;) {
      const page = await store.list(prefix, { startAfter });
      out.push(...page.items.map((i) => i.size));
      if (page.next === undefined) break;
      startAfter = page.next;
    }
  }
  return out;
}
