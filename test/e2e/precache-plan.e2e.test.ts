import {lstat, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {PrecachePlanReport, PrecacheReport} from '../../src/commands/precache.js'
import type {ImgcacheConfig} from '../../src/lib/config/schema.js'

import {makeNovaHost, sha1} from '../fixtures/nova-host.js'
import {flat, runCli} from '../helpers/cli.js'
import {fleetConfig} from '../helpers/fleet.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../helpers/glance.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {payload, sha256} from '../helpers/payload.js'
import {deadPort} from '../helpers/ports.js'

// precache --dry-run and --in-use over real sshd nodes on loopback and a real glance-api: three
// nodes with instances laid out as Nova leaves them (libvirt.xml, qcow2 disks backed by bases),
// and a node nobody answers for.

const MiB = 1024 * 1024
let work: string
let glance: GlanceHandle
let nodes: TestNodes
let imageA: GlanceImageJson
let imageB: GlanceImageJson
/** Used by an instance of node2, deleted from Glance before the tests. */
let gone: GlanceImageJson
const contentA = payload(41, 2 * MiB)
const contentB = payload(42, MiB + 512)

/** The instances path of one test's layout on a node. */
const instancesOf = (node: string, sub: string) => path.join(nodes.node(node).instancesPath, sub, 'instances')

/**
 * node1: image A cached, an instance whose libvirt.xml names A and whose disk is backed by it.
 * node2: image B cached without any record of its id, an instance with no libvirt.xml backed by it
 * (its id is found by hashing Glance's ids), and an instance whose libvirt.xml names an image
 * Glance no longer has. node3: nothing.
 */
async function layOut(sub: string): Promise<void> {
  const root = (node: string) => path.join(nodes.node(node).instancesPath, sub)
  await makeNovaHost(root('node1'), {
    bases: [{age: 100, content: contentA, imageId: imageA.id}],
    instances: [{dir: 'inst-a', disks: [{backing: sha1(imageA.id)}], metadata: {imageId: imageA.id}}],
  })
  await makeNovaHost(root('node2'), {
    bases: [{age: 100, content: contentB, imageId: imageB.id}],
    instances: [
      {dir: 'inst-b', disks: [{backing: sha1(imageB.id)}]},
      {dir: 'inst-gone', metadata: {imageId: gone.id}},
    ],
  })
  await makeNovaHost(root('node3'), {})
}

async function writeConfig(sub: string, extra: Partial<ImgcacheConfig> = {}): Promise<string> {
  const base = fleetConfig(nodes, {imageService: {endpoint: glance.url}})
  const config: ImgcacheConfig = {
    ...base,
    aggregates: {
      fleet: {nodes: ['node1', 'node2', 'node3']},
      withGhost: {nodes: ['node1', 'node2', 'node3', 'ghost']},
    },
    nodes: {
      ...Object.fromEntries(
        Object.entries(base.nodes ?? {}).map(([name, n]) => [name, {...n, instancesPath: instancesOf(name, sub)}]),
      ),
      ghost: {host: '127.0.0.1', instancesPath: '/nonexistent', port: await deadPort()},
    },
    ...extra,
  }
  const file = path.join(work, `${sub}.json`)
  await writeFile(file, JSON.stringify(config))
  return file
}

/** Every file and directory under the nodes' instances paths of a layout: type, size, mode, mtime. */
async function tree(sub: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  const walk = async (dir: string): Promise<void> => {
    for (const name of await readdir(dir)) {
      const file = path.join(dir, name)
      const st = await lstat(file)
      out[file] = `${st.isDirectory() ? 'd' : 'f'} ${st.size} ${st.mode.toString(8)} ${st.mtimeMs}`
      if (st.isDirectory()) await walk(file)
    }
  }

  for (const node of ['node1', 'node2', 'node3']) await walk(instancesOf(node, sub))
  return out
}

function pair<T extends {image: {id: string}; node: string}>(items: T[], node: string, image: GlanceImageJson) {
  return items.find((i) => i.node === node && i.image.id === image.id)
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-e2e-plan-'))
  ;[glance, nodes] = await Promise.all([startGlance(), startNodes(3)])
  imageA = await glance.uploadImage({data: contentA, diskFormat: 'raw', name: 'plan-a'})
  imageB = await glance.uploadImage({data: contentB, diskFormat: 'raw', name: 'plan-b'})
  gone = await glance.uploadImage({data: payload(43, 4096), diskFormat: 'raw', name: 'plan-gone'})
  await glance.deleteImage(gone.id)
}, 120_000)

afterAll(async () => {
  await Promise.all([glance?.stop(), nodes?.stop()])
  if (work) await rm(work, {force: true, recursive: true})
})

describe('precache --dry-run', () => {
  it('plans every node and image from one scan each, changes nothing, and reports an unreachable node as a run would', async () => {
    await layOut('dry')
    const config = await writeConfig('dry')
    const before = await tree('dry')
    const downloads = await glanceDownloads()
    const result = await runCli([
      'precache',
      '--config',
      config,
      '--aggregate',
      'withGhost',
      '--dry-run',
      '--json',
      '--link-speeds',
      'origin=400mbit,bastion=1gbit,node=200mbit',
      imageA.id,
      imageB.id,
    ])
    const report = result.json as PrecachePlanReport
    // A run would skip the ghost node: partial (3), as the real run reports it.
    expect(result.exitCode, result.stderr).toBe(3)
    expect(report.dryRun).toBe(true)
    expect(pair(report.items, 'node1', imageA)).toMatchObject({bytes: contentA.length, status: 'existing'})
    expect(pair(report.items, 'node1', imageB)).toMatchObject({bytes: contentB.length, status: 'would-cache'})
    expect(pair(report.items, 'node2', imageB)?.status).toBe('existing')
    expect(pair(report.items, 'node3', imageA)?.status).toBe('would-cache')
    expect(pair(report.items, 'ghost', imageA)).toMatchObject({code: 'SSH_REFUSED', status: 'unreachable'})
    expect(report.totals).toMatchObject({existing: 2, unreachable: 2, 'would-cache': 4})

    // Would move: A to node2 and node3, B to node1 and node3.
    const moved = 2 * contentA.length + 2 * contentB.length
    const once = contentA.length + contentB.length
    const mode = (m: string) => report.plan.modes.find((x) => x.mode === m)!
    expect(mode('node')).toMatchObject({bastionBytes: 0, originBytes: moved})
    expect(mode('relay')).toMatchObject({bastionBytes: moved, originBytes: once})
    expect(mode('p2p')).toMatchObject({bastionBytes: once, originBytes: once})
    // node: all copies over the 400 Mbit origin link; p2p: read once, then one node's images at 200 Mbit.
    expect(mode('node').boundSeconds).toBeCloseTo(moved / 50e6)
    expect(mode('p2p').boundSeconds).toBeCloseTo(once / 50e6 + once / 25e6)

    // No download, no lock, no touch: every file, mode and mtime as it was.
    expect(await tree('dry')).toEqual(before)
    expect(await glanceDownloads()).toBe(downloads)
  })

  it('prints the run’s table and each mode’s bytes and bound for people', async () => {
    const config = await writeConfig('dry')
    const result = await runCli([
      'precache',
      '--config',
      config,
      '--aggregate',
      'fleet',
      '--dry-run',
      '--link-speeds',
      'origin=400mbit,node=200mbit',
      imageA.id,
    ])
    expect(result.exitCode, result.stderr).toBe(0)
    const out = flat(result.stdout)
    expect(out).toMatch(/node1 plan-a existing/)
    expect(out).toMatch(/node3 plan-a would-cache 2\.0 MiB/)
    expect(out).toMatch(/MODE ORIGIN SENDS BASTION SENDS BOUND LIMITED BY/)
    expect(out).toMatch(/relay 2\.0 MiB 4\.0 MiB \? -/)
    expect(out).toMatch(/Give --link-speeds/)
  })

  it('refuses a bad --link-speeds, naming it (exit 2)', async () => {
    const config = await writeConfig('dry')
    const result = await runCli([
      'precache',
      '--config',
      config,
      '-a',
      'fleet',
      '--dry-run',
      '--link-speeds',
      'node=fast',
      imageA.id,
    ])
    expect(result.exitCode).toBe(2)
    expect(flat(result.stderr)).toMatch(/--link-speeds node: expected a rate such as 200mbit/)
  })
})

/** GETs of image data in glance-api's access log (any image). */
async function glanceDownloads(): Promise<number> {
  const log = await readFile(path.join(glance.dir, 'glance-api.log'), 'utf8')
  return log.split('\n').filter((line) => /"GET \/v2\/images\/[^/]+\/file /.test(line)).length
}

describe('precache --in-use', () => {
  it('--dry-run: the images the instances use, by metadata and by base, planned where missing; a deleted one named', async () => {
    await layOut('inuse-plan')
    const config = await writeConfig('inuse-plan')
    const before = await tree('inuse-plan')
    const result = await runCli(['precache', '--config', config, '-a', 'fleet', '--in-use', '--dry-run', '--json'])
    expect(result.exitCode, result.stderr).toBe(0)
    const report = result.json as PrecachePlanReport
    expect(report.images.map((i) => i.id).sort()).toEqual([imageA.id, imageB.id].sort())
    expect(report.inUse?.missing).toEqual([
      expect.objectContaining({code: 'IMAGE_NOT_FOUND', id: gone.id, nodes: ['node2']}),
    ])
    expect(report.inUse?.images.find((i) => i.id === imageB.id)).toMatchObject({
      instances: ['node2: inst-b'],
      nodes: ['node2'],
    })
    expect(pair(report.items, 'node2', imageA)?.status).toBe('would-cache')
    expect(pair(report.items, 'node1', imageB)?.status).toBe('would-cache')
    expect(pair(report.items, 'node3', imageB)?.status).toBe('would-cache')
    expect(pair(report.items, 'node2', imageB)?.status).toBe('existing')
    expect(await tree('inuse-plan')).toEqual(before)
  })

  it('caches every image in use on every node that lacks it, and names the one Glance no longer has', async () => {
    await layOut('inuse')
    const config = await writeConfig('inuse')
    const result = await runCli(['precache', '--config', config, '-a', 'fleet', '--in-use', '--json'])
    expect(result.exitCode, result.stderr).toBe(0)
    const report = result.json as PrecacheReport
    expect(report.totals).toMatchObject({cached: 4, errors: 0, existing: 2})
    expect(report.inUse?.missing.map((m) => m.id)).toEqual([gone.id])
    for (const node of ['node1', 'node2', 'node3']) {
      const cache = path.join(instancesOf(node, 'inuse'), '_base')
      expect(sha256(await readFile(path.join(cache, sha1(imageA.id))))).toBe(sha256(contentA))
      expect(sha256(await readFile(path.join(cache, sha1(imageB.id))))).toBe(sha256(contentB))
    }

    const human = await runCli(['precache', '--config', config, '-a', 'fleet', '--in-use'])
    expect(human.exitCode).toBe(0)
    expect(flat(human.stdout)).toMatch(/: 6 of 6 node-image pairs already cached$/m)
    expect(flat(human.stderr)).toContain(`warning: image ${gone.id} is in use, but the image service no longer has it`)
  })
})
