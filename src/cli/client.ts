/**
 * The CLI's client of the control API: HTTP+JSON over the daemon's unix socket
 * (ISLAND_SOCKET, or <ISLAND_DATA_DIR>/island.sock).
 */
import { request } from 'node:http';
import { IslandError, isErrorCode } from '../errors.js';

export async function call(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const text = body === undefined ? undefined : JSON.stringify(body);
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
