import {execa} from 'execa'
import {mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {analyzeNode} from '../../src/lib/analysis.js'
import {resolveCacheSettings} from '../../src/lib/config/settings.js'
import {ImgcacheError} from '../../src/lib/errors.js'
import {followDownload} from '../../src/lib/fetch/follow.js'
import {LocalNode} from '../../src/lib/node/local.js'
import {DAY, makeNovaHost, qemuImg, sha1} from '../fixtures/nova-host.js'
import {sizeOf, until} from '../helpers/files.js'
import {type ImageServer, startImageServer} from '../helpers/image-server.js'
import {holdOsloLock, osloSees} from '../helpers/oslo-lock.js'
import {payload, sha256} from '../helpers/payload.js'

let root: string
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'imgc-local-'))
})
afterAll(async () => {
  await rm(root, {force: true, recursive: true})
})

describe('nova-compatible locks against a real oslo.concurrency lock', () => {
  const node = new LocalNode()
  afterEach(async () => {
    await node.close()
  })

  it('sees a lock held by oslo (nova-compute) and gives up after the bounded wait', async () => {
    const lockDir = join(root, 'locks-a')
    const holder = await holdOsloLock(lockDir, 'abc')
    try {
      const started = Date.now()
      const error = await node.lock(join(lockDir, 'nova-abc'), {timeoutMs: 600}).catch((error_: unknown) => error_)
      expect(error).toBeInstanceOf(ImgcacheError)
      expect((error as ImgcacheError).code).toBe('LOCK_BUSY')
      expect((error as ImgcacheError).message).toContain('nova-abc is locked by another process')
      expect(Date.now() - started).toBeGreaterThanOrEqual(550)
    } finally {
      await holder.release()
    }

    const lock = await node.lock(join(lockDir, 'nova-abc'), {timeoutMs: 1000})
    await lock.release()
  })

  it('waits for oslo to release, then gets the lock', async () => {
    const lockDir = join(root, 'locks-b')
    const holder = await holdOsloLock(lockDir, 'abc')
    const waiting = node.lock(join(lockDir, 'nova-abc'), {timeoutMs: 10_000})
    setTimeout(() => {
      holder.release().catch(() => undefined)
    }, 300)
    const lock = await waiting
    expect(await osloSees(join(lockDir, 'nova-abc'))).toBe('BUSY')
    await lock.release()
    expect(await osloSees(join(lockDir, 'nova-abc'))).toBe('FREE')
  })

  it('oslo sees our lock, and sees it released when our helper process dies', async () => {
    const lockDir = join(root, 'locks-c')
    await mkdir(lockDir, {recursive: true})
    const path = join(lockDir, 'nova-def')
    await node.lock(path, {timeoutMs: 1000})
    expect(await osloSees(path)).toBe('BUSY')
    // Kill the helper as a crash would (SIGKILL): its stdin closes and the kernel drops the lock.
    const {stdout} = await execa('pgrep', ['-f', '-P', String(process.pid), 'python3'], {reject: false})
    const pids = stdout.split('\n').filter(Boolean)
    expect(pids.length).toBeGreaterThan(0)
    for (const pid of pids) process.kill(Number(pid), 'SIGKILL')
    await new Promise((r) => {
      setTimeout(r, 200)
    })
    expect(await osloSees(path)).toBe('FREE')
  })

  it('two tasks of one process wanting the same file queue instead of sharing the lock', async () => {
    const path = join(root, 'locks-d', 'nova-x')
    const first = await node.lock(path, {timeoutMs: 1000})
    let secondGot = false
    const second = node.lock(path, {timeoutMs: 5000}).then((l) => {
      secondGot = true
      return l
    })
    await new Promise((r) => {
      setTimeout(r, 300)
    })
    expect(secondGot).toBe(false)
    await first.release()
    const lock = await second
    expect(await osloSees(path)).toBe('BUSY')
    await lock.release()
    // And a second request that cannot wait long enough fails with LOCK_BUSY rather than sharing.
    const held = await node.lock(path, {timeoutMs: 1000})
    await expect(node.lock(path, {timeoutMs: 200})).rejects.toMatchObject({code: 'LOCK_BUSY'})
    await held.release()
  })
})

describe('the local scan reads backing chains natively, as qemu-img does', () => {
  it('agrees with qemu-img info --backing-chain on absolute, relative and chained overlays', async () => {
    const host = await makeNovaHost(join(root, 'chains'), {
      bases: [
        {age: DAY, imageId: 'img-raw'},
        {age: DAY, format: 'qcow2', imageId: 'img-qcow2'},
      ],
      instances: [
        {dir: 'u-abs', disks: [{backing: sha1('img-raw')}]},
        {dir: 'u-rel', disks: [{backing: sha1('img-qcow2'), backingFormat: 'qcow2', relative: true}]},
        {dir: 'u-plain', disks: [{}]},
      ],
    })
    // A chain: disk → disk.snap (in the instance dir) → base.
    await qemuImg([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      host.path(sha1('img-raw')),
      '-F',
      'raw',
      join(host.instancesPath, 'u-abs', 'disk.snap'),
    ])
    await qemuImg([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-u',
      '-b',
      'disk.snap',
      '-F',
      'qcow2',
      join(host.instancesPath, 'u-abs', 'disk.eph0'),
      '1G',
    ])
    const node = new LocalNode()
    const settings = await resolveCacheSettings(node, {}, undefined, {instancesPath: host.instancesPath})
    const analysis = await analyzeNode(node, settings, {domainXmlDirs: []})
    for (const instance of analysis.usage.instances) {
      for (const disk of instance.disks) {
        const path = join(host.instancesPath, instance.dir, disk.name)

        const {stdout} = await execa('qemu-img', ['info', '-U', '--output=json', '--backing-chain', path])
        const chain = (JSON.parse(stdout) as Array<{filename: string}>).slice(1).map((i) => i.filename)
        const normalized = chain.map((f) => join(f.startsWith('/') ? '' : join(host.instancesPath, instance.dir), f))
        expect({chain: disk.backingChain, disk: path}).toEqual({chain: normalized, disk: path})
      }
    }

    expect(analysis.roundTrips).toBe(1)
    expect(analysis.usage.problems).toEqual([])
  })
})

describe("the local node's file operations", () => {
  it('removes a symlink, never its target, and never a directory', async () => {
    const dir = join(root, 'ops')
    await mkdir(join(dir, 'sub'), {recursive: true})
    await writeFile(join(root, 'outside-target'), 'precious')
    const {symlink} = await import('node:fs/promises')
    await symlink(join(root, 'outside-target'), join(dir, 'link'))
    const node = new LocalNode()
    expect(await node.remove(join(dir, 'link'))).toBe('removed')
    expect(await readdir(root)).toContain('outside-target')
    await expect(node.remove(join(dir, 'sub'))).rejects.toThrow(/is a directory/)
    expect(await node.remove(join(dir, 'missing'))).toBe('missing')
  })
})

/** An instances path with its cache dir, a local node working under it, and where a download's `.part` goes. */
async function place(name: string) {
  const instancesPath = join(root, name)
  const cacheDir = join(instancesPath, '_base')
  await mkdir(cacheDir, {recursive: true})
  const node = new LocalNode()
  node.useInstancesPath(instancesPath, [cacheDir])
  return {cacheDir, node, part: join(cacheDir, 'image.part')}
}

describe('the local download: curl writes the .part the agent made, through its descriptor', () => {
  const MiB = 1024 * 1024
  let server: ImageServer
  beforeAll(async () => {
    server = await startImageServer()
  })
  afterAll(async () => {
    await server?.close()
  })

  it('sends the headers byte for byte (quotes and backslashes in curl config syntax), writes every byte, and the follower hashes them', async () => {
    const content = payload(21, 5 * MiB + 17)
    server.serve('/plain', {data: content})
    const {node, part} = await place('dl-plain')
    const authorization = String.raw`Bearer a"b\c\"d`
    try {
      const download = await node.downloadInto({
        dest: part,
        headers: {authorization},
        stallSeconds: 60,
        url: `${server.url('/plain')}?q="x"`,
      })
      const seen: number[] = []
      const followed = await followDownload(download, {
        algorithm: 'sha256',
        onBytes: (bytes) => seen.push(bytes),
        syncEvery: MiB,
      })
      download.close()
      expect(followed).toMatchObject({bytes: content.length, digest: sha256(content), exit: {exitCode: 0}})
      expect(seen.at(-1)).toBe(content.length)
      expect((await readFile(part)).equals(content)).toBe(true)
      expect(server.gets('/plain')).toMatchObject([{authorization, query: '?q=%22x%22', status: 200}])
    } finally {
      await node.close()
    }
  })

  it('refuses a link planted at the .part before curl starts, and leaves its target alone', async () => {
    server.serve('/planted', {data: payload(22, MiB)})
    const {node, part} = await place('dl-planted')
    const target = join(root, 'dl-planted-target')
    await writeFile(target, 'precious')
    await symlink(target, part)
    try {
      await expect(
        node.downloadInto({dest: part, headers: {}, stallSeconds: 60, url: server.url('/planted')}),
      ).rejects.toMatchObject({code: 'UNSAFE_PATH'})
      expect(await readFile(target, 'utf8')).toBe('precious')
      expect(server.gets('/planted')).toEqual([])
    } finally {
      await node.close()
    }
  })

  it('curl dies with the imgcache that started it (SIGKILL): it does not write on into the .part', async () => {
    server.serve('/orphan', {data: payload(23, 8 * MiB), rate: MiB})
    const {part} = await place('dl-orphan')
    const local = new URL('../../src/lib/node/local.js', import.meta.url).pathname.replace(/\.js$/, '.ts')
    const script = `
      const {LocalNode} = await import(${JSON.stringify(local)})
      const node = new LocalNode()
      node.useInstancesPath(${JSON.stringify(join(root, 'dl-orphan'))}, [])
      await node.downloadInto({dest: ${JSON.stringify(part)}, headers: {}, stallSeconds: 60, url: ${JSON.stringify(server.url('/orphan'))}})
      setInterval(() => {}, 1000)
    `
    const child = execa(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {reject: false})
    const curls = async () => {
      const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p))
      const found: string[] = []
      for (const pid of pids) {
        const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
        const parent = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
        if (argv.startsWith('curl\0') && parent.split(') ')[1]?.split(' ')[1] === String(child.pid)) found.push(pid)
      }

      return found
    }

    await until('curl to write the .part', async () => (await sizeOf(part)) > 0)
    const [curl] = await curls()
    expect(curl).toBeDefined()
    child.kill('SIGKILL')
    await child
    await until(
      'curl to end',
      async () => (await readFile(`/proc/${curl}/stat`, 'utf8').catch(() => 'gone')) === 'gone',
    )
    const size = await sizeOf(part)
    expect(size).toBeLessThan(8 * MiB)
  })
})
