/**
 * Concurrent attach in the protocol simulation: several hosts attach one volume at the
 * same moment over a store with last-writer-wins overwrites and lagging reads. At most
 * one may win a generation, and at most one may hold the volume at any moment.
 * A failing seed reproduces exactly: ISLAND_SIM_SEEDS=<seed> npx tap test/repo/protocol-sim-attach.test.ts
 */
import t from 'tap';
import { simulateAttach, type AttachSimConfig } from '../helpers/protocol-sim.js';

const CONFIG: AttachSimConfig = { hosts: 4, rounds: 3, maxStaleReadMs: 400 };
const only = process.env.ISLAND_SIM_SEEDS?.split(',').map(Number);
const SEEDS = Number(process.env.ISLAND_SIM_COUNT ?? 1000);

for (const conditionalPut of [true, false]) {
  t.test(`one winner per attach over ${only ? only.join(',') : SEEDS} seeds (${conditionalPut ? 'with' : 'without'} create-if-absent)`, async (t) => {
    const seeds = only ?? Array.from({ length: SEEDS }, (_, i) => i + 1);
    let wins = 0;
    let refused = 0;
    const failing: string[] = [];
    for (const seed of seeds) {
      const r = await simulateAttach(seed, { ...CONFIG, conditionalPut });
      wins += r.wins;
      refused += r.refused;
      if (r.violations.length) failing.push(`seed ${seed}: ${r.violations.join('; ')}`);
    }
    t.same(failing.slice(0, 5), [], `no seed lets two hosts win (${failing.length} failing; reproduce one with ISLAND_SIM_SEEDS=<seed>)`);
    t.ok(wins > seeds.length, `the runs saw ${wins} attaches win and ${refused} refused`);
    t.ok(refused > 0, 'hosts did race');
  });
}
