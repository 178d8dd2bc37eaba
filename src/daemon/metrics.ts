/**
 * Prometheus metrics on an optional port (config metricsPort / ISLAND_METRICS_PORT),
 * listening on metricsAddress / ISLAND_METRICS_ADDRESS (127.0.0.1 by default): FUSE
 * operations (count, errors, bytes, latency) and store requests (count, errors by code,
 * bytes, latency) per operation. Labels hold operation names and error codes only: no
 * volume names, keys or data. Any local user can read a loopback port.
 *
 * Requests the native FUSE server answers in C alone (a volume on the native write path)
 * never reach JavaScript one by one: their counts and bytes are taken from the volumes' own
 * counters when /metrics is read (added as deltas, so the counters only grow), and they have
 * no latency observations (island_fuse_request_seconds holds requests that crossed to
 * JavaScript: fuse-native, the TypeScript write path, snapshot views).
 */
import { createServer, type Server } from 'node:http';
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { DEFAULT_METRICS_ADDRESS } from '../config.js';
import type { Observation } from '../store/metrics.js';

/** The counters of a volume served in C (NativeVolume.stats()). */
export interface NativeCounts {
  reads: number;
  writes: number;
  fsyncs: number;
  bytesRead: number;
  bytesWritten: number;
}

export interface NativeCounted {
  stats(): NativeCounts;
}

const LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10];

export class Metrics {
  readonly registry = new Registry();
  private readonly fuseOps = new Counter({ name: 'island_fuse_requests_total', help: 'FUSE requests served', labelNames: ['op', 'result'], registers: [this.registry], collect: () => this.collectNative() });
  private readonly fuseBytes = new Counter({ name: 'island_fuse_bytes_total', help: 'Bytes read and written through FUSE', labelNames: ['op'], registers: [this.registry], collect: () => this.collectNative() });
  private nativeSource: () => Iterable<NativeCounted> = () => [];
  /** What was already counted of each volume served in C. */
  private readonly nativeSeen = new WeakMap<NativeCounted, NativeCounts>();
  private readonly fuseLatency = new Histogram({ name: 'island_fuse_request_seconds', help: 'FUSE request latency', labelNames: ['op'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  private readonly storeOps = new Counter({ name: 'island_store_requests_total', help: 'Object store requests (each attempt)', labelNames: ['op'], registers: [this.registry] });
  private readonly storeErrors = new Counter({ name: 'island_store_errors_total', help: 'Failed object store requests', labelNames: ['op', 'code'], registers: [this.registry] });
  private readonly storeBytes = new Counter({ name: 'island_store_bytes_total', help: 'Bytes sent to and received from the object store', labelNames: ['direction'], registers: [this.registry] });
  private readonly storeLatency = new Histogram({ name: 'island_store_request_seconds', help: 'Object store request latency', labelNames: ['op'], buckets: LATENCY_BUCKETS, registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'island_' });
  }

  fuse(op: string, ms: number, bytes: number, error: boolean): void {
    this.fuseOps.inc({ op, result: error ? 'error' : 'ok' });
    if (bytes > 0) this.fuseBytes.inc({ op }, bytes);
    this.fuseLatency.observe({ op }, ms / 1000);
  }

  /** The volumes the native server serves in C alone (read at each scrape). */
  countNative(source: () => Iterable<NativeCounted>): void {
    this.nativeSource = source;
  }

  private collectNative(): void {
    for (const v of this.nativeSource()) {
      const s = v.stats();
      const now: NativeCounts = { reads: s.reads, writes: s.writes, fsyncs: s.fsyncs, bytesRead: s.bytesRead, bytesWritten: s.bytesWritten };
      const was = this.nativeSeen.get(v) ?? { reads: 0, writes: 0, fsyncs: 0, bytesRead: 0, bytesWritten: 0 };
      this.nativeSeen.set(v, now);
      const add = (c: Counter, labels: Record<string, string>, d: number): void => {
        if (d > 0) c.inc(labels, d);
      };
      add(this.fuseOps, { op: 'read', result: 'ok' }, now.reads - was.reads);
      add(this.fuseOps, { op: 'write', result: 'ok' }, now.writes - was.writes);
      add(this.fuseOps, { op: 'fsync', result: 'ok' }, now.fsyncs - was.fsyncs);
      add(this.fuseBytes, { op: 'read' }, now.bytesRead - was.bytesRead);
      add(this.fuseBytes, { op: 'write' }, now.bytesWritten - was.bytesWritten);
    }
  }

  store(o: Observation): void {
    this.storeOps.inc({ op: o.op });
    if (o.error) this.storeErrors.inc({ op: o.op, code: o.error });
    if (o.bytesIn) this.storeBytes.inc({ direction: 'in' }, o.bytesIn);
    if (o.bytesOut) this.storeBytes.inc({ direction: 'out' }, o.bytesOut);
    this.storeLatency.observe({ op: o.op }, o.ms / 1000);
  }

  /** Serve /metrics on address:port (loopback, 127.0.0.1, unless told otherwise). */
  async listen(port: number, address = DEFAULT_METRICS_ADDRESS): Promise<Server> {
    const server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, address, () => resolve());
    });
    return server;
  }
}
