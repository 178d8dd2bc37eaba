#!/usr/bin/env node
// The daemon's local I/O (and the native addon) runs on libuv's thread pool, whose
// default of 4 threads serialises QEMU's parallel requests. Set before any I/O starts.
process.env.UV_THREADPOOL_SIZE ??= '32';
/**
 * The island command line. Every command takes --json; an error prints one line
 * `island: CODE: message` (or a JSON object with --json) and exits non-zero.
 */
import { parseArgs } from 'node:util';
import { IslandError, asIslandError } from '../errors.js';
import { loadConfig } from '../config.js';
import { serveForever } from '../daemon/serve.js';
import { storeSelftest } from './store-selftest.js';

const VERSION = '0.1.0';

const USAGE = `usage: island <command> [options]

commands:
  version                         print the version
  serve                           mount the FUSE file system and serve the volumes in
                                  $ISLAND_DATA_DIR/volumes on $ISLAND_MOUNT
  store selftest [--dir DIR]      write, list, read back and delete objects on the
                                  embedded store (default: $ISLAND_STORE_DIR or
                                  $ISLAND_DATA_DIR/store, data dir /var/lib/island)
options:
  --json                          machine-readable output
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: { json: { type: 'boolean', default: false }, dir: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  const json = values.json ?? false;
  const [cmd, sub] = positionals;
  try {
    if (values.help || cmd === undefined || cmd === 'help') {
      process.stdout.write(USAGE);
      return cmd === undefined && !values.help ? 2 : 0;
    }
    if (cmd === 'version') {
      process.stdout.write(json ? JSON.stringify({ version: VERSION }) + '\n' : `island ${VERSION}\n`);
      return 0;
    }
    if (cmd === 'serve') {
      await serveForever(await loadConfig());
      return 0;
    }
    if (cmd === 'store' && sub === 'selftest') {
      const dataDir = process.env.ISLAND_DATA_DIR ?? '/var/lib/island';
      const dir = values.dir ?? process.env.ISLAND_STORE_DIR ?? `${dataDir}/store`;
      const report = await storeSelftest({ type: 'fs', dir });
      process.stdout.write(json ? JSON.stringify(report) + '\n' : report.lines.join('\n') + '\n');
      return 0;
    }
    throw new IslandError('INVALID_ARGUMENT', `unknown command: ${positionals.join(' ')} (try island help)`);
  } catch (err) {
    const e = asIslandError(err);
    if (json) process.stdout.write(JSON.stringify({ error: e.toJSON() }) + '\n');
    else process.stderr.write(`island: ${e.code}: ${e.message}\n`);
    return e.code === 'INVALID_ARGUMENT' ? 2 : 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    // parseArgs errors (unknown option...) land here.
    const e = asIslandError(err, 'INVALID_ARGUMENT');
    process.stderr.write(`island: ${e.code}: ${e.message}\n`);
    process.exitCode = 2;
  },
);
