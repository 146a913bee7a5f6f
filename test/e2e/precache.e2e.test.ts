import {execa, type ResultPromise} from 'execa'
import got from 'got'
import {mkdir, mkdtemp, open, readdir, readFile, rm, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it, onTestFinished} from 'vitest'

import type {InspectReport} from '../../src/commands/inspect.js'
import type {PrecacheReport} from '../../src/commands/precache.js'
import type {ItemResult} from '../../src/lib/populate.js'

import {shellCommand} from '../../src/lib/node/quote.js'
import {imageUuid, sha1} from '../fixtures/nova-host.js'
import {BIN, type CliResult, flat, runCli, spawnCli} from '../helpers/cli.js'
import {contents, exists, sizeOf, until} from '../helpers/files.js'
import {type GlanceHandle, type GlanceImageJson, startGlance, uploadPrecacheImages} from '../helpers/glance.js'
import {makeImageCorpus} from '../helpers/image-corpus.js'
import {type ImageServer, startImageServer} from '../helpers/image-server.js'
import {type KeystoneHandle, startKeystone} from '../helpers/keystone.js'
import {startNodes, type TestNode, type TestNodes} from '../helpers/nodes.js'
import {osloSees} from '../helpers/oslo-lock.js'
import {payload, sha256, sparsePayload} from '../helpers/payload.js'
import {deadPort} from '../helpers/ports.js'

// bin/run.js precache over real sshd nodes on loopback, as an operator runs it from a bastion:
// exit codes, the JSON report, the files on every node, the processes left (or not) on them. One
// glance-api without Keystone for the file, a small HTTP server for slow transfers; a Keystone
// and a glance-api behind it only for the secrets case.

const MiB = 1024 * 1024
let work: string
let glanceDir: string
let glance: GlanceHandle
let server: ImageServer
let fleet: TestNodes
/** A node of its own whose instances directory is a 16 MiB tmpfs. */
let small: TestNodes
let keystone: KeystoneHandle
/** A glance-api behind Keystone, for the secrets case. */
let secured: GlanceHandle
let secretImage: GlanceImageJson
const secretContent = payload(22, 6 * MiB)
let qcow2: GlanceImageJson
let raw: GlanceImageJson
let unsafe: GlanceImageJson
const qcow2Content = payload(20, 3 * MiB)
const rawContent = payload(21, 2 * MiB + 512)

interface ErrorJson {
  error: {code: string; message: string; suggestions: string[]}
  status: number
}

/** Where a node keeps one test's cache: a directory of its own under the node's instances dir. */
function onNode(node: TestNode, sub: string) {
  const root = path.join(node.instancesPath, sub)
  const cacheDir = path.join(root, '_base')
  return {
    cacheDir,
    final: (id: string) => path.join(cacheDir, sha1(id)),
    lock: (id: string) => path.join(root, 'locks', `nova-${sha1(id)}`),
    part: (id: string) => path.join(cacheDir, `${sha1(id)}.part`),
    root,
  }
}

interface ConfigOptions {
  aggregates: Record<string, {images?: string[]; nodes: string[]}>
  /** Image aliases (url, checksum, id) outside Glance. */
  images?: Record<string, {checksum: string; diskFormat: string; id: string; url: string}>
  /** Default: the Glance without Keystone; null: none (OS_CLOUD and clouds.yaml from the environment). */
  imageService?: null | Record<string, string>
  /** Nodes besides the fleet's (a node nobody answers for, say). */
  nodes?: Record<string, Record<string, number | string>>
}

/** A config file for one test: every test node, its instances path under `sub`, and the aggregates. */
async function writeConfig(sub: string, options: ConfigOptions): Promise<string> {
  const nodes: Record<string, Record<string, number | string>> = {}
  for (const n of [...fleet.nodes, ...small.nodes]) {
    nodes[n.name] = {
      host: n.host,
      identityFile: n.identityFile,
      instancesPath: onNode(n, sub).root,
      knownHostsFile: n.knownHostsFile,
      port: n.port,
      user: n.user,
    }
  }

  const file = path.join(work, `${sub}.yaml`)
  await writeFile(
    file,
    JSON.stringify({
      aggregates: options.aggregates,
      images: options.images,
      imageService: options.imageService === null ? undefined : (options.imageService ?? {endpoint: glance.url}),
      nodes: {...nodes, ...options.nodes},
    }),
  )
  return file
}

function precache(configFile: string, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return runCli(['precache', ...args, '--config', configFile, '--spool-dir', spoolDir()], {env, timeoutMs: 110_000})
}

/** The CLI in a process group of its own (what a terminal's Ctrl-C reaches), not awaited; killed when the test ends. */
function spawnPrecache(
  configFile: string,
  args: string[],
  options: {env?: Record<string, string>; timeoutMs?: number} = {},
): ResultPromise {
  return spawnCli(['precache', ...args, '--config', configFile, '--spool-dir', spoolDir()], {
    detached: true,
    ...options,
  })
}

/**
 * Ctrl-C (SIGINT to the process group, as a terminal sends it) once the `.part` of `imageId` is
 * growing on every node of the fleet. Returns the run's result and how long it took to end.
 */
async function interruptWhileDownloading(child: ResultPromise, sub: string, imageId: string) {
  for (const node of fleet.nodes) {
    await until(
      `the .part to grow on ${node.name}`,
      async () => (await sizeOf(onNode(node, sub).part(imageId))) >= 128 * 1024,
    )
  }

  const interruptedAt = Date.now()
  process.kill(-child.pid!, 'SIGINT')
  const result = await child
  return {endedAfterMs: Date.now() - interruptedAt, result}
}

const spoolDir = () => path.join(work, 'spool')

function parse<T>(stdout: unknown): T {
  if (process.env.DEBUG_E2E) console.log(String(stdout))
  return JSON.parse(String(stdout)) as T
}

function item(report: PrecacheReport, node: string, imageId: string): ItemResult | undefined {
  return report.items.find((i) => i.node === node && i.image.id === imageId)
}

async function fileSha256(file: string): Promise<string> {
  return sha256(await readFile(file))
}

/** GETs of an image's data in glance-api's access log. */
async function glanceDownloads(id: string): Promise<number> {
  const log = await readFile(path.join(glanceDir, 'glance-api.log'), 'utf8')
  return log.split('\n').filter((line) => line.includes(`"GET /v2/images/${id}/file `)).length
}

async function procEntries(): Promise<string[]> {
  return (await readdir('/proc')).filter((p) => /^\d+$/.test(p))
}

/**
 * Processes a node's sshd started (remote commands: the agent, curl, cat) that are still alive: the
 * harness puts IMGCACHE_TEST_NODE_DIR=<node dir> in every session's environment.
 */
async function remoteProcesses(node: TestNode): Promise<string[]> {
  const marker = `IMGCACHE_TEST_NODE_DIR=${node.dir}`
  const found: string[] = []
  for (const pid of await procEntries()) {
    const environ = await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '')
    if (!environ.split('\0').includes(marker)) continue
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    if (cmdline) found.push(`${pid}: ${cmdline.replaceAll('\0', ' ').slice(0, 120)}`)
  }

  return found
}

/** Local ssh clients (sessions, multiplexing masters) still connected to a node's port. */
async function sshClients(node: TestNode): Promise<string[]> {
  const found: string[] = []
  for (const pid of await procEntries()) {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
    if (!argv[0]?.endsWith('ssh')) continue
    const p = argv.indexOf('-p')
    if (p !== -1 && argv[p + 1] === String(node.port)) found.push(`${pid}: ${argv.join(' ').slice(0, 120)}`)
  }

  return found
}

/** Nothing of the run is left: no remote command on any node, no ssh client to any of them. */
async function expectNoLeftovers(nodes: TestNode[]): Promise<void> {
  const left = async () =>
    (await Promise.all(nodes.map(async (n) => [...(await remoteProcesses(n)), ...(await sshClients(n))]))).flat()
  await until('the run to leave no process behind', async () => (await left()).length === 0, 10_000).catch(
    () => undefined,
  )
  expect(await left()).toEqual([])
}

/** Temporaries and lock states of every node, for "nothing left behind". */
async function temporaries(nodes: TestNode[], sub: string): Promise<string[]> {
  const found: string[] = []
  for (const n of nodes) {
    for (const name of await contents(onNode(n, sub).cacheDir)) {
      if (name.endsWith('.part') || name.endsWith('.converted')) found.push(`${n.name}:${name}`)
    }
  }

  return found
}

/** SSH logins each fleet node's sshd has accepted so far. */
async function sshdLogins(): Promise<number[]> {
  return Promise.all(
    fleet.nodes.map(async (n) => {
      const log = await readFile(path.join(n.dir, 'sshd.log'), 'utf8')
      return log.split('\n').filter((line) => line.includes('Accepted publickey')).length
    }),
  )
}

async function glanceAnswers(): Promise<boolean> {
  return got(`${glance.url}/versions`, {retry: {limit: 0}, throwHttpErrors: false, timeout: {request: 5000}}).then(
    (response) => response.ok,
    () => false,
  )
}

/** `curl` and the writer first on the nodes' PATH, rate-limited: a node's downloads and writes take seconds. */
async function slowNodes(nodes: TestNode[]): Promise<void> {
  const curl = '#!/bin/sh\nexec /usr/bin/curl --limit-rate 2M "$@"\n'
  await Promise.all(
    nodes.flatMap((n) => [
      writeFile(path.join(n.binDir, 'curl'), curl, {mode: 0o755}),
      writeFile(path.join(n.binDir, 'python3'), SLOW_WRITER, {mode: 0o755}),
    ]),
  )
}

async function fastNodes(nodes: TestNode[]): Promise<void> {
  const wrappers = nodes.flatMap((n) => [path.join(n.binDir, 'curl'), path.join(n.binDir, 'python3')])
  await Promise.all(wrappers.map((file) => rm(file, {force: true})))
}

/**
 * Reads every process's argv on the machine (the nodes' processes are local ones too: sshd
 * sessions, agents, curl) again and again until `child` exits: what `leaks` finds in any of them,
 * how many passes, and which of the run's kinds of process were seen.
 */
async function watchArgvs(
  child: ResultPromise,
  leaks: (text: string) => string[],
): Promise<{found: string[]; samples: number; seen: Set<string>}> {
  const found: string[] = []
  const seen = new Set<string>()
  let samples = 0
  while (child.exitCode === null && child.signalCode === null) {
    const pids = await procEntries()
    const argvs = await Promise.all(pids.map((pid) => readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')))
    for (const [i, raw] of argvs.entries()) {
      const argv = raw.replaceAll('\0', ' ')
      if (argv === '') continue
      for (const leak of leaks(argv)) found.push(`${pids[i]} ${argv.slice(0, 80)}: ${leak}`)
      if (/curl .*--config - /.test(argv)) seen.add('curl')
      // The agent: python3 by name, or /usr/bin/python3 when a slow-disk wrapper stands first on the PATH.
      // A node's agent is its boot loader (the program comes on stdin); the local one carries the program.
      if (/^(?:\S*\/)?python3 -c .*(?:imgcache-agent|fcntl)/s.test(argv)) seen.add('agent')
      if (/^ssh .*BatchMode=yes/.test(argv)) seen.add('ssh')
      if (argv.startsWith('sshd: ')) seen.add('sshd')
    }

    samples++
  }

  return {found, samples, seen}
}

/** After a test killed it: the same data directory (images and database), a new port. */
async function restartGlance(): Promise<void> {
  await glance.stop()
  glance = await startGlance({dir: glanceDir})
}

/** A node of the config that nobody answers for: sshd is not running on its port. */
function ghostNode(port: number): Record<string, number | string> {
  const like = fleet.node('node1')
  return {
    host: '127.0.0.1',
    identityFile: like.identityFile,
    instancesPath: path.join(work, 'ghost'),
    knownHostsFile: like.knownHostsFile,
    port,
    user: like.user,
  }
}

/** Serve `data` at /<name> from the fixture server, and return the alias the config names it by. */
function slowAlias(name: string, data: Buffer, rate: number) {
  server.serve(`/${name}`, {data, rate})
  return {checksum: `sha256:${sha256(data)}`, diskFormat: 'raw', id: imageUuid(name), url: server.url(`/${name}`)}
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-e2e-precache-'))
  glanceDir = path.join(work, 'glance')
  await mkdir(spoolDir())
  let corpus: Awaited<ReturnType<typeof makeImageCorpus>>
  const keystoneGlance = async () => {
    keystone = await startKeystone()
    secured = await startGlance({auth: 'keystone', keystone})
    secretImage = await secured.uploadImage({data: secretContent, diskFormat: 'raw', name: 'e2e-secret'})
  }

  ;[fleet, small, glance, server, corpus] = await Promise.all([
    startNodes(3),
    startNodes(1, {diskMb: 16, names: ['small']}),
    startGlance({dir: glanceDir}),
    startImageServer(),
    makeImageCorpus(path.join(work, 'corpus')),
    keystoneGlance(),
  ])
  ;[qcow2, raw, unsafe] = await uploadPrecacheImages(
    glance,
    work,
    {qcow2: qcow2Content, raw: rawContent},
    corpus['qcow2-backing-file'].path,
    'e2e',
  )
})

afterAll(async () => {
  await Promise.allSettled([fleet?.stop(), small?.stop(), server?.close(), glance?.stop(), secured?.stop()])
  await keystone?.stop()
  if (work) await rm(work, {force: true, recursive: true})
})

const FLEET = ['node1', 'node2', 'node3']

/**
 * A node's side of a relayed write is imgcache's python3 writer (owner-py.ts WRITER_PY, known by its
 * `imgcache-unsafe` marker). These wrappers stand first on a node's PATH as `python3`: every other
 * python3 (the agent) runs as it is; the writer gets its stdin through `filter` first.
 */
function writerWrapper(filter: string): string {
  return `#!/bin/sh
case "$*" in
  *imgcache-unsafe*) /usr/bin/python3 -c '${filter}' | /usr/bin/python3 "$@"; exit $? ;;
esac
exec /usr/bin/python3 "$@"
`
}

/** A writer on a slow disk: about 1 MiB/s. */
const SLOW_WRITER = writerWrapper(`
import sys, time
while True:
    b = sys.stdin.buffer.read1(65536)
    if not b: break
    sys.stdout.buffer.write(b); sys.stdout.buffer.flush(); time.sleep(len(b) / 1048576)
`)

/** A writer on a hung disk: it takes 1 MiB, then reads nothing more for 20 s. */
const HUNG_WRITER = writerWrapper(`
import sys, time
taken = 0
while taken < 1048576:
    b = sys.stdin.buffer.read1(65536)
    if not b: break
    taken += len(b)
time.sleep(20)
sys.exit(1)
`)

describe('imgcache precache', () => {
  it.each(['node', 'relay'])(
    '--via %s: 3 nodes × 2 images from Glance all cached and correct; a second run finds them all existing',
    async (via) => {
      const sub = `happy-${via}`
      const configFile = await writeConfig(sub, {aggregates: {web: {images: ['e2e-qcow2', 'e2e-raw'], nodes: FLEET}}})
      const before = {qcow2: await glanceDownloads(qcow2.id), raw: await glanceDownloads(raw.id)}
      const first = await precache(configFile, ['--aggregate', 'web', '--via', via, '--json'])
      expect(first.stderr).toBe('')
      expect(first.exitCode).toBe(0)
      const report = parse<PrecacheReport>(first.stdout)
      expect(report).toMatchObject({
        aggregate: 'web',
        totals: {cached: 6, errors: 0, existing: 0, notNeeded: 0, skippedHosts: 0},
        via,
      })
      for (const node of fleet.nodes) {
        const at = onNode(node, sub)
        expect(item(report, node.name, qcow2.id)).toMatchObject({
          converted: true,
          path: at.final(qcow2.id),
          status: 'cached',
        })
        expect(item(report, node.name, raw.id)).toMatchObject({
          converted: false,
          path: at.final(raw.id),
          status: 'cached',
        })
        // The qcow2 converted to raw on the node is the disk it was made from, byte for byte.
        expect(await fileSha256(at.final(qcow2.id))).toBe(sha256(qcow2Content))
        expect(await fileSha256(at.final(raw.id))).toBe(sha256(rawContent))
        expect(await contents(at.cacheDir)).toEqual(['.imgcache', sha1(qcow2.id), sha1(raw.id)].sort())
        expect(await osloSees(at.lock(qcow2.id))).toBe('FREE')
      }

      const reads = {
        qcow2: (await glanceDownloads(qcow2.id)) - before.qcow2,
        raw: (await glanceDownloads(raw.id)) - before.raw,
      }
      if (via === 'relay') {
        // One origin read per image, whatever the node count.
        expect(report.originReads).toBe(2)
        expect(reads).toEqual({qcow2: 1, raw: 1})
      } else {
        // Each node fetched from Glance itself.
        expect(report.originReads).toBeUndefined()
        expect(reads).toEqual({qcow2: 3, raw: 3})
      }

      expect(await contents(spoolDir())).toEqual([])
      await expectNoLeftovers(fleet.nodes)

      const second = await precache(configFile, ['--aggregate', 'web', '--via', via])
      expect(second.exitCode).toBe(0)
      for (const node of FLEET) {
        for (const name of ['e2e-qcow2', 'e2e-raw'])
          expect(second.stdout).toMatch(new RegExp(`${node}\\s+${name}\\s+existing`))
      }

      expect(second.stdout).toContain(': 6 of 6 node-image pairs already cached')
      // Nothing was read from Glance for images every node already had.
      expect(await glanceDownloads(qcow2.id)).toBe(before.qcow2 + reads.qcow2)
      expect(await glanceDownloads(raw.id)).toBe(before.raw + reads.raw)
      if (via === 'relay') expect(second.stdout).toContain('the image service was read 0 times')
    },
  )

  it('overlay, inspect and prune on an SSH node: the base is populated, used, reported and kept; an old unused base goes', async () => {
    const sub = 'ssh-ops'
    const at = onNode(fleet.node('node1'), sub)
    const configFile = await writeConfig(sub, {aggregates: {web: {nodes: ['node1']}}})
    const dest = path.join(at.root, 'vm-1', 'disk')
    await mkdir(path.dirname(dest), {recursive: true})
    const overlay = (args: string[]) =>
      runCli(['overlay', ...args, '--node', 'node1', '--config', configFile, '--json'])
    const made = await overlay(['e2e-raw', dest, '--size', '64M'])
    expect(made.exitCode).toBe(0)
    expect(parse<{base: {status: string}; overlay: Record<string, unknown>}>(made.stdout)).toMatchObject({
      base: {status: 'cached'},
      overlay: {backingFile: at.final(raw.id), backingFormat: 'raw', path: dest, virtualSize: 64 * MiB},
    })
    const info = JSON.parse((await execa('qemu-img', ['info', '-U', '--output=json', dest])).stdout) as Record<
      string,
      unknown
    >
    expect(info).toMatchObject({
      'backing-filename': at.final(raw.id),
      'backing-filename-format': 'raw',
      format: 'qcow2',
    })
    const again = await overlay(['e2e-raw', dest])
    expect(again.exitCode).toBe(2)
    expect(parse<ErrorJson>(again.stdout).error.code).toBe('DEST_EXISTS')
    expect(await contents(path.dirname(dest))).toEqual(['disk'])

    // A base nobody uses, two days old: the one thing prune may take.
    const old = path.join(at.cacheDir, sha1('retired-image'))
    await writeFile(old, 'retired')
    const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000)
    await utimes(old, twoDaysAgo, twoDaysAgo)
    const inspected = await runCli(['inspect', '--node', 'node1', '--config', configFile, '--json'])
    expect(inspected.exitCode).toBe(0)
    const [view] = parse<{nodes: Array<{entries: Array<{name: string; prune: {outcome: string}; users: string[]}>}>}>(
      inspected.stdout,
    ).nodes
    const entry = (name: string) => view?.entries.find((e) => e.name === name)
    expect(entry(sha1(raw.id))).toMatchObject({prune: {outcome: 'in-use'}, users: ['vm-1']})
    expect(entry(sha1('retired-image'))).toMatchObject({prune: {outcome: 'would-remove'}, users: []})

    // --verify hashes the base on the node itself (the SSH node's digest) and asks Glance for its own.
    const verified = await runCli(['inspect', '--verify', '--node', 'node1', '--config', configFile, '--json'])
    expect(verified.exitCode).toBe(0)
    const [checked] = parse<InspectReport>(verified.stdout).nodes
    const verdict = (name: string) => checked?.entries.find((e) => e.name === name)?.verify
    expect(verdict(sha1(raw.id))).toMatchObject({actual: raw.os_hash_value, algorithm: 'sha512', outcome: 'match'})
    expect(verdict(sha1('retired-image'))).toEqual({
      outcome: 'unverifiable',
      reason: 'no image id known for it (no imgcache record, and no instance names its image)',
    })

    const pruned = await runCli(['prune', '--node', 'node1', '--config', configFile, '--json'])
    expect(pruned.exitCode).toBe(0)
    const [result] = parse<{nodes: Array<{removed: number}>}>(pruned.stdout).nodes
    expect(result?.removed).toBe(1)
    expect(await exists(old)).toBe(false)
    expect(await fileSha256(at.final(raw.id))).toBe(sha256(rawContent))
    await expectNoLeftovers([fleet.node('node1')])
  })

  it('resolves the images and the aggregate before touching any node (exit 2)', async () => {
    const sub = 'unresolved'
    const configFile = await writeConfig(sub, {
      aggregates: {broken: {nodes: ['node1', 'cmp-99']}, web: {images: ['e2e-raw'], nodes: FLEET}},
    })
    const logins = await sshdLogins()
    const unknown = await precache(configFile, ['--aggregate', 'web', '--json', 'e2e-raw', 'no-such-image'])
    expect(unknown.exitCode).toBe(2)
    expect(parse<ErrorJson>(unknown.stdout).error).toMatchObject({
      code: 'IMAGE_NOT_FOUND',
      message: expect.stringContaining('"no-such-image"'),
    })

    const aggregate = await precache(configFile, ['--aggregate', 'nope', '--json'])
    expect(aggregate.exitCode).toBe(2)
    expect(parse<ErrorJson>(aggregate.stdout).error).toMatchObject({
      code: 'UNKNOWN_AGGREGATE',
      message: 'unknown aggregate "nope"; known aggregates: broken, web',
    })

    const member = await precache(configFile, ['--aggregate', 'broken', 'e2e-raw'])
    expect(member.exitCode).toBe(2)
    expect(member.stdout).toBe('')
    expect(flat(member.stderr)).toContain(
      'error: aggregate broken names node "cmp-99", which the config does not define; known nodes: node1, node2, node3, small',
    )

    for (const node of fleet.nodes) expect(await exists(onNode(node, sub).root)).toBe(false)
    expect(await sshdLogins()).toEqual(logins)
  })

  it('skips a node that is down from the start; the others are cached (exit 3)', async () => {
    const sub = 'down'
    const port = await deadPort()
    const configFile = await writeConfig(sub, {
      aggregates: {web: {images: ['e2e-raw'], nodes: ['node1', 'ghost', 'node2']}},
      nodes: {ghost: ghostNode(port)},
    })
    const result = await precache(configFile, ['--aggregate', 'web', '--json', '--retries', '1'])
    expect(result.exitCode).toBe(3)
    const report = parse<PrecacheReport>(result.stdout)
    expect(report.totals).toEqual({cached: 2, errors: 0, existing: 0, notNeeded: 0, skippedHosts: 1})
    expect(item(report, 'ghost', raw.id)).toMatchObject({code: 'SSH_REFUSED', status: 'skipped'})
    expect(item(report, 'ghost', raw.id)?.message).toContain(`port ${port} refused the connection`)
    expect(report.nodes.find((s) => s.node === 'ghost')).toMatchObject({attempts: 2, status: 'skipped'})
    for (const name of ['node1', 'node2']) {
      expect(item(report, name, raw.id)).toMatchObject({status: 'cached'})
      expect(await fileSha256(onNode(fleet.node(name), sub).final(raw.id))).toBe(sha256(rawContent))
    }

    const again = await precache(configFile, ['--aggregate', 'web', '--retries', '0'])
    expect(again.exitCode).toBe(3)
    expect(again.stdout).toMatch(/ghost\s+e2e-raw\s+skipped/)
    expect(again.stdout).toContain(': 2 of 3 node-image pairs already cached, 1 skipped (1 node unreachable)')
  })

  it('relay: sshd killed on one node mid-transfer, --retries 0: that node ends error, the others are cached; a populate once it is back resumes', async () => {
    const sub = 'sshd-killed-relay'
    const content = payload(30, 4 * MiB)
    const slow = slowAlias('slow-relay', content, MiB)
    const configFile = await writeConfig(sub, {aggregates: {web: {nodes: FLEET}}, images: {'slow-relay': slow}})
    const victim = fleet.node('node2')
    const at = onNode(victim, sub)
    const child = spawnPrecache(configFile, [
      '--aggregate',
      'web',
      '--via',
      'relay',
      '--retries',
      '0',
      '--json',
      'slow-relay',
    ])
    await until('the .part to grow on node2', async () => (await sizeOf(at.part(slow.id))) >= 512 * 1024)
    await fleet.killSshd('node2')
    let down = true
    onTestFinished(async () => {
      if (down) await fleet.restartSshd('node2')
    })
    const result = await child
    expect(result.exitCode).toBe(3)
    const report = parse<PrecacheReport>(result.stdout)
    expect(report.totals).toEqual({cached: 2, errors: 1, existing: 0, notNeeded: 0, skippedHosts: 0})
    const failed = item(report, 'node2', slow.id)
    expect(failed).toMatchObject({code: 'SSH_CONNECTION_LOST', status: 'error'})
    expect(failed?.message).toContain('the connection was lost')
    expect(failed?.message).toContain(`while writing ${at.part(slow.id)}`)
    for (const name of ['node1', 'node3']) {
      expect(item(report, name, slow.id)).toMatchObject({status: 'cached'})
      expect(await fileSha256(onNode(fleet.node(name), sub).final(slow.id))).toBe(sha256(content))
    }

    await expectNoLeftovers(fleet.nodes)
    // The node went away before imgcache could remove its .part: the next populate resumes it.
    const kept = await sizeOf(at.part(slow.id))
    await fleet.restartSshd('node2')
    down = false
    server.serve('/slow-relay', {data: content})
    const populate = await runCli(['populate', '--node', 'node2', '--config', configFile, '--json', 'slow-relay'])
    expect(populate.exitCode).toBe(0)
    const [done] = parse<{items: ItemResult[]}>(populate.stdout).items
    expect(done).toMatchObject({status: 'cached', ...(kept > 0 ? {resumedFrom: kept} : {})})
    expect(await fileSha256(at.final(slow.id))).toBe(sha256(content))
    expect(await temporaries([victim], sub)).toEqual([])
    await expectNoLeftovers(fleet.nodes)
  })

  it('relay: a node that stops reading (a hung disk) is cut off after --stall-timeout; the other node is not held back', async () => {
    const sub = 'stall'
    const data = payload(30, 16 * MiB)
    const configFile = await writeConfig(sub, {
      aggregates: {web: {images: ['e2e-stall'], nodes: ['node1', 'node2']}},
      images: {'e2e-stall': slowAlias('e2e-stall', data, 256 * MiB)},
    })
    const stuck = fleet.node('node2')
    await writeFile(path.join(stuck.binDir, 'python3'), HUNG_WRITER, {mode: 0o755})
    onTestFinished(() => rm(path.join(stuck.binDir, 'python3'), {force: true}))
    const started = Date.now()
    const result = await precache(configFile, [
      '--aggregate',
      'web',
      '--via',
      'relay',
      '--retries',
      '0',
      '--stall-timeout',
      '3',
      '--json',
    ])
    const elapsed = Date.now() - started
    expect(result.exitCode, result.stderr).toBe(3)
    const report = parse<PrecacheReport>(result.stdout)
    expect(item(report, 'node1', imageUuid('e2e-stall'))).toMatchObject({status: 'cached'})
    expect(item(report, 'node2', imageUuid('e2e-stall'))).toMatchObject({code: 'NODE_STALLED', status: 'error'})
    expect(item(report, 'node2', imageUuid('e2e-stall'))?.message).toContain(
      `node2 stopped reading image e2e-stall (${imageUuid('e2e-stall')}) for 3 s`,
    )
    // Cut off in seconds, not after the attempt timeout (30 min by default).
    expect(elapsed).toBeLessThan(60_000)
    expect(await fileSha256(onNode(fleet.node('node1'), sub).final(imageUuid('e2e-stall')))).toBe(sha256(data))
    const at = onNode(stuck, sub)
    expect(await contents(at.cacheDir)).toEqual([])
    expect(await osloSees(at.lock(imageUuid('e2e-stall')))).toBe('FREE')
    expect(await contents(spoolDir())).toEqual([])
  })

  it('node: sshd restarted on one node mid-transfer: the retry reconnects and resumes the node’s own download', async () => {
    const sub = 'sshd-killed-node'
    const content = payload(31, 4 * MiB)
    const slow = slowAlias('slow-node', content, MiB)
    const configFile = await writeConfig(sub, {aggregates: {web: {nodes: FLEET}}, images: {'slow-node': slow}})
    const at = onNode(fleet.node('node2'), sub)
    const child = spawnPrecache(configFile, ['--aggregate', 'web', '--json', 'slow-node'])
    await until('the .part to grow on node2', async () => (await sizeOf(at.part(slow.id))) >= 512 * 1024)
    await fleet.restartSshd('node2')
    const result = await child
    expect(result.exitCode).toBe(0)
    const report = parse<PrecacheReport>(result.stdout)
    expect(report.totals).toEqual({cached: 3, errors: 0, existing: 0, notNeeded: 0, skippedHosts: 0})
    expect(item(report, 'node2', slow.id)?.resumedFrom).toBeGreaterThan(0)
    expect(report.nodes.find((s) => s.node === 'node2')?.attempts).toBeGreaterThanOrEqual(3)
    expect(server.gets('/slow-node').some((r) => r.range !== undefined && r.status === 206)).toBe(true)
    for (const node of fleet.nodes) expect(await fileSha256(onNode(node, sub).final(slow.id))).toBe(sha256(content))
    expect(await temporaries(fleet.nodes, sub)).toEqual([])
    await expectNoLeftovers(fleet.nodes)
  })

  it('a full disk, a node without qemu-img, a changed host key: each fails on its node with its reason; the others are cached', async () => {
    const sub = 'faults'
    const configFile = await writeConfig(sub, {
      aggregates: {web: {images: ['e2e-qcow2'], nodes: ['node1', 'node2', 'node3', 'small']}},
    })
    await fleet.rotateHostKey('node2')
    onTestFinished(() => fleet.trustHostKey('node2'))
    const fake = path.join(fleet.node('node3').binDir, 'qemu-img')
    // What a node without qemu-img answers to `env LC_ALL=C qemu-img ...` (the real one is on every PATH here).
    await writeFile(fake, `#!/bin/sh\necho "env: 'qemu-img': No such file or directory" >&2\nexit 127\n`, {mode: 0o755})
    onTestFinished(() => rm(fake, {force: true}))
    const result = await precache(configFile, ['--aggregate', 'web', '--json'])
    expect(result.exitCode).toBe(3)
    const report = parse<PrecacheReport>(result.stdout)
    expect(report.totals).toEqual({cached: 1, errors: 3, existing: 0, notNeeded: 0, skippedHosts: 0})
    expect(item(report, 'node1', qcow2.id)).toMatchObject({status: 'cached'})

    const changed = item(report, 'node2', qcow2.id)
    expect(changed).toMatchObject({code: 'SSH_HOST_KEY_CHANGED', status: 'error'})
    expect(changed?.message).toContain('is not the one recorded')
    // How to check the new key, and how to replace the old one once checked.
    expect(changed?.nextStep).toContain('ssh-keygen -lf')
    expect(changed?.nextStep).toContain(`ssh-keygen -f ${fleet.node('node2').knownHostsFile} -R`)
    expect(report.nodes.find((s) => s.node === 'node2')).toMatchObject({attempts: 1, status: 'failed'})

    const noQemu = item(report, 'node3', qcow2.id)
    expect(noQemu).toMatchObject({
      code: 'NODE_PROGRAM_MISSING',
      message: 'node3: qemu-img is not installed on the node (not on its PATH)',
      status: 'error',
    })
    expect(noQemu?.nextStep).toContain('apt install qemu-utils')
    expect(report.nodes.find((s) => s.node === 'node3')).toMatchObject({attempts: 2, status: 'failed'})

    const full = item(report, 'small', qcow2.id)
    expect(full).toMatchObject({code: 'NO_SPACE', status: 'error'})
    expect(full?.message).toContain(`not enough space for image e2e-qcow2 (${qcow2.id})`)

    for (const name of ['node2', 'node3', 'small']) {
      const node = name === 'small' ? small.node('small') : fleet.node(name)
      expect(await contents(onNode(node, sub).cacheDir), name).toEqual([])
    }

    expect(await osloSees(onNode(fleet.node('node3'), sub).lock(qcow2.id))).toBe('FREE')
    await expectNoLeftovers([...fleet.nodes, ...small.nodes])
  })

  it.each(['node', 'relay'])(
    '--via %s: an unsafe image is refused on every node, nothing cached (exit 1)',
    async (via) => {
      const sub = `unsafe-${via}`
      const configFile = await writeConfig(sub, {aggregates: {web: {images: ['e2e-backing-file'], nodes: FLEET}}})
      const result = await precache(configFile, ['--aggregate', 'web', '--via', via, '--json'])
      expect(result.exitCode).toBe(1)
      const report = parse<PrecacheReport>(result.stdout)
      expect(report.totals).toEqual({cached: 0, errors: 3, existing: 0, notNeeded: 0, skippedHosts: 0})
      for (const node of fleet.nodes) {
        const refused = item(report, node.name, unsafe.id)
        expect(refused).toMatchObject({code: 'IMAGE_UNSAFE', exitCode: 4, status: 'error'})
        expect(refused?.message).toContain('backing_file')
        expect(await contents(onNode(node, sub).cacheDir)).toEqual([])
      }

      // One attempt to reach each node, one at the image: a refusal is never retried.
      expect(report.nodes.map((n) => n.attempts)).toEqual([2, 2, 2])
    },
  )

  it('Ctrl-C after the first image: the partial report, exit 3, no .part left, every lock free', async () => {
    const sub = 'sigint-partial'
    const content = payload(40, 4 * MiB)
    const slow = slowAlias('slow-int', content, 512 * 1024)
    const configFile = await writeConfig(sub, {aggregates: {web: {nodes: FLEET}}, images: {'slow-int': slow}})
    const child = spawnPrecache(configFile, ['--aggregate', 'web', '--json', 'e2e-raw', 'slow-int'])
    const {endedAfterMs, result} = await interruptWhileDownloading(child, sub, slow.id)
    // Clean-up takes a moment, not a grace period per finished attempt.
    expect(endedAfterMs).toBeLessThan(10_000)
    expect(result.exitCode).toBe(3)
    const report = parse<PrecacheReport>(result.stdout)
    expect(report.totals).toEqual({cached: 3, errors: 3, existing: 0, notNeeded: 0, skippedHosts: 0})
    for (const node of fleet.nodes) {
      const at = onNode(node, sub)
      expect(item(report, node.name, raw.id)).toMatchObject({status: 'cached'})
      expect(item(report, node.name, slow.id)).toMatchObject({code: 'INTERRUPTED', status: 'error'})
      expect(await contents(at.cacheDir)).toEqual(['.imgcache', sha1(raw.id)])
      expect(await osloSees(at.lock(slow.id))).toBe('FREE')
    }

    await expectNoLeftovers(fleet.nodes)
  })

  it('Ctrl-C before anything finished (relay): the table of what was interrupted, exit 130, nothing left', async () => {
    const sub = 'sigint-none'
    const content = payload(41, 4 * MiB)
    const slow = slowAlias('slow-int-relay', content, 512 * 1024)
    const configFile = await writeConfig(sub, {aggregates: {web: {nodes: FLEET}}, images: {'slow-int-relay': slow}})
    const child = spawnPrecache(configFile, ['--aggregate', 'web', '--via', 'relay', 'slow-int-relay'])
    const {endedAfterMs, result} = await interruptWhileDownloading(child, sub, slow.id)
    expect(endedAfterMs).toBeLessThan(10_000)
    expect(result.exitCode).toBe(130)
    for (const node of FLEET)
      expect(result.stdout).toMatch(new RegExp(`${node}\\s+slow-int-relay\\s+error\\s.*interrupted by SIGINT`))
    expect(result.stdout).toContain(': 3 of 3 node-image pairs failed')
    expect(String(result.stderr)).toContain('SIGINT received: stopping, removing temporaries and releasing locks')
    for (const node of fleet.nodes) {
      const at = onNode(node, sub)
      expect(await contents(at.cacheDir)).toEqual([])
      expect(await osloSees(at.lock(slow.id))).toBe('FREE')
    }

    expect(await contents(spoolDir())).toEqual([])
    await expectNoLeftovers(fleet.nodes)
  })

  it('progress on a non-terminal stderr: a line per state change; nothing with --json or --quiet', async () => {
    const sub = 'progress'
    const configFile = await writeConfig(sub, {aggregates: {web: {images: ['e2e-raw'], nodes: FLEET}}})
    const lines = await precache(configFile, ['--aggregate', 'web'])
    expect(lines.exitCode).toBe(0)
    const stderr = lines.stderr.split('\n')
    for (const node of FLEET) {
      const mine = stderr.filter((l) => l.includes(` ${node} `) || l.includes(` ${node}:`))
      expect(mine.some((l) => /^\d\d:\d\d:\d\d node\d: running$/.test(l))).toBe(true)
      expect(mine.filter((l) => l.endsWith(`${node} e2e-raw: cached`))).toHaveLength(1)
      expect(mine.filter((l) => / e2e-raw: downloading: \d+% /.test(l)).length).toBeGreaterThanOrEqual(1)
      expect(mine.filter((l) => / e2e-raw: downloading: /.test(l)).length).toBeLessThanOrEqual(2)
      expect(mine.at(-1)).toMatch(new RegExp(`${node}: done$`))
    }

    expect(lines.stdout).toContain(': 3 of 3 node-image pairs cached')

    const json = await precache(configFile, ['--aggregate', 'web', '--json', '--force'])
    expect(json.exitCode).toBe(0)
    expect(json.stderr).toBe('')
    expect(parse<PrecacheReport>(json.stdout).totals.cached).toBe(3)

    const quiet = await precache(configFile, ['--aggregate', 'web', '--quiet'])
    expect(quiet.exitCode).toBe(0)
    expect(quiet.stderr).toBe('')
    expect(quiet.stdout).toContain(': 3 of 3 node-image pairs already cached')
  })

  it('on a terminal: listr2 draws a task per node with its images under it, each with its outcome', async () => {
    const sub = 'tty'
    const configFile = await writeConfig(sub, {
      aggregates: {web: {images: ['e2e-raw'], nodes: ['node1', 'ghost']}},
      nodes: {ghost: ghostNode(await deadPort())},
    })
    // script(1) gives the CLI a pseudo-terminal; a pty starts 0 columns wide, which listr2 would wrap at.
    const argv = ['node', BIN, 'precache', '--aggregate', 'web', '--retries', '0', '--config', configFile]
    const result = await execa('script', ['-qfec', `stty cols 200 rows 50; exec ${shellCommand(argv)}`, '/dev/null'], {
      // CI is unset: CI runs this suite with CI=true, which would (rightly) choose log lines.
      env: {CI: '', IMGCACHE_CONFIG: '', NODE_ENV: 'production', TERM: 'xterm'},
      reject: false,
      timeout: 60_000,
    })
    expect(result.exitCode).toBe(3)
    // The last frame listr2 drew, before it showed the cursor again and the report followed.
    const frame = result.stdout.split('\u001B[2K\u001B[G').at(-1)!.split('\u001B[?25h')[0]!
    // eslint-disable-next-line no-control-regex -- ANSI escape sequences start with ESC
    const text = frame.replaceAll(/\u001B\[[\d;?]*[A-Za-z]/g, '').replaceAll('\r', '')
    expect(text).toMatch(/^✔ node1\n {2}✔ e2e-raw: cached\n/)
    // An unreachable node is one skipped line with the reason, not a line per image.
    expect(text).toMatch(
      /\n↓ ghost: skipped: ghost \(root@127\.0\.0\.1:\d+\): 127\.0\.0\.1 port \d+ refused the connection/,
    )
    expect(text).not.toContain('ghost\n  ')
    expect(result.stdout).toMatch(/ghost\s+e2e-raw\s+skipped/)
  })

  it.each([
    ['demo-password', 'node'],
    ['demo-appcred', 'relay'],
  ])(
    'Keystone credentials (clouds.yaml cloud %s, --via %s): no argv on the machine and no output line carries a secret',
    async (cloud, via) => {
      const sub = `secrets-${cloud}`
      const nodes = [fleet.node('node1'), fleet.node('node2')]
      // Slow links on both nodes, so that curl and cat live long enough to be seen.
      await slowNodes(nodes)
      onTestFinished(() => fastNodes(nodes))
      const configFile = await writeConfig(sub, {
        aggregates: {web: {images: ['e2e-secret'], nodes: nodes.map((n) => n.name)}},
        imageService: null,
      })
      const secrets = [
        keystone.env.demo.password,
        keystone.env.application_credential.secret,
        await keystone.token('demo'),
      ]
      const leaks = (text: string): string[] => [
        ...secrets.filter((secret) => text.includes(secret)).map(() => 'a password, secret or token'),
        // Keystone's fernet tokens, whoever issued them; and the header that carries one.
        ...(text.match(/gAAAAA[\w-]{20,}/g) ?? []).map(() => 'a fernet token'),
        ...(text.match(/x-auth-token/gi) ?? []).map(() => 'the token header'),
      ]
      const child = spawnPrecache(configFile, ['--aggregate', 'web', '--via', via, '--verbose'], {
        env: {OS_CLIENT_CONFIG_FILE: keystone.cloudsYamlPath, OS_CLOUD: cloud},
      })
      const {found, samples, seen} = await watchArgvs(child, leaks)
      const result = await child
      expect(found).toEqual([])
      expect(leaks(`${result.stdout}\n${result.stderr}`)).toEqual([])
      // The sampling saw the run's processes, local and on the nodes, many times over.
      expect(samples).toBeGreaterThan(20)
      expect([...seen].sort()).toEqual(via === 'node' ? ['agent', 'curl', 'ssh', 'sshd'] : ['agent', 'ssh', 'sshd'])
      expect(result.exitCode).toBe(0)
      expect(result.stdout).toContain(': 2 of 2 node-image pairs cached')
      for (const node of nodes) {
        expect(await fileSha256(onNode(node, sub).final(secretImage.id))).toBe(sha256(secretContent))
      }
    },
  )

  // Without --retries the default (2) applies: the retries find glance-api gone, and the run must
  // still end (it once hung for good in relay mode after the last retry).
  it.each([
    {retries: ['--retries', '0'], seed: 50, via: 'node'},
    {retries: ['--retries', '0'], seed: 51, via: 'relay'},
    {retries: [], seed: 52, via: 'node'},
    {retries: [], seed: 53, via: 'relay'},
  ])(
    '--via $via $retries: glance-api killed mid-run: the image in flight fails on every node and the local host naming the image service, temporaries removed (exit 3)',
    async ({retries, seed, via}) => {
      if (!(await glanceAnswers())) await restartGlance()
      const sub = `glance-killed-${via}-${seed}`
      // From 64 MiB on, the bytes are hashed on a worker thread (fetch/tap.ts): the size that hung.
      const content = sparsePayload(seed, 72 * MiB, 3 * MiB)
      const name = `e2e-fifo-${via}-${seed}`
      const image = await glance.uploadImage({data: content, diskFormat: 'raw', name})
      // Glance's file store reads the image file as it sends it: a FIFO in its place lets the test
      // decide how far the transfers get before glance-api is killed.
      const stored = path.join(glanceDir, 'images', image.id)
      await rm(stored)
      await execa('mkfifo', [stored])
      // Three SSH nodes and the local host (bytes through got straight to disk, hashed here).
      const local = {cacheDir: path.join(work, sub, 'local', '_base'), root: path.join(work, sub, 'local')}
      const configFile = await writeConfig(sub, {
        aggregates: {web: {images: ['e2e-raw', name], nodes: [...FLEET, 'here']}},
        nodes: {here: {instancesPath: local.root}},
      })
      // e2e-raw is there before: glance-api blocks on the FIFO once it is empty, and whichever
      // transfer reaches the FIFO first (the local host's, often) would hold back the others' e2e-raw.
      expect((await precache(configFile, ['--aggregate', 'web', '--via', via, '--json', 'e2e-raw'])).exitCode).toBe(0)
      // The watchdog well inside the test's time: the upload above takes a share of it.
      const child = spawnPrecache(configFile, ['--aggregate', 'web', '--via', via, ...retries, '--json'], {
        timeoutMs: 60_000,
      })
      const fifo = await open(stored, 'w')
      await fifo.write(content.subarray(0, 3 * MiB)).catch(() => undefined)
      // Every GET of the image reads the same FIFO: whichever transfer took the bytes grows.
      const parts = [...fleet.nodes.map((n) => onNode(n, sub).cacheDir), local.cacheDir].map((dir) =>
        path.join(dir, `${sha1(image.id)}.part`),
      )
      await until('a .part to grow', async () => {
        const sizes = await Promise.all(parts.map((part) => sizeOf(part)))
        return sizes.some((size) => size >= 512 * 1024)
      })
      glance.kill('SIGKILL')
      await fifo.close().catch(() => undefined)
      const result = await child
      expect(result.exitCode).toBe(3)
      const report = parse<PrecacheReport>(result.stdout)
      expect(report.totals).toEqual({cached: 0, errors: 4, existing: 4, notNeeded: 0, skippedHosts: 0})
      const places = [
        ...fleet.nodes.map((node) => ({name: node.name, ...onNode(node, sub)})),
        {name: 'here', ...local, lock: (id: string) => path.join(local.root, 'locks', `nova-${sha1(id)}`)},
      ]
      for (const at of places) {
        expect(item(report, at.name, raw.id)).toMatchObject({status: 'existing'})
        const failed = item(report, at.name, image.id)
        expect(failed).toMatchObject({status: 'error'})
        expect(failed?.message).toContain(`downloading image ${name} (${image.id})`)
        expect(failed?.message).toContain(`Glance at ${glance.url}`)
        expect(await contents(at.cacheDir)).toEqual(['.imgcache', sha1(raw.id)])
        expect(await osloSees(at.lock(image.id))).toBe('FREE')
      }

      expect(await contents(spoolDir())).toEqual([])
      await expectNoLeftovers(fleet.nodes)
    },
  )
})
