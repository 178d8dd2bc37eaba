/**
 * The CLI's client of the control API: HTTP/1.1 with JSON bodies over the daemon's unix
 * socket (ISLAND_SOCKET, or <ISLAND_DATA_DIR>/island.sock).
 *
 * One request per connection (Connection: close), written and read over node:net. The
 * daemon answers every request with a JSON body and its Content-Length (daemon/api.ts).
 * node:http would cost more to load than the rest of `island status` together: on Node 20
 * its client, server, agent and parser modules (~13 ms of a ~90 ms command), and from
 * Node 22 an ESM import of it also loads undici (its WebSocket exports).
 */
import { codeOf, IslandError, isErrorCode } from '../errors.js';

/** Largest answer read: a snapshot list of 100,000 snapshots is ~60 MB of JSON. */
export const MAX_RESPONSE_BYTES = 256 * 1024 * 1024;
const HEAD_END = Buffer.from('\r\n\r\n');
/** The daemon's headers are a few short lines. */
const MAX_HEAD_BYTES = 64 * 1024;
/** Bytes of a chunk-size line (hex digits and extensions) read at most. */
const MAX_CHUNK_LINE = 1024;

export interface Response {
  status: number;
  body: Buffer;
}

/** Where the head of an answer ends and how long its body is (undefined: until the connection closes). */
interface Head {
  status: number;
  bodyAt: number;
  length: number | undefined;
  chunked: boolean;
}

/** A connection closed before the answer was whole: the daemon went away (as a reset, below). */
function cutShort(what: string): IslandError {
  return new IslandError('DAEMON_UNREACHABLE', `the daemon closed the connection before ${what}`);
}

function unreachable(socketPath: string, why: string, cause: unknown): IslandError {
  return new IslandError('DAEMON_UNREACHABLE', `cannot reach the island daemon at ${socketPath} (${why}); is island serve running?`, { cause });
}

/** The head of an answer, once `buf` holds all of it (undefined before). */
function parseHead(buf: Buffer): Head | undefined {
  const end = buf.indexOf(HEAD_END);
  if (end < 0) return undefined;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0] ?? '');
  if (!m) throw new IslandError('INTERNAL', `the daemon answered something that is not HTTP/1.1: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
  let length: number | undefined;
  let chunked = false;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'content-length') {
      if (!/^\d{1,15}$/.test(value)) throw new IslandError('INTERNAL', `the daemon answered with a bad Content-Length: ${JSON.stringify(value.slice(0, 40))}`);
      length = Number(value);
    }
    if (name === 'transfer-encoding') chunked = value.toLowerCase().split(',').map((v) => v.trim()).includes('chunked');
  }
  return { status: Number(m[1]), bodyAt: end + HEAD_END.length, length: chunked ? undefined : length, chunked };
}

/** The body of a chunked answer (RFC 9112 7.1), or undefined until `data` holds its last chunk. */
function dechunk(data: Buffer): Buffer | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = data.indexOf('\r\n', at);
    if (eol < 0) {
      if (data.length - at > MAX_CHUNK_LINE) throw new IslandError('INTERNAL', 'the daemon answered with a chunk-size line that does not end');
      return undefined;
    }
    const size = /^([0-9a-fA-F]{1,8})(?:;|$)/.exec(data.subarray(at, eol).toString('latin1'));
    if (!size) throw new IslandError('INTERNAL', 'the daemon answered with a bad chunk size');
    const n = parseInt(size[1] as string, 16);
    if (n === 0) return Buffer.concat(parts); // trailers, if any, are not read
    const start = eol + 2;
    if (data.length < start + n + 2) return undefined;
    parts.push(data.subarray(start, start + n));
    at = start + n + 2;
  }
}

/**
 * An answer from what was read so far: undefined while more is to come, unless `closed`
 * (the daemon closed the connection), when an incomplete answer is DAEMON_UNREACHABLE.
 */
export function parseResponse(buf: Buffer, closed: boolean): Response | undefined {
  const head = parseHead(buf);
  if (!head) {
    if (closed) throw cutShort('the end of its answer\'s headers');
    return undefined;
  }
  const rest = buf.subarray(head.bodyAt);
  if (head.chunked) {
    const body = dechunk(rest);
    if (body) return { status: head.status, body };
    if (closed) throw cutShort('the last chunk of its answer');
    return undefined;
  }
  if (head.length === undefined) return closed ? { status: head.status, body: rest } : undefined;
  if (rest.length >= head.length) return { status: head.status, body: rest.subarray(0, head.length) };
  if (closed) throw cutShort(`the end of its answer (${rest.length} of ${head.length} bytes)`);
  return undefined;
}

/**
 * One request and its answer, read until its Content-Length is complete (or, without one,
 * until the daemon closes the connection). Any socket error (no daemon, no permission, a
 * reset) and a connection closed before the answer is whole are DAEMON_UNREACHABLE, as
 * with node:http's client.
 */
async function exchange(socketPath: string, request: Buffer): Promise<Response> {
  // Taken without an ESM import: from Node 22 the import of a built-in module reads all its exports.
  const { connect } = process.getBuiltinModule?.('node:net') ?? (await import('node:net'));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let head: Head | undefined;
    let done = false;
    const s = connect(socketPath);
    const settle = (closed: boolean): void => {
      let r: Response | undefined;
      try {
        if (size > MAX_RESPONSE_BYTES) throw new IslandError('INTERNAL', `the daemon's answer is larger than ${MAX_RESPONSE_BYTES} bytes`);
        if (!head) {
          head = parseHead(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
          if (!head && size > MAX_HEAD_BYTES) throw new IslandError('INTERNAL', `the daemon's answer has no end of headers in its first ${MAX_HEAD_BYTES} bytes`);
        }
        // The whole answer is parsed once: when its length is there, or at the end.
        const complete = head?.length !== undefined && size >= head.bodyAt + head.length;
        if (complete || closed) r = parseResponse(Buffer.concat(chunks), closed);
      } catch (err) {
        done = true;
        s.destroy();
        // Cut short: what node:http called a hang-up (ECONNRESET); the details are its cause.
        return reject(codeOf(err) === 'DAEMON_UNREACHABLE' ? unreachable(socketPath, 'ECONNRESET', err) : err);
      }
      if (!r) return;
      done = true;
      s.destroy();
      resolve(r);
    };
    s.on('connect', () => s.write(request));
    s.on('data', (c: Buffer) => {
      if (done) return;
      chunks.push(c);
      size += c.length;
      settle(false);
    });
    s.on('end', () => {
      if (!done) settle(true);
    });
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (done) return;
      done = true;
      reject(unreachable(socketPath, err.code ?? err.message, err));
    });
  });
}

export async function call(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  if (!/^\/[\x21-\x7e]*$/.test(path) || !/^[A-Z]+$/.test(method)) throw new IslandError('INTERNAL', `not a request the control API takes: ${method} ${JSON.stringify(path.slice(0, 100))}`);
  const text = body === undefined ? undefined : JSON.stringify(body);
  const head = [`${method} ${path} HTTP/1.1`, 'Host: localhost', 'Connection: close'];
  if (text) head.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(text)}`);
  const res = await exchange(socketPath, Buffer.from(`${head.join('\r\n')}\r\n\r\n${text ?? ''}`));
  let v: unknown;
  try {
    v = JSON.parse(res.body.toString('utf8'));
  } catch {
    throw new IslandError('INTERNAL', `the daemon answered HTTP ${res.status} with a body that is not JSON`);
  }
  const err = (v as { error?: { code?: unknown; message?: string; details?: Record<string, unknown> } } | null)?.error;
  if (err) {
    const code = isErrorCode(err.code) ? err.code : 'INTERNAL';
    throw new IslandError(code, err.message ?? 'error', { details: err.details ?? {} });
  }
  return v;
}
