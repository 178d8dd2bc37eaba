/**
 * The protocol simulation in CI: thousands of seeds of the real commit, delete, attach,
 * detach and GC code on several hosts over an eventually consistent store, with crashes.
 * A failing seed reproduces exactly: ISLAND_SIM_SEEDS=<seed> npx tap test/repo/protocol-sim.test.ts
 * It also proves the simulation has teeth: with a protocol step removed, some seed fails.
 */
import t from 'tap';
import { simulate, type SimConfig } from '../helpers/protocol-sim.js';

const CONFIG: SimConfig = { graceMs: 3000, windowMs: 1000, maxListLagMs: 300 };
const only = process.env.ISLAND_SIM_SEEDS?.split(',').map(Number);
const SEEDS = Number(process.env.ISLAND_SIM_COUNT ?? 1000);

t.test(`protocol invariants hold over ${only ? only.join(',') : SEEDS} seeds`, async (t) => {
  const seeds = only ?? Array.from({ length: SEEDS }, (_, i) => i + 1);
  let committed = 0;
  let deleted = 0;
  let forks = 0;
  const failing: string[] = [];
  for (const seed of seeds) {
    const r = await simulate(seed, CONFIG);
    committed += r.committed;
    deleted += r.deleted;
    forks += r.forks;
    if (r.violations.length) failing.push(`seed ${seed}: ${r.violations.join('; ')}`);
  }
  t.same(failing, [], 'no seed breaks an invariant (reproduce one with ISLAND_SIM_SEEDS=<seed>)');
  t.ok(committed > seeds.length, `the runs committed ${committed} snapshots, deleted ${deleted}, saw ${forks} forks`);
});

/** Run seeds until one fails; return it (or undefined). */
async function firstFailure(cfg: SimConfig, max: number): Promise<{ seed: number; violation: string } | undefined> {
  for (let seed = 1; seed <= max; seed++) {
    const r = await simulate(seed, cfg);
    if (r.violations.length) return { seed, violation: r.violations[0] as string };
  }
  return undefined;
}

t.test('without the grace period, GC deletes what a running upload needs', async (t) => {
  const f = await firstFailure({ ...CONFIG, graceMs: 0 }, 300);
  t.ok(f, f ? `seed ${f.seed} fails: ${f.violation}` : 'no seed failed');
});

t.test('without the pin and the tombstone check, a snapshot reuses collected blobs', async (t) => {
  const f = await firstFailure({ ...CONFIG, breakage: { skipTombstoneCheck: true, skipPin: true } }, 300);
  t.ok(f, f ? `seed ${f.seed} fails: ${f.violation}` : 'no seed failed');
});
