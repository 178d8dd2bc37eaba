/**
 * Line framing and message classification: pure functions, tested with chunk boundaries at
 * every position, the bound, the guest agent's 0xFF sentinel, and seeded random input.
 */
import t from 'tap';
import { LineReader, type LineItem } from '../../src/qmp/lines.js';
import { classify, parseLine, parseStatus, shutdownInfo } from '../../src/qmp/protocol.js';
import { Rng } from '../../src/util/random.js';

function feed(reader: LineReader, chunks: Buffer[]): LineItem[] {
  return chunks.flatMap((c) => reader.push(c));
}

t.test('lines split at every chunk boundary give the same result', async (t) => {
  const text = Buffer.from('{"a": 1}\r\n\r\n  {"b": "é"}\n{"c": 3}\r\npartial');
  const whole = feed(new LineReader(), [text]);
  t.same(whole, [
    { kind: 'line', text: '{"a": 1}' },
    { kind: 'line', text: '{"b": "é"}' },
    { kind: 'line', text: '{"c": 3}' },
  ], 'CRLF stripped, blank lines skipped, the partial tail held');
  for (let cut = 0; cut <= text.length; cut++) {
    const r = new LineReader();
    t.same(feed(r, [text.subarray(0, cut), text.subarray(cut)]), whole, `cut at ${cut}`);
    t.equal(r.pendingBytes, 'partial'.length);
  }
  const bytewise = new LineReader();
  t.same(feed(bytewise, [...text].map((b) => Buffer.of(b))), whole, 'one byte at a time (a multi-byte character split)');
});

t.test('a line past the bound is reported once and dropped up to its newline', async (t) => {
  const r = new LineReader({ maxLineBytes: 10 });
  const items = feed(r, [Buffer.from('0123456789'), Buffer.from('\n'), Buffer.from('01234'), Buffer.from('567890'), Buffer.from('abc'), Buffer.from('def\nok\n')]);
  t.same(items, [
    { kind: 'line', text: '0123456789' },
    { kind: 'overlong', bytes: 11 },
    { kind: 'line', text: 'ok' },
  ]);
  t.throws(() => new LineReader({ maxLineBytes: 0 }), { code: 'INVALID_ARGUMENT' });
});

t.test('the sentinel resets a partial line only when enabled', async (t) => {
  const stream = Buffer.concat([Buffer.from('{"stale": '), Buffer.of(0xff), Buffer.from('{"return": 7}\n')]);
  t.same(feed(new LineReader({ sentinel: true }), [stream]), [
    { kind: 'sentinel', droppedBytes: 10 },
    { kind: 'line', text: '{"return": 7}' },
  ]);
  const plain = feed(new LineReader(), [stream]);
  t.equal(plain.length, 1);
  t.equal(plain[0]?.kind, 'line', 'without the option 0xFF is line content');
  const r = new LineReader({ sentinel: true, maxLineBytes: 4 });
  t.same(feed(r, [Buffer.from('toolong'), Buffer.of(0xff), Buffer.from('ok\n')]), [
    { kind: 'overlong', bytes: 7 },
    { kind: 'sentinel', droppedBytes: 7 },
    { kind: 'line', text: 'ok' },
  ], 'a sentinel also ends an overlong run');
});

t.test('classify accepts the documented shapes and nothing else', async (t) => {
  t.match(parseLine('{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "p"}, "capabilities": ["oob"]}}'), {
    kind: 'greeting',
    greeting: { version: { major: 7, minor: 2, micro: 22, package: 'p' }, capabilities: ['oob'] },
  });
  t.same(parseLine('{"return": {}, "id": 3}'), { kind: 'return', id: 3, value: {} });
  t.same(parseLine('{"return": null, "id": "s"}'), { kind: 'return', id: 's', value: null });
  t.same(parseLine('{"id": 3, "error": {"class": "CommandNotFound", "desc": "d"}}'), { kind: 'error', id: 3, errorClass: 'CommandNotFound', desc: 'd' });
  t.same(parseLine('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}'), {
    kind: 'event',
    event: { event: 'STOP', data: {}, timestamp: { seconds: 1, microseconds: 2 } },
  });
  for (const bad of ['', 'x', '1', 'null', '[]', '{}', '{"id": 1}', '{"return": 1, "id": [1]}', '{"error": {"class": 1, "desc": "d"}, "id": 1}',
    '{"event": "", "timestamp": {"seconds": 1, "microseconds": 2}}', '{"event": "E", "data": null, "timestamp": {"seconds": 1, "microseconds": 2}}',
    '{"QMP": {"version": {"qemu": {"major": -1, "minor": 0, "micro": 0}}, "capabilities": []}}', '{"QMP": null}']) {
    t.equal(parseLine(bad).kind, 'invalid', `invalid: ${bad || '(empty)'}`);
  }
  t.same(classify({ error: 'x', id: 9 }), { kind: 'invalid', id: 9, reason: 'the error member lacks a string class and desc' }, 'a malformed reply keeps its id');
  t.same(parseStatus({ status: 'paused', running: false, singlestep: false }), { running: false, status: 'paused' });
  t.equal(parseStatus({ status: 'paused' }), undefined);
  const ts = { seconds: 1, microseconds: 0 };
  t.same(shutdownInfo({ event: 'SHUTDOWN', data: { guest: true, reason: 'guest-shutdown' }, timestamp: ts }), { guest: true, reason: 'guest-shutdown' });
  t.same(shutdownInfo({ event: 'SHUTDOWN', data: { guest: 'yes' }, timestamp: ts }), { guest: false, reason: 'unknown' }, 'odd SHUTDOWN data is defaulted');
  t.equal(shutdownInfo({ event: 'STOP', data: {}, timestamp: ts }), undefined);
});

t.test('random bytes never throw from the reader or the classifier (seeded)', async (t) => {
  for (const seed of [11, 12, 13, 14, 15]) {
    const rng = new Rng(seed);
    const r = new LineReader({ maxLineBytes: 256, sentinel: rng.chance(0.5) });
    let lines = 0;
    let longest = 0;
    for (let i = 0; i < 500; i++) {
      const chunk = rng.chance(0.3) ? Buffer.from(rng.pick(['{"return": {}, "id": 1}\n', '\r\n', '{"event": "X"', '[[[[', '\n'])) : rng.bytes(rng.int(300));
      for (const item of r.push(chunk)) {
        if (item.kind !== 'line') continue;
        lines++;
        longest = Math.max(longest, item.text.length);
        parseLine(item.text);
      }
    }
    t.ok(lines > 0, `seed ${seed}: ${lines} lines classified`);
    t.ok(longest <= 256, `seed ${seed}: no line past the bound (${longest} chars)`);
  }
});
