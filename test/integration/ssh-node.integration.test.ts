import {execa} from 'execa'
import {readFile, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {Readable} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {analyzeNode} from '../../src/lib/analysis.js'
import {resolveCacheSettings} from '../../src/lib/config/settings.js'
import {buildInspectResult} from '../../src/lib/inspect.js'
import {LocalNode} from '../../src/lib/node/local.js'
import {isUnreachable, SshNode} from '../../src/lib/node/ssh.js'
import {prune} from '../../src/lib/prune.js'
import {DAY, HOUR, makeNovaHost, sha1} from '../fixtures/nova-host.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {holdOsloLock, osloSees} from '../helpers/oslo-lock.js'

let nodes: TestNodes
beforeAll(async () => {
  nodes = await startNodes(2)
})
afterAll(async () => {
  await nodes?.stop()
})

function sshNode(name: string): SshNode {
  return new SshNode(name, nodes.target(name))
}

describe('an SSH node runs the same operations as the local host', () => {
  /** How far the free bytes of two scans may differ: other work on the machine writes meanwhile. */
  const FREE_BYTES_MARGIN = 1024 * 1024 * 1024

  it('scans exactly as the local scan does, in at most 3 round trips', async () => {
    const root = nodes.node('node1').instancesPath.replace(/\/instances$/, '')
    // A kernel, a look-alike (same size, same head, another end) and a ramdisk whose base is gone.
    const kernel = Buffer.alloc(300_000, 'vmlinuz')
    const lookalike = Buffer.concat([kernel.subarray(0, -1), Buffer.from('!')])
    const host = await makeNovaHost(root, {
      bases: [
        {age: 3 * DAY, imageId: 'a'},
        {age: 2 * HOUR, imageId: 'b'},
        {age: DAY, content: 's', name: 'swap_512'},
        {age: 3 * DAY, content: kernel, imageId: 'aki'},
        {age: 3 * DAY, content: lookalike, imageId: 'aki-lookalike'},
      ],
      files: [
        {age: 2 * DAY, name: `${sha1('c')}.part`},
        {age: 0, name: 'link-'.padEnd(40, 'x'), symlinkTo: '/etc/hostname'},
      ],
      instances: [
        {
          dir: 'u1',
          disks: [{backing: sha1('a')}, {backing: 'swap_512', name: 'disk.swap'}],
          metadata: {imageId: 'a', swapMb: 512},
        },
        {dir: 'u2', disks: [{backing: sha1('b'), relative: true}]},
        {
          dir: 'u3',
          disks: [
            {backing: sha1('a')},
            {content: kernel, name: 'kernel'},
            {content: Buffer.alloc(5000, 'initrd'), name: 'ramdisk'},
          ],
          metadata: {imageId: 'a', initrd: 'u3/ramdisk', kernel: 'u3/kernel'},
        },
      ],
    })
    // An overlay's leftover, and a file that only looks like one: both scans report the first alone.
    await writeFile(join(host.instancesPath, 'u2', '.disk.local.imgcache-0123abcd.tmp'), 'QFI')
    await writeFile(join(host.instancesPath, 'u2', '.disk.local.imgcache-0123abcg.tmp'), 'QFI')
    const remote = sshNode('node1')
    const local = new LocalNode()
    try {
      const settingsOf = (n: LocalNode | SshNode) =>
        resolveCacheSettings(n, {}, undefined, {instancesPath: host.instancesPath})
      const request = {
        cacheDir: host.cacheDir,
        cacheHeadBytes: 4096,
        compareBootFiles: true,
        domainXmlDirs: [],
        headBytes: 4096,
        instancesPath: host.instancesPath,
        lockDir: host.lockDir,
      }
      const a = await local.scan(request)
      // Anything else on the machine may write between two scans (here: this test, for certain).
      // The file system's free bytes are then a volatile figure: equal within a margin, not exact.
      await writeFile(join(root, 'elsewhere.bin'), Buffer.alloc(8 * 1024 * 1024, 1), {flush: true})
      const b = await remote.scan(request)
      await rm(join(root, 'elsewhere.bin'))
      const normalize = (s: typeof a) => ({...s, fs: s.fs && {total: s.fs.total}, now: 0})
      expect(normalize(b)).toEqual(normalize(a))
      expect(b.fs?.total).toBeGreaterThan(0)
      expect(Math.abs(b.fs!.available - a.fs!.available)).toBeLessThan(FREE_BYTES_MARGIN)
      expect(a.instanceDirs.find((d) => d.name === 'u2')?.temporaries).toEqual([
        {mtimeMs: expect.any(Number), name: '.disk.local.imgcache-0123abcd.tmp', size: 3},
      ])
      // The kernel copy and the two cache files of its size and head were hashed, nothing else.
      const digests = (s: typeof a) => [
        ...s.cacheDir.entries.filter((e) => e.digest).map((e) => e.name),
        ...s.instanceDirs.flatMap((d) => d.disks.filter((k) => k.digest).map((k) => `${d.name}/${k.name}`)),
      ]
      expect(digests(b).sort()).toEqual([sha1('aki'), sha1('aki-lookalike'), 'u3/kernel'].sort())
      const analysis = await analyzeNode(remote, await settingsOf(remote), {domainXmlDirs: []})
      expect(analysis.roundTrips).toBeLessThanOrEqual(3)
      const localView = buildInspectResult(await analyzeNode(local, await settingsOf(local), {domainXmlDirs: []}))
      const remoteView = buildInspectResult(analysis)
      expect(remoteView.entries.map((e) => [e.name, e.prune.outcome, e.users])).toEqual(
        localView.entries.map((e) => [e.name, e.prune.outcome, e.users]),
      )
      // inspect names the instance booting the copy as a user of its base, and of no look-alike.
      const row = (name: string) => remoteView.entries.find((e) => e.name === name)
      expect(row(sha1('aki'))).toMatchObject({
        prune: {outcome: 'in-use'},
        usedVia: ['boot'],
        users: ['u3 (instance-00000001)'],
      })
      expect(row(sha1('aki-lookalike'))).toMatchObject({prune: {outcome: 'would-remove'}, users: []})
    } finally {
      await remote.close()
      await local.close()
    }
  })

  it('prunes over SSH with the nova lock on the node: an oslo holder there makes it skip the file', async () => {
    const root = nodes.node('node2').instancesPath.replace(/\/instances$/, '')
    const host = await makeNovaHost(join(root, 'p'), {
      bases: [
        {age: 3 * DAY, imageId: 'old-1'},
        {age: 3 * DAY, imageId: 'old-2'},
      ],
    })
    const holder = await holdOsloLock(host.lockDir, sha1('old-1'))
    const remote = sshNode('node2')
    try {
      const settings = await resolveCacheSettings(remote, {}, undefined, {instancesPath: host.instancesPath})
      const result = await prune(await analyzeNode(remote, settings, {domainXmlDirs: []}), {
        dryRun: false,
        lockTimeoutMs: 500,
      })
      const outcome = Object.fromEntries(result.decisions.map((d) => [d.name, d.outcome]))
      expect(outcome).toEqual({[sha1('old-1')]: 'locked', [sha1('old-2')]: 'removed'})
    } finally {
      await holder.release()
      await remote.close()
    }
  })

  it('holds locks that oslo on the node sees, released when the connection dies', async () => {
    const remote = sshNode('node1')
    const lockPath = join(nodes.node('node1').instancesPath, 'locks', 'nova-zzz')
    try {
      await remote.lock(lockPath, {timeoutMs: 2000})
      expect(await osloSees(lockPath)).toBe('BUSY')
      // The node's sshd dies (sessions included): the agent's stdin closes, the lock goes.
      await nodes.killSshd('node1')
      await new Promise((r) => {
        setTimeout(r, 500)
      })
      expect(await osloSees(lockPath)).toBe('FREE')
    } finally {
      await remote.close()
      await nodes.restartSshd('node1')
    }
  })

  it('does file operations, runs argvs with quoted arguments, streams files both ways', async () => {
    const remote = sshNode('node2')
    const dir = join(nodes.node('node2').instancesPath, 'ops dir')
    try {
      await remote.mkdirp(dir)
      const tricky = join(dir, "it's a $(file) `name`")
      await remote.writeFileAtomic(tricky, 'hello')
      expect(await readFile(tricky, 'utf8')).toBe('hello')
      expect((await remote.stat(tricky))?.size).toBe(5)
      expect(await remote.readTextFile(join(dir, 'missing'))).toBeUndefined()
      const echoed = await remote.run(['printf', '%s|', 'a b', "c'd", '$HOME'])
      expect(echoed.stdout).toBe("a b|c'd|$HOME|")
      const sink = await remote.openWrite(join(dir, 'blob'))
      const data = Buffer.alloc(3 * 1024 * 1024, 7)
      sink.stream.end(data)
      expect(await sink.finish()).toBe(data.length)
      const chunks: Buffer[] = []
      for await (const chunk of await remote.openRead(join(dir, 'blob'), 1024)) chunks.push(chunk as Buffer)
      expect(Buffer.concat(chunks).length).toBe(data.length - 1024)
      expect(await remote.digest(join(dir, 'blob'), 'sha256')).toBe(
        (await execa('sha256sum', [join(dir, 'blob')])).stdout.slice(0, 64),
      )
      expect(await remote.remove(join(dir, 'blob'), {olderThanMs: Date.now() - 60_000})).toBe('too-young')
      expect(await remote.remove(join(dir, 'blob'))).toBe('removed')
      await expect(remote.remove(dir)).rejects.toThrow(/is a directory/)
      await expect(remote.rename(join(dir, 'nope'), join(dir, 'x'))).rejects.toMatchObject({code: 'FS_ENOENT'})
    } finally {
      await remote.close()
      await rm(dir, {force: true, recursive: true})
    }
  })

  it('a write that fills the node’s disk fails as NO_SPACE, naming the node and the file', async () => {
    const remote = sshNode('node1')
    const dir = join(nodes.node('node1').instancesPath, 'full-disk')
    await remote.mkdirp(dir)
    // A 4 MiB file system on the node: the free-space preflight is not involved, only cat's write.
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=4M', 'tmpfs', dir])
    try {
      const path = join(dir, 'image.part')
      const sink = await remote.openWrite(path)
      const data = Buffer.alloc(8 * 1024 * 1024, 1)
      // As a transfer does: the pipeline fails when cat's failure reaches the stream in time,
      // otherwise finish() reports it. Either way it is cat's reason, not a broken pipe.
      const failure = await pipeline(Readable.from([data.subarray(0, 4 << 20), data.subarray(4 << 20)]), sink.stream)
        .then(async () => sink.finish())
        .then(
          () => undefined,
          (error: unknown) => error,
        )
      expect(failure).toMatchObject({
        code: 'NO_SPACE',
        message: `no space left on node1 (${remote.description}) while writing ${path}`,
        subject: {node: 'node1', path},
      })
      expect((await remote.stat(path))?.size).toBeLessThanOrEqual(4 << 20)
    } finally {
      await remote.close()
      await execa('umount', [dir])
      await rm(dir, {force: true, recursive: true})
    }
  })

  it.each(['local', 'ssh'])('%s: rename with noReplace never replaces an existing file', async (kind) => {
    const remote = kind === 'ssh' ? sshNode('node1') : new LocalNode()
    const dir = join(nodes.node('node1').instancesPath, `rename-${kind}`)
    try {
      await remote.mkdirp(dir)
      await writeFile(join(dir, 'ours'), 'ours')
      await writeFile(join(dir, 'theirs'), 'theirs')
      await expect(remote.rename(join(dir, 'ours'), join(dir, 'theirs'), {noReplace: true})).rejects.toMatchObject({
        code: 'FS_EEXIST',
      })
      expect(await readFile(join(dir, 'theirs'), 'utf8')).toBe('theirs')
      expect(await readFile(join(dir, 'ours'), 'utf8')).toBe('ours')
      await remote.rename(join(dir, 'ours'), join(dir, 'free'), {noReplace: true})
      expect(await readFile(join(dir, 'free'), 'utf8')).toBe('ours')
      expect(await remote.stat(join(dir, 'ours'))).toBeUndefined()
    } finally {
      await remote.close()
      await rm(dir, {force: true, recursive: true})
    }
  })
})

describe('reaching a node', () => {
  it('through a jump host (ssh -J, named in the ssh config file), host keys checked on both hops', async () => {
    const hop = nodes.node('node1')
    const logins = async () =>
      ((await readFile(join(hop.dir, 'sshd.log'), 'utf8')).match(/Accepted publickey/g) ?? []).length
    const before = await logins()
    const remote = new SshNode(
      'behind-bastion',
      nodes.target('node2', {configFile: hop.sshConfigFile, jumpHost: 'node1'}),
    )
    try {
      const result = await remote.run(['sh', '-c', 'echo "$IMGCACHE_NODE"'])
      expect(result.stdout.trim()).toBe('node2')
      expect(await remote.stat(nodes.node('node2').instancesPath)).toMatchObject({type: 'dir'})
    } finally {
      await remote.close()
    }

    // The hop really carried it: the session logged in on node1 (the bastion) to reach node2.
    expect(await logins()).toBeGreaterThan(before)
  })
})

describe('SSH failures are clear and classified', () => {
  it('a changed host key is refused with how to fix it', async () => {
    await nodes.rotateHostKey('node2')
    const remote = sshNode('node2')
    try {
      const error = await remote.connect().catch((error_: unknown) => error_)
      expect(error).toMatchObject({code: 'SSH_HOST_KEY_CHANGED'})
      expect(String((error as Error).message)).toContain('node2')
      expect((error as {suggestions: string[]}).suggestions.join(' ')).toMatch(/ssh-keygen.*-R/)
      expect(isUnreachable(error)).toBe(false)
    } finally {
      await remote.close()
      await nodes.trustHostKey('node2')
    }
  })

  it('a node whose sshd is down is unreachable', async () => {
    const {port} = nodes.node('node2')
    const remote = new SshNode('down', nodes.target('node2', {port: port + 1000}))
    try {
      const error = await remote.connect().catch((error_: unknown) => error_)
      expect(isUnreachable(error)).toBe(true)
      expect(String((error as Error).message)).toMatch(/refused|unreachable/i)
    } finally {
      await remote.close()
    }
  })

  it('a node without python3 says so', async () => {
    const fake = join(nodes.node('node1').binDir, 'python3')
    await writeFile(fake, '#!/bin/sh\necho "python3: command not found" >&2\nexit 127\n', {mode: 0o755})
    const remote = sshNode('node1')
    try {
      await expect(remote.stat('/')).rejects.toMatchObject({code: 'NODE_NO_PYTHON'})
    } finally {
      await remote.close()
      await rm(fake, {force: true})
    }
  })
})
