/**
 * Concurrent attach on the embedded (fs) store, for real: many hosts, each with its own
 * Repository and store object (and, in the second test, its own process), attach one
 * volume at the same moment. Exactly one may win each round; the others are refused.
 * This is the reproduction of two hosts both winning (3 of 60 before create-if-absent).
 * On a real Swift (no create-if-absent: claim rounds) the same holds with the hosts
 * registered before they contend.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import type { IslandError } from '../../src/errors.js';
import { acquireGeneration, releaseGeneration } from '../../src/repo/attach.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStore } from '../../src/store/fs.js';
import { composeStore } from '../../src/store/open.js';
import { S3Store } from '../../src/store/s3.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

const root = await mkdtemp(join(tmpdir(), 'island-attach-race-'));
t.teardown(() => rm(root, { recursive: true, force: true }));

const REFUSED = new Set(['BUSY', 'ATTACHED_ELSEWHERE']);

t.test('60 hosts attach one volume at once: exactly one wins, round after round', async (t) => {
  const dir = join(root, 'in-process');
  const HOSTS = 60;
  for (let round = 1; round <= 5; round++) {
    const repos = Array.from({ length: HOSTS }, (_, i) => new Repository(new FsStore(dir), { host: `host-${i}` }));
    const results = await Promise.allSettled(repos.map((r) => acquireGeneration(r, 'vol')));
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [{ host: `host-${i}`, generation: r.value.generation, claim: r.value.claim }] : []));
    const odd = results.flatMap((r) => (r.status === 'rejected' && !REFUSED.has((r.reason as IslandError).code) ? [String(r.reason)] : []));
    t.same(odd, [], `round ${round}: every loser is refused with BUSY or ATTACHED_ELSEWHERE`);
    t.equal(won.length, 1, `round ${round}: exactly one of ${HOSTS} wins (${won.map((w) => w.host).join(', ')})`);
    const w = won[0];
    if (!w) return;
    t.equal(w.generation, round, `the winner holds generation ${round}`);
    t.equal(w.claim, 'conditional-put', 'won by create-if-absent');
    await releaseGeneration(new Repository(new FsStore(dir), { host: w.host }), 'vol', w.generation);
  }
});

const CHILD = `
import { acquireGeneration } from ${JSON.stringify(resolve(import.meta.dirname, '../../src/repo/attach.ts'))};
import { Repository } from ${JSON.stringify(resolve(import.meta.dirname, '../../src/repo/repository.ts'))};
import { FsStore } from ${JSON.stringify(resolve(import.meta.dirname, '../../src/store/fs.ts'))};
import { createInterface } from 'node:readline';
const [dir, host] = process.argv.slice(-2);
const repo = new Repository(new FsStore(dir), { host });
console.log('ready');
for await (const _ of createInterface({ input: process.stdin })) break;
try {
  const a = await acquireGeneration(repo, 'vol');
  console.log(JSON.stringify({ host, generation: a.generation }));
} catch (err) {
  console.log(JSON.stringify({ host, code: err.code ?? String(err) }));
}
`;

interface ChildResult {
  host: string;
  generation?: number;
  code?: string;
}

/** Start one attaching process; resolves once it is ready, with a function that says "go" and waits for its answer. */
async function startChild(dir: string, host: string): Promise<() => Promise<ChildResult>> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD, '--', dir, host], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.value !== 'ready') throw new Error(`child ${host} said ${String(first.value)}`);
  return async () => {
    child.stdin.end('go\n');
    const answer = await lines.next();
    await new Promise((r) => child.once('exit', r));
    return JSON.parse(String(answer.value)) as ChildResult;
  };
}

t.test('12 processes attach one volume at once: exactly one wins, in each of 2 rounds', async (t) => {
  const dir = join(root, 'processes');
  const N = 12;
  for (let round = 1; round <= 2; round++) {
    const go = await Promise.all(Array.from({ length: N }, (_, i) => startChild(dir, `proc-${i}`)));
    const results = await Promise.all(go.map((g) => g()));
    const won = results.filter((r) => r.generation !== undefined);
    t.same(results.filter((r) => r.generation === undefined && !REFUSED.has(r.code ?? '')), [], `round ${round}: every loser is refused`);
    t.equal(won.length, 1, `round ${round}: exactly one of ${N} processes wins (${won.map((w) => w.host).join(', ')})`);
    const w = won[0];
    if (!w) return;
    t.equal(w.generation, round);
    await releaseGeneration(new Repository(new FsStore(dir), { host: w.host }), 'vol', round);
  }
});

t.test('8 hosts attach one volume at once on a real Swift (claim rounds): one wins each round', async (t) => {
  const got = await useSwift(t);
  if ('skip' in got) return void t.skip(`needs Swift: ${got.skip}`);
  const bucket = uniqueBucket('claims');
  const HOSTS = 8;
  const repos = Array.from({ length: HOSTS }, (_, i) => new Repository(composeStore(new S3Store({ ...got.swift, bucket })).store, { host: `swift-${i}` }));
  t.teardown(() => Promise.all(repos.map((r) => r.store.close())));
  t.equal(await repos[0]!.store.conditionalPut(), false, "Swift's s3api has no create-if-absent: attach runs claim rounds");
  for (const r of repos) await r.registerHost(); // hosts register when they join, before they contend
  for (let round = 1; round <= 2; round++) {
    const results = await Promise.allSettled(repos.map((r) => acquireGeneration(r, 'vol')));
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [{ host: `swift-${i}`, generation: r.value.generation, claim: r.value.claim }] : []));
    const odd = results.flatMap((r) => (r.status === 'rejected' && !REFUSED.has((r.reason as IslandError).code) ? [String(r.reason)] : []));
    t.same(odd, [], `round ${round}: every loser is refused with BUSY or ATTACHED_ELSEWHERE`);
    t.equal(won.length, 1, `round ${round}: one of ${HOSTS} wins (${won.map((w) => w.host).join(', ')})`);
    const w = won[0];
    if (!w) return;
    t.equal(w.claim, 'claim-rounds');
    await releaseGeneration(repos[Number(w.host.split('-')[1])]!, 'vol', w.generation);
  }
});
