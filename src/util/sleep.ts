/**
 * Wait `ms` milliseconds. With a signal, an abort ends the wait early: by rejecting with
 * ABORTED (the default), or by resolving when `resolveOnAbort` is set (for loops that
 * check the signal themselves).
 */
import { IslandError } from '../errors.js';

export function sleep(ms: number, signal?: AbortSignal, opts: { resolveOnAbort?: boolean } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const end = (): void => {
      if (opts.resolveOnAbort) resolve();
      else reject(new IslandError('ABORTED', 'operation aborted', { cause: signal?.reason }));
    };
    if (signal?.aborted) return end();
    const onAbort = (): void => {
      clearTimeout(timer);
      end();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
