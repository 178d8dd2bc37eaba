/**
 * What protects a pack in transit to Swift: large bodies are signed as UNSIGNED-PAYLOAD
 * (no SHA-256 pass over them), so the Content-MD5 header must be sent, signed, and
 * checked by the store. A proxy between the client and a real Swift records the headers
 * and flips one byte of a body on request: the PUT is refused (STORE_INTEGRITY) and
 * nothing is stored. An MD5 computed off the main thread (a snapshot's packs) is the one
 * sent, and a wrong one is refused.
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import t from 'tap';
import { codeOf } from '../../src/errors.js';
import { EncodePool } from '../../src/snapshot/pool.js';
import { S3Store } from '../../src/store/s3.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`skipped: ${got.skip}`);
} else {
  const { swift } = got;
  const up = new URL(swift.endpoint);
  const seen: Record<string, string | string[] | undefined>[] = [];
  let corrupt = false;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (req.method === 'PUT') seen.push({ ...req.headers });
      if (corrupt && req.method === 'PUT' && body.length > 0) body[body.length >> 1] ^= 1;
      const out = request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      out.on('error', () => res.destroy());
      out.end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const store = new S3Store({ ...swift, endpoint, bucket: uniqueBucket('transit') });
  t.teardown(() => store.close());

  t.test('a large body is signed by its Content-MD5, a small one by its SHA-256', async (t) => {
    const big = randomBytes(1 << 20);
    await store.put('big', big);
    const h = seen.at(-1) ?? {};
    t.equal(h['x-amz-content-sha256'], 'UNSIGNED-PAYLOAD');
    t.ok(h['content-md5'], 'Content-MD5 is sent');
    t.match(String(h.authorization), /SignedHeaders=[^,]*content-md5/, 'and signed');
    t.same(await store.get('big'), big, 'Swift stored the exact bytes');
    await store.put('small', Buffer.from('x'));
    t.match(String(seen.at(-1)?.['x-amz-content-sha256']), /^[0-9a-f]{64}$/, 'a small body keeps its payload hash');
  });

  t.test('a body changed in transit is refused and not stored', async (t) => {
    corrupt = true;
    const err = await store.put('flipped', randomBytes(1 << 20)).catch((e: unknown) => e);
    corrupt = false;
    t.equal(codeOf(err), 'STORE_INTEGRITY');
    t.equal(codeOf(await store.get('flipped').catch((e: unknown) => e)), 'STORE_NOT_FOUND', 'nothing was stored');
  });

  t.test('an MD5 taken on a worker thread is sent as the Content-MD5; a wrong one is refused', async (t) => {
    const pool = new EncodePool(1);
    t.teardown(() => pool.close());
    const body = randomBytes(2 << 20);
    const md5 = await pool.packMd5(body);
    t.same(md5, createHash('md5').update(body).digest(), 'the worker hashes the bytes it was given');
    await store.put('hashed', body, { md5 });
    t.equal(seen.at(-1)?.['content-md5'], md5.toString('base64'));
    t.same(await store.get('hashed'), body);
    const wrong = Buffer.from(md5);
    wrong[0] ^= 1;
    t.equal(codeOf(await store.put('wrong', body, { md5: wrong }).catch((e: unknown) => e)), 'STORE_INTEGRITY');
    t.equal(codeOf(await store.get('wrong').catch((e: unknown) => e)), 'STORE_NOT_FOUND', 'nothing was stored');
  });
}
