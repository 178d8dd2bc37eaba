import t, { type Test } from 'tap';
import { IslandError } from '../../src/errors.js';
import {
  MAX_VOLUME_SIZE,
  formatSize,
  isHostId,
  isRegionName,
  isSnapshotId,
  isVolumeName,
  parseClusterSize,
  parseHostId,
  parseRegionName,
  parseSize,
  parseSnapshotId,
  parseVolumeName,
  parseVolumeSize,
  quoteInput,
} from '../../src/format/names.js';

function refusal(fn: () => unknown): IslandError {
  try {
    fn();
  } catch (e) {
    if (e instanceof IslandError) return e;
    throw e;
  }
  throw new Error('expected a refusal');
}

/** The refusal is INVALID_ARGUMENT, quotes the input escaped and cut, on one line. */
function expectRefused(t: Test, fn: () => unknown, input: unknown, reason: RegExp): void {
  const e = refusal(fn);
  t.equal(e.code, 'INVALID_ARGUMENT', `${quoteInput(input)} refused`);
  t.match(e.message, reason, `${quoteInput(input)}: ${e.message}`);
  t.ok(e.message.includes(quoteInput(input)), 'the message quotes the input');
  t.notMatch(e.message, /[\u0000-\u001f]/, 'no control characters in the message');
  t.ok(e.message.length < 300, 'the message is bounded');
}

t.test('volume names', async (t) => {
  for (const ok of ['a', '0', 'vm-1.disk_0', 'a.b.c', 'x'.repeat(63), '9-9_9']) {
    t.ok(isVolumeName(ok), ok);
    t.equal(parseVolumeName(ok), ok);
  }
  const cases: [unknown, RegExp][] = [
    ['', /must not be empty/],
    ['../x', /must start with a lowercase letter or a digit/],
    ['..', /must start with/],
    ['.', /must start with/],
    ['.hidden', /must start with/],
    ['a..b', /must not contain "\.\."/],
    ['a.', /must not end with "\."/],
    ['a/b', /may contain only/],
    ['a\\b', /may contain only/],
    ['-a', /must start with/],
    ['_a', /must start with/],
    ['Vol', /must start with/],
    ['vOl', /may contain only/],
    ['vol ume', /may contain only/],
    ['vol\n1', /may contain only/],
    ['vol\u0000', /may contain only/],
    ['véhicule', /may contain only/],
    ['卷', /must start with/],
    ['x'.repeat(64), /at most 63 characters, got 64/],
    ['x'.repeat(100_000), /at most 63 characters/],
    [null, /must be a string/],
    [7, /must be a string/],
  ];
  for (const [input, reason] of cases) {
    t.notOk(isVolumeName(input));
    expectRefused(t, () => parseVolumeName(input), input, reason);
  }
  t.match(refusal(() => parseVolumeName('A')).message, /^invalid volume name "A": /);
});

t.test('host ids and region names', async (t) => {
  t.ok(isHostId('node-07.rack3'));
  t.equal(parseHostId('h1'), 'h1');
  expectRefused(t, () => parseHostId('Node1'), 'Node1', /must start with/);
  expectRefused(t, () => parseHostId('../etc'), '../etc', /must start with/);
  expectRefused(t, () => parseHostId('h'.repeat(64)), 'h'.repeat(64), /at most 63/);
  t.ok(isRegionName('local'));
  t.ok(isRegionName('swift-ams_1'));
  t.equal(parseRegionName('eu-west'), 'eu-west');
  expectRefused(t, () => parseRegionName('eu.west'), 'eu.west', /may contain only a-z, 0-9, "_" and "-"/);
  expectRefused(t, () => parseRegionName('r'.repeat(33)), 'r'.repeat(33), /at most 32/);
  expectRefused(t, () => parseRegionName(''), '', /must not be empty/);
  t.notOk(isRegionName('..'));
});

t.test('snapshot ids', async (t) => {
  t.ok(isSnapshotId('01HZX3C6Y1V8K9E2R5T7W0Q4MN'));
  t.notOk(isSnapshotId('01hzx3c6y1v8k9e2r5t7w0q4mn'));
  t.equal(parseSnapshotId('01hzx3c6y1v8k9e2r5t7w0q4mn'), '01HZX3C6Y1V8K9E2R5T7W0Q4MN');
  const e = refusal(() => parseSnapshotId('../01HZX3C6Y1V8K9E2R5T7W0Q'));
  t.equal(e.code, 'INVALID_ARGUMENT');
  t.match(e.message, /^snapshot id must be a ULID/);
});

t.test('sizes', async (t) => {
  const good: [string | number, number][] = [
    ['64K', 65536],
    ['64k', 65536],
    ['0', 0],
    ['1', 1],
    ['65536', 65536],
    ['1M', 2 ** 20],
    ['10G', 10 * 2 ** 30],
    ['2T', 2 * 2 ** 40],
    ['8191T', 8191 * 2 ** 40],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
    [4096, 4096],
    [0, 0],
  ];
  for (const [input, want] of good) t.equal(parseSize(input), want, String(input));

  const bad: [string | number, RegExp, Parameters<typeof parseSize>[1]?][] = [
    ['0', /must not be 0/, { min: 1 }],
    ['-1', /must not be negative/],
    ['-0', /must not be negative/],
    ['1Q', /unknown suffix "Q"/],
    ['1KiB', /unknown suffix "KiB"/],
    ['1KB', /unknown suffix/],
    ['1.5K', /whole number of bytes/],
    ['.5', /whole number of bytes/],
    ['1,5M', /whole number of bytes/],
    ['99999999T', /exceeds the maximum/],
    ['8192T', /exceeds the maximum/],
    ['9007199254740992', /exceeds the maximum/],
    ['99999999999999999999999', /too long|exceeds/],
    ['', /must not be empty/],
    [' 1K', /surrounding spaces/],
    ['1K ', /surrounding spaces/],
    ['1 K', /expected digits/],
    ['01', /leading zeros/],
    ['0x10', /expected digits/],
    ['1e3', /unknown suffix "e"|expected digits/],
    ['K', /expected digits/],
    ['+5', /expected digits/],
    ['1K\n', /surrounding spaces/],
    ['64K', /exceeds the maximum of 32K/, { max: 32 * 1024 }],
    ['1000', /multiple of 4K/, { multipleOf: 4096 }],
    [-1, /must not be negative/],
    [1.5, /whole number of bytes/],
    [NaN, /finite/],
    [Infinity, /finite/],
    [2 ** 53, /exceeds the maximum/],
  ];
  for (const [input, reason, opts] of bad) expectRefused(t, () => parseSize(input, opts), input, reason);
  t.match(refusal(() => parseSize('1Q', { what: 'cache size' })).message, /^invalid cache size "1Q": /);
  t.equal(refusal(() => parseSize({} as unknown as string)).code, 'INVALID_ARGUMENT');
});

t.test('volume and cluster sizes', async (t) => {
  t.equal(parseVolumeSize('64K'), 65536);
  t.equal(parseVolumeSize('2048T'), MAX_VOLUME_SIZE);
  t.equal(parseVolumeSize(512), 512);
  expectRefused(t, () => parseVolumeSize('0'), '0', /must not be 0/);
  expectRefused(t, () => parseVolumeSize('100'), '100', /at least 512/);
  expectRefused(t, () => parseVolumeSize('1000'), '1000', /multiple of 512/);
  expectRefused(t, () => parseVolumeSize('2049T'), '2049T', /exceeds the maximum of 2048T/);
  expectRefused(t, () => parseVolumeSize('99999999T'), '99999999T', /exceeds the maximum/);
  t.equal(parseClusterSize('64K'), 65536);
  t.equal(parseClusterSize('512'), 512);
  t.equal(parseClusterSize('2M'), 2 * 2 ** 20);
  expectRefused(t, () => parseClusterSize('96K'), '96K', /power of two/);
  expectRefused(t, () => parseClusterSize('4M'), '4M', /exceeds the maximum of 2M/);
  expectRefused(t, () => parseClusterSize('256'), '256', /at least 512/);
});

t.test('formatSize and quoteInput', async (t) => {
  t.equal(formatSize(65536), '64K');
  t.equal(formatSize(1000), '1000');
  t.equal(formatSize(3 * 2 ** 40), '3T');
  t.equal(formatSize(0), '0');
  for (const n of [1, 512, 1536, 65536, 2 ** 50, Number.MAX_SAFE_INTEGER]) t.equal(parseSize(formatSize(n)), n);
  t.equal(quoteInput('a"b\n'), '"a\\"b\\n"');
  t.equal(quoteInput('x'.repeat(70)), `"${'x'.repeat(64)}"... (70 characters)`);
  t.equal(quoteInput('😀'.repeat(70)).startsWith(`"${'😀'.repeat(64)}"`), true, 'cut on code points');
  t.equal(quoteInput('\ud800'), '"\\ud800"', 'a lone surrogate is escaped');
  t.equal(quoteInput(undefined), '(a value of type undefined)');
  t.equal(quoteInput([1]), '(an array)');
  t.equal(quoteInput(null), 'null');
  t.equal(quoteInput(12), '12');
});
