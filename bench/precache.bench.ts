/**
 * `imgcache precache` over a fleet on the test network (test/harness/testnet.sh): sshd nodes whose
 * links are capped at 200 Mbit/s, a real glance-api in a host of its own capped at 400 Mbit/s (the
 * origin the whole fleet shares), and imgcache itself run in a third host capped at 1 Gbit/s (the
 * operator's bastion). Three raw images of 32, 64 and 128 MiB of incompressible bytes, declared raw
 * so that no conversion runs and the figures are about moving bytes.
 *
 * At each node count of BENCH_NODES (default 8; e.g. 8,16,32: the largest count's nodes are started
 * once and each count runs on the first n of them), the runs of BENCH_MODES: a Nova-like baseline
 * (`--via node --concurrency 1`, as Nova's default precache_concurrency = 1; smallest count only),
 * then `--via node`, `--via relay` and `--via p2p` with every node at once, and (smallest count
 * only) the plain-tool references and the scan. For each: wall time, the bytes that left the
 * origin's and the bastion's links (the kernel's counters), the physical bound (bytes that must cross
 * the narrowest link ÷ its rate) and how close the run came; then the node-count axis: p2p against
 * relay at the largest count and p2p's growth from the smallest count to the largest. The
 * aggregates declare their links (linkSpeeds), as an operator does: p2p's seeds pace themselves by
 * the nodes' rate. Figures are ratios and fractions of the links measured in this run, never
 * absolute limits; the run fails only when a precache does not cache every image on every node.
 */
import {createCipheriv, createHash} from 'node:crypto'
import {createWriteStream} from 'node:fs'
import {mkdir, mkdtemp, readdir, rm, writeFile} from 'node:fs/promises'
import {availableParallelism, loadavg, tmpdir} from 'node:os'
import {join} from 'node:path'
import {performance} from 'node:perf_hooks'

import type {PrecacheReport} from '../src/commands/precache.js'
import type {Node} from '../src/lib/node/types.js'

import {analyzeNode} from '../src/lib/analysis.js'
import {resolveCacheSettings} from '../src/lib/config/settings.js'
import {shellQuote} from '../src/lib/node/quote.js'
import {SshNode} from '../src/lib/node/ssh.js'
import {makeNovaHost, qemuImg, sha1} from '../test/fixtures/nova-host.js'
import {fleetConfig} from '../test/helpers/fleet.js'
import {type GlanceHandle, startGlance} from '../test/helpers/glance.js'
import {startNodes, type TestNodes} from '../test/helpers/nodes.js'
import {createTestNet, type TestNet, TESTNET_SH} from '../test/helpers/testnet.js'
import {ensureBuilt} from './lib/build.js'
import {REPO_ROOT, seconds, times, writeFigures} from './lib/measure.js'

const MiB = 1024 * 1024
/**
 * The fleet's sizes: BENCH_NODES=8 (default) or a list, BENCH_NODES=8,16,32, for the node-count axis
 * (p2p's flatness). The largest count's nodes are started once; each count runs on the first n of
 * them (an aggregate of its own), so every count has the same links, images and nodes.
 */
function nodeCounts(text: string): number[] {
  const counts = text.split(',').map((c) => Number(c.trim()))
  if (counts.some((c) => !Number.isInteger(c) || c < 1))
    throw new Error(`BENCH_NODES=${text}: give counts, e.g. 8,16,32`)
  return [...new Set(counts)].sort((a, b) => a - b)
}

const COUNTS = nodeCounts(process.env.BENCH_NODES ?? '8')
const MAX_NODES = COUNTS.at(-1)!
/**
 * Which runs: BENCH_MODES=baseline,node,relay,p2p,reference (default: all). The baseline (one node
 * at a time: 9.4 s a node here) and the references (plain curl, plain ssh, the scan) run at the
 * smallest count only: they describe the machine, and the baseline at 32 nodes alone takes 5 minutes.
 */
const WANTED = new Set((process.env.BENCH_MODES ?? 'baseline,node,relay,p2p,reference').split(','))
for (const w of WANTED) {
  if (!['baseline', 'node', 'p2p', 'reference', 'relay'].includes(w))
    throw new Error(`BENCH_MODES: unknown ${w}; give some of baseline,node,relay,p2p,reference`)
}

const IMAGE_MIB = [32, 64, 128]
/** Link caps as tc reads them (k, m, g are powers of ten) and in bits per second. */
const LINKS = {
  bastion: {bps: 1e9, tc: '1gbit'},
  node: {bps: 200e6, tc: '200mbit'},
  origin: {bps: 400e6, tc: '400mbit'},
} as const
const TARGETS = {
  /** Relay: origin TX within this fraction of the images' total (each image read once). */
  originOnce: 0.02,
  /** Node mode: origin link use, wire bytes ÷ wall time ÷ rate. */
  originUse: 0.85,
  /** p2p: bastion TX at most this many times the images (the seed's share; the nodes serve the rest). */
  p2pBastion: 2,
  /** p2p's time at the largest count at most this many times its time at the smallest (flat in the fleet size). */
  p2pFlatness: 1.5,
  /** p2p at the largest count (32) at least this many times faster than relay at the same count. */
  p2pOverRelay: 4,
  /** Relay: this many times faster than the baseline. */
  relaySpeedup: 4,
  /** SSH round trips of one node's cache scan. */
  scanRoundTrips: 3,
}
const BIN = join(REPO_ROOT, 'bin', 'run.js')
/** As an installed CLI runs: no imgcache settings from this environment. */
const CLI_ENV = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('IMGCACHE_'))),
  IMGCACHE_CONFIG: '',
  NODE_ENV: 'production',
}

interface Mode {
  concurrency: number
  key: 'baseline' | 'node' | 'p2p' | 'relay'
  label: string
  /** The fleet's size: the first `nodes` nodes (aggregate bench-<nodes>). */
  nodes: number
  via: 'node' | 'p2p' | 'relay'
}

/** The imgcache runs at one node count, in the order they run. */
function modesAt(n: number): Mode[] {
  const modes: Mode[] = [
    {concurrency: 1, key: 'baseline', label: 'baseline: --via node --concurrency 1 (Nova)', nodes: n, via: 'node'},
    {concurrency: n, key: 'node', label: `--via node --concurrency ${n}`, nodes: n, via: 'node'},
    {concurrency: n, key: 'relay', label: `--via relay --concurrency ${n}`, nodes: n, via: 'relay'},
    {concurrency: n, key: 'p2p', label: `--via p2p --concurrency ${n}`, nodes: n, via: 'p2p'},
  ]
  return modes.filter((m) => WANTED.has(m.key) && (m.key !== 'baseline' || n === COUNTS[0]))
}

interface Bound {
  /** The link that sets the bound. */
  limit: string
  seconds: number
}

/**
 * The least time the bytes need. Concurrent modes: the most loaded link (bytes that must cross it ÷
 * its rate), the others running in parallel with it. The baseline moves one image to one node at a
 * time, so its transfers add up, each at the narrower link of its path (the node's).
 */
function time(bytes: number, bps: number): number {
  return (bytes * 8) / bps
}

function boundOf(mode: Mode, imageBytes: number): Bound {
  const n = mode.nodes
  if (mode.concurrency === 1) {
    return {
      limit: `each node's ${LINKS.node.tc} link in turn`,
      seconds: time(n * imageBytes, Math.min(LINKS.node.bps, LINKS.origin.bps)),
    }
  }

  // p2p: every node must take in the images over its own link, whatever the fleet's size.
  if (mode.via === 'p2p') return {limit: `each node ${LINKS.node.tc}`, seconds: time(imageBytes, LINKS.node.bps)}
  const links =
    mode.via === 'node'
      ? [
          {bytes: n * imageBytes, link: `origin ${LINKS.origin.tc}`, rate: LINKS.origin.bps},
          {bytes: imageBytes, link: `each node ${LINKS.node.tc}`, rate: LINKS.node.bps},
        ]
      : [
          {bytes: imageBytes, link: `origin ${LINKS.origin.tc}`, rate: LINKS.origin.bps},
          {bytes: n * imageBytes, link: `bastion ${LINKS.bastion.tc}`, rate: LINKS.bastion.bps},
          {bytes: imageBytes, link: `each node ${LINKS.node.tc}`, rate: LINKS.node.bps},
        ]
  let worst = links[0]!
  for (const l of links) if (time(l.bytes, l.rate) > time(worst.bytes, worst.rate)) worst = l
  return {limit: worst.link, seconds: time(worst.bytes, worst.rate)}
}

/** Incompressible, reproducible bytes (an AES-CTR keystream), with a zeroed first 64 KiB that no format probe matches. */
async function writeImage(file: string, bytes: number, seed: number): Promise<void> {
  const key = createHash('sha256').update(`imgcache-bench-${seed}`).digest()
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32))
  const out = createWriteStream(file)
  const zero = Buffer.alloc(MiB)
  for (let done = 0; done < bytes; done += MiB) {
    const chunk = cipher.update(zero)
    if (done === 0) chunk.fill(0, 0, 64 * 1024)
    if (!out.write(chunk)) {
      await new Promise<void>((resolve) => {
        out.once('drain', () => resolve())
      })
    }
  }

  await new Promise<void>((resolve, reject) => {
    out.end((error?: Error | null) => (error ? reject(error) : resolve()))
  })
}

interface Fleet {
  config: string
  glance: GlanceHandle
  imageBytes: number
  /** The images' bytes on this machine, for the reference transfers. */
  imageFiles: string[]
  imageIds: string[]
  net: TestNet
  nodes: TestNodes
  work: string
}

interface ModeRun {
  bastionTx: number
  exitCode: number
  /** The machine's 1-minute load average after the run (other work on it slows every figure). */
  load: number
  mode: Mode
  ms: number
  originTx: number
  report?: PrecacheReport
  stderr: string
}

interface Reference {
  bastionTx: number
  exitCode: number
  load: number
  ms: number
  originTx: number
  stderr: string
}

let running: ReturnType<TestNet['exec']> | undefined
/** Set when the run is being torn down (a signal): no new process may start. */
let stopping = false

/** Start a process inside a test-network host, unless the run is stopping; `running` until it ends. */
async function execIn(net: TestNet, host: string, argv: string[], env?: NodeJS.ProcessEnv) {
  if (stopping) throw new Error('interrupted')
  running = net.exec(host, argv, {env, extendEnv: env === undefined, reject: false})
  try {
    return await running
  } finally {
    running = undefined
  }
}

/** Stop the process that runs, if any: as Ctrl-C would (imgcache cleans up after itself), then for good. */
async function stopRunning(): Promise<void> {
  stopping = true
  const child = running
  if (!child?.pid) return
  child.kill('SIGINT')
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
  await child.catch(() => undefined)
  clearTimeout(timer)
}

/** One `imgcache precache` inside the bastion host, timed, with the origin and bastion link counters around it. */
async function runMode(fleet: Fleet, mode: Mode): Promise<ModeRun> {
  const before = await Promise.all([fleet.net.bytes('glance'), fleet.net.bytes('bastion')])
  const start = performance.now()
  const args = [BIN, 'precache', '--aggregate', `bench-${mode.nodes}`, '--config', fleet.config, '--json']
  args.push('--via', mode.via, '--concurrency', String(mode.concurrency), ...fleet.imageIds)
  const result = await execIn(fleet.net, 'bastion', [process.execPath, ...args], CLI_ENV)
  const ms = performance.now() - start
  const after = await Promise.all([fleet.net.bytes('glance'), fleet.net.bytes('bastion')])
  let report: PrecacheReport | undefined
  try {
    report = JSON.parse(String(result.stdout)) as PrecacheReport
  } catch {
    report = undefined
  }

  return {
    bastionTx: after[1].tx - before[1].tx,
    exitCode: result.exitCode ?? -1,
    load: loadavg()[0]!,
    mode,
    ms,
    originTx: after[0].tx - before[0].tx,
    report,
    stderr: String(result.stderr),
  }
}

/**
 * What the machine can do without imgcache, on the same links in the same run: the same bytes moved
 * by the plain tools each mode uses. `ssh`: the bastion pipes the images into \`cat > file\` on all
 * nodes at once over one-off ssh connections (what relay does, minus imgcache). `curl`: every node
 * downloads the three images from glance-api one after another with curl, all nodes at once (what
 * node mode does, minus verification, inspection and the lock).
 */
async function runReference(fleet: Fleet, kind: 'curl' | 'ssh', count: number): Promise<Reference> {
  const before = await Promise.all([fleet.net.bytes('glance'), fleet.net.bytes('bastion')])
  const start = performance.now()
  const sshConfig = fleet.nodes.nodes[0]!.sshConfigFile
  const urls = fleet.imageIds.map((id) => `${fleet.glance.url}/v2/images/${id}/file`)
  const perNode = fleet.nodes.nodes
    .slice(0, count)
    .map((n) =>
      kind === 'ssh'
        ? `cat ${fleet.imageFiles.map((f) => shellQuote(f)).join(' ')} | ssh -F ${shellQuote(sshConfig)} -o ControlMaster=no -o ControlPath=none ${n.name} 'cat > "$IMGCACHE_INSTANCES_PATH/reference"'`
        : `ssh -F ${shellQuote(sshConfig)} -o ControlMaster=no -o ControlPath=none ${n.name} ${shellQuote(
            `cd "$IMGCACHE_INSTANCES_PATH" && ${urls.map((u, i) => `curl -sSf -o reference-${i} ${u}`).join(' && ')}`,
          )}`,
    )
  const script = `set -e; ${perNode.map((c) => `(${c}) & pids="$pids $!";`).join(' ')} for p in $pids; do wait $p; done`
  const result = await execIn(fleet.net, 'bastion', ['bash', '-c', script])
  const ms = performance.now() - start
  const after = await Promise.all([fleet.net.bytes('glance'), fleet.net.bytes('bastion')])
  return {
    bastionTx: after[1].tx - before[1].tx,
    exitCode: result.exitCode ?? -1,
    load: loadavg()[0]!,
    ms,
    originTx: after[0].tx - before[0].tx,
    stderr: String(result.stderr),
  }
}

/** Empty every node's instances dir, so that each mode starts from a cold cache. */
async function clearNodes(nodes: TestNodes): Promise<void> {
  await Promise.all(
    nodes.nodes.map(async (n) => {
      for (const entry of await readdir(n.instancesPath)) {
        await rm(join(n.instancesPath, entry), {force: true, recursive: true})
      }
    }),
  )
}

/** Every Node operation an analysis calls, counted: over SSH each one is a request to the node's agent, one round trip. */
function counting(node: Node): {calls: string[]; node: Node} {
  const calls: string[] = []
  const proxy = new Proxy(node, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver)
      if (typeof value !== 'function' || typeof property !== 'string' || property === 'close') return value
      return (...args: unknown[]) => {
        calls.push(property)
        return (value as (...a: unknown[]) => unknown).apply(target, args)
      }
    },
  })
  return {calls, node: proxy}
}

/**
 * The cache scan of one node over SSH, on a host shaped for the worst case: the cached images with
 * 60 instances on them, plus instances whose disks sit on a chain outside the cache dir (overlay →
 * qcow2 → raw) that the scan must follow with batched header reads.
 */
async function measureScan(fleet: Fleet) {
  const test = fleet.nodes.node('node1')
  const outside = join(test.dir, 'outside')
  await mkdir(outside, {recursive: true})
  await qemuImg(['create', '-q', '-f', 'raw', join(outside, 'base.raw'), '16M'])
  await qemuImg([
    'create',
    '-q',
    '-f',
    'qcow2',
    '-u',
    '-b',
    join(outside, 'base.raw'),
    '-F',
    'raw',
    join(outside, 'mid.qcow2'),
    '1G',
  ])
  const instances = Array.from({length: 64}, (_, i) => ({
    dir: `inst-${String(i).padStart(3, '0')}`,
    disks: [
      i < 60
        ? {backing: sha1(fleet.imageIds[i % fleet.imageIds.length]!)}
        : {backing: join(outside, 'mid.qcow2'), backingFormat: 'qcow2'},
    ],
  }))
  await makeNovaHost(test.dir, {instances})
  const ssh = new SshNode('node1', fleet.nodes.target('node1'))
  try {
    const settings = await resolveCacheSettings(ssh, {}, undefined, {instancesPath: test.instancesPath})
    await ssh.stat(test.instancesPath) // the connection and the agent: set up once per run, not per scan
    const {calls, node} = counting(ssh)
    const start = performance.now()
    const analysis = await analyzeNode(node, settings, {domainXmlDirs: []})
    const ms = performance.now() - start
    return {
      calls,
      cacheEntries: analysis.scan.cacheDir.entries.length,
      instances: analysis.scan.instanceDirs.length,
      ms,
      reported: analysis.roundTrips,
    }
  } finally {
    await ssh.close()
  }
}

async function setUp(work: string, cleanups: Array<() => Promise<unknown>>): Promise<Fleet> {
  const net = await createTestNet()
  cleanups.push(async () => {
    // Whatever imgcache or glance left running inside their hosts (ssh masters of a killed run): ours, by PID.
    for (const host of ['bastion', 'glance']) {
      for (const pid of await net.pids(host).catch(() => [])) {
        try {
          process.kill(pid, 'SIGTERM')
        } catch {}
      }
    }

    await net.down()
  })
  const nodes = await startNodes(MAX_NODES, {net, rate: LINKS.node.tc})
  cleanups.push(() => nodes.stop())
  const glanceAddress = await net.addHost('glance', LINKS.origin.tc)
  await net.addHost('bastion', LINKS.bastion.tc)
  const glance = await startGlance({
    commandPrefix: ['bash', TESTNET_SH, 'exec', net.dir, 'glance'],
    host: glanceAddress,
  })
  cleanups.push(() => glance.stop())
  const imageIds: string[] = []
  const imageFiles: string[] = []
  let imageBytes = 0
  for (const [i, mib] of IMAGE_MIB.entries()) {
    const file = join(work, `bench-${mib}m.raw`)
    await writeImage(file, mib * MiB, i)
    const image = await glance.uploadImage({diskFormat: 'raw', file, name: `bench-${mib}m`})
    imageFiles.push(file)
    imageIds.push(image.id)
    imageBytes += image.size ?? 0
  }

  const config = join(work, 'imgcache.json')
  const fleet = fleetConfig(nodes, {imageService: {endpoint: glance.url}})
  // One aggregate a node count: the first n nodes.
  fleet.aggregates = Object.fromEntries(
    COUNTS.map((n) => [
      `bench-${n}`,
      {
        // As an operator declares them (precache --dry-run's bounds; p2p's seeds pace themselves by the nodes' rate).
        linkSpeeds: {bastion: LINKS.bastion.tc, node: LINKS.node.tc, origin: LINKS.origin.tc},
        nodes: nodes.nodes.slice(0, n).map((node) => node.name),
      },
    ]),
  )
  await writeFile(config, JSON.stringify(fleet, null, 2))
  return {config, glance, imageBytes, imageFiles, imageIds, net, nodes, work}
}

interface Row {
  bastionTxBytes: number
  bound: Bound
  /** How close the run came to the bound: bound ÷ wall time. */
  boundFraction: number
  exitCode: number
  label: string
  /** The machine's 1-minute load average right after. */
  load: number
  /** Wire bytes that left the origin ÷ wall time ÷ the origin's rate. */
  originLinkUse: number
  originTxBytes: number
  /** Against the baseline at the same node count (the smallest), when it ran. */
  speedupOverBaseline?: number
  wallSeconds: number
}

function rowOf(label: string, run: ModeRun | Reference, bound: Bound, baselineMs?: number): Row {
  const wall = run.ms / 1000
  return {
    bastionTxBytes: run.bastionTx,
    bound,
    boundFraction: bound.seconds / wall,
    exitCode: run.exitCode,
    label,
    load: run.load,
    originLinkUse: (run.originTx * 8) / wall / LINKS.origin.bps,
    originTxBytes: run.originTx,
    speedupOverBaseline: baselineMs === undefined ? undefined : baselineMs / run.ms,
    wallSeconds: wall,
  }
}

function modeFigures(run: ModeRun, baseline: ModeRun | undefined, imageBytes: number) {
  return {
    ...rowOf(
      run.mode.key === 'baseline' ? run.mode.label : `--via ${run.mode.via} --concurrency ${run.mode.concurrency}`,
      run,
      boundOf(run.mode, imageBytes),
      baseline?.mode.nodes === run.mode.nodes ? baseline.ms : undefined,
    ),
    bastionPerImages: run.bastionTx / imageBytes,
    originPerImages: run.originTx / imageBytes,
    /** Per image: the slowest node's time on it, from the report (where a slow run spent its time). */
    itemSeconds: Object.fromEntries(
      (run.report?.images ?? []).map((image) => [
        image.name ?? image.id,
        Math.max(
          0,
          ...(run.report?.items ?? []).filter((i) => i.image.id === image.id).map((i) => (i.durationMs ?? 0) / 1000),
        ),
      ]),
    ),
    originReads: run.report?.originReads,
    reportSeconds: run.report ? run.report.durationMs / 1000 : undefined,
    totals: run.report?.totals,
  }
}

type ModeFigures = ReturnType<typeof modeFigures>

interface References {
  curl: Reference
  ssh: Reference
}

/** The figures and targets of one node count. */
function countFigures(fleet: Fleet, n: number, runs: ModeRun[], baseline: ModeRun | undefined) {
  const modes: Partial<Record<Mode['key'], ModeFigures>> = {}
  for (const run of runs) modes[run.mode.key] = modeFigures(run, baseline, fleet.imageBytes)
  const {node, p2p, relay} = modes
  return {
    modes,
    nodes: n,
    targets: {
      nodeOriginUse: node && {pass: node.originLinkUse >= TARGETS.originUse, target: TARGETS.originUse},
      p2pBastion: p2p && {
        pass: p2p.bastionPerImages <= TARGETS.p2pBastion,
        target: TARGETS.p2pBastion,
        value: p2p.bastionPerImages,
      },
      p2pOriginOnce: p2p && {
        excess: p2p.originPerImages - 1,
        pass: Math.abs(p2p.originPerImages - 1) <= TARGETS.originOnce,
        target: TARGETS.originOnce,
      },
      /** The issue's target is at 32 nodes (see axis); here for every count. */
      p2pOverRelay: p2p && relay ? relay.wallSeconds / p2p.wallSeconds : undefined,
      relayOriginOnce: relay && {
        excess: relay.originPerImages - 1,
        pass: Math.abs(relay.originPerImages - 1) <= TARGETS.originOnce,
        target: TARGETS.originOnce,
      },
      relaySpeedup:
        relay?.speedupOverBaseline === undefined
          ? undefined
          : {
              pass: relay.speedupOverBaseline >= TARGETS.relaySpeedup,
              target: TARGETS.relaySpeedup,
              value: relay.speedupOverBaseline,
            },
    },
  }
}

type CountFigures = ReturnType<typeof countFigures>

/** The node-count axis: p2p against relay at the largest count, and p2p's growth from the smallest to the largest. */
function axisFigures(counts: CountFigures[]) {
  const first = counts[0]
  const last = counts.at(-1)
  const p2pFirst = first?.modes.p2p
  const p2pLast = last?.modes.p2p
  const relayLast = last?.modes.relay
  const overRelay = p2pLast && relayLast ? relayLast.wallSeconds / p2pLast.wallSeconds : undefined
  const flatness = p2pFirst && p2pLast && counts.length > 1 ? p2pLast.wallSeconds / p2pFirst.wallSeconds : undefined
  return {
    p2pFlatness:
      flatness === undefined
        ? undefined
        : {
            from: first!.nodes,
            pass: flatness <= TARGETS.p2pFlatness,
            target: TARGETS.p2pFlatness,
            to: last!.nodes,
            value: flatness,
          },
    p2pOverRelay:
      overRelay === undefined
        ? undefined
        : {
            nodes: last!.nodes,
            pass: overRelay >= TARGETS.p2pOverRelay,
            target: TARGETS.p2pOverRelay,
            value: overRelay,
          },
  }
}

function referenceFigures(
  n: number,
  baseline: ModeRun | undefined,
  counted: CountFigures,
  references: References,
  scan: Awaited<ReturnType<typeof measureScan>>,
) {
  const bound = (via: Mode['via']) => boundOf({concurrency: n, key: 'node', label: '', nodes: n, via}, 0)
  const {node, relay} = counted.modes
  const curl = rowOf('plain curl on every node', references.curl, node?.bound ?? bound('node'), baseline?.ms)
  const ssh = rowOf('plain ssh cat from the bastion', references.ssh, relay?.bound ?? bound('relay'), baseline?.ms)
  return {
    curl,
    nodePerCurl: node ? node.wallSeconds / curl.wallSeconds : undefined,
    nodes: n,
    relayPerSsh: relay ? relay.wallSeconds / ssh.wallSeconds : undefined,
    scan: {
      cacheEntries: scan.cacheEntries,
      calls: scan.calls,
      instances: scan.instances,
      pass: scan.calls.length <= TARGETS.scanRoundTrips,
      roundTrips: scan.calls.length,
      roundTripsReported: scan.reported,
      seconds: scan.ms / 1000,
      target: TARGETS.scanRoundTrips,
    },
    ssh,
  }
}

function verdict(ok: boolean): string {
  return ok ? 'PASS' : 'MISS'
}

function mb(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`
}

function pct(fraction: number): string {
  return `${(fraction * 100).toFixed(1)} %`
}

function line(label: string, value: string, note: string): void {
  console.log(`  ${label.padEnd(44)} ${value.padStart(8)}  ${note}`)
}

function printTable(rows: Row[], imageBytes: number): void {
  const header = ['mode', 'wall', 'vs baseline', 'origin TX', 'bastion TX', 'bound', 'limit', 'bound/wall', 'load']
  const cells = rows.map((m) =>
    m.label.endsWith(':')
      ? [m.label, ...header.slice(1).map(() => '')]
      : [
          m.label,
          seconds(m.wallSeconds * 1000),
          m.speedupOverBaseline === undefined ? '' : times(m.speedupOverBaseline),
          `${mb(m.originTxBytes)} (${times(m.originTxBytes / imageBytes)})`,
          `${mb(m.bastionTxBytes)} (${times(m.bastionTxBytes / imageBytes)})`,
          seconds(m.bound.seconds * 1000),
          m.bound.limit,
          pct(m.boundFraction),
          m.load.toFixed(1),
        ],
  )
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)))
  for (const row of [header, ...cells]) console.log(`  ${row.map((c, i) => c.padEnd(widths[i]!)).join('  ')}`.trimEnd())
}

function printCount(c: CountFigures, imageBytes: number, reference?: ReturnType<typeof referenceFigures>): void {
  console.log(`\n${c.nodes} nodes:`)
  const m = c.modes
  const rows = [m.baseline, m.node, m.relay, m.p2p].filter((r): r is ModeFigures => r !== undefined) as Row[]
  if (reference) rows.push({label: 'reference, no imgcache:'} as Row, reference.curl, reference.ssh)
  printTable(rows, imageBytes)
  const t = c.targets
  if (t.relayOriginOnce) {
    line(
      'relay: origin TX ÷ images total',
      pct(1 + t.relayOriginOnce.excess),
      `read ${m.relay?.originReads ?? '?'} time(s); target within ${pct(t.relayOriginOnce.target)}: ${verdict(t.relayOriginOnce.pass)}`,
    )
  }

  if (t.nodeOriginUse) {
    line(
      `node --concurrency ${c.nodes}: origin link use`,
      pct(m.node!.originLinkUse),
      `wire bytes ÷ wall ÷ ${LINKS.origin.tc}; target ≥ ${pct(t.nodeOriginUse.target)}: ${verdict(t.nodeOriginUse.pass)}`,
    )
  }

  if (t.relaySpeedup) {
    line(
      'relay: speed-up over the baseline',
      times(t.relaySpeedup.value),
      `target ≥ ${t.relaySpeedup.target}×: ${verdict(t.relaySpeedup.pass)}`,
    )
  }

  if (reference) {
    const s = reference.scan
    line(
      'cache scan of one node: SSH round trips',
      String(s.roundTrips),
      `${s.calls.join(', ')} (analyzeNode says ${s.roundTripsReported}); ${s.instances} instance dirs, ` +
        `${s.cacheEntries} cache entries, ${seconds(s.seconds * 1000)}; target ≤ ${s.target}: ${verdict(s.pass)}`,
    )
    if (reference.nodePerCurl !== undefined)
      line('node mode ÷ plain curl (information)', times(reference.nodePerCurl), 'imgcache time over the tools alone')
    if (reference.relayPerSsh !== undefined)
      line(
        'relay ÷ plain ssh fan-out (information)',
        times(reference.relayPerSsh),
        'imgcache time over the tools alone',
      )
  }

  for (const r of [m.node, m.relay, m.p2p]) {
    if (!r?.reportSeconds) continue
    const slowest = Object.entries(r.itemSeconds)
      .map(([name, s]) => `${name} ${s.toFixed(1)} s`)
      .join(', ')
    line(`${r.label}: inside imgcache`, seconds(r.reportSeconds * 1000), `slowest node per image: ${slowest}`)
  }

  if (t.p2pOriginOnce) {
    line(
      'p2p: origin TX ÷ images total',
      pct(1 + t.p2pOriginOnce.excess),
      `read ${m.p2p?.originReads ?? '?'} time(s); target within ${pct(t.p2pOriginOnce.target)}: ${verdict(t.p2pOriginOnce.pass)}`,
    )
  }

  if (t.p2pBastion) {
    line(
      'p2p: bastion TX ÷ images total',
      times(t.p2pBastion.value),
      `target ≤ ${t.p2pBastion.target}×: ${verdict(t.p2pBastion.pass)}`,
    )
  }

  if (t.p2pOverRelay !== undefined)
    line('p2p: speed-up over relay', times(t.p2pOverRelay), `at ${c.nodes} nodes (the target: ≥ 4× at 32)`)
}

function printAxis(axis: ReturnType<typeof axisFigures>): void {
  if (!axis.p2pOverRelay && !axis.p2pFlatness) return
  console.log('\nnode-count axis:')
  const o = axis.p2pOverRelay
  if (o) {
    line(
      `p2p@${o.nodes} speed-up over relay@${o.nodes}`,
      times(o.value),
      `target ≥ ${o.target}× (at 32 nodes): ${verdict(o.pass)}`,
    )
  }

  const f = axis.p2pFlatness
  if (f) {
    line(`p2p@${f.to} ÷ p2p@${f.from}`, times(f.value), `target ≤ ${f.target}× (32 ÷ 8): ${verdict(f.pass)}`)
  }
}

/** A run that did not cache every image on every node: its time means nothing. */
function problemsOf(fleet: Fleet, run: ModeRun): string[] {
  const expected = run.mode.nodes * fleet.imageIds.length
  const cached = run.report?.totals.cached ?? 0
  if (run.exitCode === 0 && cached === expected) return []
  const errors = (run.report?.items ?? []).filter((i) => i.status !== 'cached')
  return [
    `${run.mode.label}: exit ${run.exitCode}, ${cached} of ${expected} cached`,
    ...errors
      .slice(0, 8)
      .map((i) => `  ${i.node} ${i.image.name ?? i.image.id}: ${i.status} ${i.code ?? ''} ${i.message ?? ''}`),
    ...(run.report ? [] : [run.stderr.trim().split('\n').slice(-10).join('\n')]),
  ]
}

async function main(): Promise<number> {
  await ensureBuilt()
  const work = await mkdtemp(join(tmpdir(), 'imgcache-bench-precache-'))
  const cleanups: Array<() => Promise<unknown>> = [() => rm(work, {force: true, recursive: true})]
  let cleaning: Promise<void> | undefined
  const cleanUp = () => {
    cleaning ??= (async () => {
      await stopRunning()
      for (const step of cleanups.reverse()) {
        await step().catch((error: unknown) => console.error(`clean-up: ${(error as Error).message}`))
      }
    })()
    return cleaning
  }

  // Interrupted: stop everything this run started, then die of the signal as if there were no handler.
  // `on`, not `once`: execa's signal-exit handler re-raises the signal at once when it finds itself
  // the only listener left, which a `once` listener is not any more while it runs.
  const onSignal = (signal: NodeJS.Signals) => {
    cleanUp()
      .catch(() => undefined)
      .finally(() => {
        process.off('SIGINT', onSignal).off('SIGTERM', onSignal)
        process.kill(process.pid, signal)
      })
  }

  process.on('SIGINT', onSignal).on('SIGTERM', onSignal)
  try {
    const setupStart = performance.now()
    const fleet = await setUp(work, cleanups)
    console.log(
      `test network, ${MAX_NODES} nodes, glance-api and images ready in ${seconds(performance.now() - setupStart)}; ` +
        `node counts ${COUNTS.join(', ')}; runs ${[...WANTED].join(', ')}`,
    )
    const problems: string[] = []
    const counted: CountFigures[] = []
    let reference: ReturnType<typeof referenceFigures> | undefined
    let baseline: ModeRun | undefined
    for (const n of COUNTS) {
      const runs: ModeRun[] = []
      for (const mode of modesAt(n)) {
        await clearNodes(fleet.nodes)
        const run = await runMode(fleet, mode)
        console.log(
          `  ${n} nodes, ${mode.label}: ${seconds(run.ms)} (exit ${run.exitCode}, load ${run.load.toFixed(1)})`,
        )
        if (mode.key === 'baseline') baseline = run
        runs.push(run)
        problems.push(...problemsOf(fleet, run))
      }

      counted.push(countFigures(fleet, n, runs, baseline))
      if (n !== COUNTS[0] || !WANTED.has('reference')) continue
      // The scan while node1 holds what the last run cached; then the references, from cold caches.
      const scan = await measureScan(fleet)
      const references = {} as References
      for (const kind of ['curl', 'ssh'] as const) {
        await clearNodes(fleet.nodes)
        const r = await runReference(fleet, kind, n)
        references[kind] = r
        console.log(`  ${n} nodes, reference, plain ${kind}: ${seconds(r.ms)} (exit ${r.exitCode})`)
        if (r.exitCode !== 0)
          problems.push(`reference ${kind}: exit ${r.exitCode}: ${r.stderr.trim().split('\n').slice(-5).join(' | ')}`)
      }

      reference = referenceFigures(n, baseline, counted[0]!, references, scan)
    }

    const axis = axisFigures(counted)
    console.log(
      `\nprecache: nodes at ${LINKS.node.tc}, origin (glance-api) at ${LINKS.origin.tc}, bastion (imgcache) at ` +
        `${LINKS.bastion.tc}; images ${IMAGE_MIB.map((m) => `${m} MiB raw`).join(', ')} (${mb(fleet.imageBytes)}; ` +
        `declared raw: no conversion); ${availableParallelism()} CPUs`,
    )
    for (const c of counted) printCount(c, fleet.imageBytes, c.nodes === reference?.nodes ? reference : undefined)
    printAxis(axis)
    for (const problem of problems) console.log(`  ${problem}`)
    const figures = {
      axis,
      counts: counted,
      cpus: availableParallelism(),
      date: new Date().toISOString(),
      imageBytes: fleet.imageBytes,
      images: IMAGE_MIB.map((m) => `${m} MiB raw`),
      links: {bastion: LINKS.bastion.tc, node: LINKS.node.tc, origin: LINKS.origin.tc},
      node: process.version,
      problems,
      /** The same bytes moved by the plain tools, no imgcache, at the smallest count: what this machine allows. */
      reference,
    }
    console.log(`figures: ${await writeFigures('precache', figures)}`)
    return problems.length === 0 ? 0 : 1
  } finally {
    await cleanUp()
  }
}

process.exitCode = await main()
