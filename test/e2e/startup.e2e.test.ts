/**
 * Node's compile cache (src/compile-cache.ts, enabled by bin/run.js): with the Node the standalone
 * build ships (Node 22, scripts/node-from-npm.sh; fetched from the npm registry into .node/ when not
 * there yet) the CLI's compiled modules land in a private directory and later runs use them; a
 * directory others can write to is never used; on Node 20 nothing happens.
 */
import {execa} from 'execa'
import {chmod, mkdir, mkdtemp, readdir, rm, writeFile} from 'node:fs/promises'
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

/**
 * bin/run.js exits from 'beforeExit' (process.exit, skipping Node's teardown of the heap): only once
 * everything is done, so a report larger than a pipe holds reaches a reader that takes its time
 * whole, the command's exit code stays, and Node 22 still writes its compile cache at that exit.
 */
describe('the exit once a command is done', () => {
  let work: string
  let node22: string
  let instances: string
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'imgcache-e2e-exit-'))
    node22 = join((await execa('scripts/node-from-npm.sh', [], {cwd: REPO})).stdout.trim(), 'node')
    instances = join(work, 'instances')
    const base = join(instances, '_base')
    await mkdir(base, {recursive: true})
    // Four hundred cache entries: a --json report of a few hundred kilobytes, several pipe buffers.
    for (let i = 0; i < 400; i++) await writeFile(join(base, i.toString(16).padStart(40, '0')), '')
  }, 300_000)
  afterAll(async () => {
    await rm(work, {force: true, recursive: true})
  })

  it.each([
    ['Node 22', () => node22],
    ['Node 20', () => process.execPath],
  ])('gives a slow reader the whole report and keeps the exit code (%s)', async (label, node) => {
    const env = {IMGCACHE_COMPILE_CACHE: join(work, `cc-${label.replace(' ', '')}`), NODE_ENV: 'production'}
    const direct = await execa(node(), [BIN, 'inspect', '--instances-path', instances, '--json'], {env})
    expect(direct.stdout.length).toBeGreaterThan(200_000)
    // The reader starts a second late: the CLI's writes wait on a full pipe.
    const slow = await execa(
      'sh',
      ['-c', `"$0" "$1" inspect --instances-path "$2" --json | { sleep 1; cat; }`, node(), BIN, instances],
      {env},
    )
    // Whole: it parses, and says what the direct run said (but for what the seconds between them change).
    const timeless = (text: string) =>
      JSON.parse(text, (key, value: unknown) =>
        key === 'ageSeconds' || key === 'availableBytes' ? undefined : value,
      ) as {nodes: Array<{totals: {entries: number}}>}
    expect(timeless(slow.stdout).nodes[0]!.totals.entries).toBe(400)
    expect(timeless(slow.stdout)).toEqual(timeless(direct.stdout))
    const missing = await execa(node(), [BIN, 'inspect', '--instances-path', join(work, 'none'), '--json'], {
      env,
      reject: false,
    })
    expect(missing.exitCode).toBe(2)
    expect(JSON.parse(missing.stdout).status).toBe(2)
  })

  it("writes Node 22's compile cache on the first run, as Node's own exit does", async () => {
    const dir = join(work, 'cc-first')
    await execa(node22, [BIN, 'inspect', '--instances-path', instances, '--json'], {
      env: {IMGCACHE_COMPILE_CACHE: dir, NODE_ENV: 'production'},
    })
    // The entry, oclif's chunk and inspect's own modules, not only what was compiled before the command ran.
    expect((await filesUnder(dir)).length).toBeGreaterThan(6)
  })
})
