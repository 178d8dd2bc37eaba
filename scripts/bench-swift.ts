/**
 * The Swift a benchmark runs against: the one a swift.json names (`--swift FILE`, as
 * `scripts/swift.sh start DIR` writes it), or a private one started for the run and
 * stopped after it, whatever the outcome. `fn` also gets the path of that swift.json, so a
 * run can hand the same Swift to child processes (`--swift FILE`).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type SwiftCfg = { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string };

export async function withSwift<T>(swiftJson: string | undefined, fn: (cfg: SwiftCfg, swiftJson: string) => Promise<T>): Promise<T> {
  if (swiftJson) return fn(JSON.parse(await readFile(swiftJson, 'utf8')) as SwiftCfg, swiftJson);
  const dir = await mkdtemp(join(tmpdir(), 'island-bench-swift-'));
  const script = join(import.meta.dirname, 'swift.sh');
  try {
    await run('bash', [script, 'start', dir]);
    const file = join(dir, 'swift.json');
    return await fn(JSON.parse(await readFile(file, 'utf8')) as SwiftCfg, file);
  } finally {
    await run('bash', [script, 'stop', dir]);
    await rm(dir, { recursive: true, force: true });
  }
}
