import type {ResultPromise} from 'execa'

import {createServer} from 'node:net'

import {ImgcacheError} from '../errors.js'
import {loadExeca} from './execa-lazy.js'

/**
 * The two BitTorrent programs `precache --via p2p` runs on the machine imgcache runs on (DESIGN
 * §11), both Debian packages: opentracker (the tracker, in its whitelist mode: only this run's info
 * hashes) and aria2c (the seed, serving the verified spool). Each is a child of this process that
 * ends with the run: stop() ends it and waits for it, so that no port stays open after the run.
 */
export interface HostProcess {
  /** The port it listens on. */
  readonly port: number
  /** Ends it (SIGTERM, SIGKILL after 3 s) and waits until it has exited. */
  stop(): Promise<void>
}

/** Aria2c's options that keep a swarm private: peers only from the tracker (BEP 27 for our private torrents). */
export const PRIVATE_SWARM = [
  '--enable-dht=false',
  '--enable-dht6=false',
  '--bt-enable-lpd=false',
  '--enable-peer-exchange=false',
]

/** A port nothing listens on right now at `address` (TCP; the tracker also takes the same UDP port). */
export async function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, address, () => {
      const {port} = server.address() as {port: number}
      server.close(() => resolve(port))
    })
  })
}

/**
 * The tracker's keeper: a python3 parent (python3 is already imgcache's dependency) that runs
 * opentracker and ends it when its stdin, a pipe from imgcache, reaches EOF (imgcache stopped it, or
 * died: even SIGKILLed, the kernel closes the pipe) or on SIGTERM. opentracker itself cannot be asked
 * to die with us: it drops to an unprivileged user, which clears a parent-death signal
 * (prctl(2) PR_SET_PDEATHSIG), and it has no option like aria2c's --stop-with-process.
 */
const TRACKER_KEEPER = String.raw`
import os, select, signal, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while p.poll() is None and not stop:
    r = select.select([0], [], [], 0.5)[0]
    if r and not os.read(0, 4096): break
if p.poll() is None:
    p.terminate()
    try: p.wait(3)
    except subprocess.TimeoutExpired: p.kill(); p.wait()
sys.exit(p.returncode if p.returncode >= 0 else 128 - p.returncode)
`

function track(child: ResultPromise, port: number, graceMs = 3000): HostProcess {
  child.catch(() => undefined)
  return {
    port,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const killer = setTimeout(() => child.kill('SIGKILL'), graceMs)
        await child.catch(() => undefined)
        clearTimeout(killer)
      }
    },
  }
}

/** Resolves once something accepts TCP connections on address:port; rejects if `child` ends first. */
async function listening(child: ResultPromise, address: string, port: number, what: string): Promise<void> {
  const {connect} = await import('node:net')
  let ended: string | undefined
  child.then(
    (r) => {
      ended = `${what} exited (status ${r.exitCode}): ${
        String(r.stderr ?? '')
          .trim()
          .split('\n')
          .at(-1) ?? ''
      }`
    },
    (error: unknown) => {
      ended = `${what} could not start: ${(error as Error).message}`
    },
  )
  for (let i = 0; i < 200; i++) {
    if (ended) throw new Error(ended)
    // eslint-disable-next-line no-await-in-loop
    const up = await new Promise<boolean>((resolve) => {
      const socket = connect({host: address, port})
      socket.once('connect', () => {
        socket.destroy()
        resolve(true)
      })
      socket.once('error', () => resolve(false))
    })
    if (up && !ended) return
    // eslint-disable-next-line no-await-in-loop
    await new Promise((resolve) => {
      setTimeout(resolve, 50)
    })
  }

  throw new Error(`${what} did not listen on ${address}:${port} within 10 s`)
}

function missing(program: string, pkg: string, error: unknown): ImgcacheError {
  return new ImgcacheError(
    'P2P_PROGRAM_MISSING',
    `${program} is not installed on this machine: ${(error as Error).message}`,
    {
      suggestions: [`Install it (Debian/Ubuntu: apt install ${pkg}) where imgcache runs, or use --via relay.`],
    },
  )
}

async function isInstalled(program: string): Promise<boolean> {
  const execa = await loadExeca()
  const result = await execa('sh', ['-c', 'command -v "$1"', 'sh', program], {reject: false})
  return result.exitCode === 0
}

/**
 * opentracker on `address`:`port` (TCP and UDP), accepting announces only for the info hashes in
 * `whitelist` (a file, 40 hex characters a line, readable by the unprivileged user opentracker drops
 * to when started as root). The port is the caller's: it is in the torrent, and so in its info hash.
 */
export async function startTracker(address: string, port: number, whitelist: string): Promise<HostProcess> {
  if (!(await isInstalled('opentracker'))) throw missing('opentracker', 'opentracker', new Error('not on the PATH'))
  const execa = await loadExeca()
  // -d: it chroots there (as root, before it drops to its unprivileged user), so the whitelist is
  // read inside it whatever the modes of the directories above (a private spool directory's 0700).
  const {basename, dirname} = await import('node:path')
  const args = [
    '-i',
    address,
    '-p',
    String(port),
    '-P',
    String(port),
    '-d',
    dirname(whitelist),
    '-w',
    basename(whitelist),
  ]
  // Under its keeper (above), whose stdin is a pipe from this process that nothing writes to.
  const child = execa('python3', ['-c', TRACKER_KEEPER, 'opentracker', ...args], {
    reject: false,
    stdin: 'pipe',
    stdout: 'ignore',
  })
  // The keeper gives opentracker 3 s after SIGTERM before it kills it: more than that before the keeper is killed.
  const tracker = track(child, port, 6000)
  try {
    await listening(child, address, port, 'opentracker')
    return tracker
  } catch (error) {
    await tracker.stop()
    throw new ImgcacheError(
      'P2P_TRACKER_FAILED',
      `cannot start the tracker on ${address}:${port}: ${(error as Error).message}`,
      {
        suggestions: ['Check that this machine has that address (--p2p-address) and free ports, or use --via relay.'],
      },
    )
  }
}

/**
 * aria2c seeding the file `dir`/<torrent's name> (the verified spool, hard-linked under the torrent's
 * name) to the swarm: it trusts the file (it is the bytes the pieces were hashed from), never
 * downloads, listens on a free port of `address`, and seeds until stop(). `uploadLimit` (bytes a
 * second) caps what it sends (aria2c's --max-upload-limit): a seed faster than the nodes can pass
 * pieces on sends the same pieces to several of them, copies the nodes would have made for each other.
 */
export async function startSeed(
  address: string,
  dir: string,
  torrent: string,
  options: {uploadLimit?: number} = {},
): Promise<HostProcess> {
  if (!(await isInstalled('aria2c'))) throw missing('aria2c', 'aria2', new Error('not on the PATH'))
  const execa = await loadExeca()
  let lastError: unknown
  for (let attempt = 0; attempt < 5; attempt++) {
    // eslint-disable-next-line no-await-in-loop
    const port = await freePort(address)
    const child = execa(
      'aria2c',
      [
        `--dir=${dir}`,
        '--bt-seed-unverified=true',
        '--check-integrity=false',
        '--seed-ratio=0.0',
        // Minutes; the run ends it long before.
        '--seed-time=100000',
        ...PRIVATE_SWARM,
        `--interface=${address}`,
        `--listen-port=${port}`,
        '--bt-max-peers=0',
        ...(options.uploadLimit === undefined ? [] : [`--max-upload-limit=${Math.round(options.uploadLimit)}`]),
        '--summary-interval=0',
        '--console-log-level=warn',
        '--show-console-readout=false',
        '--auto-save-interval=0',
        '--quiet=true',
        // Ends with imgcache even when imgcache is killed outright and cannot stop it.
        `--stop-with-process=${process.pid}`,
        torrent,
      ],
      {cwd: dir, reject: false, stdin: 'ignore', stdout: 'ignore'},
    )
    const seed = track(child, port)
    try {
      // eslint-disable-next-line no-await-in-loop
      await listening(child, address, port, 'aria2c (the seed)')
      return seed
    } catch (error) {
      lastError = error
      // eslint-disable-next-line no-await-in-loop
      await seed.stop()
    }
  }

  throw new ImgcacheError(
    'P2P_SEED_FAILED',
    `cannot start the seed (aria2c) on ${address}: ${(lastError as Error).message}`,
    {
      suggestions: ['Check that this machine has that address (--p2p-address) and free ports, or use --via relay.'],
    },
  )
}
