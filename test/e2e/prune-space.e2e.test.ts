/**
 * prune --keep-free / --max-size on a small real file system that fills: a tmpfs mounted by the
 * test (as root) for each case, with an instances path on it, real raw and qcow2 bases of known
 * sizes, instances using some of them. Expected figures come from statfs and stat on that tmpfs,
 * never hard-coded: tmpfs counts in pages, so a file's cost is its st_blocks × 512, page-rounded.
 */
import {execa} from 'execa'
import {mkdir, mkdtemp, readdir, readFile, rm, stat, statfs, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {DAY, HOUR, makeNovaHost, type NovaHost, qemuImg, setAge, sha1} from '../fixtures/nova-host.js'
import {flat, runCli} from '../helpers/cli.js'
import {fleetConfig} from '../helpers/fleet.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {holdOsloLock} from '../helpers/oslo-lock.js'

const MiB = 1024 * 1024

let root: string
const mounts: string[] = []
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'imgc-e2e-space-'))
})
afterAll(async () => {
  for (const dir of mounts) await execa('umount', [dir], {reject: false})
  await rm(root, {force: true, recursive: true})
})

/** A fresh 64 MiB tmpfs of this test's own, unmounted after the file. */
async function tmpfs(name: string): Promise<string> {
  const dir = join(root, name)
  await mkdir(dir)
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0755', 'tmpfs', dir])
  mounts.push(dir)
  return dir
}

async function freeBytes(path: string): Promise<{free: number; total: number}> {
  const s = await statfs(path)
  return {free: s.bavail * s.bsize, total: s.blocks * s.bsize}
}

async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512
}

/** A qcow2 base holding `mib` MiB of real data (not sparse), made by qemu-img convert. */
async function qcow2Base(host: NovaHost, name: string, mib: number, age: number): Promise<void> {
  const raw = join(root, `${name}.raw`)
  await writeFile(raw, Buffer.alloc(mib * MiB, 0xa5))
  await qemuImg(['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, host.path(name)])
  await rm(raw)
  await setAge(host.path(name), age)
}

interface SpaceJson {
  after: {cacheBytes: number; freeBytes?: number}
  before: {cacheBytes: number; freeBytes?: number; totalBytes?: number}
  left: Record<'inUse' | 'kept' | 'notRemovable', {bytes: number; entries: number}>
  reached: boolean
  reason?: string
  reclaimedBytes: number
  removed: number
  target: {keepFreeBytes?: number; keepFreeFrom?: string; maxSizeBytes?: number; maxSizeFrom?: string}
}

interface PruneJson {
  nodes: Array<{
    decisions: Array<{
      bytes: number
      name: string
      outcome: string
      reason: string
      space?: {cacheBytesAfter: number; freeBytesAfter?: number; rank: number}
    }>
    node: string
    space?: SpaceJson
  }>
}

const A = sha1('img-a')
const B = sha1('img-b')
const C = sha1('img-c')
const D = sha1('img-d')
const E = sha1('img-e')
const LINK = 'l'.repeat(40)
const PART = `${sha1('img-p')}.part`

/**
 * Unused bases A (30 h: old enough for Nova), B (10 h), C (6 h, qcow2), D (2 h); E (40 h) backs an
 * instance's disk. Beside them, files space pruning must never touch: a 4 MiB file that is not a
 * cache entry, a .part of a download in progress, and a link named like a base whose target's mtime
 * (20 h) is older than B's, so it would come first if links were candidates.
 */
async function layout(dir: string): Promise<NovaHost> {
  const bytes = Buffer.alloc(8 * MiB, 0x5a)
  const outside = join(root, `${dir.split('/').pop()}-outside`)
  await writeFile(outside, 'not in the cache')
  const host = await makeNovaHost(dir, {
    bases: [
      {age: 30 * HOUR, content: bytes, imageId: 'img-a'},
      {age: 10 * HOUR, content: bytes, imageId: 'img-b'},
      {age: 2 * HOUR, content: bytes, imageId: 'img-d'},
      {age: 40 * HOUR, content: bytes, imageId: 'img-e'},
    ],
    files: [
      {age: 10 * DAY, content: 'x'.repeat(4 * MiB), name: 'random.txt'},
      {age: 0, content: 'y'.repeat(4 * MiB), name: PART},
      {age: 0, name: LINK, symlinkTo: outside},
    ],
    instances: [{dir: 'inst-e', disks: [{backing: E}], metadata: {name: 'instance-00000001'}}],
    locks: [`nova-${B}`, `nova-${C}`, `nova-${D}`],
  })
  await qcow2Base(host, C, 8, 6 * HOUR)
  // Nova ages a link by its target's mtime (os.path.getmtime follows links), as the scan does.
  await setAge(outside, 20 * HOUR)
  return host
}

async function listing(host: NovaHost): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const name of await readdir(host.cacheDir)) out[name] = (await stat(host.path(name))).mtimeMs
  return out
}

describe('imgcache prune by space on a real tmpfs (e2e, bin/run.js)', () => {
  it('--keep-free removes unused entries least recently used first, younger than the lifetime too, and no more', async () => {
    const dir = await tmpfs('keep-free')
    const host = await layout(dir)
    const [a, b, c] = [await allocated(host.path(A)), await allocated(host.path(B)), await allocated(host.path(C))]
    const {free} = await freeBytes(dir)
    // A goes by Nova's age rule; B alone is 1 byte short of the target, so C must go too, D not.
    const target = free + a + b + 1
    const r = await runCli(['prune', '--instances-path', host.instancesPath, '--keep-free', String(target), '--json'])
    expect(r.exitCode, r.stderr).toBe(0)
    const node = (r.json as PruneJson).nodes[0]!
    const outcome = Object.fromEntries(node.decisions.map((d) => [d.name, d.outcome]))
    expect(outcome).toMatchObject({
      [A]: 'removed',
      [B]: 'removed',
      [C]: 'removed',
      [D]: 'too-young',
      [E]: 'in-use',
      [LINK]: 'too-young',
      [PART]: 'too-young',
      'random.txt': 'ignored',
    })
    expect(node.decisions.filter((d) => d.space).map((d) => [d.name, d.space!.rank])).toEqual([
      [B, 1],
      [C, 2],
    ])
    expect(node.decisions.find((d) => d.name === A)!.space).toBeUndefined()
    expect(node.space).toMatchObject({
      after: {freeBytes: free + a + b + c},
      before: {freeBytes: free},
      reached: true,
      reclaimedBytes: b + c,
      removed: 2,
      target: {keepFreeBytes: target, keepFreeFrom: '--keep-free'},
    })
    expect(node.space!.reason).toBeUndefined()
    expect(Object.keys(await listing(host)).sort()).toEqual([D, E, LINK, PART, 'random.txt'].sort())
    // The file system really has what was asked; removed bases' lock files went with them.
    expect((await freeBytes(dir)).free).toBeGreaterThanOrEqual(target)
    expect((await readdir(host.lockDir)).sort()).toEqual([`nova-${D}`])
  })

  it('--dry-run shows the order and the free space each removal would leave, and changes nothing', async () => {
    const dir = await tmpfs('dry-run')
    const host = await layout(dir)
    const [a, b, c] = [await allocated(host.path(A)), await allocated(host.path(B)), await allocated(host.path(C))]
    const {free, total} = await freeBytes(dir)
    // A percent of the file system that needs B and C (half of C short of it with B alone).
    const percent = Math.round(((free + a + b + c / 2) / total) * 100 * 100) / 100
    const wanted = Math.ceil((total * percent) / 100)
    expect(wanted).toBeGreaterThan(free + a + b)
    expect(wanted).toBeLessThanOrEqual(free + a + b + c)
    const before = await listing(host)
    const r = await runCli([
      'prune',
      '--dry-run',
      '--instances-path',
      host.instancesPath,
      '--keep-free',
      `${percent}%`,
      '--json',
    ])
    expect(r.exitCode, r.stderr).toBe(0)
    const node = (r.json as PruneJson).nodes[0]!
    expect(node.decisions.filter((d) => d.space).map((d) => ({name: d.name, space: d.space}))).toEqual([
      {name: B, space: {cacheBytesAfter: expect.any(Number), freeBytesAfter: free + a + b, rank: 1}},
      {name: C, space: {cacheBytesAfter: expect.any(Number), freeBytesAfter: free + a + b + c, rank: 2}},
    ])
    // A dry run names its figures for what prune would do: nothing was removed or reached.
    expect(node.space).toMatchObject({
      before: {freeBytes: free, totalBytes: total},
      target: {keepFreeBytes: wanted, keepFreeFrom: '--keep-free', keepFreePercent: percent},
      wouldLeave: {freeBytes: free + a + b + c},
      wouldReach: true,
      wouldRemove: 2,
    })
    expect(node.space).not.toHaveProperty('reached')
    expect(node.space).not.toHaveProperty('removed')
    expect(node.decisions.filter((d) => d.space).map((d) => d.outcome)).toEqual(['would-remove', 'would-remove'])
    expect(await listing(host)).toEqual(before)
    // The human lines: in that order, with the figures.
    const text = await runCli([
      'prune',
      '--dry-run',
      '--verbose',
      '--instances-path',
      host.instancesPath,
      '--keep-free',
      `${percent}%`,
    ])
    expect(text.exitCode).toBe(0)
    const lines = text.stderr.split('\n')
    const first = lines.findIndex((l) => l.includes(`would remove original ${host.path(B)}`))
    const second = lines.findIndex((l) => l.includes(`would remove original ${host.path(C)}`))
    expect(first).toBeGreaterThanOrEqual(0)
    expect(second).toBeGreaterThan(first)
    expect(lines[first]).toContain('#1 least recently used, for space; would leave')
    expect(lines[second]).toContain('#2 least recently used, for space; would leave')
    expect(text.stderr).toContain('(dry run) space target would be reached')
    expect(await listing(host)).toEqual(before)
  })

  it('--max-size counts the cache dir’s files (as Nova’s get_disk_usage) and removes down to it', async () => {
    const dir = await tmpfs('max-size')
    const host = await layout(dir)
    const [a, b] = [await allocated(host.path(A)), await allocated(host.path(B))]
    let cache = 0
    for (const name of await readdir(host.cacheDir)) {
      const s = await stat(host.path(name)).catch(() => undefined)
      if (name !== LINK && s?.isFile()) cache += s.blocks * 512
    }

    const max = cache - a - b - 1
    const r = await runCli(['prune', '--instances-path', host.instancesPath, '--max-size', String(max), '--json'])
    expect(r.exitCode, r.stderr).toBe(0)
    const node = (r.json as PruneJson).nodes[0]!
    expect(node.decisions.filter((d) => d.space).map((d) => d.name)).toEqual([B, C])
    expect(node.space).toMatchObject({before: {cacheBytes: cache}, reached: true, target: {maxSizeBytes: max}})
    expect(node.space!.after.cacheBytes).toBeLessThanOrEqual(max)
    expect(Object.keys(await listing(host)).sort()).toEqual([D, E, LINK, PART, 'random.txt'].sort())
  })

  it('never removes an entry in use: the target is not reached, said in the log, the JSON and the metrics (exit 0)', async () => {
    const dir = await tmpfs('in-use')
    const bytes = Buffer.alloc(8 * MiB, 0x11)
    const host = await makeNovaHost(dir, {
      bases: [
        {age: 40 * HOUR, content: bytes, imageId: 'img-e'},
        {age: HOUR, content: bytes, imageId: 'img-g'},
        {age: 3 * HOUR, content: bytes, imageId: 'img-h'},
      ],
      instances: [
        {dir: 'inst-e', disks: [{backing: E}], metadata: {name: 'instance-00000001'}},
        {dir: 'inst-g', metadata: {imageId: 'img-g', name: 'instance-00000002'}},
      ],
    })
    const metrics = join(root, 'in-use.prom')
    const args = ['prune', '--instances-path', host.instancesPath, '--keep-free', '99%', '--metrics-file', metrics]
    const r = await runCli(args)
    expect(r.exitCode, r.stderr).toBe(0)
    expect(flat(r.stderr)).toContain('warning: local: space target not reached:')
    expect(flat(r.stderr)).toContain('every entry left in the cache is in use (2, 16.0 MiB)')
    expect((await readdir(host.cacheDir)).sort()).toEqual([E, sha1('img-g')].sort())
    const prom = await readFile(metrics, 'utf8')
    expect(prom).toContain('imgcache_prune_space_target_reached{node="local",reason="in-use"} 0')
    expect(prom).toContain('imgcache_prune_space_removed_entries{node="local"} 1')

    // A file that is not a cache entry, and an unused base whose lock nova-compute holds.
    await writeFile(host.path('random.txt'), 'z'.repeat(MiB))
    await writeFile(host.path(sha1('img-i')), bytes)
    const holder = await holdOsloLock(host.lockDir, sha1('img-i'))
    try {
      const json = await runCli([...args.slice(0, 3), '--max-size', '1', '--lock-timeout', '1s', '--json'])
      expect(json.exitCode, json.stderr).toBe(0)
      const node = (json.json as PruneJson).nodes[0]!
      expect(node.decisions.find((d) => d.name === sha1('img-i'))).toMatchObject({outcome: 'locked', space: {rank: 1}})
      expect(node.space).toMatchObject({
        left: {inUse: {entries: 2}, kept: {entries: 1}, notRemovable: {entries: 1}},
        reached: false,
        reason: 'too-little-removable',
      })
      const text = await runCli([...args.slice(0, 3), '--max-size', '1', '--lock-timeout', '1s'])
      expect(text.exitCode).toBe(0)
      expect(flat(text.stderr)).toContain('too little is removable: left are 2 in use (16.0 MiB), 1 kept under')
    } finally {
      await holder.release()
    }

    expect((await readdir(host.cacheDir)).sort()).toEqual([E, sha1('img-g'), sha1('img-i'), 'random.txt'].sort())
  })

  it('bad values are usage errors (exit 2) naming the flag or the config key, and change nothing', async () => {
    const dir = await tmpfs('usage')
    const host = await layout(dir)
    const before = await listing(host)
    const percent = await runCli(['prune', '--instances-path', host.instancesPath, '--keep-free', '120%'])
    expect(percent.exitCode).toBe(2)
    expect(flat(percent.stderr)).toContain('Parsing --keep-free')
    expect(flat(percent.stderr)).toContain('a percent of the file system below 100 such as 10%, got "120%"')
    const banana = await runCli(['prune', '--instances-path', host.instancesPath, '--max-size', 'banana'])
    expect(banana.exitCode).toBe(2)
    expect(flat(banana.stderr)).toContain('Parsing --max-size')
    expect(flat(banana.stderr)).toContain('got "banana"')
    const cfg = join(root, 'bad-space.yaml')
    await writeFile(cfg, 'aggregates:\n  web: { nodes: [local], prune: { keepFree: 120% } }\n')
    const config = await runCli(['prune', '--config', cfg, '--instances-path', host.instancesPath, '--json'])
    expect(config.exitCode).toBe(2)
    expect(config.json).toMatchObject({error: {code: 'CONFIG_INVALID', field: 'aggregates.web.prune.keepFree'}})
    expect(await listing(host)).toEqual(before)
  })

  it('takes the target from the node, then its aggregates, then the prune section; the flag wins', async () => {
    const dir = await tmpfs('config')
    const host = await layout(dir)
    const [a, b] = [await allocated(host.path(A)), await allocated(host.path(B))]
    const r0 = await runCli(['prune', '--dry-run', '--instances-path', host.instancesPath, '--max-size', '1', '--json'])
    const cache = (r0.json as PruneJson).nodes[0]!.space!.before.cacheBytes
    const cfg = join(root, 'space.yaml')
    await writeFile(
      cfg,
      `prune: { keepFree: 90%, maxSize: 1 }
nodes:
  cmp-a: { local: true, instancesPath: ${host.instancesPath}, prune: { maxSize: ${cache - a - b - 1} } }
aggregates:
  web: { nodes: [cmp-a], prune: { keepFree: 1M } }
  db: { nodes: [cmp-a], prune: { keepFree: 2M } }
`,
    )
    for (const selection of [
      ['--aggregate', 'web'],
      ['--node', 'cmp-a'],
    ]) {
      const r = await runCli(['prune', '--dry-run', '--config', cfg, ...selection, '--json'])
      expect(r.exitCode, r.stderr).toBe(0)
      const node = (r.json as PruneJson).nodes[0]!
      expect(node.space?.target).toEqual({
        keepFreeBytes: 2 * MiB,
        keepFreeFrom: 'aggregates.db.prune.keepFree',
        maxSizeBytes: cache - a - b - 1,
        maxSizeFrom: 'nodes.cmp-a.prune.maxSize',
      })
      expect(node.decisions.filter((d) => d.space).map((d) => d.name)).toEqual([B, C])
    }

    const flag = await runCli(['prune', '--dry-run', '--config', cfg, '--node', 'cmp-a', '--max-size', '1G', '--json'])
    const node = (flag.json as PruneJson).nodes[0]!
    expect(node.space?.target).toMatchObject({maxSizeBytes: 1024 ** 3, maxSizeFrom: '--max-size'})
    expect(node.decisions.filter((d) => d.space)).toEqual([])
    // Not a member of any aggregate: the prune section's.
    const local = await runCli([
      'prune',
      '--dry-run',
      '--config',
      cfg,
      '--instances-path',
      host.instancesPath,
      '--json',
    ])
    expect((local.json as PruneJson).nodes[0]!.space?.target).toMatchObject({
      keepFreeFrom: 'prune.keepFree',
      maxSizeBytes: 1,
      maxSizeFrom: 'prune.maxSize',
    })
  })
})

describe('imgcache prune by space on an SSH node (a real sshd, its instances path on a tmpfs)', () => {
  let nodes: TestNodes | undefined
  afterAll(async () => {
    await nodes?.stop()
  })

  it('takes the free space from the node and removes the same entries, in the same order, over SSH', async () => {
    nodes = await startNodes(1, {diskMb: 64, names: ['small']})
    const node = nodes.node('small')
    const host = await layout(node.instancesPath)
    const [a, b, c] = [await allocated(host.path(A)), await allocated(host.path(B)), await allocated(host.path(C))]
    const {free} = await freeBytes(host.instancesPath)
    const target = free + a + b + 1
    // The config as a file holds it (the input form: keepFree as bytes), the node's own prune section.
    const fleet = fleetConfig(nodes)
    const config = {
      ...fleet,
      nodes: {small: {...fleet.nodes!.small, instancesPath: host.instancesPath, prune: {keepFree: target}}},
    }
    const cfg = join(root, 'ssh-space.json')
    await writeFile(cfg, JSON.stringify(config))
    const before = await listing(host)
    const dry = await runCli(['prune', '--config', cfg, '--node', 'small', '--dry-run', '--json'])
    expect(dry.exitCode, dry.stderr).toBe(0)
    const planned = (dry.json as PruneJson).nodes[0]!
    expect(planned.decisions.filter((d) => d.space).map((d) => [d.name, d.space!.freeBytesAfter])).toEqual([
      [B, free + a + b],
      [C, free + a + b + c],
    ])
    expect(planned.space).toMatchObject({
      before: {freeBytes: free},
      target: {keepFreeFrom: 'nodes.small.prune.keepFree'},
    })
    expect(await listing(host)).toEqual(before)
    const run = await runCli(['prune', '--config', cfg, '--node', 'small', '--json'])
    expect(run.exitCode, run.stderr).toBe(0)
    expect((run.json as PruneJson).nodes[0]!.space).toMatchObject({reached: true, removed: 2})
    expect(Object.keys(await listing(host)).sort()).toEqual([D, E, LINK, PART, 'random.txt'].sort())
    expect((await freeBytes(host.instancesPath)).free).toBeGreaterThanOrEqual(target)
  })
})
