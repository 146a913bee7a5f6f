import {execa, type ResultPromise} from 'execa'
import {
  chmod,
  chown,
  lchown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it, onTestFinished} from 'vitest'

import type {PrecacheReport} from '../../src/commands/precache.js'
import type {ItemResult} from '../../src/lib/populate.js'

import {sha1} from '../fixtures/nova-host.js'
import {type CliResult, runCli, spawnCli} from '../helpers/cli.js'
import {contents, exists, until} from '../helpers/files.js'
import {type GlanceHandle, type GlanceImageJson, startGlance, uploadPrecacheImages} from '../helpers/glance.js'
import {makeImageCorpus} from '../helpers/image-corpus.js'
import {startNodes, type TestNode, type TestNodes} from '../helpers/nodes.js'
import {type HostUser, novaUser} from '../helpers/nova-user.js'
import {holdOsloLock} from '../helpers/oslo-lock.js'
import {payload, sha256} from '../helpers/payload.js'

// precache --via p2p over real sshd nodes on loopback: a real glance-api as the origin, Debian's
// opentracker and aria2c as the tracker and the seed on this machine, aria2c on every node. The safe
// path: what lands on the nodes, as whom, what is refused, what is left running or listening.

const MiB = 1024 * 1024
let work: string
let glanceDir: string
let glance: GlanceHandle
let fleet: TestNodes
let nova: HostUser
let qcow2: GlanceImageJson
let raw: GlanceImageJson
let unsafe: GlanceImageJson
const qcow2Content = payload(30, 5 * MiB)
const rawContent = payload(31, 3 * MiB + 512)
const FLEET = ['node1', 'node2', 'node3']

/** Where a node keeps one test's cache: a directory of its own under its instances dir, nova's. */
function onNode(node: TestNode, sub: string) {
  const root = path.join(node.instancesPath, sub)
  const cacheDir = path.join(root, '_base')
  return {
    cacheDir,
    final: (id: string) => path.join(cacheDir, sha1(id)),
    part: (id: string) => path.join(cacheDir, `${sha1(id)}.part`),
    root,
  }
}

async function writeConfig(
  sub: string,
  aggregates: Record<string, {images?: string[]; nodes: string[]; via?: string}>,
) {
  const nodes: Record<string, Record<string, number | string>> = {}
  for (const n of fleet.nodes) {
    const {root} = onNode(n, sub)
    await mkdir(root, {recursive: true})
    // nova must reach its instances path through the harness's directories (root's, 0700 by default).
    for (let d = path.dirname(root); d.startsWith(fleet.base); d = path.dirname(d)) await chmod(d, 0o755)
    // The instances path is nova's, as on a compute host: aria2c and everything it makes run as nova.
    await chown(root, nova.uid, nova.gid)
    nodes[n.name] = {
      host: n.host,
      identityFile: n.identityFile,
      instancesPath: root,
      knownHostsFile: n.knownHostsFile,
      port: n.port,
      user: n.user,
    }
  }

  const file = path.join(work, `${sub}.yaml`)
  await writeFile(file, JSON.stringify({aggregates, imageService: {endpoint: glance.url}, nodes}))
  return file
}

const spoolDir = () => path.join(work, 'spool')
const args = (configFile: string, rest: string[]) => [
  'precache',
  ...rest,
  '--config',
  configFile,
  '--spool-dir',
  spoolDir(),
]

function precache(configFile: string, rest: string[]): Promise<CliResult> {
  return runCli(args(configFile, rest), {timeoutMs: 110_000})
}

function parse(stdout: unknown): PrecacheReport {
  if (process.env.DEBUG_E2E) console.log(String(stdout))
  return JSON.parse(String(stdout)) as PrecacheReport
}

function item(report: PrecacheReport, node: string, id: string): ItemResult | undefined {
  return report.items.find((i) => i.node === node && i.image.id === id)
}

async function glanceDownloads(id: string): Promise<number> {
  const log = await readFile(path.join(glanceDir, 'glance-api.log'), 'utf8')
  return log.split('\n').filter((line) => line.includes(`"GET /v2/images/${id}/file `)).length
}

/** Every process's argv, and whether it runs on one of this file's nodes (their sessions' marker). */
async function processes(): Promise<Array<{argv: string; onNode: boolean}>> {
  const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p))
  const markers = fleet.nodes.map((n) => `IMGCACHE_TEST_NODE_DIR=${n.dir}`)
  const all = await Promise.all(
    pids.map(async (pid) => {
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ').trim()
      const environ = (await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '')).split('\0')
      return {argv, onNode: markers.some((m) => environ.includes(m))}
    }),
  )
  return all.filter((p) => p.argv !== '')
}

/** This file's runs' processes: on its nodes, or about its spool directory (the tracker, the seed). */
async function argvs(): Promise<string[]> {
  return (await processes()).filter((p) => p.onNode || p.argv.includes(spoolDir())).map((p) => p.argv)
}

/** The BitTorrent programs of a run still alive on this machine (the nodes are on it too). */
async function swarmProcesses(): Promise<string[]> {
  return (await argvs()).filter((a) => /^(?:\S*\/)?(?:aria2c|opentracker) /.test(a))
}

/** Listening sockets (TCP, UDP) of aria2c and opentracker, as ss sees them (no other test here runs them). */
async function swarmListeners(): Promise<string[]> {
  const {stdout} = await execa('ss', ['-Hlntup'])
  return stdout.split('\n').filter((l) => /"(?:aria2c|opentracker)"/.test(l))
}

/** The node-side aria2c processes (downloading or seeding) running on one of this file's nodes. */
async function nodeAria2c(name: string): Promise<string[]> {
  const marker = `IMGCACHE_TEST_NODE_DIR=${fleet.node(name).dir}`
  const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p))
  const found = await Promise.all(
    pids.map(async (pid) => {
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ')
      if (!/^(?:\S*\/)?aria2c .*--check-integrity=true/.test(argv)) return undefined
      const environ = (await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '')).split('\0')
      return environ.includes(marker) ? argv : undefined
    }),
  )
  return found.filter((a) => a !== undefined)
}

/** Every process argv on the machine, sampled until `child` ends: which kinds ran, and any leak. */
async function watch(child: ResultPromise, leak: RegExp): Promise<{leaks: string[]; seen: Set<string>}> {
  const seen = new Set<string>()
  const leaks: string[] = []
  while (child.exitCode === null && child.signalCode === null) {
    for (const a of await argvs()) {
      if (leak.test(a)) leaks.push(a.slice(0, 160))
      if (a.startsWith('opentracker ')) seen.add('tracker')
      if (/^aria2c .*--bt-seed-unverified=true/.test(a)) seen.add('seed')
      if (/^aria2c .*--check-integrity=true/.test(a)) seen.add('node-aria2c')
      if (a.startsWith('curl ')) seen.add('curl')
    }
  }

  return {leaks, seen}
}

/** A run whose node3 is held back by a real oslo lock on the image until release(). */
async function heldBack(sub: string, rest: string[]) {
  const configFile = await writeConfig(sub, {web: {nodes: FLEET}})
  const lockDir = path.join(onNode(fleet.node('node3'), sub).root, 'locks')
  await mkdir(lockDir, {recursive: true})
  await chown(lockDir, nova.uid, nova.gid)
  const holder = await holdOsloLock(lockDir, sha1(raw.id))
  onTestFinished(() => holder.kill())
  const child = spawnCli(args(configFile, ['--aggregate', 'web', '--via', 'p2p', '--json', ...rest, 'p2p-raw']), {
    timeoutMs: 110_000,
  })
  await until(
    'node1 and node2 to have the image',
    async () =>
      (await Promise.all(['node1', 'node2'].map((n) => exists(onNode(fleet.node(n), sub).final(raw.id))))).every(
        Boolean,
      ),
    90_000,
  )
  return {child, holder}
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-e2e-p2p-'))
  glanceDir = path.join(work, 'glance')
  await mkdir(spoolDir())
  let corpus: Awaited<ReturnType<typeof makeImageCorpus>>
  ;[fleet, glance, corpus, nova] = await Promise.all([
    startNodes(3),
    startGlance({dir: glanceDir}),
    makeImageCorpus(path.join(work, 'corpus')),
    novaUser(),
  ])
  ;[qcow2, raw, unsafe] = await uploadPrecacheImages(
    glance,
    work,
    {qcow2: qcow2Content, raw: rawContent},
    corpus['qcow2-backing-file'].path,
    'p2p',
  )
})

afterAll(async () => {
  await Promise.allSettled([fleet?.stop(), glance?.stop()])
  if (work) await rm(work, {force: true, recursive: true})
})

describe('imgcache precache --via p2p', () => {
  it('3 nodes × 2 images: one origin read each, nodes fill from the swarm as nova, every copy right; nothing left running or listening', async () => {
    const sub = 'happy'
    // via from the aggregate's config, not a flag.
    const configFile = await writeConfig(sub, {web: {images: ['p2p-qcow2', 'p2p-raw'], nodes: FLEET, via: 'p2p'}})
    const before = {qcow2: await glanceDownloads(qcow2.id), raw: await glanceDownloads(raw.id)}
    const child = spawnCli(args(configFile, ['--aggregate', 'web', '--json']), {timeoutMs: 110_000})
    // The nodes never talk to the image service: its address is in no process of theirs.
    const {leaks, seen} = await watch(child, new RegExp(`^(?!node |.*bin/run\\.js).*${new URL(glance.url).port}`))
    const result = await child
    expect(result.stderr).toBe('')
    expect(result.exitCode).toBe(0)
    const report = parse(result.stdout)
    expect(report).toMatchObject({originReads: 2, totals: {cached: 6, errors: 0}, via: 'p2p'})
    expect(report.p2pFallbacks).toEqual([])
    expect(seen).toEqual(new Set(['node-aria2c', 'seed', 'tracker']))
    expect(leaks).toEqual([])
    expect(await glanceDownloads(qcow2.id)).toBe(before.qcow2 + 1)
    expect(await glanceDownloads(raw.id)).toBe(before.raw + 1)
    for (const node of fleet.nodes) {
      const at = onNode(node, sub)
      expect(item(report, node.name, qcow2.id)).toMatchObject({converted: true, status: 'cached'})
      expect(item(report, node.name, raw.id)).toMatchObject({converted: false, status: 'cached'})
      expect(sha256(await readFile(at.final(qcow2.id)))).toBe(sha256(qcow2Content))
      expect(sha256(await readFile(at.final(raw.id)))).toBe(sha256(rawContent))
      // Everything in the cache dir is nova's, and nothing but the two bases is left (.part, .aria2, .torrent).
      const names = (await contents(at.cacheDir)).filter((n) => !n.startsWith('.imgcache'))
      expect(names.sort()).toEqual([sha1(qcow2.id), sha1(raw.id)].sort())
      const {stdout} = await execa('stat', ['-c', '%u:%g', at.final(qcow2.id), at.final(raw.id)])
      expect(stdout.split('\n')).toEqual([`${nova.uid}:${nova.gid}`, `${nova.uid}:${nova.gid}`])
    }

    await until('aria2c and opentracker to be gone', async () => (await swarmProcesses()).length === 0, 10_000).catch(
      () => undefined,
    )
    expect(await swarmProcesses()).toEqual([])
    expect(await swarmListeners()).toEqual([])
    expect(await contents(spoolDir())).toEqual([])

    const again = await precache(configFile, ['--aggregate', 'web', '--json'])
    expect(again.exitCode).toBe(0)
    expect(parse(again.stdout)).toMatchObject({totals: {cached: 0, existing: 6}})
  })

  it('a symlinked .part on one node is refused there (its target untouched); the others finish', async () => {
    const sub = 'symlink'
    const configFile = await writeConfig(sub, {web: {nodes: FLEET}})
    const at = onNode(fleet.node('node2'), sub)
    await mkdir(at.cacheDir, {recursive: true})
    await chown(at.cacheDir, nova.uid, nova.gid)
    const victim = path.join(work, 'victim')
    await writeFile(victim, 'precious')
    await symlink(victim, at.part(raw.id))
    const result = await precache(configFile, ['--aggregate', 'web', '--via', 'p2p', '--json', 'p2p-raw'])
    const report = parse(result.stdout)
    // Partial: some cached, one refused (the fleet contract).
    expect(result.exitCode).toBe(3)
    expect(item(report, 'node2', raw.id)).toMatchObject({code: 'UNSAFE_PATH', status: 'error'})
    expect(item(report, 'node1', raw.id)).toMatchObject({status: 'cached'})
    expect(item(report, 'node3', raw.id)).toMatchObject({status: 'cached'})
    expect(await readFile(victim, 'utf8')).toBe('precious')
    expect(await swarmProcesses()).toEqual([])
  })

  it('links nova planted at the .torrent and the .aria2 control file are refused (UNSAFE_PATH), their root-owned target untouched', async () => {
    const sub = 'control-links'
    const configFile = await writeConfig(sub, {web: {nodes: FLEET}})
    const victim = path.join(work, 'control-victim')
    await writeFile(victim, 'root only', {mode: 0o644})
    // As the instances path's owner could: a link at the name imgcache writes the torrent to (node2)
    // and at the name aria2c keeps its resume state in (node3), both pointing at a root-owned file.
    const planted = {
      node2: `${onNode(fleet.node('node2'), sub).part(raw.id)}.torrent`,
      node3: `${onNode(fleet.node('node3'), sub).part(raw.id)}.aria2`,
    }
    for (const [name, link] of Object.entries(planted)) {
      const {cacheDir} = onNode(fleet.node(name), sub)
      await mkdir(cacheDir, {recursive: true})
      await chown(cacheDir, nova.uid, nova.gid)
      await symlink(victim, link)
      await lchown(link, nova.uid, nova.gid)
    }

    const result = await precache(configFile, ['--aggregate', 'web', '--via', 'p2p', '--json', 'p2p-raw'])
    const report = parse(result.stdout)
    expect(result.exitCode).toBe(3)
    expect(item(report, 'node1', raw.id)).toMatchObject({status: 'cached'})
    for (const [name, link] of Object.entries(planted)) {
      expect(item(report, name, raw.id)).toMatchObject({code: 'UNSAFE_PATH', status: 'error'})
      expect(item(report, name, raw.id)?.message).toContain(link)
      // Refused, not cleared away: the operator finds the link where it was planted.
      expect(await readlink(link)).toBe(victim)
      expect(await contents(onNode(fleet.node(name), sub).cacheDir)).toEqual([path.basename(link)])
    }

    expect(await readFile(victim, 'utf8')).toBe('root only')
    expect((await stat(victim)).uid).toBe(0)
    expect(await swarmProcesses()).toEqual([])
  })

  it('an image the format inspector refuses (qcow2 with a backing file) is refused on every node, nothing cached', async () => {
    const sub = 'unsafe'
    const configFile = await writeConfig(sub, {web: {nodes: FLEET}})
    const result = await precache(configFile, ['--aggregate', 'web', '--via', 'p2p', '--json', 'p2p-backing-file'])
    const report = parse(result.stdout)
    // Nothing succeeded: 1 (the fleet contract), each item carrying the refusal's own exit code.
    expect(result.exitCode).toBe(1)
    for (const node of fleet.nodes) {
      expect(item(report, node.name, unsafe.id)?.exitCode).toBe(4)
      expect(item(report, node.name, unsafe.id)).toMatchObject({status: 'error'})
      expect(item(report, node.name, unsafe.id)?.code).toMatch(/QCOW2_BACKING_FILE|UNSAFE/)
      expect(await contents(onNode(node, sub).cacheDir).catch(() => [])).not.toContain(sha1(unsafe.id))
    }

    expect(await swarmProcesses()).toEqual([])
  })

  it('a node without aria2c is relayed to, said in the report; with --p2p-fallback none it ends error', async () => {
    const sub = 'fallback'
    const configFile = await writeConfig(sub, {web: {nodes: FLEET}})
    // Stand-in for a host where aria2 is not installed (this machine has it): what sh says then.
    const noAria2 = path.join(fleet.node('node3').binDir, 'aria2c')
    await writeFile(noAria2, '#!/bin/sh\necho "sh: 1: aria2c: not found" >&2\nexit 127\n', {mode: 0o755})
    try {
      const first = await precache(configFile, ['--aggregate', 'web', '--via', 'p2p', '--json', 'p2p-raw'])
      expect(first.exitCode).toBe(0)
      const report = parse(first.stdout)
      expect(report.p2pFallbacks).toEqual([{node: 'node3', reason: 'aria2c is not installed on the node'}])
      expect(item(report, 'node3', raw.id)).toMatchObject({message: expect.stringMatching(/relayed/), status: 'cached'})
      expect(item(report, 'node1', raw.id)?.message).toBeUndefined()
      expect(sha256(await readFile(onNode(fleet.node('node3'), sub).final(raw.id)))).toBe(sha256(rawContent))

      const strict = await precache(configFile, [
        '--aggregate',
        'web',
        '--via',
        'p2p',
        '--p2p-fallback',
        'none',
        '--force',
        '--json',
        'p2p-raw',
      ])
      expect(strict.exitCode).toBe(3)
      const strictReport = parse(strict.stdout)
      expect(item(strictReport, 'node3', raw.id)).toMatchObject({code: 'NODE_NO_ARIA2C', status: 'error'})
      expect(item(strictReport, 'node1', raw.id)).toMatchObject({status: 'cached'})
    } finally {
      await rm(noAria2, {force: true})
    }
  })

  describe("how long the nodes seed (node3 waits for nova-compute's lock, so the run outlives the others' downloads)", () => {
    it('by default, until the run ends: the nodes that are done still run aria2c when a late peer joins; none after', async () => {
      const {child, holder} = await heldBack('seed-default', [])
      expect(await nodeAria2c('node1')).toHaveLength(1)
      expect(await nodeAria2c('node2')).toHaveLength(1)
      await holder.release()
      await until('node3 to join the swarm', async () => (await nodeAria2c('node3')).length > 0, 60_000)
      // Still there for the late peer (they could only upload now), and the run has not ended.
      expect(await nodeAria2c('node1')).toHaveLength(1)
      expect(await nodeAria2c('node2')).toHaveLength(1)
      expect(child.exitCode).toBeNull()
      const result = await child
      expect(result.exitCode).toBe(0)
      expect(parse(result.stdout)).toMatchObject({totals: {cached: 3, errors: 0}})
      await until('no aria2c on any node', async () => (await swarmProcesses()).length === 0, 10_000).catch(
        () => undefined,
      )
      expect(await swarmProcesses()).toEqual([])
    })

    it('--seed-until 1s: a node stops seeding 1 s after its download while the run goes on; the late node finishes from the seed', async () => {
      const {child, holder} = await heldBack('seed-until', ['--seed-until', '1s'])
      await until(
        'node1 and node2 to stop seeding',
        async () => (await nodeAria2c('node1')).length === 0 && (await nodeAria2c('node2')).length === 0,
        30_000,
      )
      // They stopped by themselves: the run is still waiting for node3.
      expect(child.exitCode).toBeNull()
      await holder.release()
      const result = await child
      expect(result.exitCode).toBe(0)
      expect(parse(result.stdout)).toMatchObject({totals: {cached: 3, errors: 0}})
      expect(sha256(await readFile(onNode(fleet.node('node3'), 'seed-until').final(raw.id)))).toBe(sha256(rawContent))
      expect(await swarmProcesses()).toEqual([])
    })
  })

  it('imgcache SIGKILLed mid-swarm: its tracker and its seed end by themselves, no port stays open', async () => {
    const sub = 'sigkill'
    const configFile = await writeConfig(sub, {web: {nodes: FLEET}})
    const child = spawnCli(args(configFile, ['--aggregate', 'web', '--via', 'p2p', '--json', 'p2p-qcow2']), {
      timeoutMs: 110_000,
    })
    await until('the tracker to run', async () => (await argvs()).some((a) => a.startsWith('opentracker ')), 60_000)
    child.kill('SIGKILL')
    await child
    // opentracker drops to an unprivileged user (which clears a parent-death signal): only a watch
    // that does not rely on it ends it. A deadline, not a sleep: the machine may be slow.
    await until(
      'no opentracker, aria2c or listening port of the killed run',
      async () => (await swarmProcesses()).length === 0 && (await swarmListeners()).length === 0,
      10_000,
    ).catch(() => undefined)
    expect(await swarmProcesses()).toEqual([])
    expect(await swarmListeners()).toEqual([])
    // A killed run cannot remove its spool files; the next test's run starts with an empty spool.
    for (const entry of await contents(spoolDir()))
      await rm(path.join(spoolDir(), entry), {force: true, recursive: true})
  })
})
