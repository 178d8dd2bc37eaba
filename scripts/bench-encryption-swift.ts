/**
 * Snapshot upload and read-back with and without encryption, in one run against one Swift:
 * the same incompressible volume content is snapshotted into an unencrypted bucket and an
 * encrypted one (alternating, best of R rounds), then each snapshot is read back whole
 * through the repository (exportSnapshot: every blob fetched by range and decoded, as a
 * lazy restore does).
 *
 *   npx tsx scripts/bench-encryption-swift.ts [--swift swift.json] [--mib 128] [--rounds 2]
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { decodeKeyFile, encodeKeyFile } from '../src/crypto/key-file.js';
import { RepositoryKeys } from '../src/crypto/keys.js';
import { openWithKey } from '../src/crypto/open.js';
import { acquireGeneration } from '../src/repo/attach.js';
import { Repository } from '../src/repo/repository.js';
import { takeSnapshot } from '../src/snapshot/create.js';
import { exportSnapshot } from '../src/snapshot/export.js';
import { EncodePool } from '../src/snapshot/pool.js';
import { composeStore } from '../src/store/open.js';
import { S3Store } from '../src/store/s3.js';
import { Volume } from '../src/volume/engine.js';
import { withSwift } from './bench-swift.js';

const { values } = parseArgs({ options: { swift: { type: 'string' }, mib: { type: 'string', default: '128' }, rounds: { type: 'string', default: '2' } } });
const MiB = 1 << 20;

await withSwift(values.swift, async (cfg) => {
  const mib = Number(values.mib);
  const rounds = Number(values.rounds);
  const work = await mkdtemp(join(tmpdir(), 'island-bench-enc-'));
  const pool = new EncodePool();
  const kf = await decodeKeyFile((await encodeKeyFile(RepositoryKeys.generate(), Buffer.alloc(0), { scrypt: { logN: 14, r: 8, p: 1 } })).bytes, Buffer.alloc(0));
  const best = { plain: { up: 0, read: 0 }, enc: { up: 0, read: 0 } };
  const closers: (() => Promise<void>)[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      for (const mode of ['plain', 'enc'] as const) {
        const { store } = composeStore(new S3Store({ ...cfg, bucket: `bench-enc-${mode}-${r}-${Date.now().toString(36)}` }), { concurrency: 16 });
        closers.push(() => store.close());
        const opened = mode === 'enc' ? await openWithKey(store, kf) : { store, frames: undefined };
        const repo = new Repository(opened.store, { host: 'bench', ...(opened.frames ? { frames: opened.frames } : {}) });
        const g = (await acquireGeneration(repo, 'bench')).generation;
        const v = await Volume.create(join(work, `${mode}-${r}`), { name: 'bench', virtualSize: 2 * mib * MiB, generation: g, flushIntervalMs: 0 });
        const chunk = randomBytes(4 * MiB);
        for (let off = 0; off < mib * MiB; off += chunk.length) {
          for (let c = 0; c < chunk.length; c += 65536) chunk.writeUInt32BE((off + c) >>> 0, c);
          await v.write(chunk, off);
        }
        await v.fsync();
        let t0 = performance.now();
        const m = await takeSnapshot(repo, pool, { volume: v, generation: g, parent: null, consistency: 'crash', windowMs: 3_600_000 });
        const up = m.stats.uploadedBytes / MiB / ((performance.now() - t0) / 1000);
        t0 = performance.now();
        const ex = await exportSnapshot(repo, m, join(work, `${mode}-${r}.qcow2`));
        const read = ex.bytes / MiB / ((performance.now() - t0) / 1000);
        await v.close();
        best[mode].up = Math.max(best[mode].up, up);
        best[mode].read = Math.max(best[mode].read, read);
      }
    }
    console.log(`one Swift (${cfg.endpoint}), ${mib} MiB incompressible, best of ${rounds} alternating rounds, node ${process.version}`);
    console.log(`  snapshot upload   unencrypted ${best.plain.up.toFixed(1)} MiB/s   encrypted ${best.enc.up.toFixed(1)} MiB/s   cost ${((1 - best.enc.up / best.plain.up) * 100).toFixed(0)}%`);
    console.log(`  read back (export) unencrypted ${best.plain.read.toFixed(1)} MiB/s   encrypted ${best.enc.read.toFixed(1)} MiB/s   cost ${((1 - best.enc.read / best.plain.read) * 100).toFixed(0)}%`);
  } finally {
    await pool.close();
    for (const c of closers) await c().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
});
