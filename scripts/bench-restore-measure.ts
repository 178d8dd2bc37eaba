/**
 * What scripts/bench-restore.ts measures besides island itself: the raw SDK yardstick (1 MiB
 * objects written and read back with a bare `@aws-sdk/client-s3` client), and the work of the
 * daemon under test (its ranged GETs from its Prometheus `/metrics`, its CPU from `/proc`).
 */
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import type { SwiftCfg } from './bench-swift.js';

const MiB = 1 << 20;
/** The raw SDK baseline's object size (the yardstick: 1 MiB objects). */
export const SDK_OBJECT_BYTES = MiB;

/**
 * The yardstick without island: a bare `@aws-sdk/client-s3` client configured as S3Store
 * configures it (path-style, checksums only when required, keep-alive sockets), whole-object
 * GETs of `count` objects of SDK_OBJECT_BYTES, `inflight` at once, each body read to the end.
 */
export class SdkGets {
  private readonly client: S3Client;
  private readonly keys: string[] = [];

  constructor(
    cfg: SwiftCfg,
    private readonly bucket: string,
  ) {
    this.client = new S3Client({
      endpoint: cfg.endpoint,
      region: cfg.region,
      forcePathStyle: true,
      credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { httpAgent: { keepAlive: true, maxSockets: 64 } },
    });
  }

  /** Write `count` objects of incompressible bytes with the SDK (the bucket exists). */
  async write(count: number): Promise<void> {
    const body = randomBytes(SDK_OBJECT_BYTES);
    for (let i = 0; i < count; i++) {
      const key = `sdk-baseline/${String(i).padStart(6, '0')}`;
      body.writeUInt32BE(i, 0);
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ContentMD5: createHash('md5').update(body).digest('base64') }));
      this.keys.push(key);
    }
  }

  /** MiB/s of GETs of every object, `inflight` at once. */
  async read(inflight: number): Promise<number> {
    let next = 0;
    let bytes = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: inflight }, async () => {
        while (next < this.keys.length) {
          const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.keys[next++] as string }));
          bytes += (await res.Body!.transformToByteArray()).length;
        }
      }),
    );
    return bytes / MiB / ((performance.now() - t0) / 1000);
  }

  close(): void {
    this.client.destroy();
  }
}

export interface Work {
  gets: number;
  getSecs: number;
  getBytes: number;
  cpuSecs: number;
}

export const workSince = (a: Work, b: Work): Work => ({ gets: b.gets - a.gets, getSecs: b.getSecs - a.getSecs, getBytes: b.getBytes - a.getBytes, cpuSecs: b.cpuSecs - a.cpuSecs });

/** A free TCP port on the loopback interface (for the daemon's /metrics). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** Ranged GETs (count, summed seconds) and bytes received from the daemon's Prometheus text, and its CPU seconds from /proc. */
export async function scrapeWork(port: number, pid: number): Promise<Work> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const value = (re: RegExp): number => Number(re.exec(text)?.[1] ?? 0);
  const stat = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  // Fields 14 and 15 of /proc/PID/stat (utime, stime) in clock ticks of 1/100 s; index 11, 12 after the name.
  const cpuSecs = (Number(stat[11] ?? 0) + Number(stat[12] ?? 0)) / 100;
  return {
    gets: value(/^island_store_requests_total\{op="get_range"\} (\S+)$/m),
    getSecs: value(/^island_store_request_seconds_sum\{op="get_range"\} (\S+)$/m),
    getBytes: value(/^island_store_bytes_total\{direction="in"\} (\S+)$/m),
    cpuSecs,
  };
}
