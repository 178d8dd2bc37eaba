/**
 * The CLI's client of the control API: HTTP+JSON over the daemon's unix socket
 * (ISLAND_SOCKET, or <ISLAND_DATA_DIR>/island.sock).
 */
import type { request as Request } from 'node:http';
import { IslandError, isErrorCode } from '../errors.js';

/**
 * node:http, taken without an ESM import. From Node 22 node:http also exports undici's
 * WebSocket classes through lazy getters, and an `import` of a built-in module builds a
 * facade that reads every export: it loaded undici, ~20-40 ms of every command's start on
 * Node 22 and 24 (more than the rest of the CLI). process.getBuiltinModule (Node 20.16,
 * 22.3) reads only what is asked; on an older Node 20 the import costs what it always did.
 */
async function httpRequest(): Promise<typeof Request> {
  return (process.getBuiltinModule?.('node:http') ?? (await import('node:http'))).request;
}

export async function call(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const text = body === undefined ? undefined : JSON.stringify(body);
  const request = await httpRequest();
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath, method, path, headers: text ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } : {} },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let v: unknown;
          try {
            v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return reject(new IslandError('INTERNAL', `the daemon answered HTTP ${res.statusCode} with a body that is not JSON`));
          }
          const err = (v as { error?: { code?: unknown; message?: string; details?: Record<string, unknown> } }).error;
          if (err) {
            const code = isErrorCode(err.code) ? err.code : 'INTERNAL';
            return reject(new IslandError(code, err.message ?? 'error', { details: err.details ?? {} }));
          }
          resolve(v);
        });
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      reject(new IslandError('DAEMON_UNREACHABLE', `cannot reach the island daemon at ${socketPath} (${err.code ?? err.message}); is island serve running?`, { cause: err }));
    });
    req.end(text);
  });
}
