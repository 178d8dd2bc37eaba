/**
 * An HTTP proxy in front of a real store endpoint that holds PUT requests while told to:
 * an upload stays in progress for as long as a test needs (no sleeping, no fault
 * injection inside the daemon). Stopped in teardown.
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { makeHost, serve, useS3, type Host } from './daemon.js';
import { uniqueBucket, type SwiftInfo } from './swift.js';

export interface HoldingProxy {
  endpoint: string;
  hold(): void;
  release(): void;
  /** PUT requests held so far. */
  held(): number;
}

/** An HTTP proxy to `target` that queues PUT requests while holding. */
export async function holdingProxy(t: { teardown(fn: () => unknown): void }, target: string): Promise<HoldingProxy> {
  const up = new URL(target);
  let holding = false;
  const queue: (() => void)[] = [];
  let heldCount = 0;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const forward = (): void => {
      const out = request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      out.on('error', () => res.destroy());
      req.pipe(out);
    };
    if (holding && req.method === 'PUT') {
      heldCount++;
      queue.push(forward);
    } else {
      forward();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hold: () => (holding = true),
    release: () => {
      holding = false;
      for (const f of queue.splice(0)) f();
    },
    held: () => heldCount,
  };
}

/**
 * Two daemons sharing a fresh bucket of a real Swift: `a` through a holding proxy (its
 * uploads can be held), `b` directly. Both serving.
 */
export async function heldAndDirectHosts(t: { teardown(fn: () => unknown): void }, swift: SwiftInfo, tag: string): Promise<{ proxy: HoldingProxy; a: Host; b: Host }> {
  const bucket = uniqueBucket(tag);
  const proxy = await holdingProxy(t, swift.endpoint);
  const a = await makeHost(t, 'host-a');
  await useS3(a, { ...swift, endpoint: proxy.endpoint }, bucket);
  const b = await makeHost(t, 'host-b');
  await useS3(b, swift, bucket);
  await serve(a);
  await serve(b);
  return { proxy, a, b };
}
