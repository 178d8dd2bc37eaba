/**
 * The retention policy (src/repo/retention.ts): restic's forget rules over snapshot
 * creation times, checked case by case and against a brute-force oracle on random
 * histories.
 */
import t from 'tap';
import { IslandError } from '../../src/errors.js';
import { applyRetention, describeReasons, isoWeek, parseRetentionPolicy, RETENTION_RULES, type RetentionInput, type RetentionPolicy } from '../../src/repo/retention.js';
import { Rng } from '../../src/util/random.js';

const at = (iso: string): number => Date.parse(iso);
const snap = (id: string, iso: string): RetentionInput => ({ id, created: at(iso) });
const kept = (ds: ReturnType<typeof applyRetention>): string[] => ds.filter((d) => d.keep).map((d) => d.id);
const why = (ds: ReturnType<typeof applyRetention>, id: string): string => describeReasons(ds.find((d) => d.id === id)?.reasons ?? []);

t.test('keep-last keeps the N newest, ranked', async (t) => {
  const snaps = [snap('A', '2024-05-01T10:00:00Z'), snap('B', '2024-05-01T11:00:00Z'), snap('C', '2024-05-01T12:00:00Z'), snap('D', '2024-05-01T13:00:00Z'), snap('E', '2024-05-01T14:00:00Z')];
  const ds = applyRetention(snaps, { last: 3 });
  t.same(ds.map((d) => d.id), ['E', 'D', 'C', 'B', 'A'], 'decisions come newest first');
  t.same(kept(ds), ['E', 'D', 'C']);
  t.equal(why(ds, 'E'), 'last #1');
  t.equal(why(ds, 'C'), 'last #3');
  t.same(ds.find((d) => d.id === 'A')?.reasons, [], 'a deleted snapshot has no reasons');
  t.same(kept(applyRetention(snaps, { last: 10 })), ['E', 'D', 'C', 'B', 'A'], 'N past the history keeps everything');
});

t.test('keep-hourly: the newest of each of the last N hours that have snapshots', async (t) => {
  const snaps = [
    snap('h10a', '2024-05-01T10:05:00Z'),
    snap('h10b', '2024-05-01T10:40:00Z'),
    snap('h11', '2024-05-01T11:10:00Z'),
    // no snapshot in hour 12: it does not count against N
    snap('h13a', '2024-05-01T13:00:00Z'),
    snap('h13b', '2024-05-01T13:59:59.999Z'),
  ];
  const ds = applyRetention(snaps, { hourly: 3 });
  t.same(kept(ds), ['h13b', 'h11', 'h10b']);
  t.equal(why(ds, 'h13b'), 'hourly 2024-05-01T13');
  t.equal(why(ds, 'h10b'), 'hourly 2024-05-01T10');
  t.same(kept(applyRetention(snaps, { hourly: 1 })), ['h13b']);
});

t.test('keep-daily and keep-weekly bucket by UTC day and ISO week', async (t) => {
  const snaps = [
    snap('sun', '2024-01-07T23:30:00Z'), // Sunday: ISO week 2024-W01
    snap('mon1', '2024-01-08T00:10:00Z'), // Monday: 2024-W02
    snap('mon2', '2024-01-08T18:00:00Z'),
    snap('tue', '2024-01-09T09:00:00Z'),
    snap('prev', '2023-12-31T12:00:00Z'), // a Sunday: 2023-W52
  ];
  const daily = applyRetention(snaps, { daily: 3 });
  t.same(kept(daily), ['tue', 'mon2', 'sun']);
  t.equal(why(daily, 'mon2'), 'daily 2024-01-08');
  const weekly = applyRetention(snaps, { weekly: 3 });
  t.same(kept(weekly), ['tue', 'sun', 'prev']);
  t.equal(why(weekly, 'sun'), 'weekly 2024-W01');
  t.equal(why(weekly, 'prev'), 'weekly 2023-W52');
});

t.test('ISO weeks at year boundaries', async (t) => {
  t.equal(isoWeek(at('2020-12-31T12:00:00Z')), '2020-W53');
  t.equal(isoWeek(at('2021-01-03T23:59:59Z')), '2020-W53', 'a Sunday in January can belong to the previous year');
  t.equal(isoWeek(at('2021-01-04T00:00:00Z')), '2021-W01');
  t.equal(isoWeek(at('2024-12-30T00:00:00Z')), '2025-W01', 'a Monday in December can belong to the next year');
  t.equal(isoWeek(at('2026-06-15T08:00:00Z')), '2026-W25');
});

t.test('a snapshot kept for several reasons lists them all', async (t) => {
  const snaps = [snap('old', '2024-04-20T08:00:00Z'), snap('mid', '2024-05-01T09:00:00Z'), snap('new', '2024-05-01T10:00:00Z')];
  const ds = applyRetention(snaps, { last: 1, hourly: 2, daily: 2, weekly: 2 });
  t.equal(why(ds, 'new'), 'last #1, hourly 2024-05-01T10, daily 2024-05-01, weekly 2024-W18');
  t.equal(why(ds, 'mid'), 'hourly 2024-05-01T09', 'the same day and week as a newer one: hourly only');
  t.equal(why(ds, 'old'), 'daily 2024-04-20, weekly 2024-W16');
  t.same(ds.find((d) => d.id === 'new')?.reasons.map((r) => r.rule), ['last', 'hourly', 'daily', 'weekly'], 'reasons in rule order');
});

t.test('ties: equal creation times are ordered by id (the greater ULID is newer)', async (t) => {
  const same = '2024-05-01T10:00:00Z';
  const snaps = [snap('01HX0000000000000000000001', same), snap('01HX0000000000000000000003', same), snap('01HX0000000000000000000002', same)];
  const last = applyRetention(snaps, { last: 1 });
  t.same(kept(last), ['01HX0000000000000000000003']);
  const hourly = applyRetention(snaps, { hourly: 5 });
  t.same(kept(hourly), ['01HX0000000000000000000003'], 'one hour: only its newest is kept');
  const rng = new Rng(11);
  for (let i = 0; i < 20; i++) t.same(applyRetention(rng.shuffle([...snaps]), { last: 2 }), applyRetention(snaps, { last: 2 }), 'input order does not matter');
});

t.test('an empty history keeps and deletes nothing', async (t) => {
  t.same(applyRetention([], { daily: 7 }), []);
});

t.test('a policy without a keep rule of 1 or more is refused', async (t) => {
  const bad: [unknown, RegExp][] = [
    [{}, /at least one/],
    [{ last: 0, hourly: 0, daily: 0, weekly: 0 }, /at least one/],
    [{ last: -1 }, /integer/],
    [{ last: 1.5 }, /integer/],
    [{ daily: '7' }, /integer/],
    [{ weekly: 2_000_000 }, /integer from 0/],
    [{ monthly: 3 }, /unknown retention rule/],
  ];
  for (const [policy, msg] of bad) {
    t.throws(() => parseRetentionPolicy(policy as Record<string, unknown>), { code: 'INVALID_ARGUMENT', message: msg }, JSON.stringify(policy));
    t.throws(() => applyRetention([snap('A', '2024-05-01T10:00:00Z')], policy as RetentionPolicy), IslandError, `applyRetention refuses ${JSON.stringify(policy)} too`);
  }
  t.same(parseRetentionPolicy({ last: 0, daily: 7, hourly: null }), { last: 0, daily: 7 }, 'zero and null rules are allowed next to a real one');
});

// ---- oracle ---------------------------------------------------------------------------

function bucket(rule: 'hourly' | 'daily' | 'weekly', ms: number): string {
  const iso = new Date(ms).toISOString();
  if (rule === 'hourly') return iso.slice(0, 13);
  if (rule === 'daily') return iso.slice(0, 10);
  return isoWeek(ms);
}

/** Brute force: group into buckets, take the N latest buckets, the newest snapshot of each. */
function oracle(snaps: RetentionInput[], policy: RetentionPolicy): Map<string, string[]> {
  const newer = (a: RetentionInput, b: RetentionInput): boolean => a.created > b.created || (a.created === b.created && a.id > b.id);
  const reasons = new Map<string, string[]>(snaps.map((s) => [s.id, []]));
  const byAge = [...snaps].sort((a, b) => (newer(a, b) ? -1 : 1));
  byAge.slice(0, policy.last ?? 0).forEach((s) => reasons.get(s.id)?.push('last'));
  for (const rule of ['hourly', 'daily', 'weekly'] as const) {
    const groups = new Map<string, RetentionInput>();
    for (const s of snaps) {
      const b = bucket(rule, s.created);
      const cur = groups.get(b);
      if (!cur || newer(s, cur)) groups.set(b, s);
    }
    const latest = [...groups.keys()].sort().reverse().slice(0, policy[rule] ?? 0);
    for (const b of latest) reasons.get((groups.get(b) as RetentionInput).id)?.push(rule);
  }
  return reasons;
}

t.test('random histories agree with the brute-force oracle', async (t) => {
  const rng = new Rng(2024);
  const start = at('2023-12-20T00:00:00Z');
  let checked = 0;
  let newestDropped = 0;
  for (let round = 0; round < 300; round++) {
    const n = rng.int(40);
    const spanMs = [3_600_000 * 6, 86_400_000 * 3, 86_400_000 * 60][rng.int(3)] as number;
    const snaps: RetentionInput[] = [];
    for (let i = 0; i < n; i++) {
      // Coarse times make ties and shared buckets common.
      const created = start + Math.floor(rng.int(spanMs) / 600_000) * 600_000;
      snaps.push({ id: `S${String(i).padStart(4, '0')}${rng.int(10)}`, created });
    }
    const policy: RetentionPolicy = {};
    for (const r of RETENTION_RULES) if (rng.chance(0.6)) policy[r] = rng.int(6);
    if (!RETENTION_RULES.some((r) => (policy[r] ?? 0) >= 1)) policy.last = 1 + rng.int(3);
    const want = oracle(snaps, policy);
    const got = applyRetention(snaps, policy);
    for (const d of got) {
      const w = want.get(d.id) ?? [];
      if (JSON.stringify(d.reasons.map((r) => r.rule)) !== JSON.stringify(w) || d.keep !== w.length > 0) {
        t.fail(`round ${round}: ${d.id} at ${new Date(d.created).toISOString()} under ${JSON.stringify(policy)}: got ${describeReasons(d.reasons)}, want ${w.join(', ')}`);
        return;
      }
      checked++;
    }
    if (n > 0 && !got[0]?.keep) newestDropped++;
  }
  t.ok(checked > 1000, `${checked} decisions checked`);
  t.equal(newestDropped, 0, 'the newest snapshot is always kept');
});
