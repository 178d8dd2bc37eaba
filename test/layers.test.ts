import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import t from 'tap';
// @ts-expect-error: a plain .mjs script without type declarations
import { check } from '../scripts/check-layers.mjs';

const checkLayers = check as (dir: string) => string[];

t.same(checkLayers(resolve(import.meta.dirname, '../src')), [], 'imports in src/ point down the layers');

t.test('the check catches an upward import and a second native loader', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-layers-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'store'));
  await mkdir(join(dir, 'volume'));
  await writeFile(join(dir, 'store/bad.ts'), "import { x } from '../volume/engine.js';\n");
  await writeFile(join(dir, 'volume/engine.ts'), "import addon from '../../native/build/Release/island.node';\n");
  const problems = checkLayers(dir);
  t.equal(problems.length, 2, problems.join('\n'));
  t.match(problems[0] ?? '', /store\/bad.ts: store\/ may import only/);
  t.match(problems[1] ?? '', /only src\/volume\/native.ts may/);
});
