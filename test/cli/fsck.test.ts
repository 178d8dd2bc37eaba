/**
 * `island fsck` exit status when it cannot check or is called wrongly: a store that is
 * not there is never reported clean, invalid options exit 2 like every other command,
 * and nothing is created on the way.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { S3Store } from '../../src/store/s3.js';
import { cli, makeHost, useS3 } from '../helpers/daemon.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

t.test('fsck of a store directory that does not exist fails as "cannot check" and creates nothing', async (t) => {
  const h = await makeHost(t, 'fsck-nostore');
  h.storeDir = join(h.dataDir, 'no-such-store');
  const r = await cli(h, 'fsck');
  t.equal(r.code, 8, 'exit 8: could not run');
  t.match(r.stderr, /^island: STORE_NOT_FOUND: store directory .*no-such-store does not exist/, `a clear error: ${r.stderr.trim()}`);
  t.notMatch(r.stdout, /no errors/, 'never reported clean');
  t.notOk(existsSync(h.storeDir), 'the directory was not created');
  const j = await cli(h, 'fsck', '--json');
  t.equal(j.code, 8);
  t.equal((JSON.parse(j.stdout) as { error: { code: string } }).error.code, 'STORE_NOT_FOUND', '--json gives the error as JSON');
  const rep = await cli(h, 'fsck', '--repair');
  t.equal(rep.code, 8, '--repair refuses too');
  t.notOk(existsSync(h.storeDir), '... and creates nothing');
});

t.test('fsck of a store path that is not a directory (/dev/null) fails as "cannot check"', async (t) => {
  const h = await makeHost(t, 'fsck-devnull');
  h.storeDir = '/dev/null';
  const r = await cli(h, 'fsck');
  t.equal(r.code, 8, 'exit 8: could not run');
  t.match(r.stderr, /^island: STORE_CONFIG: store directory \/dev\/null is not a directory/, `a clear error: ${r.stderr.trim()}`);
});

t.test('fsck of an empty store directory is clean', async (t) => {
  const h = await makeHost(t, 'fsck-empty');
  await mkdir(h.storeDir, { recursive: true });
  const r = await cli(h, 'fsck');
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /0 errors, 0 warnings, 0 repaired: no errors/);
});

t.test('fsck exits 2 on invalid arguments, as every command does', async (t) => {
  const h = await makeHost(t, 'fsck-args');
  await mkdir(h.storeDir, { recursive: true });
  const cases: [string[], RegExp][] = [
    [['--deep=abc'], /INVALID_ARGUMENT: --deep takes a percentage/],
    [['--deep=0'], /INVALID_ARGUMENT: --deep takes a percentage/],
    [['--seed', 'x'], /INVALID_ARGUMENT: --seed must be an integer/],
    [['--prune-orphans'], /INVALID_ARGUMENT: --prune-orphans needs --repair/],
    [['--volume', '../x'], /INVALID_ARGUMENT: invalid volume name/],
    [['--snapshot', 'nope'], /INVALID_ARGUMENT: snapshot id must be a ULID/],
    [['--bogus'], /INVALID_ARGUMENT/],
  ];
  for (const [args, want] of cases) {
    const r = await cli(h, 'fsck', ...args);
    t.equal(r.code, 2, `island fsck ${args.join(' ')} exits 2`);
    t.match(r.stderr, want, `... with a clear error: ${r.stderr.trim()}`);
  }
});

t.test('fsck with an invalid configuration exits 8 (cannot check), never 1 (all corrected)', async (t) => {
  const h = await makeHost(t, 'fsck-config');
  h.env = { ISLAND_LOG_LEVEL: 'loud' };
  const r = await cli(h, 'fsck');
  t.equal(r.code, 8);
  t.match(r.stderr, /^island: INVALID_CONFIG: logLevel/);
});

t.test('fsck of an S3 bucket that does not exist fails as "cannot check" and creates no bucket', async (t) => {
  const got = await useSwift(t);
  if ('skip' in got) return t.skip(`needs Swift: ${got.skip}`);
  const h = await makeHost(t, 'fsck-nobucket');
  const bucket = uniqueBucket('fsck-nobucket');
  await useS3(h, got.swift, bucket);
  const r = await cli(h, 'fsck');
  t.equal(r.code, 8, `exit 8: could not run (${r.stderr.trim()})`);
  t.match(r.stderr, /^island: STORE_NOT_FOUND: .*the bucket does not exist/m, 'a clear error');
  const probe = new S3Store({ ...got.swift, bucket, createBucket: false });
  t.teardown(() => probe.close());
  await t.rejects(probe.list(''), { code: 'STORE_NOT_FOUND' }, 'the bucket was not created');
});
