/**
 * A driver that holds hundreds of nodes (DESIGN §11): `imgcache precache --via node` of one small
 * image to N sshd nodes (50, 100, 200) at concurrency 16 and 64, sampling the CLI's peak resident
 * memory (/proc/PID/status VmHWM), its open descriptors (/proc/PID/fd) and the ssh clients it runs
 * (processes named ssh connected to this run's nodes, multiplexing masters included) while it works.
 *
 * The nodes are loopback sshd nodes (test/harness/nodes.sh), not namespaced ones: a namespace per
 * node costs ~15 MB and seconds each, and the driver's memory does not depend on link speeds. The
 * image (256 KiB of incompressible bytes, declared raw) is served by a small in-process HTTP server
 * (test/helpers/image-server.ts) as a config image alias: every node fetches it with curl, as Nova does.
 *
 * Printed: per (concurrency, N) the peaks and the wall time; per concurrency, the cost of one more
 * node ((peak at the largest N − peak at the smallest) ÷ the nodes between) and the peak extrapolated
 * linearly to 1,000 and 5,000 nodes; the baseline is `node bin/run.js --version` (the CLI's start-up).
 * Target: the peak RSS at the largest N within 10 % of the smallest at each concurrency. The run
 * fails when a precache does not cache the image on every node, or the target is missed.
 * Each point is the median of SCALE_RUNS runs (default 3), each into a fresh instances directory:
 * the peak RSS of a Node process depends on when V8 collects its old generation, which varies
 * from run to run on a loaded machine.
 * Knobs: SCALE_NODES=50,100,200 SCALE_CONCURRENCY=16,64 SCALE_RUNS=3.
 */
import {spawn} from 'node:child_process'
import {createHash} from 'node:crypto'
import {mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {performance} from 'node:perf_hooks'

import type {PrecacheReport} from '../src/commands/precache.js'
import type {ImgcacheConfig} from '../src/lib/config/schema.js'

import {type ImageServer, startImageServer} from '../test/helpers/image-server.js'
import {startNodes, type TestNode, type TestNodes} from '../test/helpers/nodes.js'
import {ensureBuilt} from './lib/build.js'
import {REPO_ROOT, seconds, writeFigures} from './lib/measure.js'

const COUNTS = (process.env.SCALE_NODES ?? '50,100,200').split(',').map(Number)
const CONCURRENCY = (process.env.SCALE_CONCURRENCY ?? '16,64').split(',').map(Number)
/** Nodes started per nodes.sh run, several runs at once (one sshd start is mostly waiting). */
const BATCH = 50
const RUNS = Number(process.env.SCALE_RUNS ?? 3)
const TARGET_RSS_GROWTH = 0.1
const BIN = join(REPO_ROOT, 'bin', 'run.js')
const CLI_ENV = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('IMGCACHE_'))),
  IMGCACHE_CONFIG: '',
  NODE_ENV: 'production',
}
const MiB = 1024 * 1024

interface Peaks {
  /** Largest VmHWM seen (kB → bytes). */
  hwmBytes: number
  openFds: number
  sshClients: number
}

interface Sample extends Peaks {
  concurrency: number
  nodes: number
  wallMs: number
}

function median(values: number[]): number {
  return values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!
}

function kb(status: string, field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)
  return match ? Number(match[1]) * 1024 : 0
}

/** ssh clients whose argv names one of the ports (`-p PORT`): this run's sessions and masters. */
async function sshClients(ports: Set<string>): Promise<number> {
  let count = 0
  const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p))
  await Promise.all(
    pids.map(async (pid) => {
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
      if (!argv[0]?.endsWith('ssh')) return
      const p = argv.indexOf('-p')
      if (p !== -1 && ports.has(argv[p + 1] ?? '')) count++
    }),
  )
  return count
}

/** Run the CLI, sampling its peaks every 100 ms until it exits. */
async function sampled(args: string[], ports: Set<string>): Promise<Peaks & {code: number; stdout: string}> {
  const child = spawn(process.execPath, [BIN, ...args], {env: CLI_ENV, stdio: ['ignore', 'pipe', 'pipe']})
  const out: Buffer[] = []
  const err: Buffer[] = []
  child.stdout.on('data', (c: Buffer) => out.push(c))
  child.stderr.on('data', (c: Buffer) => err.push(c))
  const peaks: Peaks = {hwmBytes: 0, openFds: 0, sshClients: 0}
  const state = {running: true}
  const exited = new Promise<number>((resolve) => {
    child.once('close', (code) => {
      state.running = false
      resolve(code ?? -1)
    })
  })
  const sampler = (async () => {
    while (state.running) {
      const status = await readFile(`/proc/${child.pid}/status`, 'utf8').catch(() => '')
      const fds = await readdir(`/proc/${child.pid}/fd`).catch(() => [])
      // Only descriptors that are really open (the listing itself holds one briefly).
      const open = (
        await Promise.all(fds.map((fd) => readlink(`/proc/${child.pid}/fd/${fd}`).catch(() => undefined)))
      ).filter(Boolean)
      peaks.hwmBytes = Math.max(peaks.hwmBytes, kb(status, 'VmHWM'))
      peaks.openFds = Math.max(peaks.openFds, open.length)
      if (ports.size > 0) peaks.sshClients = Math.max(peaks.sshClients, await sshClients(ports))
      await new Promise((resolve) => {
        setTimeout(resolve, 100)
      })
    }
  })()
  const code = await exited
  await sampler
  if (code !== 0 && ports.size > 0) process.stderr.write(Buffer.concat(err).toString('utf8').slice(-2000))
  return {...peaks, code, stdout: Buffer.concat(out).toString('utf8')}
}

function config(nodes: TestNode[], sub: string, image: {checksum: string; id: string; url: string}): ImgcacheConfig {
  return {
    aggregates: {scale: {nodes: nodes.map((n) => n.name)}},
    images: {small: {checksum: image.checksum, diskFormat: 'raw', id: image.id, url: image.url}},
    nodes: Object.fromEntries(
      nodes.map((n) => [
        n.name,
        {
          host: n.host,
          identityFile: n.identityFile,
          instancesPath: join(n.instancesPath, sub),
          knownHostsFile: n.knownHostsFile,
          port: n.port,
          user: n.user,
        },
      ]),
    ),
  }
}

async function main(): Promise<number> {
  await ensureBuilt()
  const largest = Math.max(...COUNTS)
  const work = await mkdtemp(join(tmpdir(), 'imgcache-bench-scale-'))
  const fleets: TestNodes[] = []
  let server: ImageServer | undefined
  try {
    const started = performance.now()
    const batches = Array.from({length: Math.ceil(largest / BATCH)}, (_, b) => Math.min(BATCH, largest - b * BATCH))
    // Names unique across batches: the config names every node once.
    fleets.push(
      ...(await Promise.all(
        batches.map((count, b) =>
          startNodes(count, {names: Array.from({length: count}, (_, i) => `n${b * BATCH + i + 1}`)}),
        ),
      )),
    )
    const all = fleets.flatMap((f) => f.nodes)
    console.log(`${all.length} loopback sshd nodes started in ${seconds(performance.now() - started)}`)

    server = await startImageServer()
    const image = Buffer.alloc(256 * 1024)
    for (let i = 0; i < image.length; i += 64) createHash('sha512').update(`${i}`).digest().copy(image, i)
    image.fill(0, 0, 64 * 1024) // no format probe matches a zeroed first 64 KiB: plain raw
    server.serve('/small.raw', {data: image})
    const alias = {
      checksum: `sha256:${createHash('sha256').update(image).digest('hex')}`,
      id: '5ca1eb3c-0000-4000-8000-000000000001',
      url: server.url('/small.raw'),
    }

    const baseline = await sampled(['--version'], new Set())
    console.log(
      `baseline (node bin/run.js --version): peak RSS ${(baseline.hwmBytes / MiB).toFixed(1)} MiB, ${baseline.openFds} fds`,
    )
    const samples: Sample[] = []
    for (const concurrency of CONCURRENCY) {
      for (const count of COUNTS) {
        const runs: Sample[] = []
        for (let r = 0; r < RUNS; r++) {
          const nodes = all.slice(0, count)
          const sub = `c${concurrency}-n${count}-r${r}`
          await Promise.all(nodes.map((n) => mkdir(join(n.instancesPath, sub), {recursive: true})))
          const file = join(work, `${sub}.json`)
          await writeFile(file, JSON.stringify(config(nodes, sub, alias)))
          const ports = new Set(nodes.map((n) => String(n.port)))
          const t0 = performance.now()
          const run = await sampled(
            [
              'precache',
              '--config',
              file,
              '--aggregate',
              'scale',
              '--via',
              'node',
              '--concurrency',
              String(concurrency),
              '--json',
              'small',
            ],
            ports,
          )
          const wallMs = performance.now() - t0
          const report = JSON.parse(run.stdout || '{}') as Partial<PrecacheReport>
          if (run.code !== 0 || report.totals?.cached !== count) {
            console.error(
              `precache of ${count} nodes at concurrency ${concurrency}: exit ${run.code}, totals ${JSON.stringify(report.totals)}`,
            )
            return 1
          }

          runs.push({
            concurrency,
            hwmBytes: run.hwmBytes,
            nodes: count,
            openFds: run.openFds,
            sshClients: run.sshClients,
            wallMs,
          })
        }

        const point: Sample = {
          concurrency,
          hwmBytes: median(runs.map((s) => s.hwmBytes)),
          nodes: count,
          openFds: Math.max(...runs.map((s) => s.openFds)),
          sshClients: Math.max(...runs.map((s) => s.sshClients)),
          wallMs: median(runs.map((s) => s.wallMs)),
        }
        samples.push(point)
        console.log(
          `concurrency ${String(concurrency).padStart(2)}, ${String(count).padStart(3)} nodes: peak RSS ${(point.hwmBytes / MiB).toFixed(1)} MiB ` +
            `(median of ${runs.map((s) => (s.hwmBytes / MiB).toFixed(1)).join(', ')}), ` +
            `peak fds ${point.openFds}, peak ssh clients ${point.sshClients}, wall ${seconds(point.wallMs)} (${(point.wallMs / count).toFixed(0)} ms per node)`,
        )
      }
    }

    let failed = false
    const perConcurrency = CONCURRENCY.map((concurrency) => {
      const rows = samples.filter((s) => s.concurrency === concurrency).sort((a, b) => a.nodes - b.nodes)
      const low = rows[0]!
      const high = rows.at(-1)!
      const span = Math.max(1, high.nodes - low.nodes)
      const perNode = (high.hwmBytes - low.hwmBytes) / span
      const growth = high.hwmBytes / low.hwmBytes - 1
      const at = (n: number) => high.hwmBytes + perNode * (n - high.nodes)
      const ok = growth <= TARGET_RSS_GROWTH
      failed ||= !ok
      console.log(
        `concurrency ${concurrency}: peak RSS ${low.nodes}→${high.nodes} nodes ${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(1)} % ` +
          `(target ≤ ${TARGET_RSS_GROWTH * 100} %: ${ok ? 'met' : 'MISSED'}); per node ${(perNode / 1024).toFixed(1)} KiB; ` +
          `extrapolated: 1,000 nodes ${(at(1000) / MiB).toFixed(0)} MiB, 5,000 nodes ${(at(5000) / MiB).toFixed(0)} MiB; ` +
          `fds ${low.openFds}→${high.openFds}, ssh clients ${low.sshClients}→${high.sshClients}; ` +
          `${(high.hwmBytes / baseline.hwmBytes).toFixed(2)}× the baseline's RSS`,
      )
      return {concurrency, extrapolatedBytes: {1000: at(1000), 5000: at(5000)}, growth, perNodeBytes: perNode}
    })
    const out = await writeFigures('scale', {baseline, nodes: 'loopback sshd', perConcurrency, samples})
    console.log(`figures: ${out}`)
    return failed ? 1 : 0
  } finally {
    await server?.close()
    await Promise.all(fleets.map((f) => f.stop().catch(() => undefined)))
    await rm(work, {force: true, recursive: true})
  }
}

process.exitCode = await main()
