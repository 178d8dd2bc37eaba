/**
 * CLI progress: a bar redrawn in place on a terminal, throttled plain lines otherwise,
 * and the last state always shown.
 */
import { Writable } from 'node:stream';
import t from 'tap';
import { Progress, progressLine, withProgress } from '../../src/cli/progress.js';

function sink(): { stream: NodeJS.WriteStream; text: () => string } {
  let out = '';
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  return { stream: w as unknown as NodeJS.WriteStream, text: () => out };
}

t.test('a line shows the bar, percent, amounts, rate and ETA', async (t) => {
  const line = progressLine('fill vm', { done: 512 * 1024 * 1024, total: 1024 * 1024 * 1024, bytes: true }, 16_000, true);
  t.equal(line, 'fill vm  [##########----------]   50%  512.0 MiB / 1.0 GiB  32.0 MiB/s  ETA 0:16');
  t.equal(progressLine('gc', { done: 3, total: 4, note: 'packs' }, 2000, false), 'gc   75%  3 / 4  1.5/s  ETA 0:01  (packs)', 'plain: no bar');
  t.match(progressLine('x', { done: 0, total: 0 }, 0, false), /^x\s+0%/, 'an empty total is 0%, not NaN');
});

t.test('on a terminal the bar is redrawn in place; otherwise lines are throttled', async (t) => {
  let now = 0;
  const tty = sink();
  const bar = new Progress('up', { stream: tty.stream, tty: true, now: () => now });
  for (let i = 1; i <= 10; i++) {
    now += 50;
    bar.update({ done: i, total: 10 });
  }
  bar.finish();
  t.match(tty.text(), /^\r\x1b\[K/, 'carriage return and erase-line');
  t.ok(tty.text().endsWith('\n'), 'the line is ended when done');
  t.match(tty.text(), /100%\s+10 \/ 10/, 'the final state is drawn');

  now = 0;
  const plain = sink();
  const p = new Progress('up', { stream: plain.stream, tty: false, now: () => now });
  for (let i = 1; i <= 100; i++) {
    now += 100;
    p.update({ done: i, total: 100 });
  }
  p.finish();
  const lines = plain.text().trim().split('\n');
  t.ok(lines.length >= 2 && lines.length <= 4, `10 s of updates make a few plain lines (${lines.length})`);
  t.notMatch(plain.text(), /\r|\x1b/, 'no control characters when not a terminal');
  t.match(lines.at(-1), /100%/, 'and the last one is the final state');
});

t.test('withProgress shows the final state and passes the result or the error through', async (t) => {
  const out = sink();
  let done = 0;
  const r = await withProgress('job', new Promise<string>((res) => setTimeout(() => ((done = 5), res('ok')), 50)), async () => ({ done, total: 5 }), { stream: out.stream, tty: false, everyMs: 10 });
  t.equal(r, 'ok');
  t.match(out.text(), /100%\s+5 \/ 5/);
  await t.rejects(withProgress('job', Promise.reject(new Error('boom')), async () => null, { stream: sink().stream, tty: false, everyMs: 10 }), /boom/);
});
