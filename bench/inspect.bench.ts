/**
 * `imgcache inspect` on a host with 2,000 instances against Nova's way of finding what each instance
 * uses: `qemu-img info` on every instance disk. Everything is measured in this run, on the same
 * files with a warm page cache; the figures are ratios, never absolute limits. The run fails only
 * if imgcache and qemu-img disagree on a disk's backing file.
 *
 * Both builds are measured, alternating run by run: the npm one (bin/run.js on this machine's Node)
 * and the standalone one (`npm run package`'s tree: its launcher and its own Node.js, with Node's
 * compile cache warmed by one run first, as every run after an operator's first one finds it).
 *
 * Where the standalone inspect's time goes (--cpu-prof, 2 CPUs, quiet): Node and oclif until the
 * command runs ~0.18 s; the scan ~0.17 s, almost all system calls (per instance directory: scandir,
 * and open + pread + close of libvirt.xml; per disk: open + fstat + pread + close; no qemu-img or
 * python spawned, 4 KiB heads only); the headers' index ~0.03 s; usage ~0.08 s (of which the
 * libvirt.xml fast path ~0.03 s); the JSON ~0.015 s; GC ~0.07 s spread over all of it; and Node's
 * teardown of the heap after the output, ~0.04 s (skipped since: bin/run.js exits from 'beforeExit').
 * Tried and measured, did not help (kept out):
 * - a worker thread scanning instance directories beside the main thread (a shared counter, batches
 *   of 16): 0.67 s against 0.65 s. It starts ~40 ms late, so claims a quarter of the directories,
 *   and the main thread then pays to deserialize its scans (strings and heads) as long as it saved.
 * - V8's young generation made larger (--min-semi-space-size=8 or 16): fewer scavenges, each copying
 *   more of the scan (which survives), and more CPU in all (0.94 and 0.98 s against 0.86 s).
 */
import {rmSync} from 'node:fs'
import {mkdtemp, rm} from 'node:fs/promises'
import {availableParallelism, tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {performance} from 'node:perf_hooks'

import type {InspectReport} from '../src/commands/inspect.js'
import type {UsageReport} from '../src/lib/cache/usage.js'

import {analyzeNode} from '../src/lib/analysis.js'
import {resolveCacheSettings} from '../src/lib/config/settings.js'
import {buildInspectResult, type InspectResult} from '../src/lib/inspect.js'
import {LocalNode} from '../src/lib/node/local.js'
import {ensureBuilt} from './lib/build.js'
import {
  mapLimit,
  median,
  medianOf,
  mustRun,
  REPO_ROOT,
  runProcess,
  seconds,
  timed,
  times,
  writeFigures,
} from './lib/measure.js'
import {ensureStandalone, type Standalone} from './lib/standalone.js'
import {makeSyntheticHost, type SyntheticHost} from './lib/synthetic-host.js'

const SPEC = {bases: 300, instances: 2000, usedBases: 270}
const TARGET_RATIO = 100
const TARGET_WALL_MS = 1000
/** The standalone build's inspect of this host (issue 15). */
const TARGET_STANDALONE_WALL_MS = 500
/** imgcache's start-up (Node + oclif + its plugins, `--version`) against Node's own (`node -e 0`), npm build (issue 13). */
const TARGET_STARTUP_RATIO = 2.5
/** The same with the standalone build, against its own Node (issue 15). */
const TARGET_STANDALONE_STARTUP_RATIO = 3
const BIN = join(REPO_ROOT, 'bin', 'run.js')
/** As Nova runs it (LC_ALL=C), and as an installed CLI runs (no imgcache settings from the environment). */
const QEMU_ENV = {...process.env, LANG: 'C', LC_ALL: 'C'}
const CLI_ENV = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('IMGCACHE_'))),
  NODE_ENV: 'production',
}

interface QemuInfo {
  /** qemu-img's backing-filename, resolved against the disk's directory as qemu-img does. */
  backing?: string
}

async function qemuInfo(disk: string): Promise<QemuInfo> {
  const {stdout} = await mustRun('qemu-img', ['info', '-U', '--output=json', disk], {env: QEMU_ENV})
  const info = JSON.parse(stdout) as {'backing-filename'?: string}
  const name = info['backing-filename']
  return {backing: name === undefined ? undefined : resolve(dirname(disk), name)}
}

/**
 * How nova-compute itself spawns it (nova/virt/images.py qemu_img_info): processutils.execute with
 * prlimit, i.e. `python3 -m oslo_concurrency.prlimit --as=1GiB --cpu=30 -- env LC_ALL=C LANG=C
 * qemu-img info PATH --force-share --output=json`, a Python start-up per disk. Information only,
 * timed on every NOVA_SAMPLE-th disk and scaled to all of them (the whole run would take minutes).
 */
const NOVA_SAMPLE = 10
const NOVA_PYTHON = '/usr/bin/python3'

async function novaSpawnBaseline(disks: string[]): Promise<undefined | {ms: number; sampled: number}> {
  const probe = await runProcess(NOVA_PYTHON, ['-c', 'import oslo_concurrency.prlimit']).catch(() => undefined)
  if (probe?.code !== 0) return undefined
  const sample = disks.filter((_, i) => i % NOVA_SAMPLE === 0)
  const run = await timed(async () =>
    mapLimit(sample, 1, async (disk) =>
      mustRun(
        NOVA_PYTHON,
        [
          '-m',
          'oslo_concurrency.prlimit',
          '--as=1073741824',
          '--cpu=30',
          '--',
          'env',
          'LC_ALL=C',
          'LANG=C',
          'qemu-img',
          'info',
          disk,
          '--force-share',
          '--output=json',
        ],
        {env: QEMU_ENV},
      ),
    ),
  )
  return {ms: (run.ms * disks.length) / sample.length, sampled: sample.length}
}

/** Nova's method: one `qemu-img info` per disk, `concurrency` at a time (Nova: 1). */
async function qemuBaseline(disks: string[], concurrency: number) {
  const run = await timed(async () => mapLimit(disks, concurrency, qemuInfo))
  return {info: new Map(disks.map((d, i) => [d, run.value[i]!])), ms: run.ms}
}

function cliArgs(host: SyntheticHost): string[] {
  return [
    'inspect',
    '--instances-path',
    host.instancesPath,
    '--json',
    '--domain-xml-dir',
    host.domainXmlDir,
    '--config',
    host.configFile,
    '--nova-conf',
    host.novaConf,
  ]
}

/**
 * Each named run `rounds` times, one of each per round, the order of the round turned each time (a
 * drift in the machine's load falls on all of them); the median wall time of each.
 */
async function alternating<K extends string>(
  rounds: number,
  runs: Record<K, () => Promise<unknown>>,
): Promise<Record<K, {ms: number; runsMs: number[]}>> {
  const names = Object.keys(runs) as K[]
  const times = new Map<K, number[]>(names.map((n) => [n, []]))
  for (let round = 0; round < rounds; round++) {
    for (const name of round % 2 === 0 ? names : [...names].reverse()) {
      const run = await timed(runs[name])
      times.get(name)!.push(run.ms)
    }
  }

  return Object.fromEntries(names.map((n) => [n, {ms: median(times.get(n)!), runsMs: times.get(n)!}])) as Record<
    K,
    {ms: number; runsMs: number[]}
  >
}

/** The two builds' inspect of the host, alternating; the npm build's JSON for the checks. */
async function cliInspect(host: SyntheticHost, standalone: Standalone, env: NodeJS.ProcessEnv) {
  let report: InspectReport | undefined
  const npm = async () => {
    const {stdout} = await mustRun(process.execPath, [BIN, ...cliArgs(host)], {env: CLI_ENV})
    report = JSON.parse(stdout) as InspectReport
  }

  const packaged = async () => mustRun(standalone.launcher, cliArgs(host), {env})
  await packaged() // writes the compile cache
  const runs = await alternating(3, {npm, standalone: packaged})
  return {...runs, value: report!}
}

/** The scan and the report without Node's or oclif's start-up: analyzeNode + buildInspectResult. */
async function inProcessInspect(host: SyntheticHost) {
  const node = new LocalNode()
  const settings = await resolveCacheSettings(node, {}, undefined, {
    instancesPath: host.instancesPath,
    novaConf: [host.novaConf],
  })
  const run = await medianOf(3, async () => {
    const analysis = await analyzeNode(node, settings, {domainXmlDirs: [host.domainXmlDir]})
    return {result: buildInspectResult(analysis), usage: analysis.usage}
  })
  const start = performance.now()
  JSON.stringify(run.value.result)
  const stringifyMs = performance.now() - start
  await node.close()
  return {...run, stringifyMs}
}

/** `node -e 0` and `--version` of both builds, each against its own Node. */
async function startups(standalone: Standalone, env: NodeJS.ProcessEnv) {
  await mustRun(standalone.launcher, ['--version'], {env}) // writes the compile cache
  return alternating(5, {
    node: async () => mustRun(process.execPath, ['-e', '0']),
    standaloneNode: async () => mustRun(standalone.node, ['-e', '0']),
    standaloneVersion: async () => mustRun(standalone.launcher, ['--version'], {env}),
    version: async () => mustRun(process.execPath, [BIN, '--version'], {env: CLI_ENV}),
  })
}

/** The directory an instance label names (`<dir>` or `<dir> (<domain name>)`). */
function dirOfLabel(label: string): string {
  return label.split(' ')[0]!
}

/** (instance dir, cache entry) pairs that qemu-img says the disks are backed by. */
function qemuPairs(host: SyntheticHost, info: Map<string, QemuInfo>): Set<string> {
  const pairs = new Set<string>()
  for (const [disk, {backing}] of info) {
    const dir = disk.slice(host.instancesPath.length + 1).split('/')[0]!
    if (backing === undefined) continue
    pairs.add(
      dirname(backing) === host.cacheDir ? `${dir} ${backing.slice(host.cacheDir.length + 1)}` : `${dir} !${backing}`,
    )
  }

  return pairs
}

/** (instance dir, cache entry) pairs that imgcache's JSON reports as in use. */
function jsonPairs(result: InspectResult): Set<string> {
  return new Set(result.entries.flatMap((e) => e.users.map((u) => `${dirOfLabel(u)} ${e.name}`)))
}

function difference(a: Set<string>, b: Set<string>): string[] {
  return [...a].filter((x) => !b.has(x))
}

/**
 * Two checks against qemu-img. JSON: every instance ↔ cache entry use imgcache reports is a disk
 * backed by that entry per qemu-img, and the other way round (the synthetic metadata names the same
 * images and flavor templates as the disks). Per disk: each disk's first backing file in the in-process
 * analysis is qemu-img's backing-filename.
 */
function checkAgreement(host: SyntheticHost, info: Map<string, QemuInfo>, json: InspectResult, usage: UsageReport) {
  const expected = qemuPairs(host, info)
  const reported = jsonPairs(json)
  const jsonMismatches = [
    ...difference(expected, reported).map((p) => `missing from imgcache's JSON: ${p}`),
    ...difference(reported, expected).map((p) => `in imgcache's JSON, not per qemu-img: ${p}`),
  ]
  const seen = new Set<string>()
  const diskMismatches: string[] = []
  for (const instance of usage.instances) {
    for (const disk of instance.disks) {
      const path = join(host.instancesPath, instance.dir, disk.name)
      seen.add(path)
      const want = info.get(path)?.backing
      if (disk.backingChain[0] !== want)
        diskMismatches.push(`${path}: imgcache ${disk.backingChain[0]}, qemu-img ${want}`)
    }
  }

  for (const path of info.keys()) if (!seen.has(path)) diskMismatches.push(`${path}: not reported by imgcache`)
  return {
    disksCompared: seen.size,
    diskMismatches,
    jsonMismatches,
    mismatches: jsonMismatches.length + diskMismatches.length,
    usesCompared: expected.size,
  }
}

function verdict(ok: boolean): string {
  return ok ? 'PASS' : 'MISS'
}

function line(label: string, value: string, note = ''): void {
  console.log(`  ${label.padEnd(46)} ${value.padStart(10)}  ${note}`.trimEnd())
}

async function measure(host: SyntheticHost, standalone: Standalone, compileCache: string) {
  // The standalone's compile cache in the run's own directory, written by a first run of each.
  const env = {...CLI_ENV, IMGCACHE_COMPILE_CACHE: compileCache}
  const start = await startups(standalone, env)
  const nodeMs = start.node.ms
  const oclifMs = start.version.ms
  const sequential = await qemuBaseline(host.disks, 1)
  const concurrent = await qemuBaseline(host.disks, 4)
  const novaSpawn = await novaSpawnBaseline(host.disks)
  const inspects = await cliInspect(host, standalone, env)
  const cli = {...inspects.npm, value: inspects.value}
  const inProcess = await inProcessInspect(host)
  const json = cli.value.nodes[0]
  if (!json) throw new Error(`imgcache inspect reported no node: ${JSON.stringify(cli.value.failures)}`)
  const agreement = checkAgreement(host, sequential.info, json, inProcess.value.usage)
  const packaged = {
    inspect: inspects.standalone,
    nodeMs: start.standaloneNode.ms,
    nodeVersion: standalone.nodeVersion,
    versionMs: start.standaloneVersion.ms,
  }
  return {agreement, cli, concurrent, inProcess, json, nodeMs, novaSpawn, oclifMs, packaged, sequential}
}

type Measured = Awaited<ReturnType<typeof measure>>

function figuresOf(host: SyntheticHost, m: Measured) {
  const ratio = m.sequential.ms / m.cli.ms
  const standaloneStartupRatio = m.packaged.versionMs / m.packaged.nodeMs
  return {
    agreement: {
      disksCompared: m.agreement.disksCompared,
      diskMismatches: m.agreement.diskMismatches.length,
      jsonMismatches: m.agreement.jsonMismatches.length,
      mismatches: m.agreement.mismatches,
      usesCompared: m.agreement.usesCompared,
    },
    cacheEntries: host.cacheEntries,
    cpus: availableParallelism(),
    date: new Date().toISOString(),
    disks: host.disks.length,
    instances: m.json.instances.total,
    node: process.version,
    pruneWouldRemove: m.json.entries.filter((e) => e.prune.outcome === 'would-remove').length,
    ratios: {
      baselinePerImgcache: ratio,
      baselinePerInProcess: m.sequential.ms / m.inProcess.ms,
      concurrentPerImgcache: m.concurrent.ms / m.cli.ms,
      imgcachePerNodeStartup: m.cli.ms / m.nodeMs,
      novaSpawnPerImgcache: m.novaSpawn ? m.novaSpawn.ms / m.cli.ms : undefined,
      standaloneInspectPerNodeStartup: m.packaged.inspect.ms / m.packaged.nodeMs,
      standaloneStartupPerNodeStartup: standaloneStartupRatio,
      startupPerNodeStartup: m.oclifMs / m.nodeMs,
    },
    seconds: {
      imgcacheInspect: m.cli.ms / 1000,
      imgcacheInspectRuns: m.cli.runsMs.map((ms) => ms / 1000),
      inProcessScan: m.inProcess.ms / 1000,
      inProcessScanRuns: m.inProcess.runsMs.map((ms) => ms / 1000),
      jsonStringify: m.inProcess.stringifyMs / 1000,
      nodeStartup: m.nodeMs / 1000,
      oclifStartup: m.oclifMs / 1000,
      qemuImgInfo4Concurrent: m.concurrent.ms / 1000,
      qemuImgInfoSequential: m.sequential.ms / 1000,
      qemuImgInfoSequentialAsNovaSpawnsIt: m.novaSpawn ? m.novaSpawn.ms / 1000 : undefined,
      standaloneInspect: m.packaged.inspect.ms / 1000,
      standaloneInspectRuns: m.packaged.inspect.runsMs.map((ms) => ms / 1000),
      standaloneNodeStartup: m.packaged.nodeMs / 1000,
      standaloneStartup: m.packaged.versionMs / 1000,
    },
    standaloneNode: m.packaged.nodeVersion,
    targets: {
      ratio: {pass: ratio >= TARGET_RATIO, target: TARGET_RATIO},
      startupRatio: {pass: m.oclifMs / m.nodeMs <= TARGET_STARTUP_RATIO, target: TARGET_STARTUP_RATIO},
      standaloneStartupRatio: {
        pass: standaloneStartupRatio <= TARGET_STANDALONE_STARTUP_RATIO,
        target: TARGET_STANDALONE_STARTUP_RATIO,
      },
      standaloneWallSeconds: {
        pass: m.packaged.inspect.ms <= TARGET_STANDALONE_WALL_MS,
        target: TARGET_STANDALONE_WALL_MS / 1000,
      },
      wallSeconds: {pass: m.cli.ms < TARGET_WALL_MS, target: TARGET_WALL_MS / 1000},
    },
  }
}

function print(f: ReturnType<typeof figuresOf>, m: Measured): void {
  const s = f.seconds
  console.log(
    `inspect: ${f.instances} instances, ${f.disks} instance disks, ${f.cacheEntries} cache entries ` +
      `(${f.pruneWouldRemove} removable); ${f.cpus} CPUs, warm page cache`,
  )
  line('baseline: qemu-img info -U, sequential (Nova)', seconds(s.qemuImgInfoSequential * 1000))
  line('qemu-img info -U, 4 at a time (information)', seconds(s.qemuImgInfo4Concurrent * 1000))
  if (m.novaSpawn) {
    line(
      '  as nova-compute spawns it (information)',
      seconds(m.novaSpawn.ms),
      `1 disk in ${NOVA_SAMPLE} timed (${m.novaSpawn.sampled}), scaled to ${f.disks}`,
    )
  } else {
    line('  as nova-compute spawns it (information)', 'skipped', `no oslo_concurrency for ${NOVA_PYTHON}`)
  }

  line(
    'imgcache inspect --json (median of 3)',
    seconds(m.cli.ms),
    `runs ${m.cli.runsMs.map((ms) => seconds(ms)).join(', ')}`,
  )
  line(
    '  in-process analyzeNode + buildInspectResult',
    seconds(m.inProcess.ms),
    `runs ${m.inProcess.runsMs.map((ms) => seconds(ms)).join(', ')}`,
  )
  line('  JSON.stringify of the result', seconds(m.inProcess.stringifyMs))
  line('  bin/run.js --version (Node + oclif start-up)', seconds(m.oclifMs), 'median of 5, alternating')
  line(`  node -e 0 (Node ${process.version} start-up)`, seconds(m.nodeMs))
  line(
    'standalone inspect --json (median of 3)',
    seconds(m.packaged.inspect.ms),
    `runs ${m.packaged.inspect.runsMs.map((ms) => seconds(ms)).join(', ')}`,
  )
  line('  standalone --version', seconds(m.packaged.versionMs), 'its launcher, compile cache warm')
  line(`  its node -e 0 (Node ${m.packaged.nodeVersion})`, seconds(m.packaged.nodeMs))
  line(
    'ratio baseline / imgcache',
    times(f.ratios.baselinePerImgcache),
    `target ≥ ${TARGET_RATIO}×: ${verdict(f.targets.ratio.pass)}`,
  )
  line('ratio 4-concurrent qemu-img / imgcache', times(f.ratios.concurrentPerImgcache))
  if (f.ratios.novaSpawnPerImgcache !== undefined)
    line('ratio nova-compute spawn / imgcache (info.)', times(f.ratios.novaSpawnPerImgcache))
  line('ratio baseline / in-process scan', times(f.ratios.baselinePerInProcess))
  line('ratio imgcache / node -e 0', times(f.ratios.imgcachePerNodeStartup))
  line(
    'ratio start-up (--version) / node -e 0',
    times(f.ratios.startupPerNodeStartup),
    `target ≤ ${TARGET_STARTUP_RATIO}×: ${verdict(f.targets.startupRatio.pass)}`,
  )
  line(
    'imgcache wall time',
    seconds(m.cli.ms),
    `target < ${TARGET_WALL_MS / 1000} s: ${verdict(f.targets.wallSeconds.pass)}`,
  )
  line(
    'standalone --version / its node -e 0',
    times(f.ratios.standaloneStartupPerNodeStartup),
    `target ≤ ${TARGET_STANDALONE_STARTUP_RATIO}×: ${verdict(f.targets.standaloneStartupRatio.pass)}`,
  )
  line(
    'standalone: inspect wall time',
    seconds(m.packaged.inspect.ms),
    `target ≤ ${TARGET_STANDALONE_WALL_MS / 1000} s: ${verdict(f.targets.standaloneWallSeconds.pass)}`,
  )
  line(
    'backing files: imgcache vs qemu-img',
    `${f.agreement.mismatches} off`,
    `${f.agreement.mismatches === 0 ? 'agree' : 'DISAGREE'} on ${f.agreement.disksCompared} disks, ` +
      `${f.agreement.usesCompared} instance → entry uses in the JSON`,
  )
  for (const problem of [...m.agreement.jsonMismatches, ...m.agreement.diskMismatches].slice(0, 10)) {
    console.log(`    ${problem}`)
  }
}

async function main(): Promise<number> {
  await ensureBuilt()
  const standalone = await ensureStandalone()
  const root = await mkdtemp(join(tmpdir(), 'imgcache-bench-inspect-'))
  // Interrupted: remove the host, then die of the signal as if there were no handler.
  const onSignal = (signal: NodeJS.Signals) => {
    rmSync(root, {force: true, recursive: true})
    process.kill(process.pid, signal)
  }

  process.once('SIGINT', onSignal).once('SIGTERM', onSignal)
  try {
    const setup = await timed(async () => makeSyntheticHost(root, SPEC))
    console.log(`synthetic host built in ${seconds(setup.ms)} under ${root}`)
    const measured = await measure(setup.value, standalone, join(root, 'compile-cache'))
    const figures = figuresOf(setup.value, measured)
    print(figures, measured)
    console.log(`figures: ${await writeFigures('inspect', figures)}`)
    return figures.agreement.mismatches === 0 ? 0 : 1
  } finally {
    await rm(root, {force: true, recursive: true})
  }
}

process.exitCode = await main()
