/**
 * A real Swift for tests. When ISLAND_TEST_SWIFT names a swift.json (scripts/test.sh
 * starts one Swift per run and sets it), that one is used; otherwise this file starts
 * a private one for the test file and stops it (by pid) in teardown.
 * If Swift is not installed the caller skips with the reason printed, unless
 * ISLAND_REQUIRE_SWIFT=1 (as in CI), where a missing Swift is a failure.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const SCRIPT = resolve(import.meta.dirname, '../../scripts/swift.sh');

export interface SwiftInfo {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export type SwiftOrReason = { swift: SwiftInfo } | { skip: string };

interface Tap {
  teardown(fn: () => unknown): void;
}

export async function useSwift(t: Tap): Promise<SwiftOrReason> {
  const shared = process.env.ISLAND_TEST_SWIFT;
  if (shared) return { swift: JSON.parse(await readFile(shared, 'utf8')) as SwiftInfo };
  if (!existsSync('/usr/bin/swift-proxy-server')) {
    const reason = 'OpenStack Swift is not installed (run scripts/install-deps.sh)';
    if (process.env.ISLAND_REQUIRE_SWIFT === '1') throw new Error(reason);
    return { skip: reason };
  }
  const dir = await mkdtemp(join(tmpdir(), 'island-swift-'));
  t.teardown(async () => {
    await run('bash', [SCRIPT, 'stop', dir]);
    await rm(dir, { recursive: true, force: true });
  });
  await run('bash', [SCRIPT, 'start', dir], { timeout: 120_000 });
  return { swift: JSON.parse(await readFile(join(dir, 'swift.json'), 'utf8')) as SwiftInfo };
}

let bucketSeq = 0;
/** A bucket name unique to this process and call. */
export function uniqueBucket(tag: string): string {
  return `${tag}-${process.pid}-${Date.now().toString(36)}-${bucketSeq++}`.toLowerCase().replace(/[^a-z0-9-]/g, '-');
}
