import {createCipheriv, createHash} from 'node:crypto'
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
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
import {createTestNet, type TestNet, TESTNET_SH} from '../helpers/testnet.js'

// precache --via p2p on the test network (test/harness/testnet.sh): four sshd nodes, each in its own
// namespace behind a 40 Mbit/s link, glance-api in a host of its own, the CLI (and so the tracker
// and the seed) in the root namespace, "the bastion". What loopback cannot show: nodes that cannot
// reach each other, a link that goes silent mid-swarm, a node that dies mid-swarm. Needs root.

const MiB = 1024 * 1024
const RATE = '40mbit'
const NAMES = ['node1', 'node2', 'node3', 'node4']
let net: TestNet
let nodes: TestNodes
let glance: GlanceHandle
let work: string
let config: string
let image: GlanceImageJson
let content: Buffer

/** Incompressible bytes (an AES-CTR keystream) after a zeroed first 64 KiB that no format probe matches. */
function noise(seed: number, size: number): Buffer {
  const key = createHash('sha256').update(`p2p-net-${seed}`).digest()
  const data = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16)).update(Buffer.alloc(size))
  return data.fill(0, 0, 64 * 1024)
}

const cacheDir = (name: string) => path.join(nodes.node(name).instancesPath, '_base')

async function clearNodes(): Promise<void> {
  for (const n of nodes.nodes) {
    for (const entry of await readdir(n.instancesPath)) {
      await rm(path.join(n.instancesPath, entry), {force: true, recursive: true})
    }
  }
}

function precache(args: string[], timeoutMs = 150_000): Promise<CliResult> {
  return runCli(
    [
      'precache',
      '--aggregate',
      'net',
      '--via',
      'p2p',
      ...args,
      '--config',
      config,
      '--spool-dir',
      path.join(work, 'spool'),
      '--json',
    ],
    {
      timeoutMs,
    },
  )
}

function report(result: CliResult): PrecacheReport {
  if (!result.json) throw new Error(`no JSON report (exit ${result.exitCode}):\n${result.stderr.slice(-2000)}`)
  return result.json as PrecacheReport
}

const statuses = (r: PrecacheReport) => Object.fromEntries(r.items.map((i) => [i.node, i.status]))

async function cachedRight(name: string): Promise<boolean> {
  const data = await readFile(path.join(cacheDir(name), sha1(image.id))).catch(() => Buffer.alloc(0))
  return data.equals(content)
}

/** Inside a node's namespace: drop every packet to the other nodes (a firewall between them; the bastion stays reachable). */
async function isolate(name: string, others: string[], how: 'add' | 'del'): Promise<void> {
  const {execa} = await import('execa')
  for (const other of others) {
    await execa('bash', [
      TESTNET_SH,
      'exec',
      net.dir,
      name,
      'ip',
      'route',
      how,
      'blackhole',
      `${nodes.node(other).host}/32`,
    ])
  }
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-e2e-p2p-net-'))
  await mkdir(path.join(work, 'spool'))
  net = await createTestNet()
  nodes = await startNodes(NAMES.length, {names: NAMES, net, rate: RATE})
  const glanceAddress = await net.addHost('glance')
  glance = await startGlance({commandPrefix: ['bash', TESTNET_SH, 'exec', net.dir, 'glance'], host: glanceAddress})
  content = noise(1, 24 * MiB)
  image = await glance.uploadImage({data: content, diskFormat: 'raw', name: 'p2p-net-24m'})
  config = path.join(work, 'imgcache.json')
  await writeFile(config, JSON.stringify(fleetConfig(nodes, {aggregate: 'net', imageService: {endpoint: glance.url}})))
}, 180_000)

afterAll(async () => {
  await glance?.stop().catch(() => undefined)
  await nodes?.stop().catch(() => undefined)
  await net?.down()
  if (work) await rm(work, {force: true, recursive: true})
})

describe('precache --via p2p on a network that fails like a real one', () => {
  it('nodes firewalled from each other all finish from the seed alone', async () => {
    await clearNodes()
    for (const name of NAMES)
      await isolate(
        name,
        NAMES.filter((n) => n !== name),
        'add',
      )
    let result: CliResult
    try {
      result = await precache([image.id])
    } finally {
      for (const name of NAMES)
        await isolate(
          name,
          NAMES.filter((n) => n !== name),
          'del',
        )
    }

    expect(result.exitCode, result.stderr).toBe(0)
    expect(report(result)).toMatchObject({originReads: 1, totals: {cached: 4, errors: 0}})
    for (const name of NAMES) expect(await cachedRight(name)).toBe(true)
  })

  it('a node whose link goes silent and a node killed mid-swarm end `error` within the attempt timeout; the others finish', async () => {
    await clearNodes()
    const part = (name: string) => path.join(cacheDir(name), `${sha1(image.id)}.part`)
    const running = precache(['--attempt-timeout', '60', '--stall-timeout', '15', '--retries', '0', image.id])
    // aria2c writes pieces where they belong (no preallocation): a .part of a few MiB is well under way.
    await until(
      'node2 and node3 to be in the swarm',
      async () => (await sizeOf(part('node2'))) >= 2 * MiB && (await sizeOf(part('node3'))) >= 2 * MiB,
      90_000,
    )
    await net.link('node2', 'down')
    await nodes.killSshd('node3')
    const cut = Date.now()
    let result: CliResult
    try {
      result = await running
    } finally {
      await net.link('node2', 'up')
      await nodes.restartSshd('node3')
    }

    const afterCut = Date.now() - cut
    expect(result.exitCode, result.stderr).toBe(3)
    const r = report(result)
    expect(statuses(r)).toEqual({node1: 'cached', node2: 'error', node3: 'error', node4: 'cached'})
    // Bounded by the attempt timeout plus slack for a busy machine; never TCP's quarter of an hour.
    expect(afterCut).toBeLessThan(60_000 + 20_000)
    expect(await cachedRight('node1')).toBe(true)
    expect(await cachedRight('node4')).toBe(true)
    console.log(
      `p2p: run ended ${(afterCut / 1000).toFixed(1)} s after the cut; ${r.items
        .filter((i) => i.status === 'error')
        .map((i) => `${i.node}: ${i.code}: ${i.message}`)
        .join('; ')}`,
    )
    // Nothing of the run stays on the node that lost its link once it is back (aria2c watched its agent).
    await until(
      'no aria2c left',
      async () => {
        const {execa} = await import('execa')
        const {stdout} = await execa('pgrep', ['-f', `^aria2c .*${nodes.base}`], {reject: false})
        return stdout.trim() === ''
      },
      60_000,
    )
  })
})
