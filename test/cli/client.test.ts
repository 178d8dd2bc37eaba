/**
 * The CLI's client of the control API (cli/client.ts), which speaks HTTP/1.1 over node:net
 * itself: against a node:http server on a unix socket (the server the daemon runs), answers
 * with a Content-Length, chunked, in many pieces, large, cut short, not JSON, and errors;
 * and the answer parser on golden bytes.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { call, parseResponse } from '../../src/cli/client.js';

type Handler = (req: IncomingMessage, body: string, res: ServerResponse) => void;

async function server(t: { teardown(fn: () => unknown): void }, handler: Handler): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'island-client-'));
  const socket = join(dir, 'api.sock');
  const srv = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handler(req, Buffer.concat(chunks).toString('utf8'), res));
  });
  await new Promise<void>((r) => srv.listen(socket, r));
  t.teardown(async () => {
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
    await rm(dir, { recursive: true, force: true });
  });
  return socket;
}

t.test('a request and its JSON answer, as the daemon sends it', async (t) => {
  const seen: { method?: string; url?: string; type?: string; body?: string }[] = [];
  const socket = await server(t, (req, body, res) => {
    seen.push({ method: req.method, url: req.url, type: req.headers['content-type'], body });
    const text = JSON.stringify({ ok: true, echo: body === '' ? null : JSON.parse(body) }) + '\n';
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
  t.same(await call(socket, 'GET', '/v1/status'), { ok: true, echo: null });
  t.same(await call(socket, 'POST', '/v1/volumes/a%20b/attach', { force: true, name: 'ü' }), { ok: true, echo: { force: true, name: 'ü' } });
  t.same(seen, [
    { method: 'GET', url: '/v1/status', type: undefined, body: '' },
    { method: 'POST', url: '/v1/volumes/a%20b/attach', type: 'application/json', body: '{"force":true,"name":"ü"}' },
  ]);
});

t.test('answers in many pieces, chunked, and large', async (t) => {
  const big = { snapshots: Array.from({ length: 20_000 }, (_, i) => ({ id: `S${i}`, note: 'x'.repeat(40) })) };
  const socket = await server(t, (req, _body, res) => {
    const text = JSON.stringify(req.url === '/big' ? big : { url: req.url });
    if (req.url === '/chunked') {
      res.writeHead(200, { 'content-type': 'application/json' }); // no length: Node sends it chunked
      for (let i = 0; i < text.length; i += 3) res.write(text.slice(i, i + 3));
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    if (req.url === '/pieces') {
      let i = 0;
      const next = (): void => {
        if (i >= text.length) return void res.end();
        res.write(text.slice(i, (i += 5)), next);
      };
      next();
      return;
    }
    res.end(text);
  });
  t.same(await call(socket, 'GET', '/chunked'), { url: '/chunked' }, 'a chunked answer');
  t.same(await call(socket, 'GET', '/pieces'), { url: '/pieces' }, 'an answer written 5 bytes at a time');
  t.same(await call(socket, 'GET', '/big'), big, `an answer of ${JSON.stringify(big).length} bytes`);
});

t.test('errors keep their code; what is not an answer is an error, not a hang', async (t) => {
  const socket = await server(t, (req, _body, res) => {
    if (req.url === '/error') {
      const text = JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no volume named x', details: { volume: 'x' } } });
      res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      return void res.end(text);
    }
    if (req.url === '/unknown-code') {
      const text = JSON.stringify({ error: { code: 'NO_SUCH_CODE', message: 'odd' } });
      res.writeHead(500, { 'content-length': Buffer.byteLength(text) });
      return void res.end(text);
    }
    if (req.url === '/html') {
      res.writeHead(502, { 'content-length': 6 });
      return void res.end('<html>');
    }
    if (req.url === '/short') {
      // Announces 100 bytes, sends 10, and closes.
      res.writeHead(200, { 'content-length': 100 });
      res.write('{"a":12345');
      res.socket?.destroySoon();
      return;
    }
    res.socket?.destroy(); // /reset: closes without an answer
  });
  await t.rejects(call(socket, 'GET', '/error'), { code: 'NOT_FOUND', message: 'no volume named x', details: { volume: 'x' } });
  await t.rejects(call(socket, 'GET', '/unknown-code'), { code: 'INTERNAL', message: 'odd' });
  await t.rejects(call(socket, 'GET', '/html'), { code: 'INTERNAL', message: 'the daemon answered HTTP 502 with a body that is not JSON' });
  // A daemon that goes away mid-answer does not answer (the code a caller retries on).
  const gone = (why: RegExp): object => ({ code: 'DAEMON_UNREACHABLE', message: /cannot reach the island daemon at .*api\.sock \(ECONNRESET\); is island serve running\?/, cause: { message: why } });
  await t.rejects(call(socket, 'GET', '/short'), gone(/closed the connection before the end of its answer \(10 of 100 bytes\)/));
  await t.rejects(call(socket, 'GET', '/reset'), gone(/closed the connection before the end of its answer's headers/));
  await t.rejects(call(join(tmpdir(), 'island-client-no-such.sock'), 'GET', '/v1/status'), { code: 'DAEMON_UNREACHABLE', message: /cannot reach the island daemon at .*island-client-no-such\.sock \(ENOENT\); is island serve running\?/ });
  await t.rejects(call(socket, 'GET', '/v1/a b'), { code: 'INTERNAL' }, 'a path with a space is not sent');
});

t.test('the answer parser, on golden bytes', async (t) => {
  const b = (s: string): Buffer => Buffer.from(s, 'latin1');
  t.same(parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}'), false), { status: 200, body: b('{}') });
  t.same(parseResponse(b('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing'), false), { status: 200, body: b('{}') }, 'bytes past the length are not the body');
  t.equal(parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}'), false), undefined, 'incomplete: more to come');
  t.equal(parseResponse(b('HTTP/1.1 200 OK\r\nContent-Le'), false), undefined, 'headers incomplete: more to come');
  t.same(parseResponse(b('HTTP/1.1 404 Not Found\r\n\r\n{"x":1}'), true), { status: 404, body: b('{"x":1}') }, 'no length: the body runs to the close');
  t.equal(parseResponse(b('HTTP/1.1 404 Not Found\r\n\r\n{"x":1}'), false), undefined, '... not before it');
  t.same(parseResponse(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\na;ext=1\r\n":"bcdefg"\r\n0\r\n\r\n'), false), { status: 200, body: b('{"a":"bcdefg"') });
  t.equal(parseResponse(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n'), false), undefined, 'chunked, incomplete');
  t.throws(() => parseResponse(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n'), true), { code: 'DAEMON_UNREACHABLE', message: /last chunk/ });
  t.throws(() => parseResponse(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'), false), { code: 'INTERNAL', message: /bad chunk size/ });
  t.throws(() => parseResponse(b('SSH-2.0-OpenSSH\r\n\r\n'), false), { code: 'INTERNAL', message: /not HTTP\/1\.1/ });
  t.throws(() => parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n'), false), { code: 'INTERNAL', message: /bad Content-Length/ });
  t.throws(() => parseResponse(b(''), true), { code: 'DAEMON_UNREACHABLE', message: /headers/ });
});
