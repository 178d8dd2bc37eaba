/**
 * Concurrent attach in the protocol simulation: several hosts attach one volume at the
 * same moment over a store with last-writer-wins overwrites and stale reads of
 * overwritten objects. At most one may win a generation, and at most one may hold the
 * volume at any moment: with the store's create-if-absent, and without it (claim rounds).
 * A failing seed reproduces exactly: ISLAND_SIM_SEEDS=<seed> npx tap test/repo/protocol-sim-attach.test.ts
 * It also shows what the claim rounds rest on: without read-after-write for new objects,
 * or with hosts that contend before they are registered, some seed lets two hosts win.
 */
import t from 'tap';
import { simulateAttach, type AttachSimConfig } from '../helpers/protocol-sim.js';

const CONFIG: AttachSimConfig = { hosts: 4, rounds: 3, maxStaleReadMs: 400 };
const only = process.env.ISLAND_SIM_SEEDS?.split(',').map(Number);
const SEEDS = Number(process.env.ISLAND_SIM_COUNT ?? 1000);

const variants: { name: string; cfg: AttachSimConfig }[] = [
  { name: 'with create-if-absent', cfg: CONFIG },
  // Create-if-absent needs nothing of reads: even a store that loses sight of new objects for a while is safe.
  { name: 'with create-if-absent, reads of new objects lagging', cfg: { ...CONFIG, maxNewKeyReadLagMs: 300 } },
  { name: 'without create-if-absent (claim rounds)', cfg: { ...CONFIG, conditionalPut: false } },
];

for (const { name, cfg } of variants) {
  t.test(`one winner per attach over ${only ? only.join(',') : SEEDS} seeds, ${name}`, async (t) => {
    const seeds = only ?? Array.from({ length: SEEDS }, (_, i) => i + 1);
    let wins = 0;
    let refused = 0;
    let contested = 0;
    const failing: string[] = [];
    for (const seed of seeds) {
      const r = await simulateAttach(seed, cfg);
      wins += r.wins;
      refused += r.refused;
      contested += r.contested;
      if (r.violations.length) failing.push(`seed ${seed}: ${r.violations.join('; ')}`);
    }
    t.same(failing.slice(0, 5), [], `no seed lets two hosts win (${failing.length} failing; reproduce one with ISLAND_SIM_SEEDS=<seed>)`);
    t.ok(wins > seeds.length, `the runs saw ${wins} attaches win and ${refused} refused`);
    t.ok(refused > 0, 'hosts did race');
    if (cfg.conditionalPut === false) t.ok(contested > 0, `${contested} claim rounds were contested`);
  });
}

/** Run seeds until one fails; return it (or undefined). */
async function firstFailure(cfg: AttachSimConfig, max: number): Promise<{ seed: number; violation: string } | undefined> {
  for (let seed = 1; seed <= max; seed++) {
    const r = await simulateAttach(seed, cfg);
    if (r.violations.length) return { seed, violation: r.violations[0] as string };
  }
  return undefined;
}

t.test('claim rounds on a store that loses sight of new objects let two hosts win', async (t) => {
  const f = await firstFailure({ ...CONFIG, conditionalPut: false, maxNewKeyReadLagMs: 300 }, 500);
  t.ok(f, f ? `seed ${f.seed} fails: ${f.violation}` : 'no seed failed');
});

t.test('claim rounds with hosts that register as they contend let two hosts win', async (t) => {
  const f = await firstFailure({ ...CONFIG, conditionalPut: false, registerAhead: false }, 500);
  t.ok(f, f ? `seed ${f.seed} fails: ${f.violation}` : 'no seed failed');
});
