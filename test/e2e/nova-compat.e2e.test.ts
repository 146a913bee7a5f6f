/**
 * What imgcache leaves under an instances path must be usable by nova-compute (issue 12, points 1-3;
 * DESIGN §10): after every imgcache operation, run as root under umask 022 and 077, Nova's own code
 * (Debian's python3-nova, run as the `nova` user under nova-compute's umask 022 by
 * test/harness/nova-steps.py) must lock, reuse, download beside, remove, inspect and resize what
 * imgcache made, and complete its periodic image cache pass; libvirt's qemu user (an unprivileged
 * stand-in) must read every base and overlay; and everything imgcache created must be nova's
 * (owner and group of the instances path), 0755 for directories and 0644 for files, never a link, with
 * every file it found (Nova's own lock files above all) left as it was.
 *
 * Hosts: a fresh one (the instances path, nova:nova 0755, empty), one where Nova made only `locks/`
 * (by taking its locks), one where Nova already cached an image and built an instance with its own
 * code; each with imgcache under umask 022 and 077, locally, and the first two on an SSH node whose
 * sessions run under umask 077. Each host runs populate, overlay, prune and inspect in turn, with
 * Nova's steps after each; the hosts run side by side in beforeAll and the tests read the outcomes.
 */
import {execa} from 'execa'
import {chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {setAge, sha1} from '../fixtures/nova-host.js'
import {type CliResult, runCli} from '../helpers/cli.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {type NovaSteps, startNovaSteps, type StepResults} from '../helpers/nova-steps.js'
import {type HostUser, novaUser, qemuStandIn, runAs} from '../helpers/nova-user.js'
import {changes, notNovaLike, snapshot} from '../helpers/ownership.js'
import {payload, sha256} from '../helpers/payload.js'

const MiB = 1024 * 1024
/** Hosts worked on at once (2 cores; each has its own python3-nova process). */
const PARALLEL = 3

const uuid = (prefix: string, n: number) => `${prefix}-0000-4000-8000-${String(n).padStart(12, '0')}`
/** imgcache's image (populate), the overlay's image, the image Nova cached before imgcache came. */
const IMAGE_A = uuid('a0000000', 1)
const IMAGE_B = uuid('b0000000', 1)
const IMAGE_NOVA = uuid('c0000000', 1)
/** Bases imgcache populates for Nova to remove, one per operation (and one for imgcache's prune). */
const SPARES = [1, 2, 3, 4, 5].map((n) => uuid('e0000000', n))
/** Instance uuids are unique in the one nova database: the host's number is in them. */
const instance = (host: Host, kind: string, n: number) =>
  `${kind}-${String(hosts.indexOf(host) + 1).padStart(4, '0')}-4000-8000-${String(n).padStart(12, '0')}`
/** The instance whose disk `imgcache overlay` makes; the one Nova built before imgcache came. */
const overlayInstance = (host: Host) => instance(host, '30000000', 1)
const novaInstance = (host: Host) => instance(host, '40000000', 1)

const OPERATIONS = ['populate', 'overlay', 'prune', 'inspect'] as const
type Operation = (typeof OPERATIONS)[number]
const VARIANTS = ['fresh', 'locks-only', 'nova-cached'] as const
type Variant = (typeof VARIANTS)[number]
/**
 * Over SSH: the fresh node (the agent makes everything) and the one with Nova's lock files (the agent
 * must use them as they are); Nova's own cache is the local hosts' (kept out for the file's runtime).
 */
const SSH_VARIANTS: Variant[] = ['fresh', 'locks-only']

interface Host {
  /** CLI arguments that select the host: --instances-path, or --node over SSH. */
  at: string[]
  instancesPath: string
  label: string
  ssh: boolean
  umask: '022' | '077'
  variant: Variant
}

interface Outcome {
  /** Entries that kept their inode but changed owner, group, mode or kind. */
  altered: string[]
  cli: CliResult
  created: string[]
  /** Lock files that were there before the operation and were replaced (another inode) by it. */
  locksReplaced: string[]
  nova: StepResults
  /** Bases and overlays the qemu stand-in could not read, with the reason. */
  unreadable: string[]
  /** Created entries that are not nova's 0755/0644 directory or file. */
  wrong: string[]
}

let work: string
let config: string
let source: string
let rawSource: string
let sourceChecksum: string
let novaAccount: HostUser
let steps: NovaSteps
let qemu: HostUser
let nodes: TestNodes | undefined
const outcomes = new Map<string, Map<Operation, Outcome>>()
const hosts: Host[] = []
/** A host whose run stopped (a set-up step failed): its tests fail with this. */
const hostErrors = new Map<string, unknown>()
const timings = new Map<string, number>()

const key = (host: Host) => host.label

/** Nova's steps after each operation, and the image whose base it must reuse and lock. */
function novaSteps(host: Host, op: Operation, round: number): Record<string, unknown> {
  return {
    // A raw image: Nova's download then needs no conversion (qemu-img runs are what cost here).
    download: {
      diskFormat: 'raw',
      imageId: uuid('d0000000', round),
      source: rawSource,
      uuid: instance(host, '20000000', round),
    },
    imageId: op === 'overlay' ? IMAGE_B : IMAGE_A,
    op: 'steps',
    // imgcache's overlay, from the overlay operation on.
    overlays: op === 'populate' ? [] : [overlay(host)],
    removable: SPARES[round - 1],
    reuseUuid: instance(host, '10000000', round),
  }
}

async function operation(host: Host, op: Operation): Promise<CliResult[]> {
  const cli = (args: string[]) => runCli([...args, ...host.at, '--config', config, '--json'], {umask: host.umask})
  switch (op) {
    case 'inspect': {
      return [await cli(['inspect'])]
    }

    case 'overlay': {
      const dest = overlay(host)
      return [
        await cli(['overlay', source, dest, '--image-id', IMAGE_B, '--checksum', sourceChecksum, '--size', '32M']),
      ]
    }

    case 'populate': {
      const main = await cli(['populate', source, '--image-id', IMAGE_A, '--checksum', sourceChecksum])
      return [main, await cli(['populate', ...SPARES.map((_, i) => `spare-${i + 1}`)])]
    }

    case 'prune': {
      return [await cli(['prune'])]
    }
  }
}

/** What the operation left, judged; then Nova's steps and the qemu user's reads. */
async function runHost(host: Host): Promise<void> {
  const {instancesPath} = host
  await mkdir(instancesPath)
  await chown(instancesPath, novaAccount.uid, novaAccount.gid)
  await chmod(instancesPath, 0o755)
  // Nova's `host` option must be a host name: one per host, so the database keeps their instances apart.
  const nova: Nova = (body) => steps.request(`compute-${hosts.indexOf(host) + 1}`, instancesPath, body)
  await prepare(host, nova)
  const results = new Map<Operation, Outcome>()
  outcomes.set(key(host), results)
  for (const [i, op] of OPERATIONS.entries()) {
    if (op === 'overlay') {
      // nova-compute makes the instance directory, and knows the instance (its database row).
      await runAs(novaAccount.name, ['mkdir', join(instancesPath, overlayInstance(host))])
      expectNull(await nova({imageId: IMAGE_B, op: 'instance', uuid: overlayInstance(host)}))
    }

    if (op === 'prune') {
      // One spare base, unused for two days: the one thing imgcache's prune removes (with its lock).
      await setAge(join(instancesPath, '_base', sha1(SPARES[4]!)), 2 * 86_400)
    }

    let t = Date.now()
    const before = await snapshot(instancesPath)
    const cliResults = await operation(host, op)
    const after = await snapshot(instancesPath)
    timings.set(`${host.label} ${op} cli`, Date.now() - t)
    t = Date.now()
    const failed = cliResults.find((r) => r.exitCode !== 0) ?? cliResults[0]!
    const {altered, created} = changes(before, after)
    const locksReplaced = [...before.keys()].filter(
      (p) => p.startsWith('locks/') && after.has(p) && after.get(p)!.ino !== before.get(p)!.ino,
    )
    const novaResults = await nova(novaSteps(host, op, i + 1))
    timings.set(`${host.label} ${op} nova`, Date.now() - t)
    results.set(op, {
      altered,
      cli: failed,
      created,
      locksReplaced,
      nova: novaResults,
      unreadable: await unreadableByQemu(host),
      wrong: notNovaLike(after, created, novaAccount),
    })
  }
}

const overlay = (host: Host) => join(host.instancesPath, overlayInstance(host), 'disk')

function expectNull(results: StepResults): void {
  if (Object.values(results).some((v) => v !== null))
    throw new Error(`Nova's set-up step failed: ${JSON.stringify(results)}`)
}

type Nova = (body: Record<string, unknown>) => Promise<StepResults>

/** The host as the variant has it before imgcache comes, made by Nova's own code as nova. */
async function prepare(host: Host, nova: Nova): Promise<void> {
  if (host.variant === 'locks-only') {
    // Nova took its locks (the registry's, and those of the images imgcache will cache): locks/ and
    // the lock files are nova's, and imgcache must use them as they are.
    expectNull(await nova({names: ['storage-registry-lock', sha1(IMAGE_A), sha1(IMAGE_B)], op: 'lock'}))
  }

  if (host.variant === 'nova-cached') {
    expectNull(await nova({diskFormat: 'qcow2', imageId: IMAGE_NOVA, op: 'spawn', source, uuid: novaInstance(host)}))
  }
}

/** libvirt's qemu user reads every base and every instance disk in full. */
async function unreadableByQemu(host: Host): Promise<string[]> {
  const cacheDir = join(host.instancesPath, '_base')
  const bases = (await readdir(cacheDir).catch(() => [] as string[]))
    .filter((n) => !n.startsWith('.') && !n.endsWith('.part') && !n.endsWith('.converted'))
    .map((n) => join(cacheDir, n))
  const disks: string[] = []
  for (const dir of await readdir(host.instancesPath)) {
    const disk = join(host.instancesPath, dir, 'disk')
    if ((await execa('test', ['-f', disk], {reject: false})).exitCode === 0) disks.push(disk)
  }

  const read = await runAs(qemu.name, [
    'sh',
    '-c',
    'for f; do cat -- "$f" >/dev/null 2>/tmp/.imgc-qemu-read.$$ || echo "$f: $(cat /tmp/.imgc-qemu-read.$$)"; done; rm -f /tmp/.imgc-qemu-read.$$',
    'sh',
    ...bases,
    ...disks,
  ])
  return read.stdout.split('\n').filter(Boolean)
}

/** Every host runs with at most PARALLEL at once. */
async function runAll(): Promise<void> {
  const queue = [...hosts]
  await Promise.all(
    Array.from({length: PARALLEL}, async () => {
      for (let host = queue.shift(); host; host = queue.shift()) {
        const started = Date.now()
        await runHost(host).catch((error: unknown) => hostErrors.set(host!.label, error))
        timings.set(host.label, Date.now() - started)
      }
    }),
  )
}

beforeAll(async () => {
  const probe = await execa('/usr/bin/python3', ['-c', 'import nova.compute.manager'], {reject: false})
  if (probe.exitCode !== 0) throw new Error(`python3-nova is needed: run scripts/setup.sh --test. ${probe.stderr}`)
  ;[novaAccount, qemu] = [await novaUser(), await qemuStandIn()]
  steps = await startNovaSteps(novaAccount.name)
  work = await mkdtemp(join(tmpdir(), 'imgc-nova-compat-'))
  // nova and the qemu user walk down to the instances paths and read the image file.
  await chmod(work, 0o755)
  const raw = join(work, 'image.raw')
  await writeFile(raw, payload(21, 3 * MiB))
  await chmod(raw, 0o644)
  rawSource = raw
  source = join(work, 'image.qcow2')
  await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, source])
  await chmod(source, 0o644)
  sourceChecksum = `sha256:${sha256(await readFile(source))}`

  nodes = await startNodes(1)
  const node = nodes.node('node1')
  // The node's sessions (the agent) run under umask 077, as a hardened root's would.
  await writeFile(join(node.dir, 'home', '.bashrc'), 'umask 077\n')
  const remoteUmask = await nodes.ssh('node1', ['sh', '-c', 'umask'])
  if (remoteUmask.stdout.trim() !== '0077') throw new Error(`the SSH node's umask is ${remoteUmask.stdout}, not 0077`)

  const sshNodes: Record<string, Record<string, number | string>> = {}
  for (const umask of ['022', '077'] as const) {
    for (const variant of VARIANTS) {
      const label = `local ${variant} umask ${umask}`
      const instancesPath = join(work, `local-${variant}-${umask}`)
      hosts.push({at: ['--instances-path', instancesPath], instancesPath, label, ssh: false, umask, variant})
    }
  }

  for (const variant of SSH_VARIANTS) {
    const instancesPath = join(work, `ssh-${variant}`)
    const name = `ssh-${variant}`
    sshNodes[name] = {
      host: node.host,
      identityFile: node.identityFile,
      instancesPath,
      knownHostsFile: node.knownHostsFile,
      port: node.port,
      user: node.user,
    }
    hosts.push({
      at: ['--node', name],
      instancesPath,
      label: `ssh ${variant} umask 077`,
      ssh: true,
      umask: '077',
      variant,
    })
  }

  config = join(work, 'imgcache.json')
  const images = Object.fromEntries(
    SPARES.map((id, i) => [`spare-${i + 1}`, {checksum: sourceChecksum, diskFormat: 'qcow2', id, path: source}]),
  )
  await writeFile(config, JSON.stringify({images, nodes: sshNodes}))
  await runAll()
}, 900_000)

afterAll(async () => {
  if (process.env.IMGC_TIMINGS) console.error(Object.fromEntries(timings))
  await steps?.stop()
  await nodes?.stop()
  if (work) await rm(work, {force: true, recursive: true})
})

describe.each(hostLabels())('%s', (label) => {
  describe.each(OPERATIONS)('after imgcache %s', (op) => {
    const outcome = (): Outcome => {
      const found = outcomes.get(label)?.get(op)
      if (!found) {
        const error = hostErrors.get(label)
        throw error instanceof Error ? error : new Error(`no outcome for ${label} / ${op}: ${String(error)}`)
      }

      return found
    }

    it('imgcache exits 0', () => {
      const {cli} = outcome()
      expect(cli.exitCode, cli.stderr).toBe(0)
    })

    it("what it created is the instances path owner's (nova:nova), 0755/0644, no link; what it found is as it was", () => {
      const {altered, created, locksReplaced, wrong} = outcome()
      if (op === 'populate') expect(created).toContain(`_base/${sha1(IMAGE_A)}`)
      expect({altered, locksReplaced, wrong}).toEqual({altered: [], locksReplaced: [], wrong: []})
    })

    it("Nova's own code as nova: its locks, cache() reusing the base, its own download, _remove_base_file, qemu-img info and resize, the periodic pass", () => {
      const {nova} = outcome()
      const failed = Object.fromEntries(Object.entries(nova).filter(([, v]) => v !== null))
      expect(failed).toEqual({})
      expect(Object.keys(nova)).toEqual(
        expect.arrayContaining(['lock', 'reuse', 'download', 'removeBase', 'periodicPass']),
      )
    })

    it("libvirt's qemu user (a stand-in) reads every base and instance disk", () => {
      expect(outcome().unreadable).toEqual([])
    })
  })
})

/** The labels, known before beforeAll runs (describe.each needs them at collection). */
function hostLabels(): string[] {
  return [
    ...['022', '077'].flatMap((umask) => VARIANTS.map((v) => `local ${v} umask ${umask}`)),
    ...SSH_VARIANTS.map((v) => `ssh ${v} umask 077`),
  ]
}
