import {execa} from 'execa'
import got from 'got'
import {existsSync, readdirSync} from 'node:fs'
import {readFile, writeFile} from 'node:fs/promises'
import http from 'node:http'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {classifySshFailure, sshArgv, sshControlArgv, type SshTarget} from '../../src/lib/node/ssh-args.js'
import {startImageServer} from '../helpers/image-server.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {createTestNet, type TestNet} from '../helpers/testnet.js'

/** Arguments that must reach the node's shell (bash, root's login shell) byte for byte. */
const TRICKY = [
  '',
  'a b',
  "it's",
  String.raw`'\''`,
  '"dq"',
  '$(id -u)',
  '`id -u`',
  '$HOME',
  'line1\nline2',
  'tab\there',
  '*',
  '~',
  '-n',
  '--',
  '!',
  '#x',
  'a;b|c&d',
  '>out <in',
  'A=1',
  String.raw`back\slash`,
  'é日本語🙂',
]

/** Run ssh with argv from sshArgv; never rejects, so failures can be asserted and classified. */
async function ssh(target: SshTarget, remote: string[], options: {multiplex?: boolean} = {}) {
  const started = performance.now()
  const result = await execa('ssh', sshArgv(target, remote, {multiplex: options.multiplex, noStdin: true}), {
    reject: false,
    timeout: 90_000,
  })
  return {...result, ms: performance.now() - started}
}

/** Pipe zeros into `cat > /dev/null` on a node. */
async function send(nodes: TestNodes, name: string, bytes: number): Promise<void> {
  await execa('ssh', sshArgv(nodes.target(name), ['sh', '-c', 'cat > /dev/null']), {input: Buffer.alloc(bytes)})
}

async function acceptedLogins(nodes: TestNodes, name: string): Promise<number> {
  const log = await readFile(`${nodes.node(name).dir}/sshd.log`, 'utf8')
  return log.split('\n').filter((line) => line.includes('Accepted publickey')).length
}

describe('loopback nodes', () => {
  let nodes: TestNodes

  beforeAll(async () => {
    nodes = await startNodes(2)
  })

  afterAll(async () => {
    await nodes?.stop()
    if (nodes) expect(existsSync(nodes.base)).toBe(false)
  })

  it('gives each node its own port, HOME, PATH, instances directory and marker', async () => {
    const [n1, n2] = nodes.nodes
    expect(n1?.port).not.toBe(n2?.port)
    for (const node of nodes.nodes) {
      const {stdout} = await nodes.ssh(node.name, [
        'sh',
        '-c',
        'echo "$IMGCACHE_NODE|$HOME|$(echo "$PATH" | cut -d: -f1)|$IMGCACHE_TEST_NODE_DIR"; test -d "$IMGCACHE_INSTANCES_PATH"',
      ])
      expect(stdout).toBe(`${node.name}|${node.dir}/home|${node.binDir}|${node.dir}`)
    }
  })

  it("lets a test shadow a program on one node through that node's bin directory", async () => {
    const fake = `${nodes.node('node1').binDir}/qemu-img`
    await writeFile(fake, '#!/bin/sh\necho "qemu-img: simulated failure on $IMGCACHE_NODE" >&2\nexit 1\n', {
      mode: 0o755,
    })
    const broken = await nodes.ssh('node1', ['qemu-img', '--version'], {reject: false})
    expect(broken.exitCode).toBe(1)
    expect(broken.stderr).toBe('qemu-img: simulated failure on node1')
    expect((await nodes.ssh('node2', ['qemu-img', '--version'])).stdout).toMatch(/^qemu-img version/)
  })

  it('runs commands with sshArgv over one multiplexed connection per node', async () => {
    const target = nodes.target('node2', {controlPath: `${nodes.controlDir}/mx-%C`})
    const before = await acceptedLogins(nodes, 'node2')
    const first = await ssh(target, ['echo', 'first'])
    expect(first.stdout).toBe('first')
    expect(readdirSync(nodes.controlDir).filter((f) => f.startsWith('mx-'))).toHaveLength(1)
    expect((await execa('ssh', sshControlArgv(target, 'check'), {reject: false})).exitCode).toBe(0)

    const times: number[] = []
    for (let i = 0; i < 5; i++) {
      const next = await ssh(target, ['echo', String(i)])
      expect(next.stdout).toBe(String(i))
      times.push(next.ms)
    }

    expect(await acceptedLogins(nodes, 'node2')).toBe(before + 1) // six commands, one login
    const muxMs = times.reduce((a, b) => a + b, 0) / times.length
    expect(muxMs).toBeLessThan(first.ms)
    console.log(`ssh cold (opens the master) ${first.ms.toFixed(0)} ms, multiplexed ${muxMs.toFixed(0)} ms`)
    await execa('ssh', sshControlArgv(target, 'exit'))
  })

  it('carries every tricky argument to the node byte for byte', async () => {
    const result = await execa('ssh', sshArgv(nodes.target('node1'), ['printf', String.raw`%s\0`, ...TRICKY]), {
      encoding: 'buffer',
      stdin: 'ignore',
      stripFinalNewline: false,
    })
    expect(Buffer.from(result.stdout)).toEqual(Buffer.from(TRICKY.map((a) => `${a}\0`).join('')))
  })

  it('leaves port, user and identity to the ssh config file when the target does not set them', async () => {
    const node = nodes.node('node2')
    const target: SshTarget = {configFile: node.sshConfigFile, controlPath: `${nodes.controlDir}/%C`, host: 'node2'}
    const result = await ssh(target, ['sh', '-c', 'echo $IMGCACHE_NODE'])
    expect(result.stderr).toBe('')
    expect(result.stdout).toBe('node2')
  })

  it('classifies real failures: unknown host key, wrong key, refused port', async () => {
    const emptyKnownHosts = `${nodes.base}/empty_known_hosts`
    await writeFile(emptyKnownHosts, '')
    const wrongKey = `${nodes.base}/wrong_key`
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', wrongKey])
    const cases: Array<[Partial<SshTarget>, string]> = [
      [{knownHostsFile: emptyKnownHosts}, 'host-key-unknown'],
      [{identityFile: wrongKey}, 'auth'],
      [{port: 1}, 'refused'],
    ]
    for (const [overrides, kind] of cases) {
      const result = await ssh(nodes.target('node1', overrides), ['true'], {multiplex: false})
      expect(result.exitCode).toBe(255)
      expect(classifySshFailure(result.exitCode ?? 0, result.stderr).kind).toBe(kind)
    }

    const accepted = await ssh(
      nodes.target('node1', {knownHostsFile: emptyKnownHosts, strictHostKeyChecking: 'accept-new'}),
      ['true'],
      {multiplex: false},
    )
    expect(accepted.exitCode).toBe(0)
    // recorded (hashed, as Debian's HashKnownHosts makes it): ssh-keygen -F finds it
    const found = await execa('ssh-keygen', ['-F', `[127.0.0.1]:${nodes.node('node1').port}`, '-f', emptyKnownHosts])
    expect(found.stdout).toContain('ssh-ed25519')
  })

  it('killSshd drops open connections and refuses new ones; restartSshd brings the node back', async () => {
    const node = nodes.node('node1')
    const target = nodes.target('node1')
    const transfer = execa(
      'ssh',
      sshArgv(target, ['sh', '-c', 'cat > "$1"', 'sh', `${node.instancesPath}/part`], {multiplex: false}),
      {
        reject: false,
      },
    )
    transfer.stdin.write(Buffer.alloc(64 * 1024, 1))
    await expect.poll(() => existsSync(`${node.instancesPath}/part`), {timeout: 10_000}).toBe(true)
    const oldPid = node.pid

    await nodes.killSshd('node1')
    const dropped = await transfer
    expect(dropped.exitCode).toBe(255)
    expect(classifySshFailure(255, dropped.stderr).kind).toBe('connection-lost')
    const refused = await ssh(target, ['true'])
    expect(classifySshFailure(refused.exitCode ?? 0, refused.stderr).kind).toBe('refused')

    await nodes.restartSshd('node1')
    expect(node.pid).not.toBe(oldPid)
    expect((await ssh(target, ['echo', 'back'])).stdout).toBe('back') // same port, same host key
  })

  it('killSshd --listener-only keeps established connections', async () => {
    const target = nodes.target('node1', {controlPath: `${nodes.controlDir}/lo-%C`})
    expect((await ssh(target, ['echo', 'master'])).stdout).toBe('master')
    await nodes.killSshd('node1', {listenerOnly: true})
    const direct = await ssh(target, ['true'], {multiplex: false})
    expect(classifySshFailure(direct.exitCode ?? 0, direct.stderr).kind).toBe('refused')
    expect((await ssh(target, ['echo', 'still'])).stdout).toBe('still') // through the open master
    await nodes.restartSshd('node1')
  })

  it('rotateHostKey makes strict checking fail as a changed host key until the key is trusted', async () => {
    const node = nodes.node('node2')
    const line = await nodes.rotateHostKey('node2')
    expect(line).toMatch(new RegExp(`^\\[127\\.0\\.0\\.1\\]:${node.port} ssh-ed25519 \\S+$`))

    const target = nodes.target('node2', {controlPath: `${nodes.controlDir}/rk-%C`})
    const failed = await ssh(target, ['true'])
    expect(failed.exitCode).toBe(255)
    const failure = classifySshFailure(255, failed.stderr)
    expect(failure.kind).toBe('host-key-changed')
    expect(failure.suggestions.join(' ')).toContain(`-R '[127.0.0.1]:${node.port}'`)
    const accepting = await ssh({...target, strictHostKeyChecking: 'accept-new'}, ['true'], {multiplex: false})
    expect(classifySshFailure(255, accepting.stderr).kind).toBe('host-key-changed') // accept-new is no bypass

    await nodes.trustHostKey('node2')
    expect((await ssh(target, ['echo', 'trusted'])).stdout).toBe('trusted')
  })
})

describe('startNodes', () => {
  it('rejects a request the harness refuses, leaving no node running', async () => {
    await expect(startNodes(2, {names: ['only-one']})).rejects.toThrow(/NODE_NAMES has 1 name\(s\) for 2 node\(s\)/)
    const {stdout} = await execa('ps', ['-eo', 'args'])
    expect(stdout).not.toMatch(/sshd -D -f \S*\/only-one\/sshd_config/)
  })
})

describe('a node with a small disk', () => {
  let nodes: TestNodes

  beforeAll(async () => {
    nodes = await startNodes(1, {diskMb: 8, names: ['tiny']})
  })

  afterAll(async () => {
    await nodes?.stop()
  })

  it('has a tmpfs of that size on its instances directory, full at 8 MiB, unmounted by stop()', async () => {
    const node = nodes.node('tiny')
    const {stdout} = await nodes.ssh('tiny', ['stat', '-f', '-c', '%T %b %S', node.instancesPath])
    const [type, blocks, blockSize] = stdout.split(' ')
    expect(type).toBe('tmpfs')
    expect(Number(blocks) * Number(blockSize)).toBe(8 * 1024 * 1024)

    const full = await nodes.ssh(
      'tiny',
      ['sh', '-c', 'head -c 9M /dev/zero > "$1"', 'sh', `${node.instancesPath}/big`],
      {
        reject: false,
      },
    )
    expect(full.exitCode).not.toBe(0)
    expect(full.stderr).toMatch(/No space left on device/)

    await nodes.stop()
    expect((await execa('findmnt', [node.instancesPath], {reject: false})).exitCode).not.toBe(0)
    expect(existsSync(nodes.base)).toBe(false)
  })
})

describe('nodes on a test network', () => {
  let net: TestNet
  let nodes: TestNodes

  beforeAll(async () => {
    net = await createTestNet()
    nodes = await startNodes(2, {net, rate: '200mbit'})
  })

  afterAll(async () => {
    await nodes?.stop()
    await net?.down()
  })

  it('gives every node its own address on the subnet, sshd on port 22', async () => {
    const prefix = net.subnet.replace(/\.0\/24$/, '.')
    const addresses = nodes.nodes.map((n) => n.host)
    expect(new Set(addresses).size).toBe(2)
    for (const node of nodes.nodes) {
      expect(node.host.startsWith(prefix)).toBe(true)
      expect(node.port).toBe(22)

      const {stdout} = await nodes.ssh(node.name, ['sh', '-c', 'echo $SSH_CONNECTION'])
      expect(stdout).toMatch(
        new RegExp(`^${prefix.replaceAll('.', String.raw`\.`)}1 \\d+ ${node.host.replaceAll('.', String.raw`\.`)} 22$`),
      )
    }
  })

  it('counts the bytes a node receives, and caps its rate', async () => {
    const before = await net.bytes('node1')
    await send(nodes, 'node1', 2 * 1024 * 1024)
    const after = await net.bytes('node1')
    expect(after.rx - before.rx).toBeGreaterThan(2 * 1024 * 1024)
    expect(after.tx).toBeGreaterThan(before.tx)

    expect((await nodes.ssh('node2', ['true'])).exitCode).toBe(0) // connection set up before the cap
    await net.rate('node2', '4mbit') // 1 MiB less the 256 KiB burst ≈ 6.3 Mbit: about 1.6 s
    const started = performance.now()
    try {
      await send(nodes, 'node2', 1024 * 1024)
    } finally {
      await net.rate('node2', '200mbit')
    }

    const seconds = (performance.now() - started) / 1000
    console.log(`1 MiB to a node capped at 4 Mbit/s: ${seconds.toFixed(1)} s`)
    expect(seconds).toBeGreaterThan(1)
  })

  it('a cut link ends an ssh session within seconds through keep-alives, multiplexed or not', async () => {
    const keepAlive = {serverAliveCountMax: 2, serverAliveInterval: 1}
    const direct = nodes.target('node1', {...keepAlive, controlPath: `${nodes.controlDir}/ka-%C`})
    const shared = nodes.target('node1', {...keepAlive, controlPath: `${nodes.controlDir}/kb-%C`})
    expect((await ssh(shared, ['echo', 'up'])).stdout).toBe('up') // the master is open
    const sessions = [ssh(direct, ['sleep', '60'], {multiplex: false}), ssh(shared, ['sleep', '60'])]
    await new Promise((resolve) => {
      setTimeout(resolve, 1000)
    })
    const cut = performance.now()
    await net.link('node1', 'down')
    try {
      for (const result of await Promise.all(sessions)) {
        const seconds = (performance.now() - cut) / 1000
        console.log(`cut link noticed after ${seconds.toFixed(1)} s`)
        expect(result.exitCode).toBe(255)
        expect(seconds).toBeLessThan(30)
        // LogLevel=ERROR hides ssh's "Timeout, server not responding" (an INFO message).
        expect(classifySshFailure(255, result.stderr).kind).toBe('connection-lost')
      }

      const fresh = await ssh(nodes.target('node1', {connectTimeout: 2}), ['true'], {multiplex: false})
      expect(fresh.ms).toBeLessThan(30_000)
      const failure = classifySshFailure(fresh.exitCode ?? 0, fresh.stderr)
      expect(failure.kind).toBe('timeout')
      expect(failure.message).toContain(nodes.node('node1').host)
    } finally {
      await net.link('node1', 'up')
    }

    expect((await ssh(direct, ['echo', 'back'], {multiplex: false})).stdout).toBe('back')
  })

  it('refuses to act on a host the network does not have', async () => {
    await expect(net.link('nosuchhost', 'down')).rejects.toThrow(/no host nosuchhost/)
    await expect(net.bytes('nosuchhost')).rejects.toThrow(/no host nosuchhost/)
  })

  it('runs a server inside another host, reached by the nodes at its address', async () => {
    const address = await net.addHost('origin', '100mbit')
    const server = net.exec('origin', ['python3', '-m', 'http.server', '--bind', address, '8000'], {
      cwd: nodes.base,
      reject: false,
    })
    try {
      await writeFile(`${nodes.base}/hello.txt`, 'hello from origin\n')
      const fetch = [
        'python3',
        '-c',
        'import sys, time, urllib.request\nfor _ in range(50):\n    try:\n        print(urllib.request.urlopen(sys.argv[1]).read().decode(), end=""); break\n    except OSError: time.sleep(0.1)',
        `http://${address}:8000/hello.txt`,
      ]
      expect((await nodes.ssh('node2', fetch)).stdout).toBe('hello from origin')
      const sent = await net.bytes('origin')
      expect(sent.tx).toBeGreaterThan(0)
      expect(await readFile(`/proc/${server.pid}/cmdline`, 'utf8')).toMatch(/python3\0-m\0http\.server\0/)
    } finally {
      server.kill()
      await server
    }
  })
})

describe('the image server fixture', () => {
  // A listener added per request on a kept-alive socket is a leak: it once printed
  // "MaxListenersExceededWarning: 11 error listeners added to [Socket]" during the fetch tests.
  it('adds no listener per request on a kept-alive connection', async () => {
    const server = await startImageServer()
    const agent = new http.Agent({keepAlive: true, maxSockets: 1})
    const warnings: string[] = []
    const onWarning = (warning: Error) => warnings.push(`${warning.name}: ${warning.message}`)
    process.on('warning', onWarning)
    try {
      server.serve('/x', {data: Buffer.alloc(1024, 1)})
      for (let i = 0; i < 15; i++) {
        const response = await got(server.url('/x'), {agent: {http: agent}, retry: {limit: 0}})
        expect(response.body.length).toBe(1024)
      }

      // Warnings are emitted on a later tick.
      await new Promise((resolve) => {
        setImmediate(resolve)
      })
      expect(server.requests.length).toBe(15)
      expect(warnings).toEqual([])
    } finally {
      process.off('warning', onWarning)
      agent.destroy()
      await server.close()
    }
  })
})
