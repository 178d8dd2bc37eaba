import t from 'tap';
import { IslandError } from '../../src/errors.js';
import {
  ULID_TIME_MAX,
  encodeUlid,
  isUlid,
  parseUlid,
  ulid,
  ulidFactory,
  ulidFromBytes,
  ulidTime,
  ulidToBytes,
} from '../../src/format/ulid.js';

/** A seeded byte source (xorshift32): the same seed gives the same bytes. */
function seededRandom(seed: number): (n: number) => Uint8Array {
  let x = seed >>> 0 || 1;
  return (n) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      out[i] = x & 0xff;
    }
    return out;
  };
}

function codeOfThrown(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof IslandError ? e.code : `not an IslandError: ${String(e)}`;
  }
  return undefined;
}

t.test('known encodings', async (t) => {
  t.equal(encodeUlid(0, new Uint8Array(10)), '00000000000000000000000000');
  t.equal(encodeUlid(ULID_TIME_MAX, new Uint8Array(10).fill(0xff)), '7ZZZZZZZZZZZZZZZZZZZZZZZZZ');
  // The time vector of the ULID specification's reference implementation.
  t.equal(encodeUlid(1469918176385, new Uint8Array(10)).slice(0, 10), '01ARYZ6S41');
  const r = Uint8Array.from([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23]);
  // 0x0123456789 = 00000 00100 10001 10100 01010 11001 11100 01001 -> 04HMASW9
  // 0xabcdef0123 = 10101 01111 00110 11110 11110 00000 01001 00011 -> NF6YY093
  t.equal(encodeUlid(1, r), '000000000104HMASW9NF6YY093');
});

t.test('time extraction and binary form round trip', async (t) => {
  const random = seededRandom(7);
  for (let i = 0; i < 2000; i++) {
    const time = Math.floor((i / 2000) * ULID_TIME_MAX) + (i % 3);
    const bytes = random(10);
    const id = encodeUlid(time, bytes);
    if (id.length !== 26 || !isUlid(id)) t.fail(`not a ULID: ${id}`);
    if (ulidTime(id) !== time) t.fail(`time of ${id}: ${ulidTime(id)} != ${time}`);
    const bin = ulidToBytes(id);
    if (bin.readUIntBE(0, 6) !== time || !bin.subarray(6).equals(Buffer.from(bytes))) t.fail(`binary form of ${id}`);
    if (ulidFromBytes(bin) !== id) t.fail(`from bytes of ${id}`);
  }
  t.pass('2000 ids: time, binary form and text agree');
  t.equal(ulidTime('7ZZZZZZZZZZZZZZZZZZZZZZZZZ'), ULID_TIME_MAX);
});

t.test('text order equals binary order (sortable)', async (t) => {
  const random = seededRandom(99);
  const ids: string[] = [];
  for (let i = 0; i < 3000; i++) ids.push(ulidFromBytes(random(16).map((b, j) => (j === 0 ? b & 0x7f : b))));
  const byText = ids.slice().sort();
  const byBytes = ids.slice().sort((a, b) => Buffer.compare(ulidToBytes(a), ulidToBytes(b)));
  t.strictSame(byText, byBytes);
});

t.test('monotonic within a millisecond', async (t) => {
  const next = ulidFactory({ now: () => 1_700_000_000_000, random: seededRandom(1) });
  let prev = next();
  for (let i = 0; i < 5000; i++) {
    const id = next();
    if (!(id > prev)) t.fail(`${id} <= ${prev}`);
    if (ulidTime(id) !== 1_700_000_000_000) t.fail(`time moved: ${id}`);
    prev = id;
  }
  t.pass('5000 ids strictly increasing with one time');
});

t.test('monotonic when the clock steps back, sortable as time advances', async (t) => {
  const times = [1000, 1000, 999, 500, 1001, 1001, 2000, 1500];
  let i = 0;
  const next = ulidFactory({ now: () => times[i++] as number, random: seededRandom(2) });
  const ids = times.map(() => next());
  t.strictSame(ids.slice().sort(), ids, 'generation order is text order');
  t.strictSame(
    ids.map((id) => ulidTime(id)),
    [1000, 1000, 1000, 1000, 1001, 1001, 2000, 2000],
    'a clock going back keeps the last time',
  );
});

t.test('randomness overflow advances the time instead of failing', async (t) => {
  const next = ulidFactory({ now: () => 5000, random: (n) => new Uint8Array(n).fill(0xff) });
  const a = next();
  const b = next();
  t.equal(a, encodeUlid(5000, new Uint8Array(10).fill(0xff)));
  t.equal(ulidTime(b), 5001);
  t.ok(b > a);
});

t.test('deterministic with an injected clock and random source', async (t) => {
  const run = (): string[] => {
    let now = 1_600_000_000_000;
    const next = ulidFactory({ now: () => (now += 0.4), random: seededRandom(42) });
    return Array.from({ length: 200 }, () => next());
  };
  t.strictSame(run(), run());
});

t.test('a broken clock or random source is an internal error', async (t) => {
  t.equal(codeOfThrown(() => ulidFactory({ now: () => NaN })()), 'INTERNAL');
  t.equal(codeOfThrown(() => ulidFactory({ now: () => -1 })()), 'INTERNAL');
  t.equal(codeOfThrown(() => ulidFactory({ now: () => 2 ** 48 })()), 'INTERNAL');
  t.equal(codeOfThrown(() => ulidFactory({ random: () => new Uint8Array(3) })()), 'INTERNAL');
});

t.test('the default generator', async (t) => {
  const before = Date.now();
  const a = ulid();
  const b = ulid();
  t.ok(isUlid(a) && isUlid(b));
  t.ok(b > a);
  t.ok(ulidTime(a) >= before && ulidTime(a) <= Date.now());
});

t.test('isUlid and parseUlid', async (t) => {
  const good = '01HZX3C6Y1V8K9E2R5T7W0Q4MN';
  t.ok(isUlid(good));
  t.equal(parseUlid(good.toLowerCase()), good, 'lowercase is made canonical');
  for (const bad of [
    good.toLowerCase(),
    good.slice(1),
    `${good}0`,
    '81HZX3C6Y1V8K9E2R5T7W0Q4MN', // past 128 bits
    '01HZX3C6Y1V8K9E2R5T7W0Q4MI', // I, L, O, U are not in the alphabet
    '01HZX3C6Y1V8K9E2R5T7W0Q4ML',
    '01HZX3C6Y1V8K9E2R5T7W0Q4MO',
    '01HZX3C6Y1V8K9E2R5T7W0Q4MU',
    '',
    null,
    42,
  ]) {
    if (bad !== good.toLowerCase()) t.equal(codeOfThrown(() => parseUlid(bad)), 'INVALID_ARGUMENT', `parse ${String(bad)}`);
    t.notOk(isUlid(bad), `isUlid ${String(bad)}`);
  }
  t.equal(codeOfThrown(() => ulidTime('nope')), 'INVALID_ARGUMENT');
  t.equal(codeOfThrown(() => ulidFromBytes(new Uint8Array(15))), 'INVALID_ARGUMENT');
  t.equal(codeOfThrown(() => encodeUlid(1.5, new Uint8Array(10))), 'INVALID_ARGUMENT');
  const e = (() => {
    try {
      parseUlid(`x\n${'y'.repeat(5000)}`, 'snapshot id');
    } catch (err) {
      return err as IslandError;
    }
    return undefined;
  })();
  t.ok(e && e.message.startsWith('snapshot id must be a ULID'));
  t.ok(e && !e.message.includes('\n') && e.message.length < 200, 'the input is escaped and cut');
});
