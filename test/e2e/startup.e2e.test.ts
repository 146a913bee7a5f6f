/**
 * Node's compile cache (src/compile-cache.ts, enabled by bin/run.js): with the Node the standalone
 * build ships (Node 22, scripts/node-from-npm.sh; fetched from the npm registry into .node/ when not
 * there yet) the CLI's compiled modules land in a private directory and later runs use them; a
 * directory others can write to is never used; on Node 20 nothing happens.
 */
import {execa} from 'execa'
import {chmod, mkdir, mkdtemp, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {BIN} from '../helpers/cli.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))

/** Every file under dir (none when it does not exist). */
async function filesUnder(dir: string): Promise<string[]> {
  const names = await readdir(dir, {recursive: true, withFileTypes: true}).catch(() => [])
  return names.filter((d) => d.isFile()).map((d) => join(d.parentPath, d.name))
}

async function version(node: string, cacheDir: string) {
  return execa(node, [BIN, '--version'], {env: {IMGCACHE_COMPILE_CACHE: cacheDir, NODE_ENV: 'production'}})
}

describe('the compile cache', () => {
  let work: string
  let node22: string
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'imgcache-e2e-startup-'))
    const bin = (await execa('scripts/node-from-npm.sh', [], {cwd: REPO})).stdout.trim()
    node22 = join(bin, 'node')
  }, 300_000)
  afterAll(async () => {
    await rm(work, {force: true, recursive: true})
  })

  it("is written on Node 22's first run, 0700, and read by the next", async () => {
    const dir = join(work, 'private', 'cc')
    const first = await version(node22, dir)
    expect(first.stdout).toMatch(/^imgcache\/\S+ linux-\S+ node-v22\./)
    const files = await filesUnder(dir)
    // The CLI's entry and the bundle's chunks it loads: several modules, not one.
    expect(files.length).toBeGreaterThan(3)
    expect((await execa('stat', ['-c', '%a', dir])).stdout).toBe('700')
    const again = await version(node22, dir)
    expect(again.stdout).toBe(first.stdout)
    expect((await filesUnder(dir)).sort()).toEqual(files.sort())
  })

  it('is not used in a directory others can write to', async () => {
    const dir = join(work, 'open')
    await mkdir(dir)
    await chmod(dir, 0o777)
    const run = await version(node22, dir)
    expect(run.stdout).toContain('node-v22.')
    expect(await filesUnder(dir)).toEqual([])
  })

  it('does nothing on Node 20, which has none', async () => {
    const dir = join(work, 'node20')
    const run = await version(process.execPath, dir)
    expect(run.stdout).toContain(`node-${process.version}`)
    expect(await filesUnder(dir)).toEqual([])
  })
})
