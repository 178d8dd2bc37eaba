/**
 * The Swift a benchmark runs against: the one a swift.json names (`--swift FILE`, as
 * `scripts/swift.sh start DIR` writes it), or a private one started for the run and
 * stopped after it, whatever the outcome.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type SwiftCfg = { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string };

export async function withSwift<T>(swiftJson: string | undefined, fn: (cfg: SwiftCfg) => Promise<T>): Promise<T> {
  if (swiftJson) return fn(JSON.parse(await readFile(swiftJson, 'utf8')) as SwiftCfg);
  const dir = await mkdtemp(join(tmpdir(), 'island-bench-swift-'));
  const script = join(import.meta.dirname, 'swift.sh');
  try {
    await run('bash', [script, 'start', dir]);
    return await fn(JSON.parse(await readFile(join(dir, 'swift.json'), 'utf8')) as SwiftCfg);
  } finally {
    await run('bash', [script, 'stop', dir]);
    await rm(dir, { recursive: true, force: true });
  }
}
