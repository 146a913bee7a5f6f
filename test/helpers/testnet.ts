import {execa, type Options, type ResultPromise} from 'execa'
import {spawnSync} from 'node:child_process'
import {mkdtemp, rm} from 'node:fs/promises'
import {fileURLToPath} from 'node:url'

/** The project's own harness script (never the team's reference copy). */
export const TESTNET_SH = fileURLToPath(new URL('../harness/testnet.sh', import.meta.url))

/**
 * A private network of hosts on this machine (test/harness/testnet.sh): each host a network
 * namespace on one bridge, with its own address, a link that can be capped or cut. Needs root.
 */
export interface TestNet {
  /** Add a host; `rate` caps both directions of its link (tc units: `200mbit`). Returns its address. */
  addHost(name: string, rate?: string): Promise<string>
  /** Bytes the host has sent (tx) and received (rx) on its link. */
  bytes(name: string): Promise<{rx: number; tx: number}>
  /** State directory; pass it as NODE_NET to nodes.sh. */
  readonly dir: string
  /** Remove every host and the bridge. Stop the processes started inside the hosts first. */
  down(): Promise<void>
  /** Run a process inside a host (e.g. glance-api); the child's PID is the program's own. */
  exec(name: string, argv: readonly string[], options?: Options): ResultPromise
  /** Cut a host's link (packets vanish silently) or restore it. */
  link(name: string, state: 'down' | 'up'): Promise<void>
  /** PIDs of the processes running inside a host (what must be stopped before down()). */
  pids(name: string): Promise<number[]>
  /** Change a host's rate cap; `none` removes it. */
  rate(name: string, rate: string): Promise<void>
  /** e.g. `198.18.42.0/24` */
  readonly subnet: string
}

const live = new Set<string>()
let exitHookInstalled = false

/** Last resort when a test file ends without calling down(): remove what is left, synchronously. */
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const dir of live) spawnSync('bash', [TESTNET_SH, 'down', dir], {stdio: 'ignore'})
  })
}

async function testnet(...args: string[]): Promise<string> {
  const {stdout} = await execa('bash', [TESTNET_SH, ...args])
  return stdout.trim()
}

export async function createTestNet(): Promise<TestNet> {
  // Short and unique: the tag in interface names is a hash of this path.
  const dir = await mkdtemp('/tmp/imgc.')
  let subnet: string
  try {
    subnet = await testnet('up', dir)
  } catch (error) {
    await rm(dir, {force: true, recursive: true})
    throw error
  }

  installExitHook()
  live.add(dir)
  let downed: Promise<void> | undefined

  return {
    addHost: (name, rate = 'none') => testnet('host', dir, name, rate),
    async bytes(name) {
      const [tx, rx] = (await testnet('bytes', dir, name)).split(/\s+/).map(Number)
      if (tx === undefined || rx === undefined || Number.isNaN(tx) || Number.isNaN(rx)) {
        throw new Error(`testnet.sh bytes ${name}: unexpected output`)
      }

      return {rx, tx}
    },
    dir,
    down() {
      downed ??= (async () => {
        await testnet('down', dir)
        live.delete(dir)
        await rm(dir, {force: true, recursive: true})
      })()
      return downed
    },
    exec: (name, argv, options = {}) => execa('bash', [TESTNET_SH, 'exec', dir, name, ...argv], options),
    async link(name, state) {
      await testnet('link', dir, name, state)
    },
    async pids(name) {
      const out = await testnet('pids', dir, name)
      return out
        .split(/\s+/)
        .filter((p) => /^\d+$/.test(p))
        .map(Number)
    },
    async rate(name, rate) {
      await testnet('rate', dir, name, rate)
    },
    subnet,
  }
}

/**
 * Cut a host's link silently until `running` settles, then restore it whatever happened, so that a
 * failed assertion never leaves the network cut for the next test. `cutAt` is when the link went down.
 */
export async function whileLinkDown<T>(
  net: TestNet,
  host: string,
  running: Promise<T>,
): Promise<{cutAt: number; result: T}> {
  await net.link(host, 'down')
  const cutAt = Date.now()
  try {
    return {cutAt, result: await running}
  } finally {
    await net.link(host, 'up')
  }
}
