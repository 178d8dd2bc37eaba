/**
 * A short torture run (scripts/torture.ts): two real daemons on one embedded store, SIGKILLed
 * at seeded random moments during fsynced writes, snapshots and detaches, with random
 * transient store failures; no fsynced byte may be lost and fsck must be clean.
 * ISLAND_TORTURE_KILLS and ISLAND_TORTURE_SEED run a longer or another schedule.
 */
import t from 'tap';
import { torture } from '../../scripts/torture.js';

t.test('torture: random kills lose no fsynced byte', async (t) => {
  const seed = Number(process.env.ISLAND_TORTURE_SEED ?? 20261206);
  const kills = Number(process.env.ISLAND_TORTURE_KILLS ?? 12);
  const r = await torture({ seed, kills, faultRate: 0.02, log: (l) => t.comment(l) });
  t.comment(`seed ${r.seed}: ${r.kills} kills, ${r.rounds} rounds, ${r.moves} moves, ${r.bytesVerified} bytes verified, ${r.bytesLost} lost`);
  t.equal(r.kills, kills, `${kills} kills`);
  t.ok(r.bytesVerified > 0, 'bytes were verified');
  t.equal(r.bytesLost, 0, 'no fsynced byte lost');
  t.same(r.losses, [], 'no loss reported');
  t.same(r.unexpectedExits, [], 'no daemon exited by itself');
  t.equal(r.fsckExit, 0, 'fsck finds the store clean');
});
