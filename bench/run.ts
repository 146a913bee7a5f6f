/**
 * Runs the benchmarks: every bench/*.bench.ts, or those named on the command line
 * (`npm run bench -- inspect`). Each runs alone in its own Node process (under tsx) so that one
 * cannot warm or slow another; its output is streamed as it comes. Exits 1 if any fails.
 */
import {spawn} from 'node:child_process'
import {readdir} from 'node:fs/promises'
import {join} from 'node:path'
import {performance} from 'node:perf_hooks'

import {REPO_ROOT, seconds} from './lib/measure.js'

const BENCH_DIR = join(REPO_ROOT, 'bench')
const SUFFIX = '.bench.ts'

async function benchNames(): Promise<string[]> {
  const files = await readdir(BENCH_DIR)
  return files
    .filter((f) => f.endsWith(SUFFIX))
    .map((f) => f.slice(0, -SUFFIX.length))
    .sort()
}

/** Run one benchmark with its output going straight to ours; resolves to its exit status. */
async function runBench(name: string): Promise<number> {
  const file = join(BENCH_DIR, `${name}${SUFFIX}`)
  // `--import tsx` is resolved from the working directory: the repository's own tsx.
  const child = spawn(process.execPath, ['--import', 'tsx', file], {
    cwd: REPO_ROOT,
    stdio: 'inherit',
  })
  return new Promise((resolve) => {
    child.once('error', (error) => {
      console.error(`bench ${name}: ${error.message}`)
      resolve(1)
    })
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)))
  })
}

async function main(): Promise<number> {
  const available = await benchNames()
  const asked = process.argv.slice(2)
  const unknown = asked.filter((n) => !available.includes(n))
  if (unknown.length > 0) {
    console.error(`unknown benchmark ${unknown.join(', ')}; available: ${available.join(', ')}`)
    return 2
  }

  // Ctrl-C reaches the benchmark too (same process group): let it clean up, then stop.
  let interrupted = false
  process.on('SIGINT', () => {
    interrupted = true
  })
  const failed: string[] = []
  for (const name of asked.length > 0 ? asked : available) {
    if (interrupted) break
    console.log(`\n▶ ${name}`)
    const start = performance.now()
    const status = await runBench(name)
    console.log(`${status === 0 ? '✔' : '✘'} ${name} (${seconds(performance.now() - start)}, exit ${status})`)
    if (status !== 0) failed.push(name)
  }

  if (failed.length > 0) console.error(`\nfailed: ${failed.join(', ')}`)
  return failed.length > 0 ? 1 : 0
}

process.exitCode = await main()
