/**
 * Create-if-absent on S3 endpoints that differ in how they treat If-None-Match: *,
 * against a small S3 stand-in (a real Swift, which answers 501, is covered by the
 * conformance suite in s3.test.ts). The stand-in honours the header (AWS, MinIO, Ceph),
 * refuses it with 501 (Swift 2.30's s3api), or ignores it (an endpoint that would
 * silently overwrite): the probe must use the primitive only in the first case.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import type { IslandError } from '../../src/errors.js';
import { composeStore } from '../../src/store/open.js';
import { S3Store } from '../../src/store/s3.js';

type Mode = 'honour' | 'not-implemented' | 'ignore';

interface Fake {
  endpoint: string;
  objects: Map<string, Buffer>;
  conditionalPuts: number;
  /** Answer the next n conditional PUTs with this status first. */
  failNext: { status: number; code: string; n: number };
  close(): Promise<void>;
}

function xmlError(res: ServerResponse, status: number, code: string): void {
  res.writeHead(status, { 'content-type': 'application/xml' });
  res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>`);
}

async function fakeS3(mode: Mode): Promise<Fake> {
  const objects = new Map<string, Buffer>();
  const fake = { objects, conditionalPuts: 0, failNext: { status: 0, code: '', n: 0 } } as Fake;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
      const isBucket = path.split('/').filter(Boolean).length === 1;
      if (req.method === 'PUT' && isBucket) return void res.writeHead(200).end();
      if (req.method === 'PUT') {
        const conditional = req.headers['if-none-match'] === '*';
        if (conditional) {
          fake.conditionalPuts++;
          if (fake.failNext.n > 0) {
            fake.failNext.n--;
            return xmlError(res, fake.failNext.status, fake.failNext.code);
          }
          if (mode === 'not-implemented') return xmlError(res, 501, 'NotImplemented');
          if (mode === 'honour' && objects.has(path)) return xmlError(res, 412, 'PreconditionFailed');
        }
        objects.set(path, Buffer.concat(chunks));
        return void res.writeHead(200, { etag: '"x"' }).end();
      }
      if (req.method === 'GET' || req.method === 'HEAD') {
        const body = objects.get(path);
        if (!body) return req.method === 'HEAD' ? void res.writeHead(404).end() : xmlError(res, 404, 'NoSuchKey');
        res.writeHead(200, { 'content-length': body.length, 'last-modified': new Date().toUTCString() });
        return void res.end(req.method === 'GET' ? body : undefined);
      }
      if (req.method === 'DELETE') {
        objects.delete(path);
        return void res.writeHead(204).end();
      }
      xmlError(res, 400, 'InvalidRequest');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  fake.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  fake.close = () => new Promise((r) => server.close(() => r()));
  return fake;
}

function storeOn(fake: Fake): S3Store {
  return new S3Store({ endpoint: fake.endpoint, region: 'us-east-1', bucket: 'bucket', accessKeyId: 'a', secretAccessKey: 'b' });
}

t.test('an endpoint that honours If-None-Match: the probe says yes once, and putIfAbsent answers 412 as "existed"', async (t) => {
  const fake = await fakeS3('honour');
  t.teardown(() => fake.close());
  const s = storeOn(fake);
  t.equal(await s.conditionalPut(), true, 'honoured');
  t.equal(fake.conditionalPuts, 2, 'probed by two conditional PUTs of one key');
  t.same([...fake.objects.keys()], [], 'the probe key was removed');
  t.equal(await s.conditionalPut(), true);
  t.equal(fake.conditionalPuts, 2, 'the answer is cached: no second probe');
  t.equal(await s.putIfAbsent('gens/v/1', Buffer.from('a')), true, 'created');
  t.equal(await s.putIfAbsent('gens/v/1', Buffer.from('b')), false, '412: existed');
  t.equal(fake.objects.get('/bucket/gens/v/1')?.toString(), 'a', 'not overwritten');
  await s.close();
});

t.test("Swift 2.30's answer, 501 NotImplemented: no create-if-absent, and putIfAbsent writes nothing", async (t) => {
  const fake = await fakeS3('not-implemented');
  t.teardown(() => fake.close());
  const s = storeOn(fake);
  t.equal(await s.conditionalPut(), false, 'not honoured');
  const err = await s.putIfAbsent('gens/v/1', Buffer.from('a')).catch((e: unknown) => e as IslandError);
  t.equal((err as IslandError).code, 'STORE_BAD_REQUEST');
  t.same([...fake.objects.keys()], [], 'nothing written');
  await s.close();
});

t.test('an endpoint that ignores the header (it would overwrite) is found out by the probe', async (t) => {
  const fake = await fakeS3('ignore');
  t.teardown(() => fake.close());
  const s = storeOn(fake);
  t.equal(await s.conditionalPut(), false, 'the second conditional PUT succeeded: not honoured');
  t.same([...fake.objects.keys()], [], 'the probe key was removed');
  await s.close();
});

t.test('409 ConditionalRequestConflict is transient: the retry wrapper tries again', async (t) => {
  const fake = await fakeS3('honour');
  t.teardown(() => fake.close());
  const { store } = composeStore(storeOn(fake), { retry: { baseDelayMs: 1, maxDelayMs: 2 } });
  t.equal(await store.conditionalPut(), true);
  fake.failNext = { status: 409, code: 'ConditionalRequestConflict', n: 1 };
  t.equal(await store.putIfAbsent('gens/v/2', Buffer.from('mine')), true, 'created on the second attempt');
  await store.close();
});

t.test('a probe that fails transiently is not cached', async (t) => {
  const fake = await fakeS3('honour');
  t.teardown(() => fake.close());
  const s = storeOn(fake);
  fake.failNext = { status: 503, code: 'SlowDown', n: 1 };
  const err = await s.conditionalPut().catch((e: unknown) => e as IslandError);
  t.equal((err as IslandError).code, 'STORE_UNAVAILABLE', 'the failure is reported');
  t.equal(await s.conditionalPut(), true, 'and the next call probes again');
  await s.close();
});
