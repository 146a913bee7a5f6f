import {createCipheriv, createHash} from 'node:crypto'
import {mkdtemp, readdir, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {PrecacheReport} from '../../src/commands/precache.js'

import {sha1} from '../fixtures/nova-host.js'
import {type CliResult, runCli} from '../helpers/cli.js'
import {sizeOf, until} from '../helpers/files.js'
import {fleetConfig} from '../helpers/fleet.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../helpers/glance.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {osloSees} from '../helpers/oslo-lock.js'
import {createTestNet, type TestNet, TESTNET_SH, whileLinkDown} from '../helpers/testnet.js'

// precache over a real network that fails like one (test/harness/testnet.sh): three sshd nodes, each
// in its own network namespace behind a 40 Mbit/s link (5 MB/s, so a 24 MiB image takes seconds),
// and glance-api in a host of its own. The CLI runs in the root namespace and reaches every host
// through the bridge. What loopback cannot show: a link that goes silent in the middle of a
// transfer, and one node ten times slower than the others in relay mode. Needs root, as CI has.

const MiB = 1024 * 1024
const RATE = '40mbit'
const SLOW_RATE = '4mbit'

let net: TestNet
let nodes: TestNodes
let glance: GlanceHandle
let work: string
let config: string
let big: GlanceImageJson
let small: GlanceImageJson[]

/** Incompressible bytes (an AES-CTR keystream) after a zeroed first 64 KiB that no format probe matches. */
function noise(seed: number, size: number): Buffer {
  const key = createHash('sha256').update(`precache-net-${seed}`).digest()
  const data = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16)).update(Buffer.alloc(size))
  return data.fill(0, 0, 64 * 1024)
}

function cacheDir(name: string): string {
  return path.join(nodes.node(name).instancesPath, '_base')
}

/** Temporaries imgcache leaves while it works (`.part`, `.converted`) in a node's cache dir. */
async function temporaries(name: string): Promise<string[]> {
  const entries = await readdir(cacheDir(name)).catch(() => [] as string[])
  return entries.filter((e) => e.endsWith('.part') || e.endsWith('.converted'))
}

/** Empty every node's instances dir: each case starts from cold caches. */
async function clearNodes(): Promise<void> {
  for (const n of nodes.nodes) {
    for (const entry of await readdir(n.instancesPath)) {
      await rm(path.join(n.instancesPath, entry), {force: true, recursive: true})
    }
  }
}

function cli(args: string[], timeoutMs = 120_000): Promise<CliResult> {
  return runCli([...args, '--config', config, '--json'], {timeoutMs})
}

function precacheReport(result: CliResult): PrecacheReport {
  if (!result.json) throw new Error(`no JSON report (exit ${result.exitCode}):\n${result.stderr.slice(-2000)}`)
  return result.json as PrecacheReport
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-e2e-precache-net-'))
  net = await createTestNet()
  nodes = await startNodes(3, {net, rate: RATE})
  const glanceAddress = await net.addHost('glance')
  glance = await startGlance({commandPrefix: ['bash', TESTNET_SH, 'exec', net.dir, 'glance'], host: glanceAddress})
  big = await glance.uploadImage({data: noise(1, 24 * MiB), diskFormat: 'raw', name: 'net-24m'})
  small = [
    await glance.uploadImage({data: noise(2, 8 * MiB), diskFormat: 'raw', name: 'net-8m'}),
    await glance.uploadImage({data: noise(3, 6 * MiB), diskFormat: 'raw', name: 'net-6m'}),
  ]
  config = path.join(work, 'imgcache.json')
  const fleet = fleetConfig(nodes, {aggregate: 'net', imageService: {endpoint: glance.url}})
  await writeFile(config, JSON.stringify(fleet, null, 2))
}, 120_000)

afterAll(async () => {
  // Processes first (glance keeps its namespace alive), then the network.
  await glance?.stop().catch(() => undefined)
  await nodes?.stop().catch(() => undefined)
  await net?.down()
  await rm(work, {force: true, recursive: true})
})

describe('precache on a network that fails like a real one', () => {
  it('a node whose link goes silent mid-transfer ends `error` within the attempt timeout, the others are cached; once it is back, prune removes its temporaries and populate completes the image', async () => {
    await clearNodes()
    const part = path.join(cacheDir('node2'), `${sha1(big.id)}.part`)
    const started = Date.now()
    const running = cli(
      [
        'precache',
        '--aggregate',
        'net',
        '--via',
        'node',
        '--concurrency',
        '3',
        '--attempt-timeout',
        '20',
        '--retries',
        '0',
        big.id,
      ],
      150_000,
    )
    // The cut: node2's curl has written a few MiB of the 24 (about a second at 5 MB/s).
    await until('node2 to be downloading', async () => (await sizeOf(part)) >= 3 * MiB, 60_000)
    const {cutAt: cut, result} = await whileLinkDown(net, 'node2', running)

    const elapsed = Date.now() - started
    const afterCut = Date.now() - cut
    expect(result.exitCode, result.stderr).toBe(3) // partial
    // Bounded by the attempt timeout (20 s, counted from before the cut), plus slack for a busy
    // machine to write the report: a silent link never hangs the run as TCP alone would (~15 min).
    expect(afterCut).toBeLessThan(20_000 + 15_000)
    const report = precacheReport(result)
    const status = Object.fromEntries(report.items.map((i) => [i.node, i.status]))
    expect(status).toEqual({node1: 'cached', node2: 'error', node3: 'cached'})
    const failed = report.items.find((i) => i.node === 'node2')!
    expect(failed.message).toBeTruthy()
    console.log(
      `run ended ${(afterCut / 1000).toFixed(1)} s after the cut (${(elapsed / 1000).toFixed(1)} s in all); node2: ${failed.code}: ${failed.message}`,
    )
    for (const name of ['node1', 'node3']) {
      expect(await sizeOf(path.join(cacheDir(name), sha1(big.id)))).toBe(24 * MiB)
      expect(await temporaries(name)).toEqual([])
    }

    // The partial download is still on node2: nothing could remove it while the link was down.
    expect(await temporaries('node2')).toEqual([`${sha1(big.id)}.part`])

    // Back on the network. The node's side of the dropped session (the agent holding the nova lock
    // of the download) ends once sshd there notices its client is gone; until then the download
    // counts as in progress and prune rightly keeps it.
    const lock = path.join(nodes.node('node2').instancesPath, 'locks', `nova-${sha1(big.id)}`)
    const back = Date.now()
    await until(
      'node2 to release the lock of the dropped session',
      async () => (await osloSees(lock)) === 'FREE',
      60_000,
    )
    console.log(
      `node2 released the dropped session's lock ${((Date.now() - back) / 1000).toFixed(1)} s after its link came back`,
    )
    // Prune, with temporaries of any age removable, removes the partial download.
    const pruned = await cli(['prune', '--node', 'node2', '--resized-min-age', '0', '--domain-xml-dir', work])
    expect(pruned.exitCode, pruned.stderr).toBe(0)
    expect(await temporaries('node2'), `${pruned.stdout}\n${pruned.stderr}`).toEqual([])

    // And populate completes the image there.
    const populated = await cli(['populate', big.id, '--node', 'node2'])
    expect(populated.exitCode, `${populated.stdout}\n${populated.stderr}`).toBe(0)
    expect(await sizeOf(path.join(cacheDir('node2'), sha1(big.id)))).toBe(24 * MiB)
    expect(await temporaries('node2')).toEqual([])
  }, 240_000)

  it('relay: a node ten times slower than the others does not hold them back, and each image is read once', async () => {
    await clearNodes()
    await net.rate('node3', SLOW_RATE)
    let result: CliResult
    try {
      result = await cli([
        'precache',
        '--aggregate',
        'net',
        '--via',
        'relay',
        '--concurrency',
        '3',
        ...small.map((i) => i.id),
      ])
    } finally {
      await net.rate('node3', RATE)
    }

    expect(result.exitCode, result.stderr).toBe(0)
    const report = precacheReport(result)
    expect(report.originReads).toBe(small.length)
    expect(report.items.every((i) => i.status === 'cached')).toBe(true)
    const duration = (node: string, image: string) =>
      report.items.find((i) => i.node === node && i.image.id === image)!.durationMs!
    console.log(
      small
        .map((i) => `${i.name}: ${['node1', 'node2', 'node3'].map((n) => `${n} ${duration(n, i.id)} ms`).join(', ')}`)
        .join('; '),
    )
    for (const image of small) {
      const slow = duration('node3', image.id)
      for (const fast of ['node1', 'node2']) expect(duration(fast, image.id)).toBeLessThan(0.4 * slow)
    }
  }, 150_000)
})
