/**
 * DESIGN §10, links: imgcache runs as root beside a nova-compute that owns the instances path, so
 * the `nova` user can plant links and odd files in `_base` and `locks/`. Each case plants one (as
 * nova, for real), runs the built CLI as root, and proves the file the link points at, outside the
 * cache, is unchanged: same bytes, mode, owner and mtime. Refusals are exit 4 (UNSAFE_PATH) naming
 * the path, with the planted file left for the operator to look at.
 */
import {execa} from 'execa'
import {chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {DAY, makeNovaHost, sha1} from '../fixtures/nova-host.js'
import {BIN, type CliResult, runCli} from '../helpers/cli.js'
import {fleetConfig} from '../helpers/fleet.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {type HostUser, novaUser, qemuStandIn, runAs} from '../helpers/nova-user.js'
import {sha256} from '../helpers/payload.js'

let work: string
let nova: HostUser
let other: HostUser
let raw: string
let rawSum: string
let qcow2: string
let qcow2Sum: string
let counter = 0

interface ErrorJson {
  error: {code: string; message: string; path?: string}
}

interface Host {
  base: string
  final: string
  id: string
  lock: string
  root: string
  sidecar: string
  victim: string
}

/** A node's instances path owned by nova (0755, as Debian's package makes it), and a victim file of root's beside it. */
async function host(): Promise<Host> {
  const dir = path.join(work, `h${++counter}`)
  const root = path.join(dir, 'instances')
  await mkdir(path.join(root, '_base'), {recursive: true})
  await mkdir(path.join(root, 'locks'))
  for (const d of [root, path.join(root, '_base'), path.join(root, 'locks')]) {
    await chown(d, nova.uid, nova.gid)
    await chmod(d, 0o755)
  }

  const victim = path.join(dir, 'victim')
  await writeFile(victim, 'root-only bytes\n', {mode: 0o600})
  await utimes(victim, new Date('2020-01-01'), new Date('2020-01-01'))
  const id = `3f0c${String(counter).padStart(4, '0')}-0000-4000-8000-000000000000`
  const name = sha1(id)
  return {
    base: path.join(root, '_base'),
    final: path.join(root, '_base', name),
    id,
    lock: path.join(root, 'locks', `nova-${name}`),
    root,
    sidecar: path.join(root, '_base', '.imgcache', `${name}.json`),
    victim,
  }
}

/** What must not change about a file outside the cache. */
async function fingerprint(file: string) {
  const s = await stat(file)
  return {bytes: (await readFile(file)).toString('base64'), gid: s.gid, mode: s.mode, mtimeMs: s.mtimeMs, uid: s.uid}
}

async function plantLink(target: string, at: string): Promise<void> {
  const r = await runAs(nova.name, ['ln', '-s', target, at])
  expect(r.exitCode, r.stderr).toBe(0)
}

function populate(h: Host, file = raw, sum = rawSum, extra: string[] = []): Promise<CliResult> {
  return runCli(
    [
      'populate',
      file,
      '--image-id',
      h.id,
      '--checksum',
      `sha256:${sum}`,
      '--instances-path',
      h.root,
      '--json',
      ...extra,
    ],
    {umask: '077'},
  )
}

function expectRefused(r: CliResult, planted: string): void {
  expect(r.exitCode, r.stderr + r.stdout).toBe(4)
  expect(JSON.stringify(r.json)).toContain('UNSAFE_PATH')
  expect(JSON.stringify(r.json)).toContain(planted)
}

beforeAll(async () => {
  nova = await novaUser()
  other = await qemuStandIn()
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-links-'))
  await chmod(work, 0o755)
  raw = path.join(work, 'image.raw')
  await writeFile(raw, Buffer.alloc(1024 * 1024, 7))
  rawSum = sha256(await readFile(raw))
  qcow2 = path.join(work, 'image.qcow2')
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2, '16M'])
  qcow2Sum = sha256(await readFile(qcow2))
})
afterAll(async () => {
  if (work) await rm(work, {force: true, recursive: true})
})

describe('links planted by nova in the cache never steer root', () => {
  it('a link at the download temporary (.part) is refused; its target is unchanged', async () => {
    const h = await host()
    const before = await fingerprint(h.victim)
    await plantLink(h.victim, `${h.final}.part`)
    const r = await populate(h)
    expectRefused(r, `${h.final}.part`)
    expect(await fingerprint(h.victim)).toEqual(before)
    expect((await lstat(`${h.final}.part`)).isSymbolicLink()).toBe(true) // left for the operator
    await expect(lstat(h.final)).rejects.toThrow()
  })

  it('a link at the conversion temporary (.converted) is refused; its target is unchanged', async () => {
    const h = await host()
    const before = await fingerprint(h.victim)
    await plantLink(h.victim, `${h.final}.converted`)
    const r = await populate(h, qcow2, qcow2Sum)
    expectRefused(r, `${h.final}.converted`)
    expect(await fingerprint(h.victim)).toEqual(before)
    await expect(lstat(h.final)).rejects.toThrow()
    await expect(lstat(`${h.final}.part`)).rejects.toThrow() // our own temporary is gone
  })

  it("a link at the image's lock file is refused; its target is unchanged", async () => {
    const h = await host()
    const before = await fingerprint(h.victim)
    await plantLink(h.victim, h.lock)
    const r = await populate(h)
    expectRefused(r, h.lock)
    expect(await fingerprint(h.victim)).toEqual(before)
    await expect(lstat(h.final)).rejects.toThrow()
  })

  it("a FIFO at the image's lock file is refused at once, nothing written", async () => {
    const h = await host()
    expect((await runAs(nova.name, ['mkfifo', h.lock])).exitCode).toBe(0)
    const r = await populate(h)
    expectRefused(r, h.lock)
    expect((await lstat(h.lock)).isFIFO()).toBe(true)
    await expect(lstat(h.final)).rejects.toThrow()
  })

  it('a link at the base itself is never "existing" nor "ok", and is refused', async () => {
    const h = await host()
    const before = await fingerprint(h.victim)
    await plantLink(h.victim, h.final)
    const r = await populate(h)
    expectRefused(r, h.final)
    const inspect = await runCli(['inspect', '--instances-path', h.root, '--json'])
    const entry = (
      inspect.json as {nodes: Array<{entries: Array<{name: string; problems: string[]; sound: boolean}>}>}
    ).nodes[0]!.entries.find((e) => e.name === path.basename(h.final))
    expect(entry?.sound).toBe(false)
    expect(entry?.problems.join(' ')).toContain('symbolic link')
    const text = await runCli(['inspect', '--instances-path', h.root])
    const row = text.stdout.split('\n').find((l) => l.startsWith(path.basename(h.final)))
    expect(row).toContain('NO: a symbolic link')
    expect(await fingerprint(h.victim)).toEqual(before)
  })

  it("a link at the base's metadata file is replaced, never written through", async () => {
    const h = await host()
    const before = await fingerprint(h.victim)
    await runAs(nova.name, ['mkdir', path.dirname(h.sidecar)])
    await plantLink(h.victim, h.sidecar)
    const r = await populate(h)
    expect(r.exitCode, r.stdout).toBe(0)
    expect(await fingerprint(h.victim)).toEqual(before)
    const sidecar = await lstat(h.sidecar)
    expect(sidecar.isFile()).toBe(true)
    expect(sidecar.uid).toBe(nova.uid)
  })

  it("a _base linked by nova to another user's directory is not followed", async () => {
    const h = await host()
    const elsewhere = path.join(path.dirname(h.root), 'elsewhere')
    await mkdir(elsewhere)
    await chown(elsewhere, other.uid, other.gid)
    await rm(h.base, {recursive: true})
    await plantLink(elsewhere, h.base)
    const r = await populate(h)
    expectRefused(r, h.base)
    expect(await readdir(elsewhere)).toEqual([])
  })

  it('a _base linked by nova to a directory of root is followed only as nova: nothing is written there', async () => {
    const h = await host()
    const rootDir = path.join(path.dirname(h.root), 'root-dir')
    await mkdir(rootDir, {mode: 0o755})
    await rm(h.base, {recursive: true})
    await plantLink(rootDir, h.base)
    const r = await populate(h)
    expect(r.exitCode, r.stdout).toBe(1)
    expect(JSON.stringify(r.json)).toContain('permission denied')
    expect(await readdir(rootDir)).toEqual([])
  })

  it("a locks directory linked to another user's directory is not followed", async () => {
    const h = await host()
    const elsewhere = path.join(path.dirname(h.root), 'other-locks')
    await mkdir(elsewhere)
    await chown(elsewhere, other.uid, other.gid)
    await rm(path.dirname(h.lock), {recursive: true})
    await plantLink(elsewhere, path.dirname(h.lock))
    const r = await populate(h)
    expectRefused(r, path.dirname(h.lock))
    expect(await readdir(elsewhere)).toEqual([])
  })

  it("an instances path that is another user's link to nova's directory is not followed", async () => {
    const h = await host()
    const link = path.join(path.dirname(h.root), 'instances-link')
    expect((await runAs(other.name, ['ln', '-s', h.root, link])).exitCode).toBe(1) // other cannot write there
    await execa('ln', ['-s', h.root, link])
    await execa('chown', ['-h', `${other.uid}:${other.gid}`, link])
    const r = await runCli(
      ['populate', raw, '--image-id', h.id, '--checksum', `sha256:${rawSum}`, '--instances-path', link, '--json'],
      {umask: '077'},
    )
    expectRefused(r, link)
    expect(await readdir(h.base)).toEqual([])
  })

  it("an overlay's destination that is a link is never written through", async () => {
    const h = await host()
    const before = await fingerprint(h.victim)
    const dir = path.join(h.root, 'vm1')
    await runAs(nova.name, ['mkdir', dir])
    await plantLink(h.victim, path.join(dir, 'disk'))
    const r = await runCli(
      [
        'overlay',
        raw,
        path.join(dir, 'disk'),
        '--image-id',
        h.id,
        '--checksum',
        `sha256:${rawSum}`,
        '--instances-path',
        h.root,
        '--json',
      ],
      {umask: '077'},
    )
    expect(r.exitCode, r.stdout).toBe(2)
    expect((r.json as ErrorJson).error.code).toBe('DEST_EXISTS')
    expect(await fingerprint(h.victim)).toEqual(before)
  })

  it('prune removes an old unused link, never its target', async () => {
    const h = await host()
    const before = await fingerprint(h.victim)
    await plantLink(h.victim, h.final)
    const r = await runCli(['prune', '--instances-path', h.root, '--json'])
    expect(r.exitCode, r.stdout).toBe(0)
    await expect(lstat(h.final)).rejects.toThrow()
    expect(await fingerprint(h.victim)).toEqual(before)
  })
})

describe('who may change a cache', () => {
  it('a user who is neither root nor the owner gets NOT_OWNER (exit 2) and changes nothing; inspect still works', async () => {
    const h = await host()
    const asOther = (args: string[]) =>
      runAs(other.name, ['node', BIN, ...args, '--instances-path', h.root, '--json'], {env: {IMGCACHE_CONFIG: ''}})
    const r = await asOther(['populate', raw, '--image-id', h.id, '--checksum', `sha256:${rawSum}`])
    expect(r.exitCode, r.stdout).toBe(2)
    expect(r.stdout).toContain('NOT_OWNER')
    expect(await readdir(h.base)).toEqual([])
    expect(await readdir(path.dirname(h.lock))).toEqual([])
    const inspect = await asOther(['inspect'])
    expect(inspect.exitCode, inspect.stdout).toBe(0)
  })
})

describe('a base libvirt gave to its qemu user', () => {
  it('is still touched by prune when in use (as Nova does through its privileged helper), never through a link', async () => {
    const root = path.join(work, 'libvirt-owned')
    const built = await makeNovaHost(root, {
      bases: [{age: 3 * DAY, imageId: 'in-use'}],
      instances: [{dir: 'u1', disks: [{backing: sha1('in-use')}]}],
    })
    const base = path.join(built.instancesPath, '_base', sha1('in-use'))
    await execa('chown', ['-R', `${nova.uid}:${nova.gid}`, built.instancesPath])
    // libvirt's dynamic ownership: the running instance's backing file belongs to its qemu user.
    await chown(base, other.uid, other.gid)
    const before = (await stat(base)).mtimeMs
    const r = await runCli(['prune', '--instances-path', built.instancesPath, '--json'], {umask: '077'})
    expect(r.exitCode, r.stdout).toBe(0)
    const after = await stat(base)
    expect(after.mtimeMs).toBeGreaterThan(before)
    expect(after.uid).toBe(other.uid) // touched, not taken back
  })
})

describe('the same on an SSH node', () => {
  let nodes: TestNodes
  let config: string
  beforeAll(async () => {
    nodes = await startNodes(1)
    config = path.join(work, 'fleet.json')
    await writeFile(config, JSON.stringify(fleetConfig(nodes)))
    const {dir, instancesPath} = nodes.node('node1')
    // nova must reach its instances path, as on a compute host (mkdtemp made the parents 0700).
    for (const d of [nodes.base, dir]) await chmod(d, 0o755)
    await chown(instancesPath, nova.uid, nova.gid)
    await chmod(instancesPath, 0o755)
  })
  afterAll(async () => {
    await nodes?.stop()
  })

  function remote(id: string): Promise<CliResult> {
    return runCli(
      [
        'populate',
        raw,
        '--image-id',
        id,
        '--checksum',
        `sha256:${rawSum}`,
        '--node',
        'node1',
        '--config',
        config,
        '--json',
      ],
      {umask: '077'},
    )
  }

  it('a link at .part or at the lock file is refused by the agent and the writer; targets unchanged', async () => {
    const {instancesPath} = nodes.node('node1')
    const victim = path.join(path.dirname(instancesPath), 'victim')
    await writeFile(victim, 'root-only bytes\n', {mode: 0o600})
    const before = await fingerprint(victim)
    const made = await runAs(nova.name, ['mkdir', path.join(instancesPath, '_base'), path.join(instancesPath, 'locks')])
    expect(made.exitCode, made.stderr).toBe(0)

    const partId = '5a5a0001-0000-4000-8000-000000000000'
    await plantLink(victim, path.join(instancesPath, '_base', `${sha1(partId)}.part`))
    expectRefused(await remote(partId), `${sha1(partId)}.part`)

    const lockId = '5a5a0002-0000-4000-8000-000000000000'
    await plantLink(victim, path.join(instancesPath, 'locks', `nova-${sha1(lockId)}`))
    expectRefused(await remote(lockId), `nova-${sha1(lockId)}`)
    expect(await fingerprint(victim)).toEqual(before)

    // And a clean populate over SSH leaves nova's files with nova's modes, under root's umask 077.
    const okId = '5a5a0003-0000-4000-8000-000000000000'
    const ok = await remote(okId)
    expect(ok.exitCode, ok.stdout).toBe(0)
    for (const file of [
      path.join(instancesPath, '_base'),
      path.join(instancesPath, '_base', sha1(okId)),
      path.join(instancesPath, 'locks', `nova-${sha1(okId)}`),
    ]) {
      const s = await lstat(file)
      expect({file, gid: s.gid, mode: s.mode & 0o777, uid: s.uid}).toEqual({
        file,
        gid: nova.gid,
        mode: s.isDirectory() ? 0o755 : 0o644,
        uid: nova.uid,
      })
    }
  })
})
