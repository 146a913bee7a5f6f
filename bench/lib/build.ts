/** dist/ must match src/ before a benchmark runs bin/run.js. */
import {readdir, stat} from 'node:fs/promises'
import {join} from 'node:path'

import {mustRun, REPO_ROOT} from './measure.js'

async function filesUnder(dir: string, suffix: string): Promise<string[]> {
  const names = await readdir(dir, {recursive: true})
  return names.filter((n) => n.endsWith(suffix)).map((n) => join(dir, n))
}

/** Build dist/ when it is missing or older than any source file. */
export async function ensureBuilt(): Promise<void> {
  const mtimes = async (files: string[]) => Promise.all(files.map(async (f) => (await stat(f)).mtimeMs))
  const sources = await mtimes(await filesUnder(join(REPO_ROOT, 'src'), '.ts'))
  const built = await mtimes(await filesUnder(join(REPO_ROOT, 'dist'), '.js').catch(() => []))
  if (built.length > 0 && Math.min(...built) >= Math.max(...sources)) return
  console.log('building dist/ (npm run build)')
  await mustRun('npm', ['run', 'build'], {cwd: REPO_ROOT})
}
