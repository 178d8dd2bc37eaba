/**
 * Claim rounds (attach on a store without create-if-absent), step by step, on states a
 * race leaves behind. The simulation covers the races at random; these pin the cases.
 */
import t from 'tap';
import type { IslandError } from '../../src/errors.js';
import type { Lease } from '../../src/format/records.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { Repository } from '../../src/repo/repository.js';
import { EventualStore } from '../../src/store/eventual.js';
import { MemStore } from '../../src/store/mem.js';

const noSleep = async (): Promise<void> => undefined;

function setup(): { store: EventualStore; repo: (host: string) => Repository; lease: (host: string, g: number) => Lease } {
  const store = new EventualStore(new MemStore(), { seed: 1, maxListLagMs: 0, missProb: 0, maxStaleReadMs: 0, conditionalPut: false });
  return {
    store,
    repo: (host) => new Repository(store, { host }),
    lease: (host, g) => ({ volume: 'vol', host, generation: g, created: 1, expires: 2 }),
  };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return (err as IslandError).code;
  }
}

t.test('a host alone wins by claim rounds, and says how it won', async (t) => {
  const { repo } = setup();
  const a = await acquireGeneration(repo('h1'), 'vol', { sleep: noSleep });
  t.equal(a.generation, 1);
  t.equal(a.claim, 'claim-rounds');
  t.equal((await repo('h2').getGeneration('vol', 1))?.host, 'h1', 'the winner wrote the generation record');
  t.equal(await codeOf(acquireGeneration(repo('h2'), 'vol', { sleep: noSleep })), 'ATTACHED_ELSEWHERE', 'the next host is refused');
});

t.test('a host that gave up waiting in a round does not pass that round on its next attempt', async (t) => {
  // Round 0 of generation 1: h2 claimed and saw nobody (it has won, its generation record
  // is not written yet); h1 claimed after h2 read, saw h2's claim, wrote its lost verdict,
  // and gave up waiting for h2's verdict. h1 comes back before h2 writes its record.
  const { repo, lease } = setup();
  await repo('h1').registerHost();
  await repo('h2').registerHost();
  await repo('h2').putClaim(lease('h2', 1), 0);
  await repo('h1').putClaim(lease('h1', 1), 0);
  await repo('h1').putClaimLost(lease('h1', 1), 0);
  t.equal(await codeOf(acquireGeneration(repo('h1'), 'vol', { sleep: noSleep, verdictWaitMs: 0 })), 'BUSY', 'h1 still waits on h2, whose verdict is unknown');
  t.equal(await repo('h1').getGeneration('vol', 1), undefined, 'h1 won nothing');
  t.equal(await repo('h1').getClaim('vol', 1, 1, 'h1'), undefined, 'and did not claim round 1');
});

t.test('a contender that lost lets the others go on; one that never decides needs --force', async (t) => {
  const { repo, lease } = setup();
  await repo('h1').registerHost();
  await repo('h2').registerHost();
  await repo('h2').putClaim(lease('h2', 1), 0);
  t.equal(await codeOf(acquireGeneration(repo('h1'), 'vol', { sleep: noSleep, verdictWaitMs: 0 })), 'BUSY', 'h2 claimed round 0 and never decided: BUSY');
  const forced = await acquireGeneration(repo('h1'), 'vol', { sleep: noSleep, verdictWaitMs: 0, force: true });
  t.equal(forced.generation, 1, 'with --force (h2 fenced) h1 counts h2 as lost and wins a later round');
  t.ok(await repo('h1').getClaim('vol', 1, 1, 'h1'), 'in round 1');
});

t.test('an abandoned claim of this host is marked lost, so others are not kept waiting', async (t) => {
  const { repo, lease } = setup();
  await repo('h1').registerHost();
  await repo('h1').putClaim(lease('h1', 1), 0); // an attempt that crashed after its claim
  const a = await acquireGeneration(repo('h1'), 'vol', { sleep: noSleep });
  t.equal(a.generation, 1);
  t.ok(await repo('h2').getClaimLost('vol', 1, 0, 'h1'), 'round 0 carries h1\'s lost verdict');
  t.ok(await repo('h2').getClaim('vol', 1, 1, 'h1'), 'h1 won in round 1');
});
