/** The standalone build (`npm run package`): its tree, built when missing or older than src/. */
import {existsSync} from 'node:fs'
import {readdir, readFile, stat} from 'node:fs/promises'
import {arch} from 'node:os'
import {join} from 'node:path'

import {mustRun, REPO_ROOT} from './measure.js'

export interface Standalone {
  /** The tree's launcher, bin/imgcache: what an operator runs (the standalone file execs it once unpacked). */
  launcher: string
  /** The tree's own Node.js (from the npm registry). */
  node: string
  /** Its version, as `node --version` prints it. */
  nodeVersion: string
}

async function newestMtime(dir: string): Promise<number> {
  const names = await readdir(dir, {recursive: true})
  const mtimes = await Promise.all(names.map(async (n) => (await stat(join(dir, n))).mtimeMs))
  return Math.max(0, ...mtimes)
}

/**
 * pkg/imgcache-VERSION-linux-ARCH/ as scripts/package.sh lays it out, rebuilt (npm run package, a
 * minute or two: it downloads Node.js from the npm registry once) when missing or when a file of
 * src/, bin/ or packaging/ is newer than its launcher.
 */
export async function ensureStandalone(): Promise<Standalone> {
  const {version} = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as {version: string}
  const tree = join(process.env.IMGCACHE_PACKAGE_DIR ?? join(REPO_ROOT, 'pkg'), `imgcache-${version}-linux-${arch()}`)
  const launcher = join(tree, 'bin', 'imgcache')
  const node = join(tree, 'bin', 'node')
  const sources = Math.max(
    ...(await Promise.all(['src', 'bin', 'packaging'].map(async (d) => newestMtime(join(REPO_ROOT, d))))),
  )
  if (!existsSync(launcher) || (await stat(launcher)).mtimeMs < sources) {
    console.log('building the standalone imgcache (npm run package)')
    await mustRun('npm', ['run', '--silent', 'package'], {cwd: REPO_ROOT})
  }

  const nodeVersion = (await mustRun(node, ['--version'])).stdout.trim()
  return {launcher, node, nodeVersion}
}
