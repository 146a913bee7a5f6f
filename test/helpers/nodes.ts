import {execa} from 'execa'
import {spawnSync} from 'node:child_process'
import {mkdtemp, rm} from 'node:fs/promises'
import {fileURLToPath} from 'node:url'

import type {TestNet} from './testnet.js'

import {shellCommand} from '../../src/lib/node/quote.js'
import {type SshTarget} from '../../src/lib/node/ssh-args.js'

/** The project's own harness scripts (never the team's reference copies). */
export const NODES_SH = fileURLToPath(new URL('../harness/nodes.sh', import.meta.url))
export const STOP_NODES_SH = fileURLToPath(new URL('../harness/stop-nodes.sh', import.meta.url))

/** One sshd "compute node", as `nodes.sh start` prints it. */
export interface TestNode {
  /** First on the node's PATH: put a fake `qemu-img` or `curl` here for this node only. */
  binDir: string
  /** The node's directory (sshd config, host key, log, home, bin, instances). */
  dir: string
  /** 127.0.0.1, or the node's own address on a test network. */
  host: string
  identityFile: string
  instancesPath: string
  knownHostsFile: string
  name: string
  /** sshd listener PID (changes when the sshd is restarted). */
  pid: number
  /** A free port picked at start, or 22 on a test network. */
  port: number
  /** Defines a Host block per node name, multiplexed: `ssh -F sshConfigFile NAME cmd`. */
  sshConfigFile: string
  user: string
}

export interface StartNodesOptions {
  /** A tmpfs of this many MiB on each node's instances directory (ENOSPC tests). */
  diskMb?: number
  /** Let the nodes ssh to each other by name (NODE_MESH). */
  mesh?: boolean
  /** Node names (default node1..nodeN). */
  names?: string[]
  /** Put each node in its own namespace on this network, sshd on port 22. */
  net?: TestNet
  /** With `net`: cap each node's link, e.g. `200mbit`. */
  rate?: string
}

export interface SshRunOptions {
  input?: string
  /** Reject when the exit status is not 0 (default true). */
  reject?: boolean
  timeoutMs?: number
}

export interface TestNodes {
  /** Short temporary directory holding everything; removed by stop(). */
  readonly base: string
  /** Directory for ssh ControlMaster sockets; stop() closes every socket under `base`. */
  readonly controlDir: string
  /** Stop a node's sshd like a crash: listener and sessions, so open connections drop. */
  killSshd(name: string, options?: {listenerOnly?: boolean}): Promise<void>
  node(name: string): TestNode
  readonly nodes: TestNode[]
  /** (Re)start a node's sshd on the same address, port and host key. */
  restartSshd(name: string): Promise<void>
  /**
   * Give a node a new host key and restart its sshd. The client known_hosts keeps the old key, so
   * strict checking now fails. Returns the known_hosts line of the new key.
   */
  rotateHostKey(name: string): Promise<string>
  /** Run an argv on a node (quoted with the project's shellCommand) through the harness ssh_config. */
  ssh(name: string, argv: readonly string[], options?: SshRunOptions): Promise<SshRunResult>
  /** Stop every node by PID, close multiplexed connections, unmount, remove `base`. Idempotent. */
  stop(): Promise<void>
  /** An SshTarget for the code under test, multiplexed under controlDir. */
  target(name: string, overrides?: Partial<SshTarget>): SshTarget
  /** Record a node's current host key in the client known_hosts (after rotateHostKey). */
  trustHostKey(name: string): Promise<void>
}

export interface SshRunResult {
  exitCode: number
  stderr: string
  stdout: string
}

const live = new Set<string>()
let exitHookInstalled = false

/** Last resort when a test file ends without stop(): stop what is left, synchronously, by PID. */
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const base of live) spawnSync('bash', [STOP_NODES_SH, base, '--clean'], {stdio: 'ignore'})
  })
}

/** nodes.sh's knobs: a developer's shell may export them, and the tests set them per call. */
const HARNESS_KNOBS = [
  'BASE_PORT',
  'NODE_DISK_MB',
  'NODE_INSTALL',
  'NODE_KEEP_HOME',
  'NODE_MESH',
  'NODE_NAMES',
  'NODE_NET',
  'NODE_RATE',
  'NODE_USER',
  'NODE_VERIFY',
]

function harnessEnv(knobs: Record<string, string | undefined>): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {...process.env}
  for (const key of HARNESS_KNOBS) delete env[key]
  return {...env, ...knobs}
}

async function nodesSh(...args: string[]): Promise<string> {
  const {stdout} = await execa('bash', [NODES_SH, ...args], {env: harnessEnv({}), extendEnv: false})
  return stdout.trim()
}

/**
 * Start `count` sshd nodes (test/harness/nodes.sh) on free ports of 127.0.0.1, or each in its own
 * namespace on `options.net`. Call stop() in afterAll.
 */
export async function startNodes(count: number, options: StartNodesOptions = {}): Promise<TestNodes> {
  const base = await mkdtemp('/tmp/imgc.') // short: ControlPath sockets live under it
  installExitHook()
  live.add(base)
  let stopped: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      const result = await execa('bash', [STOP_NODES_SH, base, '--clean'], {reject: false})
      if (result.exitCode !== 0) throw new Error(`stop-nodes.sh ${base} failed:\n${result.stderr}`)
      live.delete(base)
    })()
    return stopped
  }

  let nodes: TestNode[]
  try {
    const {stdout} = await execa('bash', [NODES_SH, 'start', String(count), base], {
      env: harnessEnv({
        NODE_DISK_MB: options.diskMb === undefined ? undefined : String(options.diskMb),
        NODE_MESH: options.mesh ? '1' : undefined,
        NODE_NAMES: options.names?.join(','),
        NODE_NET: options.net?.dir,
        NODE_RATE: options.rate,
      }),
      extendEnv: false,
    })
    nodes = JSON.parse(stdout) as TestNode[]
  } catch (error) {
    await stop().catch(() => {})
    await rm(base, {force: true, recursive: true})
    throw error
  }

  const controlDir = `${base}/client/cm`
  const node = (name: string): TestNode => {
    const found = nodes.find((n) => n.name === name)
    if (!found) throw new Error(`no test node ${name} (have ${nodes.map((n) => n.name).join(', ')})`)
    return found
  }

  return {
    base,
    controlDir,
    async killSshd(name, killOptions = {}) {
      await nodesSh('kill-sshd', base, node(name).name, ...(killOptions.listenerOnly ? ['--listener-only'] : []))
    },
    node,
    nodes,
    async restartSshd(name) {
      node(name).pid = Number(await nodesSh('restart-sshd', base, node(name).name))
    },
    rotateHostKey: (name) => nodesSh('rotate-host-key', base, node(name).name),
    async ssh(name, argv, runOptions = {}) {
      const n = node(name)
      const result = await execa('ssh', ['-F', n.sshConfigFile, '-T', '--', n.name, shellCommand(argv)], {
        input: runOptions.input ?? '',
        reject: false,
        timeout: runOptions.timeoutMs ?? 60_000,
      })
      if ((runOptions.reject ?? true) && result.exitCode !== 0) {
        throw new Error(`ssh ${n.name} ${shellCommand(argv)}: exit ${result.exitCode}\n${result.stderr}`)
      }

      return {exitCode: result.exitCode ?? -1, stderr: result.stderr, stdout: result.stdout}
    },
    stop,
    target(name, overrides = {}) {
      const n = node(name)
      return {
        controlPath: `${controlDir}/%C`,
        host: n.host,
        identityFile: n.identityFile,
        knownHostsFile: n.knownHostsFile,
        port: n.port,
        strictHostKeyChecking: 'yes',
        user: n.user,
        ...overrides,
      }
    },
    async trustHostKey(name) {
      await nodesSh('trust-host-key', base, node(name).name)
    },
  }
}

/** A node's entry under `nodes:` in an imgcache config: how to reach it, and its instances path. */
export function nodeConfigEntry(n: TestNode, instancesPath: string): Record<string, number | string> {
  return {
    host: n.host,
    identityFile: n.identityFile,
    instancesPath,
    knownHostsFile: n.knownHostsFile,
    port: n.port,
    user: n.user,
  }
}
