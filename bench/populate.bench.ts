/**
 * `imgcache populate` of a 1 GiB image from a real glance-api on loopback (started here with the
 * tests' harness, no Keystone) into a local cache, against the same durable result without any
 * checking, `curl -o FILE && sync FILE` (the yardstick: the bytes on disk, as a rename into the
 * cache needs), and for information against `curl -o` alone (the old yardstick: a write into the
 * page cache), `curl -o` then `sha512sum` (the two-pass way) and `curl | tee FILE | sha512sum` then
 * `sync FILE` (the same streamed, hashed, durable work with standard tools, in one pass).
 * imgcache does more than curl: it hashes (sha512, Glance's os_hash_algo) as the file grows,
 * inspects the format, runs `qemu-img info`, fsyncs, renames and writes its metadata. The image is
 * raw, declared raw and pseudo-random (not zeros), so no conversion to raw runs (curl does none
 * either): like for like.
 *
 * Every command runs 3 times, interleaved (the order rotated each round), each from the same
 * state: its output removed, dirty pages written back (`sync`), Glance's copy of the image in the
 * page cache (or every cache dropped, with BENCH_DROP_CACHES=1, as root). The figures are medians
 * and ratios within this run. A second, larger image (sparse-but-random, 3 GiB) is measured the
 * same way against `curl -o && sync`, and shows that imgcache's peak RSS does not grow with the
 * image. The run fails only if a command fails or imgcache's result is wrong.
 */
import {createCipheriv, createHash} from 'node:crypto'
import {rmSync} from 'node:fs'
import {mkdir, mkdtemp, open, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {availableParallelism, tmpdir} from 'node:os'
import {join} from 'node:path'

import type {PopulateReport} from '../src/commands/populate.js'
import type {Sidecar} from '../src/lib/sidecar.js'

import {cacheName, SIDECAR_DIR} from '../src/lib/cache/naming.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../test/helpers/glance.js'
import {ensureBuilt} from './lib/build.js'
import {median, medianOf, mustRun, REPO_ROOT, seconds, timed, writeFigures} from './lib/measure.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const RUNS = 3
/** imgcache populate against `curl -o FILE && sync FILE` (the same durable bytes, unchecked): 1 GiB dense. */
const TARGET_RATIO = 1.1
/** The same for the 3 GiB sparse image. */
const TARGET_RATIO_LARGE = 1.2
const TARGET_RSS_MIB = 150
const BIN = join(REPO_ROOT, 'bin', 'run.js')
const DROP_CACHES = process.env.BENCH_DROP_CACHES === '1'
/** BENCH_ONLY=main: the 1 GiB image only (iterations on it hold the machine half as long); its figures then lack the large image. */
const MAIN_ONLY = process.env.BENCH_ONLY === 'main'
/** As an installed CLI runs: no imgcache settings and no OpenStack credentials from the environment. */
const CLI_ENV = {
  ...Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('IMGCACHE_') && !k.startsWith('OS_')),
  ),
  NODE_ENV: 'production',
}

interface ImageSpec {
  bytes: number
  /** dense: pseudo-random throughout; sparse: a pseudo-random 1 MiB every 4 MiB, holes between. */
  layout: 'dense' | 'sparse'
  name: string
}

const MAIN: ImageSpec = {bytes: GiB, layout: 'dense', name: 'random-1g'}
const LARGE: ImageSpec = {bytes: 3 * GiB, layout: 'sparse', name: 'sparse-random-3g'}

/** A deterministic pseudo-random keystream (AES-256-CTR of zeros): the same image on every run, fast. */
function keystream(seed: string) {
  const key = createHash('sha256').update(seed).digest()
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16))
  const zeros = Buffer.alloc(16 * MiB)
  return (length: number) => cipher.update(zeros.subarray(0, length))
}

async function makeImage(path: string, spec: ImageSpec): Promise<void> {
  const next = keystream(spec.name)
  const handle = await open(path, 'w')
  try {
    await handle.truncate(spec.bytes)
    const step = spec.layout === 'dense' ? 16 * MiB : 4 * MiB
    const extent = spec.layout === 'dense' ? 16 * MiB : MiB
    for (let at = 0; at < spec.bytes; at += step) {
      const length = Math.min(extent, spec.bytes - at)
      await handle.write(next(length), 0, length, at)
    }
  } finally {
    await handle.close()
  }
}

interface Setup {
  cacheBase: string
  config: string
  curlOut: string
  glance: GlanceHandle
  image: GlanceImageJson
  instancesPath: string
  novaConf: string
  /** Glance's own copy of the image (its file store). */
  stored: string
  url: string
}

async function upload(glance: GlanceHandle, root: string, spec: ImageSpec): Promise<GlanceImageJson> {
  const file = join(root, `${spec.name}.raw`)
  await makeImage(file, spec)
  const image = await glance.uploadImage({diskFormat: 'raw', file, name: spec.name})
  await rm(file)
  if (image.status !== 'active' || image.size !== spec.bytes || image.os_hash_algo !== 'sha512') {
    throw new Error(`glance stored ${spec.name} as ${JSON.stringify(image)}`)
  }

  return image
}

async function setUp(glance: GlanceHandle, root: string, spec: ImageSpec): Promise<Setup> {
  const image = await upload(glance, root, spec)
  const dir = join(root, spec.name)
  const instancesPath = join(dir, 'instances')
  await mkdir(instancesPath, {recursive: true})
  const config = join(dir, 'imgcache.json')
  const novaConf = join(dir, 'nova.conf')
  await writeFile(config, `${JSON.stringify({imageService: {endpoint: glance.url}})}\n`)
  await writeFile(novaConf, '')
  const stored = join(glance.dir, 'images', image.id)
  await stat(stored)
  return {
    cacheBase: join(instancesPath, '_base'),
    config,
    curlOut: join(dir, 'curl.out'),
    glance,
    image,
    instancesPath,
    novaConf,
    stored,
    url: `${glance.url}/v2/images/${image.id}/file`,
  }
}

/** The same starting point for every run: no output, nothing dirty, Glance's copy cached (or nothing cached). */
async function resetState(s: Setup): Promise<void> {
  await rm(s.curlOut, {force: true})
  await rm(s.cacheBase, {force: true, recursive: true})
  await mustRun('sync', [])
  if (DROP_CACHES) {
    await writeFile('/proc/sys/vm/drop_caches', '3\n')
    return
  }

  await mustRun('dd', [`if=${s.stored}`, 'of=/dev/null', 'bs=16M'])
}

async function curl(s: Setup): Promise<void> {
  await mustRun('curl', ['-sS', '--fail', '-o', s.curlOut, s.url])
  const {size} = await stat(s.curlOut)
  if (size !== s.image.size) throw new Error(`curl wrote ${size} bytes, the image has ${s.image.size}`)
}

async function curlThenSha512sum(s: Setup): Promise<void> {
  await curl(s)
  const {stdout} = await mustRun('sha512sum', [s.curlOut])
  const digest = stdout.split(' ')[0]
  if (digest !== s.image.os_hash_value) throw new Error(`sha512sum says ${digest}, glance ${s.image.os_hash_value}`)
}

/**
 * The same work as imgcache with standard tools, in one pass: curl's bytes teed into the file and
 * into sha512sum at once, then the file flushed to disk. Streamed, hashed and durable, like
 * imgcache (which also inspects the format and runs qemu-img).
 */
async function curlTeeSha512sumSync(s: Setup): Promise<void> {
  const {stdout} = await mustRun('bash', [
    '-c',
    'set -o pipefail; curl -sS --fail "$1" | tee "$2" | sha512sum && sync "$2"',
    'bash',
    s.url,
    s.curlOut,
  ])
  const digest = stdout.split(' ')[0]
  if (digest !== s.image.os_hash_value)
    throw new Error(`curl | tee | sha512sum says ${digest}, glance ${s.image.os_hash_value}`)
  const {size} = await stat(s.curlOut)
  if (size !== s.image.size) throw new Error(`curl | tee wrote ${size} bytes, the image has ${s.image.size}`)
}

/** curl, then the file flushed to disk (coreutils' sync FILE: fsync), as imgcache's rename requires. */
async function curlThenSync(s: Setup): Promise<void> {
  await curl(s)
  await mustRun('sync', [s.curlOut])
}

interface CliRun {
  /** imgcache's own figure for the fetch (after Node and oclif start-up). */
  fetchMs?: number
  /** Peak RSS of the node process (and its reaped children), /usr/bin/time's %M. */
  rssKiB: number
}

/** `time -f %M node …`: the peak RSS of the process, from the kernel (ru_maxrss). */
async function withPeakRss(args: string[], rssFile: string) {
  const result = await mustRun('/usr/bin/time', ['-f', '%M', '-o', rssFile, process.execPath, ...args], {
    env: CLI_ENV,
  })
  const rssKiB = Number((await readFile(rssFile, 'utf8')).trim().split('\n').at(-1))
  if (!Number.isFinite(rssKiB)) throw new Error(`no peak RSS in ${rssFile}`)
  return {result, rssKiB}
}

async function imgcache(s: Setup): Promise<CliRun> {
  const args = [BIN, 'populate', s.image.id, '--instances-path', s.instancesPath, '--config', s.config]
  const {result, rssKiB} = await withPeakRss(
    [...args, '--nova-conf', s.novaConf, '--json'],
    join(s.instancesPath, '..', 'time.out'),
  )
  const report = JSON.parse(result.stdout) as PopulateReport
  const item = report.items[0]
  if (item?.status !== 'cached' || item.bytes !== s.image.size || item.converted) {
    throw new Error(`imgcache populate reported ${JSON.stringify(report)}`)
  }

  // The sidecar records the digest imgcache computed and checked against Glance's.
  const name = cacheName(s.image.id)
  const sidecar = JSON.parse(await readFile(join(s.cacheBase, SIDECAR_DIR, `${name}.json`), 'utf8')) as Sidecar
  if (sidecar.downloadHash?.algorithm !== 'sha512' || sidecar.downloadHash.value !== s.image.os_hash_value) {
    throw new Error(`imgcache recorded ${JSON.stringify(sidecar.downloadHash)}, glance sha512 ${s.image.os_hash_value}`)
  }

  if ((await stat(join(s.cacheBase, name))).size !== s.image.size) throw new Error('cached file has the wrong size')
  return {fetchMs: item.durationMs, rssKiB}
}

type Method = 'curl' | 'curlSha512sum' | 'curlSync' | 'curlTee' | 'imgcache'
const METHODS: Method[] = ['curl', 'curlSha512sum', 'curlSync', 'curlTee', 'imgcache']

interface Samples {
  fetchMs: number[]
  ms: Record<Method, number[]>
  rssKiB: number[]
}

/** `rounds` rounds of every method, the order rotated each round, each run from the same state. */
async function measure(s: Setup, rounds: number, methods: Method[]): Promise<Samples> {
  const samples: Samples = {
    fetchMs: [],
    ms: {curl: [], curlSha512sum: [], curlSync: [], curlTee: [], imgcache: []},
    rssKiB: [],
  }
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < methods.length; i++) {
      const method = methods[(round + i) % methods.length]!
      await resetState(s)
      const run = await timed(async () => {
        if (method === 'curl') return curl(s)
        if (method === 'curlSha512sum') return curlThenSha512sum(s)
        if (method === 'curlSync') return curlThenSync(s)
        if (method === 'curlTee') return curlTeeSha512sumSync(s)
        return imgcache(s)
      })
      samples.ms[method].push(run.ms)
      if (run.value) {
        samples.rssKiB.push(run.value.rssKiB)
        if (run.value.fetchMs !== undefined) samples.fetchMs.push(run.value.fetchMs)
      }
    }
  }

  await resetState(s)
  return samples
}

function verdict(ok: boolean): string {
  return ok ? 'PASS' : 'MISS'
}

function line(label: string, value: string, note = ''): void {
  console.log(`  ${label.padEnd(56)} ${value.padStart(10)}  ${note}`.trimEnd())
}

const runsOf = (ms: number[]) => `runs ${ms.map((m) => seconds(m)).join(', ')}`
const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`
const ratio = (r: number) => `${r.toFixed(3)}×`

async function main(): Promise<number> {
  await ensureBuilt()
  const root = await mkdtemp(join(tmpdir(), 'imgcache-bench-populate-'))
  let glance: GlanceHandle | undefined
  // Interrupted: stop glance (the helper's exit hook) and remove everything, then die of the signal.
  const onSignal = (signal: NodeJS.Signals) => {
    rmSync(root, {force: true, recursive: true})
    process.kill(process.pid, signal)
  }

  process.once('SIGINT', onSignal).once('SIGTERM', onSignal)
  try {
    const started = await timed(async () => startGlance({dir: join(root, 'glance')}))
    glance = started.value
    const main = await timed(async () => setUp(started.value, root, MAIN))
    console.log(
      `glance-api (noauth, file store, 1 process) at ${glance.url} in ${seconds(started.ms)}; ` +
        `${MAIN.name} uploaded in ${seconds(main.ms)}`,
    )
    const startup = await withPeakRss([BIN, '--version'], join(root, 'time.out'))
    const startupMs = (await medianOf(3, async () => mustRun(process.execPath, [BIN, '--version'], {env: CLI_ENV}))).ms
    const m = await measure(main.value, RUNS, METHODS)
    let l = m
    if (MAIN_ONLY) {
      console.log(`BENCH_ONLY=main: ${LARGE.name} not measured; its lines repeat ${MAIN.name}`)
    } else {
      const large = await timed(async () => setUp(started.value, root, LARGE))
      console.log(`${LARGE.name} uploaded in ${seconds(large.ms)}`)
      l = await measure(large.value, RUNS, ['curl', 'curlSync', 'imgcache'])
    }

    const curlMs = median(m.ms.curl)
    const imgcacheMs = median(m.ms.imgcache)
    const twoPassMs = median(m.ms.curlSha512sum)
    const durableMs = median(m.ms.curlSync)
    const onePassMs = median(m.ms.curlTee)
    const rssMain = Math.max(...m.rssKiB)
    const rssLarge = Math.max(...l.rssKiB)
    const curlLargeMs = median(l.ms.curl)
    const durableLargeMs = median(l.ms.curlSync)
    const imgcacheLargeMs = median(l.ms.imgcache)
    const figures = {
      cacheState: DROP_CACHES
        ? 'dropped before each run'
        : "warm: glance's copy in the page cache, sync before each run",
      cpus: availableParallelism(),
      date: new Date().toISOString(),
      images: {
        [LARGE.name]: {bytes: LARGE.bytes, layout: LARGE.layout},
        [MAIN.name]: {bytes: MAIN.bytes, layout: MAIN.layout},
      },
      node: process.version,
      peakRssMiB: {
        [LARGE.name]: rssLarge / 1024,
        [MAIN.name]: rssMain / 1024,
        versionOnly: startup.rssKiB / 1024,
      },
      ratios: {
        curlSha512sumPerCurl: twoPassMs / curlMs,
        imgcachePerCurl: imgcacheMs / curlMs,
        imgcachePerCurlLarge: imgcacheLargeMs / curlLargeMs,
        imgcachePerCurlSyncLarge: imgcacheLargeMs / durableLargeMs,
        imgcachePerCurlSha512sum: imgcacheMs / twoPassMs,
        imgcachePerCurlSync: imgcacheMs / durableMs,
        imgcachePerCurlTeeSync: imgcacheMs / onePassMs,
      },
      seconds: {
        curl: curlMs / 1000,
        curlLarge: curlLargeMs / 1000,
        curlLargeRuns: l.ms.curl.map((ms) => ms / 1000),
        curlSyncLarge: durableLargeMs / 1000,
        curlSyncLargeRuns: l.ms.curlSync.map((ms) => ms / 1000),
        curlRuns: m.ms.curl.map((ms) => ms / 1000),
        curlSha512sum: twoPassMs / 1000,
        curlSha512sumRuns: m.ms.curlSha512sum.map((ms) => ms / 1000),
        curlSync: durableMs / 1000,
        curlSyncRuns: m.ms.curlSync.map((ms) => ms / 1000),
        curlTeeSha512sumSync: onePassMs / 1000,
        curlTeeSha512sumSyncRuns: m.ms.curlTee.map((ms) => ms / 1000),
        imgcache: imgcacheMs / 1000,
        imgcacheFetch: median(m.fetchMs) / 1000,
        imgcacheLarge: imgcacheLargeMs / 1000,
        imgcacheLargeRuns: l.ms.imgcache.map((ms) => ms / 1000),
        imgcacheRuns: m.ms.imgcache.map((ms) => ms / 1000),
        oclifStartup: startupMs / 1000,
      },
      targets: {
        ratio: {pass: imgcacheMs / durableMs <= TARGET_RATIO, target: TARGET_RATIO},
        ratioLarge: {pass: imgcacheLargeMs / durableLargeMs <= TARGET_RATIO_LARGE, target: TARGET_RATIO_LARGE},
        rssMiB: {pass: Math.max(rssMain, rssLarge) / 1024 < TARGET_RSS_MIB, target: TARGET_RSS_MIB},
      },
    }

    console.log(
      `populate: ${MAIN.name} (raw declared raw, pseudo-random bytes: no conversion, as curl does none) ` +
        `from ${glance.url}/v2/images/ID/file, no auth; ${figures.cpus} CPUs; ${figures.cacheState}; median of ${RUNS}`,
    )
    line('baseline: curl -o', seconds(curlMs), runsOf(m.ms.curl))
    line('curl -o, then sha512sum (two passes)', seconds(twoPassMs), runsOf(m.ms.curlSha512sum))
    line('curl -o, then sync FILE (on disk, as a rename needs)', seconds(durableMs), runsOf(m.ms.curlSync))
    line('curl | tee FILE | sha512sum, then sync FILE (one pass)', seconds(onePassMs), runsOf(m.ms.curlTee))
    line('imgcache populate --json (hash+inspect+qemu-img+fsync)', seconds(imgcacheMs), runsOf(m.ms.imgcache))
    line('  its own fetch time (after start-up)', seconds(median(m.fetchMs)))
    line('  bin/run.js --version (Node + oclif start-up)', seconds(startupMs))
    line('ratio curl+sha512sum / curl', ratio(figures.ratios.curlSha512sumPerCurl))
    line('ratio imgcache / curl+sha512sum', ratio(figures.ratios.imgcachePerCurlSha512sum))
    line('ratio imgcache / curl|tee|sha512sum+sync (information)', ratio(figures.ratios.imgcachePerCurlTeeSync))
    line('ratio imgcache / curl (the old yardstick: information)', ratio(figures.ratios.imgcachePerCurl))
    line(
      'ratio imgcache / curl+sync',
      ratio(figures.ratios.imgcachePerCurlSync),
      `target ≤ ${TARGET_RATIO}×: ${verdict(figures.targets.ratio.pass)}`,
    )
    line(`imgcache peak RSS, ${MAIN.name}`, mib(rssMain), `max of ${RUNS} runs`)
    console.log(`${LARGE.name} (sparse-but-random, raw), median of ${RUNS}, order rotated`)
    line('  curl -o', seconds(curlLargeMs), runsOf(l.ms.curl))
    line('  curl -o, then sync FILE', seconds(durableLargeMs), runsOf(l.ms.curlSync))
    line('  imgcache populate --json', seconds(imgcacheLargeMs), runsOf(l.ms.imgcache))
    line('  ratio imgcache / curl (information)', ratio(figures.ratios.imgcachePerCurlLarge))
    line(
      '  ratio imgcache / curl+sync',
      ratio(figures.ratios.imgcachePerCurlSyncLarge),
      `target ≤ ${TARGET_RATIO_LARGE}×: ${verdict(figures.targets.ratioLarge.pass)}`,
    )
    line(`imgcache peak RSS, ${LARGE.name}`, mib(rssLarge), `max of ${RUNS} runs`)
    line('  bin/run.js --version peak RSS', mib(startup.rssKiB))
    line(
      'imgcache peak RSS, any size',
      mib(Math.max(rssMain, rssLarge)),
      `target < ${TARGET_RSS_MIB} MiB: ${verdict(figures.targets.rssMiB.pass)}`,
    )
    console.log(`figures: ${await writeFigures('populate', figures)}`)
    return 0
  } finally {
    await glance?.stop()
    await rm(root, {force: true, recursive: true})
  }
}

process.exitCode = await main()
