/**
 * The volume write path of native/volume/ under 16 threads at once, built with ThreadSanitizer:
 * test/native/volume-stress.c hammers one volume (own bands checked for the last write, a
 * shared band of contended writes and discards, reads, fsyncs; a control thread sealing,
 * reading and uploading sealed clusters, completing or abandoning, starting intent epochs; for
 * a restored volume a fetch thread installing missing clusters). Any data race ThreadSanitizer
 * sees, any failed check, fails the test.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const CORE = ['bitmap', 'oplog', 'pagefile', 'present', 'seal', 'track', 'volume'].map((f) => `native/volume/${f}.c`);


t.test('16 threads on one volume under ThreadSanitizer', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-volume-stress-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const bin = join(dir, 'volume-stress');
  try {
    await run('cc', ['-std=gnu11', '-O1', '-g', '-fsanitize=thread', '-pthread', '-Wall', '-Wextra', '-Wno-unused-parameter', '-Werror', '-o', bin, 'test/native/volume-stress.c', ...CORE], { timeout: 120_000 });
  } catch (err) {
    const msg = (err as { stderr?: string }).stderr ?? String(err);
    if (/sanitize|tsan/i.test(msg) && !/error: .*\.c:/.test(msg)) {
      t.skip(`this compiler cannot build with ThreadSanitizer: ${msg.slice(0, 200)}`);
      return;
    }
    throw err;
  }
  for (const restored of [0, 1]) {
    const vol = join(dir, `v${restored}`);
    await run('mkdir', [vol]);
    let out: { stdout: string; stderr: string };
    try {
      out = await run(bin, [vol, '16', '3', String(restored)], { timeout: 300_000, env: { ...process.env, TSAN_OPTIONS: 'halt_on_error=1 exitcode=66' } });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; code?: number };
      t.fail(`volume-stress (restored=${restored}) exited ${e.code}: ${(e.stderr ?? '').slice(0, 4000)}`);
      continue;
    }
    t.notMatch(out.stderr, /ThreadSanitizer/, `no data race reported (restored=${restored})`);
    t.match(out.stdout, /threads 16: [1-9]\d* writes/, `the threads wrote: ${out.stdout.trim()}`);
    if (restored === 1) t.match(out.stdout, / [1-9]\d* fetched/, 'misses were parked and installed');
  }
});

