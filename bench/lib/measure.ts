/** What every benchmark shares: timing, child processes, and where figures are written. */
import {spawn} from 'node:child_process'
import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {performance} from 'node:perf_hooks'
import {fileURLToPath} from 'node:url'

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const OUT_DIR = join(REPO_ROOT, 'bench', 'out')

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ms: number; value: T}> {
  const start = performance.now()
  const value = await fn()
  return {ms: performance.now() - start, value}
}

/** Run `fn` `runs` times one after another; the median time and the last run's value. */
export async function medianOf<T>(
  runs: number,
  fn: () => Promise<T>,
): Promise<{ms: number; runsMs: number[]; value: T}> {
  const runsMs: number[] = []
  let value: T | undefined
  for (let i = 0; i < runs; i++) {
    const run = await timed(fn)
    runsMs.push(run.ms)
    value = run.value
  }

  return {ms: median(runsMs), runsMs, value: value as T}
}

export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = Array.from({length: items.length})
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      results[i] = await fn(items[i]!)
    }
  }

  await Promise.all(Array.from({length: Math.min(limit, items.length)}, worker))
  return results
}

export interface ProcessResult {
  code: number
  stderr: string
  stdout: string
}

/** Run a program to completion, collecting its output (no shell). */
export async function runProcess(
  command: string,
  args: string[],
  options: {cwd?: string; env?: NodeJS.ProcessEnv} = {},
): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe']})
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk))
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk))
    child.once('error', reject)
    child.once('close', (code, signal) =>
      resolve({
        code: code ?? (signal ? 128 : -1),
        stderr: Buffer.concat(err).toString('utf8'),
        stdout: Buffer.concat(out).toString('utf8'),
      }),
    )
  })
}

/** Like runProcess, but a non-zero exit is an error that shows the program's stderr. */
export async function mustRun(
  command: string,
  args: string[],
  options: {cwd?: string; env?: NodeJS.ProcessEnv} = {},
): Promise<ProcessResult> {
  const result = await runProcess(command, args, options)
  if (result.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited with ${result.code}: ${result.stderr.trim()}`)
  }

  return result
}

/** Write a benchmark's figures to bench/out/<name>.json; returns the path. */
export async function writeFigures(name: string, figures: unknown): Promise<string> {
  await mkdir(OUT_DIR, {recursive: true})
  const path = join(OUT_DIR, `${name}.json`)
  await writeFile(path, `${JSON.stringify(figures, null, 2)}\n`)
  return path
}

export function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(3)} s`
}

export function times(ratio: number): string {
  return `${ratio >= 10 ? ratio.toFixed(0) : ratio.toFixed(1)}×`
}

/** Seeded PRNG (mulberry32): the same synthetic data on every run. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d_2b_79_f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}
