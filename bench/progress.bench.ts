/**
 * What the live progress view costs: the demo's `precache --aggregate demo --force` (three local
 * compute hosts, a 256 MiB qcow2 and a 128 MiB raw image, converted to raw) run on a pseudo-terminal
 * (script(1): listr2's live view, as a person at a terminal sees it) and with stderr redirected to a
 * file (line output, as cron sees it), alternating, five of each. Wall and CPU time (user + system of
 * the whole process tree, from time(1), which runs inside script: script's own relay of the output is
 * not counted) are printed as ratios of the medians, terminal ÷ redirected; target ≤ 1.10. Each run's
 * figures are printed too, so that a noisy machine shows as a spread rather than hiding in a median.
 */
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {shellCommand} from '../src/lib/node/quote.js'
import {makeNovaHost, qemuImg} from '../test/fixtures/nova-host.js'
import {ensureBuilt} from './lib/build.js'
import {median, REPO_ROOT, writeFigures} from './lib/measure.js'

const BIN = join(REPO_ROOT, 'bin', 'run.js')
const ROUNDS = 5

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

interface Run {
  cpuSeconds: number
  wallSeconds: number
}

/** One precache under time(1): on a pty (script) or with its output redirected to files. */
async function run(root: string, config: string, terminal: boolean): Promise<Run> {
  const timing = join(root, 'time.txt')
  const argv = ['/usr/bin/time', '-o', timing, '-f', '%e %U %S', 'node', BIN]
  const args = ['precache', '--aggregate', 'demo', '--force', '--config', config]
  const env = {IMGCACHE_CONFIG: '', NODE_ENV: 'production'}
  const result = terminal
    ? await execa('script', ['-qfec', `stty cols 120 rows 40; exec ${shellCommand([...argv, ...args])}`, '/dev/null'], {
        env,
        reject: false,
      })
    : await execa(argv[0]!, [...argv.slice(1), ...args], {env, reject: false})
  if (result.exitCode !== 0) throw new Error(`precache exited ${result.exitCode}: ${result.stderr || result.stdout}`)
  const [wall, user, system] = (await readFile(timing, 'utf8')).trim().split(/\s+/).slice(-3).map(Number)
  return {cpuSeconds: (user ?? 0) + (system ?? 0), wallSeconds: wall ?? 0}
}

async function main(): Promise<void> {
  await ensureBuilt()
  const root = await mkdtemp(join(tmpdir(), 'imgcache-bench-progress-'))
  try {
    const images = join(root, 'images')
    await mkdir(images)
    const cirros = join(images, 'cirros.qcow2')
    const debian = join(images, 'debian.raw')
    await qemuImg(['create', '-q', '-f', 'qcow2', cirros, '256M'])
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 64M', cirros])
    await qemuImg(['create', '-q', '-f', 'raw', debian, '128M'])
    await execa('dd', ['if=/dev/urandom', `of=${debian}`, 'bs=1M', 'count=128', 'conv=notrunc', 'status=none'])
    const hosts = await Promise.all(['cmp-1', 'cmp-2', 'cmp-3'].map((name) => makeNovaHost(join(root, name), {})))
    const config = join(root, 'imgcache.yaml')
    await writeFile(
      config,
      [
        'nodes:',
        ...hosts.map((h, i) => `  cmp-${i + 1}: {local: true, instancesPath: ${h.instancesPath}}`),
        'aggregates:',
        '  demo: {nodes: [cmp-1, cmp-2, cmp-3], images: [cirros, debian]}',
        'images:',
        `  cirros: {id: a3e9c5d2-6d1f-4f7a-9c33-0c7a2d1b5e01, path: ${cirros}, diskFormat: qcow2, checksum: "sha256:${await sha256(cirros)}"}`,
        `  debian: {id: b7f0e1c4-2a5d-4b8e-8f61-3d9c4e2a7f02, path: ${debian}, diskFormat: raw, checksum: "sha256:${await sha256(debian)}"}`,
        '',
      ].join('\n'),
    )
    await run(root, config, false) // warm the page cache and the caches' directories
    const terminal: Run[] = []
    const redirected: Run[] = []
    for (let i = 0; i < ROUNDS; i++) {
      // Alternating order, so that a drift in the machine's load falls on both.
      if (i % 2 === 0) {
        terminal.push(await run(root, config, true))
        redirected.push(await run(root, config, false))
      } else {
        redirected.push(await run(root, config, false))
        terminal.push(await run(root, config, true))
      }
    }

    const figure = (runs: Run[], key: keyof Run) => median(runs.map((r) => r[key]))
    const wallRatio = figure(terminal, 'wallSeconds') / figure(redirected, 'wallSeconds')
    const cpuRatio = figure(terminal, 'cpuSeconds') / figure(redirected, 'cpuSeconds')
    const runs = (list: Run[]) => list.map((r) => `${r.wallSeconds.toFixed(2)}/${r.cpuSeconds.toFixed(2)}`).join(' ')
    const lines = [
      `precache --aggregate demo --force (3 local hosts, 256 MiB qcow2 + 128 MiB raw), median of ${ROUNDS}, alternating:`,
      `  runs, wall/CPU s: redirected ${runs(redirected)}; terminal ${runs(terminal)}`,
      `  redirected (line output): wall ${figure(redirected, 'wallSeconds').toFixed(2)} s, CPU ${figure(redirected, 'cpuSeconds').toFixed(2)} s`,
      `  on a terminal (listr2): wall ${figure(terminal, 'wallSeconds').toFixed(2)} s, CPU ${figure(terminal, 'cpuSeconds').toFixed(2)} s`,
      `  terminal ÷ redirected: wall ${wallRatio.toFixed(2)}×, CPU ${cpuRatio.toFixed(2)}× (target ≤ 1.10×)`,
    ]
    process.stdout.write(`${lines.join('\n')}\n`)
    await writeFigures('progress', {cpuRatio, redirected, terminal, wallRatio})
  } finally {
    await rm(root, {force: true, recursive: true})
  }
}

await main()
