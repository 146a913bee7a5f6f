/**
 * imgcache on the hosts operators have: a fresh Debian 12 root (debootstrap, minbase) with no Node.js
 * in it, as a compute host or bastion is. In that root, as root through chroot:
 *  1. the README's first command, scripts/demo.sh, end to end (setup.sh takes Node.js from the npm
 *     registry into the checkout's .node/, installs nothing system-wide for it);
 *  2. the standalone file `npm run package` builds: --version, populate, overlay, inspect, prune on
 *     the root's own instances path, and populate/inspect on an sshd node of the host's loopback;
 *  3. the .deb built with it: installed, the prune service's ExecStart run as its timer would,
 *     `systemd-analyze verify` on the units, removed without leaving a file.
 * Slow (minutes: Debian's packages, npm ci, the package build) and needs root, debootstrap and
 * overlayfs: it fails, never skips, when they are missing. The debootstrap root and the apt and npm
 * download caches are kept under /var/cache/imgcache-test between runs (test/harness/debian-root.sh).
 */
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {copyFile, mkdir, mkdtemp, readFile, rm, utimes, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {InspectReport} from '../../src/commands/inspect.js'
import type {PopulateReport} from '../../src/commands/populate.js'
import type {PruneReport} from '../../src/commands/prune.js'
import type {OverlayReport} from '../../src/lib/report/results.js'

import {DAY, sha1} from '../fixtures/nova-host.js'
import {parseJsonOutput} from '../helpers/json-schema.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))
const ROOT_SH = fileURLToPath(new URL('../harness/debian-root.sh', import.meta.url))
const MINUTE = 60_000
const {version} = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as {version: string}
/** The Node.js the project takes from the npm registry (pinned in node-from-npm.sh). */
const NODE_VERSION = /^NODE_VERSION=(\S+)$/m.exec(await readFile(join(REPO, 'scripts/node-from-npm.sh'), 'utf8'))?.[1]

/** Holds the root (r/) and the package build (pkg/). */
let work: string
let dir: string
let root: string
let pkg: string
const timings: string[] = []
const DEB = `/root/imgcache_${version}.deb`

interface Run {
  exitCode: number
  stderr: string
  stdout: string
}

/** argv in the Debian root, as root, with a clean environment (debian-root.sh run). */
async function inRoot(argv: string[], timeoutMs = 5 * MINUTE): Promise<Run> {
  const result = await execa('bash', [ROOT_SH, 'run', dir, ...argv], {
    reject: false,
    stdin: 'ignore',
    timeout: timeoutMs,
  })
  return {exitCode: result.exitCode ?? -1, stderr: result.stderr, stdout: result.stdout}
}

async function mustInRoot(argv: string[], timeoutMs?: number): Promise<Run> {
  const result = await inRoot(argv, timeoutMs)
  if (result.exitCode !== 0)
    throw new Error(`${argv.join(' ')} in the root: exit ${result.exitCode}\n${result.stderr}\n${result.stdout}`)
  return result
}

async function timed<T>(label: string, work: () => Promise<T>): Promise<T> {
  const start = performance.now()
  try {
    return await work()
  } finally {
    timings.push(`${label}: ${((performance.now() - start) / 1000).toFixed(1)} s`)
  }
}

/** No Node.js on the root's PATH and no nodejs package: what the whole file is about. */
async function expectNoNode(): Promise<void> {
  const which = await inRoot(['sh', '-c', 'command -v node nodejs; dpkg -s nodejs 2>/dev/null | grep Status'])
  expect(which.stdout).not.toMatch(/node|install ok installed/)
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('the packaging test needs root (chroot, mount, debootstrap)')
  work = await mkdtemp('/var/tmp/imgc-debian-root-')
  dir = join(work, 'r')
  pkg = join(work, 'pkg')
  const up = await timed('Debian 12 root ready (debootstrap when not cached)', async () =>
    execa('bash', [ROOT_SH, 'up', dir], {stdin: 'ignore', timeout: 15 * MINUTE}),
  )
  root = up.stdout.trim()
}, 16 * MINUTE)

afterAll(async () => {
  if (!work) return
  await execa('bash', [ROOT_SH, 'down', dir], {stdin: 'ignore'})
  await rm(work, {force: true, recursive: true})
  console.log(`packaging test timings:\n  ${timings.join('\n  ')}`)
}, 5 * MINUTE)

describe('a fresh Debian 12 with no Node.js', () => {
  it(
    "the README's first command, scripts/demo.sh, runs end to end",
    async () => {
      await expectNoNode()
      // The checkout as a clone has it: tracked and new files, nothing ignored (node_modules, dist, .node).
      await mkdir(join(root, 'root/imgcache'))
      await execa('bash', [
        '-c',
        'git -C "$1" ls-files -co --exclude-standard -z | (cd "$1" && tar --null -T - -cf -) | tar -C "$2" -xf -',
        'copy',
        REPO,
        join(root, 'root/imgcache'),
      ])
      const demo = await timed('scripts/demo.sh in the root', async () =>
        inRoot(['bash', '-c', 'cd /root/imgcache && scripts/demo.sh'], 20 * MINUTE),
      )
      expect(demo.stderr).toContain('taking one from the npm registry into .node/')
      expect(demo.stdout).toContain('demo: done')
      expect(demo.exitCode).toBe(0)
      const own = await mustInRoot(['/root/imgcache/.node/bin/node', '--version'])
      expect(own.stdout.trim()).toBe(`v${NODE_VERSION}`)
      // Node.js lives in the checkout only: nothing system-wide.
      await expectNoNode()
    },
    25 * MINUTE,
  )
})

describe('the standalone imgcache, in the same root', () => {
  const imageId = 'a3e9c5d2-6d1f-4f7a-9c33-0c7a2d1b5e01'
  const instances = '/srv/nova/instances'
  const bin = '/root/imgcache-standalone'
  /** The local image file, as populate and overlay take it: Nova's name needs the id, and a checksum. */
  let image: string[]
  let nodes: TestNodes | undefined

  afterAll(async () => {
    await nodes?.stop()
  })

  it(
    'npm run package builds it (and the .deb)',
    async () => {
      const built = await timed('npm run package', async () =>
        execa('npm', ['run', '--silent', 'package'], {
          cwd: REPO,
          env: {IMGCACHE_PACKAGE_DIR: pkg},
          stdin: 'ignore',
          timeout: 15 * MINUTE,
        }),
      )
      expect(built.stdout.trim().split('\n')).toEqual([join(pkg, 'imgcache'), expect.stringMatching(/\.deb$/)])
      await copyFile(join(pkg, 'imgcache'), join(root, bin))
      await execa('chmod', ['755', join(root, bin)])
      await mustInRoot(
        ['apt-get', 'install', '-y', '-q', '--no-install-recommends', 'qemu-utils', 'openssh-client'],
        10 * MINUTE,
      )
      await expectNoNode()
    },
    25 * MINUTE,
  )

  it('--version: its own Node.js', async () => {
    const first = await timed('standalone --version, first run (unpacks)', async () => mustInRoot([bin, '--version']))
    expect(first.stdout).toContain(`imgcache/${version} linux-`)
    expect(first.stdout).toContain(`node-v${NODE_VERSION}`)
    const again = await timed('standalone --version, later run', async () => mustInRoot([bin, '--version']))
    expect(again.stdout).toBe(first.stdout)
  })

  it('a damaged copy is refused with a clear message, not run', async () => {
    const whole = await readFile(join(root, bin))
    await writeFile(join(root, '/root/truncated'), whole.subarray(0, -1000), {mode: 0o755})
    const run = await inRoot(['env', 'IMGCACHE_STANDALONE_DIR=/root/other', '/root/truncated', '--version'])
    expect(run.exitCode).toBe(1)
    expect(run.stderr).toContain('is damaged or truncated')
    expect(existsSync(join(root, '/root/other'))).toBe(false)
  })

  it('populate of a local file, overlay, inspect, prune on the local instances path', async () => {
    await mustInRoot(['mkdir', '-p', instances])
    await mustInRoot(['qemu-img', 'create', '-q', '-f', 'qcow2', '/root/cirros.qcow2', '64M'])
    const digest = createHash('sha256')
      .update(await readFile(join(root, 'root/cirros.qcow2')))
      .digest('hex')
    image = ['/root/cirros.qcow2', '--image-id', imageId, '--checksum', `sha256:${digest}`]
    const local = ['--instances-path', instances, '--json']
    const populate = await mustInRoot([bin, 'populate', ...image, ...local])
    const populated = parseJsonOutput<PopulateReport>('populate', populate.stdout)
    expect(populated.items.map((i) => i.status)).toEqual(['cached'])
    const base = `${instances}/_base/${sha1(imageId)}`
    expect(existsSync(join(root, base))).toBe(true)

    // An instance directory, as nova-compute makes it before the disk.
    const disk = `${instances}/6f1c2a9e-0b1d-4c55-8f21-5b7d9a3e4c10/disk`
    await mkdir(join(root, disk, '..'))
    const overlay = await mustInRoot([bin, 'overlay', ...image.slice(0, 1), disk, ...image.slice(1), ...local])
    expect(parseJsonOutput<OverlayReport>('overlay', overlay.stdout).overlay.path).toBe(disk)
    const info = JSON.parse((await mustInRoot(['qemu-img', 'info', '-U', '--output=json', disk])).stdout) as {
      'backing-filename'?: string
    }
    expect(info['backing-filename']).toBe(base)

    // An unused base of a retired image, a month old: Nova's rules remove it.
    const retired = `${instances}/_base/${sha1('retired-image')}`
    await writeFile(join(root, retired), 'old base')
    const monthAgo = new Date(Date.now() - 30 * DAY * 1000)
    await utimes(join(root, retired), monthAgo, monthAgo)

    const inspect = parseJsonOutput<InspectReport>('inspect', (await mustInRoot([bin, 'inspect', ...local])).stdout)
    const {entries} = inspect.nodes[0]!
    expect(entries.find((e) => e.path === base)?.users).toEqual(['6f1c2a9e-0b1d-4c55-8f21-5b7d9a3e4c10'])
    expect(entries.find((e) => e.path === retired)?.users).toEqual([])

    const prune = parseJsonOutput<PruneReport>('prune', (await mustInRoot([bin, 'prune', ...local])).stdout)
    expect(prune.nodes[0]).toMatchObject({dryRun: false, removed: 1})
    expect(existsSync(join(root, retired))).toBe(false)
    expect(existsSync(join(root, base))).toBe(true)
  })

  it('an SSH node (an sshd on the host’s loopback): populate and inspect', async () => {
    nodes = await startNodes(1)
    const node = nodes.nodes[0]!
    await mkdir(join(root, 'root/ssh'), {mode: 0o700})
    await copyFile(node.identityFile, join(root, 'root/ssh/id'))
    await execa('chmod', ['600', join(root, 'root/ssh/id')])
    await copyFile(node.knownHostsFile, join(root, 'root/ssh/known_hosts'))
    const config = {
      nodes: {
        cmp1: {
          host: node.host,
          identityFile: '/root/ssh/id',
          instancesPath: node.instancesPath,
          knownHostsFile: '/root/ssh/known_hosts',
          port: node.port,
          user: node.user,
        },
      },
    }
    await writeFile(join(root, 'root/imgcache.json'), JSON.stringify(config))
    const remote = ['--node', 'cmp1', '--config', '/root/imgcache.json', '--json']
    const populate = await inRoot([bin, 'populate', ...image, ...remote])
    expect(populate.stderr).toBe('')
    expect(parseJsonOutput<PopulateReport>('populate', populate.stdout).items.map((i) => i.status)).toEqual(['cached'])
    expect(populate.exitCode).toBe(0)
    // On the node's own file system (the host's): the base, named as Nova names it.
    expect(existsSync(join(node.instancesPath, '_base', sha1(imageId)))).toBe(true)
    const inspect = parseJsonOutput<InspectReport>('inspect', (await mustInRoot([bin, 'inspect', ...remote])).stdout)
    expect(inspect.nodes[0]!.entries.map((e) => e.name)).toEqual([sha1(imageId)])
    await rm(join(root, bin))
  })
})

describe('the Debian package, in the same root', () => {
  const files = [
    '/usr/bin/imgcache',
    '/usr/lib/imgcache/bin/node',
    '/usr/share/bash-completion/completions/imgcache',
    '/usr/share/zsh/vendor-completions/_imgcache',
    '/usr/share/doc/imgcache/README.md.gz',
    '/usr/share/doc/imgcache/copyright',
    '/lib/systemd/system/imgcache-prune.service',
    '/lib/systemd/system/imgcache-prune.timer',
  ]

  it(
    'installs: the command, completion, documentation, the timer and service (not enabled)',
    async () => {
      const debs = (await execa('bash', ['-c', 'ls "$1"/*.deb', 'ls', pkg])).stdout.trim().split('\n')
      expect(debs).toHaveLength(1)
      await copyFile(debs[0]!, join(root, DEB))
      await mustInRoot(['apt-get', 'install', '-y', '-q', '--no-install-recommends', DEB], 10 * MINUTE)
      const listed = (await mustInRoot(['dpkg', '-L', 'imgcache'])).stdout.split('\n')
      for (const file of files) expect(listed).toContain(file)
      expect(existsSync(join(root, 'etc/systemd/system/timers.target.wants/imgcache-prune.timer'))).toBe(false)
      const v = await mustInRoot(['imgcache', '--version'])
      expect(v.stdout).toContain(`imgcache/${version}`)
      // The completion Debian's bash-completion would load for `imgcache`.
      const bash = await mustInRoot([
        'bash',
        '-c',
        'source /usr/share/bash-completion/completions/imgcache && complete -p imgcache',
      ])
      expect(bash.stdout).toContain('_imgcache_autocomplete imgcache')
    },
    15 * MINUTE,
  )

  it("the service's ExecStart, run as its timer would, prunes the host's cache", async () => {
    const unit = await readFile(join(root, 'lib/systemd/system/imgcache-prune.service'), 'utf8')
    const [, command] = /^ExecStart=(.+)$/m.exec(unit) ?? []
    const execStart = command?.split(/\s+/)
    expect(execStart?.[0]).toBe('/usr/bin/imgcache')
    const cache = join(root, 'var/lib/nova/instances/_base')
    await mkdir(cache, {recursive: true})
    const old = join(cache, sha1('retired-image'))
    const young = join(cache, sha1('released-an-hour-ago'))
    await writeFile(old, 'old')
    await writeFile(young, 'young')
    const monthAgo = new Date(Date.now() - 30 * DAY * 1000)
    await utimes(old, monthAgo, monthAgo)
    // systemd runs it with no terminal and a clean environment, which debian-root.sh run gives too.
    const run = await inRoot(execStart!)
    expect(run.stderr).not.toMatch(/error/i)
    expect(run.exitCode).toBe(0)
    expect(existsSync(old)).toBe(false)
    expect(existsSync(young)).toBe(true)
  })

  it(
    "systemd-analyze verify (Debian's systemd, in the root) accepts both units as installed",
    async () => {
      await mustInRoot(['apt-get', 'install', '-y', '-q', '--no-install-recommends', 'systemd'], 10 * MINUTE)
      const verify = await inRoot([
        'systemd-analyze',
        'verify',
        '/lib/systemd/system/imgcache-prune.service',
        '/lib/systemd/system/imgcache-prune.timer',
      ])
      expect(verify.stderr).toBe('')
      expect(verify.exitCode).toBe(0)
    },
    15 * MINUTE,
  )

  it('removes cleanly: no file of the package is left', async () => {
    await mustInRoot(['apt-get', 'remove', '-y', '-q', 'imgcache'], 5 * MINUTE)
    const status = await inRoot(['dpkg', '-s', 'imgcache'])
    expect(status.stdout).not.toContain('installed')
    for (const file of [...files, '/usr/lib/imgcache']) expect(existsSync(join(root, file))).toBe(false)
  })
})
