import t from 'tap';
import { IslandError } from '../../src/errors.js';
import { composeStore } from '../../src/store/open.js';
import { S3Store, mapS3Error } from '../../src/store/s3.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';
import { conformance } from '../helpers/store-conformance.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`s3 conformance against Swift skipped: ${got.skip}`);
} else {
  const { swift } = got;
  conformance(t, async () => new S3Store({ ...swift, bucket: uniqueBucket('conf') }));

  t.test('a store under a key prefix sees only its own keys', async (t) => {
    const bucket = uniqueBucket('prefix');
    const a = new S3Store({ ...swift, bucket, prefix: 'tenant-a/' });
    const b = new S3Store({ ...swift, bucket, prefix: 'tenant-b/' });
    await a.put('k', Buffer.from('a'));
    await b.put('k', Buffer.from('b'));
    t.equal((await a.get('k')).toString(), 'a');
    t.same((await b.list('')).items.map((o) => o.key), ['k'], 'keys come back without the prefix');
    await a.close();
    await b.close();
  });

  t.test('creating an existing bucket is fine (Swift answers 409)', async (t) => {
    const bucket = uniqueBucket('twice');
    const a = new S3Store({ ...swift, bucket });
    await a.put('x', Buffer.from('1'));
    const b = new S3Store({ ...swift, bucket });
    await b.put('y', Buffer.from('2'));
    t.same((await b.list('')).items.map((o) => o.key), ['x', 'y']);
    await a.close();
    await b.close();
  });

  t.test('wrong credentials are a permanent access error', async (t) => {
    const s = composeStore(new S3Store({ ...swift, bucket: uniqueBucket('auth'), secretAccessKey: 'wrong' }), { retry: { baseDelayMs: 1 } });
    const err = await s.store.put('x', Buffer.from('1')).catch((e: unknown) => e as IslandError);
    t.equal(err.code, 'STORE_ACCESS_DENIED');
    t.equal(s.stats.ops.put.requests, 1, 'a permanent error is not retried');
  });

  t.test('a missing bucket is reported as such when not auto-created', async (t) => {
    const s = new S3Store({ ...swift, bucket: uniqueBucket('absent'), createBucket: false });
    const err = await s.get('x').catch((e: unknown) => e as IslandError);
    t.equal(err.code, 'STORE_NOT_FOUND');
    t.match(err.message, /bucket does not exist/);
    await s.close();
  });
}

t.test('an unreachable endpoint fails with a transient error within its deadline', async (t) => {
  const s = composeStore(
    new S3Store({ endpoint: 'http://127.0.0.1:9', region: 'us-east-1', bucket: 'nowhere', accessKeyId: 'a', secretAccessKey: 'b', connectTimeoutMs: 200 }),
    { retry: { deadlineMs: 1500, baseDelayMs: 20, maxDelayMs: 100 } },
  );
  const err = await s.store.get('x').catch((e: unknown) => e as IslandError);
  t.equal(err.code, 'STORE_UNAVAILABLE', 'connection refused is transient');
  t.ok((err.details.attempts as number) > 1, `retried ${String(err.details.attempts)} times before the deadline`);
  await s.store.close();
});

t.test('S3 errors map to stable codes', async (t) => {
  const m = (e: object): string => mapS3Error(e, 'get', 'k').code;
  t.equal(m({ name: 'NoSuchKey', $metadata: { httpStatusCode: 404 } }), 'STORE_NOT_FOUND');
  t.equal(m({ name: 'NotFound', $metadata: { httpStatusCode: 404 } }), 'STORE_NOT_FOUND');
  t.equal(m({ name: 'InvalidRange', $metadata: { httpStatusCode: 416 } }), 'STORE_RANGE');
  t.equal(m({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } }), 'STORE_ACCESS_DENIED');
  t.equal(m({ name: 'InvalidRequest', $metadata: { httpStatusCode: 400 } }), 'STORE_BAD_REQUEST');
  t.equal(m({ name: 'BadDigest', $metadata: { httpStatusCode: 400 } }), 'STORE_INTEGRITY');
  t.equal(m({ name: 'SlowDown', $metadata: { httpStatusCode: 503 } }), 'STORE_UNAVAILABLE');
  t.equal(m({ name: 'InternalError', $metadata: { httpStatusCode: 500 } }), 'STORE_UNAVAILABLE');
  t.equal(m({ name: 'TimeoutError' }), 'STORE_TIMEOUT');
  t.equal(m({ name: 'Error', code: 'ECONNRESET' }), 'STORE_UNAVAILABLE');
  t.equal(m({}), 'STORE_UNAVAILABLE', 'no answer at all is transient');
});
