import {createCipheriv, createHash} from 'node:crypto'
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {PrecacheReport} from '../../src/commands/precache.js'

import {PRIVATE_SWARM} from '../../src/lib/node/swarm-host.js'
import {makeTorrent, PieceHasher, pieceLengthFor} from '../../src/lib/p2p/torrent.js'
import {sha1} from '../fixtures/nova-host.js'
import {type CliResult, runCli} from '../helpers/cli.js'
import {sizeOf, until} from '../helpers/files.js'
import {fleetConfig} from '../helpers/fleet.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../helpers/glance.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {createTestNet, type TestNet, TESTNET_SH, whileLinkDown} from '../helpers/testnet.js'

// precache --via p2p on the test network (test/harness/testnet.sh): four sshd nodes, each in its own
// namespace behind a 40 Mbit/s link, glance-api in a host of its own, the CLI (and so the tracker
// and the seed) in the root namespace, "the bastion". What loopback cannot show: nodes that cannot
// reach each other, a link that goes silent mid-swarm, a node that dies mid-swarm. Needs root.

const MiB = 1024 * 1024
const RATE = '40mbit'
/** The seed's link when the CLI runs in the bastion host: slower than the nodes', so that they fetch from others too. */
const BASTION_RATE = '16mbit'
const NAMES = ['node1', 'node2', 'node3', 'node4']
let net: TestNet
let nodes: TestNodes
let glance: GlanceHandle
let work: string
let config: string
let image: GlanceImageJson
let content: Buffer
/** The bastion host's address: imgcache's runs in it have their tracker and seed behind its capped link. */
let bastion: string

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

function precache(args: string[], timeoutMs = 150_000, commandPrefix?: string[]): Promise<CliResult> {
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
    {commandPrefix, timeoutMs},
  )
}

/** precache run inside the bastion host, whose link (the tracker's and the seed's) is slow and can be cut. */
function precacheOnBastion(args: string[]): Promise<CliResult> {
  return precache(['--p2p-address', bastion, ...args], 150_000, ['bash', TESTNET_SH, 'exec', net.dir, 'bastion'])
}

/** The port of the tracker a run started on the bastion (from its argv), once it runs. */
async function trackerPort(): Promise<number | undefined> {
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
    if (argv[0] === 'opentracker' && argv.includes(bastion) && argv.join(' ').includes(work)) {
      return Number(argv[argv.indexOf('-p') + 1])
    }
  }

  return undefined
}

/** No aria2c of this file's runs left on any node. */
async function noAria2cOnNodes(): Promise<boolean> {
  const {execa} = await import('execa')
  const {stdout} = await execa('pgrep', ['-f', `^aria2c .*${nodes.base}`], {reject: false})
  return stdout.trim() === ''
}

/** This file's runs' tracker and seed (their files are under its spool) still alive on this machine. */
async function runProcesses(): Promise<string[]> {
  const found: string[] = []
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ')
    if (/^(?:\S*\/)?(?:aria2c|opentracker) /.test(argv) && argv.includes(path.join(work, 'spool'))) found.push(argv)
  }

  return found
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
  bastion = await net.addHost('bastion', BASTION_RATE)
  await net.addHost('rogue')
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
    await until('no aria2c left', noAria2cOnNodes, 60_000)
  })

  it('a peer serving tampered pieces: what it uploads is rejected by the piece hashes and fetched again; every node ends with the image', async () => {
    await clearNodes()
    const name = `${sha1(image.id)}.part`
    const rogueDir = path.join(work, 'rogue')
    await mkdir(rogueDir, {recursive: true})
    // Every 4 KiB of the copy it serves is wrong, so every piece it sends fails its hash.
    const tampered = Buffer.from(content)
    for (let i = 0; i < tampered.length; i += 4096) tampered[i] = tampered[i]! ^ 0xff
    await writeFile(path.join(rogueDir, name), tampered)
    const pieceLength = pieceLengthFor(content.length)
    const hasher = new PieceHasher(pieceLength)
    hasher.update(content)
    const pieces = hasher.finish()
    const running = precacheOnBastion(['--stall-timeout', '20', '--retries', '0', image.id])
    let port: number | undefined
    await until(
      "the run's tracker",
      async () => {
        port = await trackerPort()
        return port !== undefined
      },
      100_000,
    )
    // The same info dictionary, so the same info hash: the tracker's whitelist lets the rogue in.
    const torrent = makeTorrent({
      announce: `http://${bastion}:${port}/announce`,
      length: content.length,
      name,
      pieceLength,
      pieces,
    })
    const torrentFile = path.join(rogueDir, 'rogue.torrent')
    await writeFile(torrentFile, torrent.bytes)
    const rogue = net.exec(
      'rogue',
      [
        'aria2c',
        `--dir=${rogueDir}`,
        '--bt-seed-unverified=true',
        '--check-integrity=false',
        '--seed-ratio=0.0',
        '--seed-time=10',
        ...PRIVATE_SWARM,
        '--listen-port=6990',
        '--summary-interval=1',
        '--show-console-readout=false',
        '--console-log-level=warn',
        torrentFile,
      ],
      {all: true, reject: false},
    )
    let result: CliResult
    try {
      result = await running
    } finally {
      rogue.kill('SIGTERM')
    }

    const said = String((await rogue).all ?? '')
    const uploads = [...said.matchAll(/ UL:[\d.]+\w*B\(([\d.]+)(B|KiB|MiB|GiB)\)/g)]
    const last = uploads.at(-1)
    const uploaded = last ? Number(last[1]) * {B: 1, GiB: 1024 ** 3, KiB: 1024, MiB: 1024 ** 2}[last[2] as 'B'] : 0
    console.log(
      `p2p tampered: the rogue uploaded ${(uploaded / MiB).toFixed(1)} MiB of wrong pieces; exit ${result.exitCode}`,
    )
    // The rogue did serve the nodes: every byte it sent was wrong.
    expect(uploaded, said.slice(-1500)).toBeGreaterThan(0)
    expect(result.exitCode, result.stderr).toBe(0)
    expect(report(result)).toMatchObject({totals: {cached: 4, errors: 0}})
    for (const n of NAMES) expect(await cachedRight(n)).toBe(true)
    expect(await runProcesses()).toEqual([])
  })

  it("the seed's link cut after the nodes started: every node ends within the attempt timeout, cached right or `error`; nothing left running or listening", async () => {
    await clearNodes()
    const part = (name: string) => path.join(cacheDir(name), `${sha1(image.id)}.part`)
    const running = precacheOnBastion(['--attempt-timeout', '60', '--stall-timeout', '15', '--retries', '0', image.id])
    await until(
      'the nodes to be under way',
      async () => (await Promise.all(NAMES.map((n) => sizeOf(part(n))))).some((size) => size >= 2 * MiB),
      100_000,
    )
    // Silently: the tracker, the seed and imgcache's SSH sessions go quiet at once.
    const {cutAt: cut, result} = await whileLinkDown(net, 'bastion', running)

    const afterCut = Date.now() - cut
    const r = report(result)
    console.log(
      `p2p seed cut: run ended ${(afterCut / 1000).toFixed(1)} s after the cut, exit ${result.exitCode}: ${JSON.stringify(statuses(r))}`,
    )
    expect(afterCut).toBeLessThan(60_000 + 20_000)
    const cached = NAMES.filter((n) => statuses(r)[n] === 'cached')
    for (const n of NAMES) expect(['cached', 'error']).toContain(statuses(r)[n])
    for (const n of cached) expect(await cachedRight(n)).toBe(true)
    // The fleet contract: 1 when no node got the image, 3 when some did.
    expect(result.exitCode).toBe(cached.length === 0 ? 1 : 3)
    expect(await runProcesses()).toEqual([])
    const {stdout: listeners} = await net.exec('bastion', ['ss', '-Hlntup'])
    expect(
      String(listeners)
        .split('\n')
        .filter((l) => /"(?:aria2c|opentracker)"/.test(l)),
    ).toEqual([])
    await until('no aria2c left on the nodes', noAria2cOnNodes, 60_000)
  })
})
