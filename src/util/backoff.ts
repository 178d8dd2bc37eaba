/**
 * Waiting out an unreachable dependency (the store, mostly) in a long-running background
 * job: call `fn` until it succeeds, sleeping between tries with exponential backoff, as
 * long as the failure is transient. Anything else, or an abort, ends the wait with that
 * error. Request-level retries belong to store/retry.ts; this is for jobs that must outlast
 * an outage of any length (a background fill, a restarted volume confirming its lease).
 */
import { isTransient } from '../errors.js';
import { sleep } from './sleep.js';

export interface UntilOptions {
  signal?: AbortSignal;
  /** First pause, doubled after every failure up to maxDelayMs. */
  firstDelayMs?: number;
  maxDelayMs?: number;
  /** Told of each transient failure and the pause before the next try. */
  onWait?: (err: unknown, delayMs: number) => void;
}

export const FIRST_DELAY_MS = 1000;
export const MAX_DELAY_MS = 60_000;

export async function untilAvailable<T>(fn: () => Promise<T>, opts: UntilOptions = {}): Promise<T> {
  for (let delay = opts.firstDelayMs ?? FIRST_DELAY_MS; ; delay = Math.min(opts.maxDelayMs ?? MAX_DELAY_MS, delay * 2)) {
    try {
      return await fn();
    } catch (err) {
      if (opts.signal?.aborted || !isTransient(err)) throw err;
      opts.onWait?.(err, delay);
      await sleep(delay, opts.signal);
    }
  }
}
